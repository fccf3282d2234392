"""The targets assets: which observations belong together on the sky, and the images each target's
composites and mosaics are made from."""

import shutil

import duckdb
import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetMaterialization,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    asset,
)

from skyassets.catalog.db import connect
from skyassets.defs.automation import catch_up
from skyassets.defs.catalog.assets import image_metadata
from skyassets.defs.metadata import frame_metadata, preview
from skyassets.defs.partitions import targets_partitions
from skyassets.defs.quality.assets import image_quality
from skyassets.defs.resources import HomeResource
from skyassets.imaging.targets import group_targets, inputs_digest, target_inputs
from skyassets.lake.home import Home
from skyassets.lake.parquet import read_parquet, write_parquet

# The event tag Dagster reads an asset partition's data version from.
DATA_VERSION_TAG = "dagster/data_version"
# What a target owns in the lake besides its inputs; removed with the target.
TARGET_TABLES = ("target_images", "mosaics", "composites", "recipes")

target_images = AssetSpec(
    "target_images",
    deps=["target_groups"],
    partitions_def=targets_partitions,
    group_name="targets",
    kinds={"parquet"},
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
    description="Each catalogued observation's target: footprints that overlap on the sky, under one name. "
    "Keeps a targets partition per target with usable images and records each changed target's images (target_images).",
)
def target_groups(context: AssetExecutionContext, home: HomeResource) -> MaterializeResult:
    root = home.home
    con = connect(root.root)
    try:
        images = con.execute(
            "SELECT obs_id, target_name, s_region, file_name, path, hdu_index, sha256, instrument_name, filter, "
            "calib_level, t_exptime FROM images"
        ).df()
        try:
            quality = con.execute("SELECT sha256, hdu_index, usable, flag, score FROM quality").df()
        except duckdb.CatalogException:  # no image measured yet
            quality = None
    finally:
        con.close()
    grouped = group_targets(images)
    inputs = target_inputs(grouped, images, quality)
    digests = {target: inputs_digest(frame) for target, frame in inputs.items()}
    grouped["inputs_digest"] = grouped["target"].map(digests)

    table = root.table("target_groups")
    previous = read_parquet(table) if table.exists() else pd.DataFrame(columns=["target", "inputs_digest"])
    before = dict(zip(previous["target"], previous.get("inputs_digest", pd.Series(index=previous.index, dtype=str))))
    known = set(context.instance.get_dynamic_partitions(targets_partitions.name))
    # A target is a partition while it has usable images: there is nothing to make products from before.
    active = {t for t, frame in inputs.items() if len(frame)}
    changed = [t for t in sorted(active) if t not in known or before.get(t) != digests[t] or not root.table("target_images", t).exists()]
    for target in changed:
        write_parquet(inputs[target], root.table("target_images", target))
    write_parquet(grouped, table)

    new = sorted(active - known)
    context.instance.add_dynamic_partitions(targets_partitions.name, new)
    for target in changed:  # a new data version: DA remakes this target's products, and no other's
        frame = inputs[target]
        context.log_event(AssetMaterialization(
            "target_images", partition=target, tags={DATA_VERSION_TAG: digests[target]},
            metadata={"dagster/row_count": len(frame), "path": MetadataValue.path(str(root.table("target_images", target))),
                      "images": preview(frame, ["instrument_name", "filter", "obs_id", "file_name", "score", "flag"], rows=50)},
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
        "new_targets": len(new), "changed_targets": MetadataValue.json(changed), "retired_targets": MetadataValue.json(retired),
    })


def _retire(root: Home, target: str) -> None:
    """Remove what a target that is gone owns: its observations now belong to another target, or
    none of its images is usable any more."""
    for name in TARGET_TABLES:
        root.table(name, target).unlink(missing_ok=True)
    shutil.rmtree(root.target_dir(target), ignore_errors=True)
