"""Running the pipeline's jobs from the command line, recorded in the Dagster instance like any run."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from skyassets.lake.home import Home
from skyassets.landing.ingest import group_by_partition, local_files, record_landed

# The command line prints its own summary; the full run logs stay in the instance for the UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def latest_metadata(instance: DagsterInstance, asset: str, partition: str | None = None) -> dict:
    """The metadata values of an asset's (or one partition's) latest materialisation."""
    partitions = None if partition is None else [partition]
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=partitions), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return {}
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def partition_batches(instance: DagsterInstance, keys: Sequence[str], size: int) -> list[tuple[str, str]]:
    """Ranges of at most ``size`` partitions covering ``keys`` and nothing else (in partition order)."""
    wanted = set(keys)
    every = instance.get_dynamic_partitions("observations")
    position = {k: i for i, k in enumerate(every)}
    ranges: list[tuple[str, str]] = []
    start = previous = None
    count = 0
    for key in (k for k in every if k in wanted):
        if start is not None and (position[key] != position[previous] + 1 or count == size):
            ranges.append((start, previous))
            start, count = None, 0
        if start is None:
            start = key
        previous, count = key, count + 1
    if start is not None:
        ranges.append((start, previous))
    return ranges


def ingest(
    paths: Sequence[str],
    home: Home,
    instance: DagsterInstance,
    *,
    batch: int = 250,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int, list[str]]:
    """Catalogue local files through the landing job; return (files, partitions, failed run ids).

    The runs go one after another in this process: side by side in worker processes they were
    slower here, as each run's events wait on the same SQLite instance and its header reads
    already use every core.
    """
    from skyassets.definitions import defs

    files = local_files(paths)
    groups = group_by_partition(files)
    for key, landed in groups.items():
        record_landed(home, key, landed)
    instance.add_dynamic_partitions("observations", sorted(groups))
    job = defs.resolve_job_def("landing_job")
    run_config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
    failed = []
    ranges = partition_batches(instance, sorted(groups), batch)
    for done, (first, last) in enumerate(ranges, start=1):
        tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
        result = job.execute_in_process(instance=instance, tags=tags, run_config=run_config, raise_on_error=False)
        if not result.success:
            failed.append(result.run_id)
        if progress:
            progress(done, len(ranges))
    return len(files), len(groups), failed


def text_progress(done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} runs")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()
