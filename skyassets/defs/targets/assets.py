"""The targets assets: which observations belong together on the sky, and the images each target's
composites and mosaics are made from."""


import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetMaterialization,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    asset,
)

from skyassets.defs.automation import catch_up
from skyassets.defs.catalog.assets import image_metadata
from skyassets.defs.metadata import column_schema, frame_metadata, preview
from skyassets.defs.partitions import targets_partitions
from skyassets.defs.quality.assets import image_quality
from skyassets.defs.resources import HomeResource
from skyassets.defs.tags import DATA_VERSION
from skyassets.lake.home import Home
from skyassets.lake.tables import Partitioning, partitioned_by, table

# What a target owns in the lake; removed with the target.
TARGET_TABLES = partitioned_by(Partitioning.TARGET)

target_images = AssetSpec(
    "target_images",
    deps=["target_groups"],
    partitions_def=targets_partitions,
    group_name="targets",
    kinds={"parquet"},
    metadata=column_schema(table("target_images").schema),
    description="Per target: the usable, non-rejected images its mosaics and composites are made from. Recorded by "
    "target_groups, only for targets whose images changed, with a digest of them as the data version.",
)


@asset(
    group_name="targets",
    deps=[image_metadata, image_quality],
    # Regrouped whenever an observation is catalogued or measured; a missing or failed one must not hold it back.
    automation_condition=catch_up(),
    pool="target_groups",
    kinds={"parquet"},
    metadata=column_schema(table("target_groups").schema),
    description="Each catalogued observation's target: footprints that overlap on the sky, under one name. "
    "Keeps a targets partition per target with usable images and records each changed target's images (target_images).",
)
def target_groups(context: AssetExecutionContext, home: HomeResource) -> MaterializeResult:
    # imported here: the grouping brings in scipy, shapely and astropy, DuckDB the catalog; slow to import
    import duckdb

    from skyassets.catalog.db import connect
    from skyassets.imaging.targets import group_targets, inputs_digest, target_inputs

    root = home.home
    con = connect(root, tables=("images", "quality"))  # the lake's other tables are not read
    try:
        images = con.execute(
            "SELECT obs_id, target_name, s_region, file_name, path, hdu_index, sha256, instrument_name, filter, "
            "calib_level, proposal_id, asn_id, t_exptime, wcs_problem FROM images"
        ).df()
        try:
            quality = con.execute("SELECT sha256, hdu_index, usable, flag, score FROM quality").df()
        except duckdb.CatalogException:  # no image measured yet
            quality = None
    finally:
        con.close()
    lake = root.tables
    previous = lake.read("target_groups", missing_ok=True)
    grouped = group_targets(images, previous)  # a target keeps its key while it keeps its observations
    inputs = target_inputs(grouped, images, quality)
    digests = {target: inputs_digest(frame) for target, frame in inputs.items()}
    grouped["inputs_digest"] = grouped["target"].map(digests)

    digest_before = previous.get("inputs_digest", pd.Series(index=previous.index, dtype=str))
    before = dict(zip(previous["target"], digest_before, strict=True))
    known = set(context.instance.get_dynamic_partitions(targets_partitions.name))
    # A target is a partition while it has usable images: there is nothing to make products from before.
    active = {t for t, frame in inputs.items() if len(frame)}
    changed = [
        t for t in sorted(active)
        if t not in known or before.get(t) != digests[t] or not lake.exists("target_images", t)
    ]
    for target in changed:
        lake.write("target_images", inputs[target], partition=target)
    lake.write("target_groups", grouped)

    new = sorted(active - known)
    context.instance.add_dynamic_partitions(targets_partitions.name, new)
    for target in changed:  # a new data version: DA remakes this target's products, and no other's
        frame = inputs[target]
        context.log_event(AssetMaterialization(
            "target_images", partition=target, tags={DATA_VERSION: digests[target]},
            metadata={
                "dagster/row_count": len(frame), "path": MetadataValue.path(lake.path("target_images", target)),
                "images": preview(
                    frame, ["instrument_name", "filter", "obs_id", "file_name", "score", "flag"], rows=50
                ),
            },
        ))
    retired = sorted(known - active)
    for target in retired:
        _retire(root, target)
        context.instance.delete_dynamic_partition(targets_partitions.name, target)

    summary = grouped.groupby(["target", "target_name"], as_index=False).agg(observations=("obs_id", "count"))
    summary["usable_images"] = summary["target"].map({t: len(f) for t, f in inputs.items()})
    context.log.info(
        f"{len(grouped)} observations in {len(summary)} targets: {len(new)} new, {len(changed)} with changed images, "
        f"{len(retired)} retired"
    )
    return MaterializeResult(metadata={
        **frame_metadata(summary, rows=50), "observations": len(grouped),
        "new_targets": len(new), "changed_targets": MetadataValue.json(changed),
        "retired_targets": MetadataValue.json(retired),
    })


def _retire(root: Home, target: str) -> None:
    """Remove what a target that is gone owns: its observations now belong to another target, or
    none of its images is usable any more."""
    for name in TARGET_TABLES:
        root.tables.delete(name, target)
    root.remove_folder(root.target_dir(target).relative_to(root.root))  # the working copy and the store's
