"""Running the pipeline's jobs from the command line, recorded in the Dagster instance like any run."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from skyassets.defs.tags import partition_range
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


def latest_storage_id(instance: DagsterInstance, asset: str, partition: str | None = None) -> int:
    """Where in the event log an asset's (or one partition's) latest materialisation is; 0 if none."""
    partitions = None if partition is None else [partition]
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=partitions), limit=1
    ).records
    return records[0].storage_id if records else 0


def outdated(instance: DagsterInstance, asset: str, upstream: str, partitions: Sequence[str]) -> list[str]:
    """The partitions whose ``asset`` is missing or older than their ``upstream``'s latest
    materialisation: what a re-run must remake, and nothing else."""
    return [
        p for p in partitions
        if (before := latest_storage_id(instance, upstream, p)) and latest_storage_id(instance, asset, p) < before
    ]


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


@dataclass
class IngestReport:
    """What ``ingest`` did with each file, counted apart: catalogued, quarantined (with the reason),
    failed (with the reason); and the partitions and runs it took."""

    catalogued: list[str] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    partitions: list[str] = field(default_factory=list)
    runs: int = 0
    failed_runs: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        return len(self.catalogued) + len(self.quarantined) + len(self.failed)

    @property
    def ok(self) -> bool:
        return not (self.quarantined or self.failed or self.failed_runs)


def _quarantine_reasons(home: Home, since: float) -> dict[str, str]:
    """The landed location and reason of every file quarantined since ``since`` (from the sidecars)."""
    reasons: dict[str, str] = {}
    if not home.quarantine.is_dir():
        return reasons
    for sidecar in home.quarantine.glob("*.json"):
        try:
            if sidecar.stat().st_mtime < since:
                continue
            note = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        location, _, reason = str(note.get("reason", "")).partition(": ")
        reasons[location] = reason or "quarantined"
    return reasons


def ingest(
    paths: Sequence[str],
    home: Home,
    instance: DagsterInstance,
    *,
    batch: int = 250,
    progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Catalogue local files through the landing job and say, per file, what became of it.

    The runs go one after another in this process: side by side in worker processes they were
    slower here, as each run's events wait on the same SQLite instance and its header reads
    already use every core.
    """
    from skyassets.definitions import defs

    started = time.time()
    files = local_files(paths)
    groups = group_by_partition(files)
    for key, landed in groups.items():
        record_landed(home, key, landed)
    instance.add_dynamic_partitions("observations", sorted(groups))
    job = defs.resolve_job_def("landing_job")
    run_config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
    report = IngestReport(partitions=sorted(groups))
    failed_in: dict[str, str] = {}
    ranges = partition_batches(instance, sorted(groups), batch)
    every = instance.get_dynamic_partitions("observations")
    for done, (first, last) in enumerate(ranges, start=1):
        result = job.execute_in_process(
            instance=instance, tags=partition_range(first, last), run_config=run_config, raise_on_error=False
        )
        report.runs += 1
        if not result.success:
            report.failed_runs.append(result.run_id)
            for key in every[every.index(first): every.index(last) + 1]:
                failed_in[key] = result.run_id
        if progress:
            progress(done, len(ranges))
    quarantined = _quarantine_reasons(home, started - 1)
    for key, landed in sorted(groups.items()):
        copied = set()
        if home.tables.exists("fits_files", key):
            copied = set(home.tables.read("fits_files", key, columns=["dataURI"])["dataURI"])
        for file in landed:
            if file.location in copied:
                report.catalogued.append(file.location)
            elif file.location in quarantined:
                report.quarantined[file.location] = quarantined[file.location]
            elif key in failed_in:
                report.failed[file.location] = f"its run {failed_in[key]} failed (see it in the Dagster UI)"
            else:
                report.failed[file.location] = "not copied (see the landing run's log in the Dagster UI)"
    return report


