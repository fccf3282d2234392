"""Sky tiles per target (a HiPS per mosaic and composite) and the published collection of all of them."""

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)

from skyassets.defs.automation import catch_up, follows
from skyassets.defs.partitions import targets_partitions
from skyassets.defs.products.assets import composites, mosaics
from skyassets.defs.resources import HomeResource, PublishResource


@asset(
    group_name="tiles",
    deps=[mosaics, composites],
    partitions_def=targets_partitions,
    # After the target's products are made (composites follow mosaics in the same run).
    automation_condition=follows(),
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=10),
    kinds={"fits", "png"},
    description="Per target: a HiPS 1.0 pyramid of each mosaic (FITS tiles, values kept) and composite (PNG tiles) "
    "with Allsky and coverage MOC, swapped in atomically; a target whose products did not change is not re-tiled.",
)
def sky_tiles(context: AssetExecutionContext, home: HomeResource) -> MaterializeResult:
    # imported here: tiling brings in astropy, astropy_healpix and mocpy, slow to import
    from skyassets.tiles.products import tile_target

    root = home.home
    versions = {}
    for target in context.partition_keys:
        made = tile_target(root, target)
        versions[target] = made.digest
        lines = [f"**{p['title']}**: order {p['order_min']}–{p['order']}, {p['tiles']} {p['tile_format']} tiles"
                 for p in made.pyramids]
        context.add_asset_metadata(
            {"pyramids": len(made.pyramids), "retiled": made.changed, "digest": made.digest,
             "path": MetadataValue.path(str(made.path)),
             "tiles": MetadataValue.md("\n\n".join(lines) or "no products")},
            partition_key=target,
        )
        context.log.info(f"{target}: {'tiled' if made.changed else 'unchanged, not re-tiled'} ({made.digest})")
    # The products' digest is the data version (Dagster takes one only for a run of one partition).
    if len(versions) == 1:
        return MaterializeResult(data_version=DataVersion(next(iter(versions.values()))))
    return MaterializeResult()


@asset(
    group_name="tiles",
    deps=[sky_tiles],
    automation_condition=catch_up(),
    kinds={"s3", "html"},
    description="Every target's pyramids written to the destination (publish resource): tiles first, each verified "
    "by checksum, then the indexes (hipslist, index.wtml, newest first); an interrupted publish resumes.",
)
def publish(context: AssetExecutionContext, home: HomeResource, publish: PublishResource) -> MaterializeResult:
    from skyassets.tiles.products import remove_target, tiles_root
    from skyassets.tiles.publish import publish_collection

    root = home.home
    active = set(context.instance.get_dynamic_partitions(targets_partitions.name))
    folder = tiles_root(root)
    if folder.exists():
        for link in folder.iterdir():
            if not link.name.startswith(".") and link.name not in active:
                remove_target(root, link.name)  # a retired target leaves the collection
    report = publish_collection(root, publish.destination(root), public_url=publish.public_url,
                                targets=active, threads=publish.threads)
    return MaterializeResult(metadata={
        "destination": report.destination, "targets": len(report.targets), "pyramids": report.pyramids,
        "uploaded": report.uploaded, "already_there": report.skipped, "bytes_uploaded": report.bytes_uploaded,
        "removed": report.removed, "retired": MetadataValue.json(report.retired),
        "indexes": ", ".join(report.indexes),
    })
