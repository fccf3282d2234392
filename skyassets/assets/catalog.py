"""The catalogue assets: image metadata per observation, and the DuckDB catalog over the lake."""

import os

from dagster import (
    AssetExecutionContext,
    AutomationCondition,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ..fitsmeta import extract_many, to_table
from ..lake import read_parquet, write_parquet
from ..partitions import observation_backfill_policy, observations_partitions
from ..resources import HomeResource
from .mast import fits_files
from .metadata import frame_metadata

IMAGE_PREVIEW = ["obs_id", "file_name", "hdu_name", "instrument_name", "filter", "s_ra", "s_dec", "t_min", "t_exptime"]


@asset(
    group_name="catalog",
    deps=[fits_files],
    partitions_def=observations_partitions,
    backfill_policy=observation_backfill_policy,
    automation_condition=AutomationCondition.eager(),
    kinds={"parquet"},
    description="One row per image HDU of the observation's files, with IVOA ObsCore columns and units.",
)
def image_metadata(context: AssetExecutionContext, home: HomeResource) -> MaterializeResult:
    root = home.home
    sources = []
    for obs_id in context.partition_keys:
        manifest = read_parquet(root.table("fits_files", obs_id))
        sources += [
            {
                "path": str(root.root / row["path"]),
                "sha256": row["sha256"],
                "size": int(row["size"]),
                "access_url": row["dataURI"],
                "obs_id": obs_id,
            }
            for row in manifest.to_dict("records")
        ]
    # Worker processes pay off only for batches (backfills, bulk ingests); a few files go inline.
    workers = 1 if len(sources) < 16 else os.cpu_count() or 1
    rows, failures = extract_many(sources, processes=workers, quarantine_dir=root.quarantine)
    unexpected = [f for f in failures if not f.unreadable]
    if unexpected:
        raise Failure(
            f"{len(unexpected)} files could not be catalogued: " + "; ".join(f"{f.path}: {f.reason}" for f in unexpected[:5])
        )
    for failure in failures:
        context.log.warning(f"quarantined {failure.path}: {failure.reason} (now {failure.quarantined})")
    for obs_id in context.partition_keys:
        part = rows[rows["obs_id"] == obs_id].reset_index(drop=True)
        write_parquet(to_table(part), root.table("image_metadata", obs_id))
    quarantined = "\n".join(f"- `{f.path}`: {f.reason} (moved to `{f.quarantined}`)" for f in failures)
    return MaterializeResult(
        metadata={
            **frame_metadata(rows.drop(columns=["header_json"]), preview_columns=IMAGE_PREVIEW),
            "files": len(sources),
            "quarantined": len(failures),
            **({"quarantined_files": MetadataValue.md(quarantined)} if failures else {}),
        }
    )