def text_progress(done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} runs")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def measure_quality(
    instance: DagsterInstance, home: Home, partitions: list[str], run_config: dict
) -> tuple[int, int]:
    """Run quality_job in batched runs over the partitions whose images changed since they were last
    measured, print the flags; return (partitions measured, failed runs)."""
    todo = outdated(instance, "image_quality", "image_metadata", partitions)
    if len(todo) < len(partitions):
        print(f"\nImage quality of {len(partitions) - len(todo)} observations is up to date.")
    if not todo:
        return 0, 0
    from skyassets.definitions import defs

    job = defs.resolve_job_def("quality_job")
    partitions = todo
    print(f"\nMeasuring image quality of {len(partitions)} observations:")
    failures, flags, worst = 0, Counter(), []
    for first, last in partition_batches(instance, partitions, 25):
        tags = partition_range(first, last)
        run = job.execute_in_process(instance=instance, tags=tags, run_config=run_config, raise_on_error=False)
        failures += not run.success
        for check in run.get_asset_check_evaluations():
            if not check.passed:
                print(f"  check {check.check_name} failed: {check.description}")
    for partition in partitions:
        if home.tables.exists("image_quality", partition):
            rows = home.tables.read("image_quality", partition)
            flags.update(rows["flag"])
            worst += rows[["obs_id", "file_name", "filter", "score", "flag"]].to_dict("records")
    print("  flags: " + ", ".join(f"{n} {flag}" for flag, n in flags.most_common()))
    for row in sorted(worst, key=lambda r: r["score"])[:3]:
        print(f"  lowest: {row['file_name']} ({row['filter']}) score {row['score']:.0f} {row['flag']}")
    print(f"  details: skyassets quality {partitions[0]}")
    return len(partitions), failures


def make_products(instance: DagsterInstance, home: Home, run_config: dict) -> tuple[int, int]:
    """Run products_job for each target whose images changed since its products were made; return
    (runs, failed runs). (In ``skyassets dev`` declarative automation does this.)"""
    from skyassets.definitions import defs

    every = instance.get_dynamic_partitions("targets")
    targets = outdated(instance, "composites", "target_images", every)
    if len(targets) < len(every):
        print(f"\nMosaics and composites of {len(every) - len(targets)} targets are up to date.")
    if not targets:
        return 0, 0
    print(f"\nMosaics and composites for {len(targets)} targets:")
    failures = 0
    for target in targets:
        run = defs.resolve_job_def("products_job").execute_in_process(
            instance=instance, partition_key=target, run_config=run_config, raise_on_error=False
        )
        failures += not run.success
        made = home.tables.read("composites", target) if run.success else None
        count = len(home.tables.read("mosaics", target)) if run.success else 0
        print(f"  {target:<24} {count} mosaics, {0 if made is None else len(made)} composites"
              + ("" if run.success else f" FAILED (run {run.run_id})"))
        print(f"  {'':<24} {home.target_dir(target)}")
    print("  see one: skyassets show TARGET")
    return len(targets), failures


def publish_catalog(instance: DagsterInstance, run_config: dict) -> bool:
    """Group targets and publish catalog.duckdb (catalog_job); False, with a line said, if it failed."""
    from skyassets.definitions import defs

    run = defs.resolve_job_def("catalog_job").execute_in_process(
        instance=instance, run_config=run_config, raise_on_error=False
    )
    if not run.success:
        print(f"Publishing the catalog failed; see run {run.run_id} in the Dagster UI.")
    return run.success


def bring_up_to_date(instance: DagsterInstance, home: Home, partitions: list[str], run_config: dict) -> int | None:
    """What the daemon's automation does after new files, in this process: quality of ``partitions``,
    targets and the catalog, each target's products, the catalog again. Returns failed runs, or None
    when the catalog could not be published."""
    measured, failures = measure_quality(instance, home, partitions, run_config)
    if measured or not latest_storage_id(instance, "catalog"):
        if not publish_catalog(instance, run_config):
            return None
    made, failed = make_products(instance, home, run_config)
    if made and not publish_catalog(instance, run_config):
        return None
    return failures + failed
