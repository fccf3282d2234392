"""Running the pipeline's jobs from the command line, recorded in the Dagster instance like any run."""

from __future__ import annotations

import math
import multiprocessing
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from .home import Home
from .ingest import group_by_partition, local_files, record_landed

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
    parallel: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int, list[str]]:
    """Catalogue local files through the landing job; return (files, partitions, failed run ids).

    With ``parallel`` > 1 the runs go to that many worker processes, as the daemon would launch a
    backfill's runs side by side; the batches are made small enough to keep every worker busy.
    """
    files = local_files(paths)
    groups = group_by_partition(files)
    for key, landed in groups.items():
        record_landed(home, key, landed)
    instance.add_dynamic_partitions("observations", sorted(groups))
    parallel = max(1, min(parallel, len(groups)))
    size = max(1, min(batch, math.ceil(len(groups) / parallel)))
    ranges = partition_batches(instance, sorted(groups), size)
    run_config = _landing_run_config(home, extract_processes=1 if parallel > 1 else 0)
    failed: list[str] = []
    if parallel == 1:
        outcomes = (_run_landing_batch(instance, first, last, run_config) for first, last in ranges)
        for done, (run_id, success) in enumerate(outcomes, start=1):
            failed += [] if success else [run_id]
            if progress:
                progress(done, len(ranges))
        return len(files), len(groups), failed
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(parallel, mp_context=ctx, initializer=_open_worker, initargs=(instance.get_ref(),)) as pool:
        futures = [pool.submit(_worker_batch, first, last, run_config) for first, last in ranges]
        for done, future in enumerate(as_completed(futures), start=1):
            run_id, success = future.result()
            failed += [] if success else [run_id]
            if progress:
                progress(done, len(ranges))
    return len(files), len(groups), failed


def _landing_run_config(home: Home, extract_processes: int) -> dict:
    """QUIET logging, this ``home`` for the run's resources, and the extraction's process count."""
    return {
        **QUIET,
        "resources": {"home": {"config": {"root": str(home.root)}}},
        "ops": {"image_metadata": {"config": {"processes": extract_processes}}},
    }


def _run_landing_batch(instance: DagsterInstance, first: str, last: str, run_config: dict) -> tuple[str, bool]:
    from .definitions import defs

    tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
    result = defs.resolve_job_def("landing_job").execute_in_process(
        instance=instance, tags=tags, run_config=run_config, raise_on_error=False
    )
    return result.run_id, result.success


_worker_instance: DagsterInstance | None = None


def _open_worker(ref: InstanceRef) -> None:
    global _worker_instance
    _worker_instance = DagsterInstance.from_ref(ref)


def _worker_batch(first: str, last: str, run_config: dict) -> tuple[str, bool]:
    assert _worker_instance is not None
    return _run_landing_batch(_worker_instance, first, last, run_config)


def text_progress(done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} runs")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()
