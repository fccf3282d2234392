"""One pass of the pipeline through a real Dagster instance, as the daemon would run it.

The watchlist job runs, the new-observations sensor is evaluated, its partitions are added and its
per-observation runs executed; every run is recorded in ``$DAGSTER_HOME`` so the Dagster UI shows
them afterwards.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from dagster import DagsterInstance, Definitions, build_sensor_context
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from skyassets.cli.runs import QUIET, latest_metadata, partition_batches
from skyassets.lake.home import Home
from skyassets.lake.parquet import read_parquet


def observations_in(instance: DagsterInstance) -> list[str]:
    """The observation ids of the latest mast_observations table."""
    path = latest_metadata(instance, "mast_observations").get("path")
    return list(read_parquet(path)["obs_id"]) if path else []


def run_demo(home: Home, dagster_home: Path) -> int:
    from skyassets.definitions import defs
    from skyassets.defs.archive.sensors import new_observations_sensor

    instance = DagsterInstance.get()
    archive = defs.resources["archive"]
    print(f"skyassets home: {home.root}")
    print(f"Dagster home:   {dagster_home}")
    server, s3 = archive.endpoints(home)
    print(f"MAST:           {archive.url} ({server}; S3 {s3 or 'AWS'})")

    result = defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False)
    if not result.success:
        print("The watchlist query failed; see the run in the Dagster UI.")
        return 1
    observations = latest_metadata(instance, "mast_observations")
    print(f"\nQueried the watchlist: {observations['dagster/row_count']} public observations")
    for entry, count in observations["rows_per_entry"].items():
        print(f"  {entry:<32} {count:>4} rows")
    print(f"  proprietary left out: {observations['proprietary_left_out']}")

    sensor_result = new_observations_sensor(build_sensor_context(instance=instance, definitions=defs))
    for request in getattr(sensor_result, "dynamic_partitions_requests", []):
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    new = {r.partition_key for r in getattr(sensor_result, "run_requests", None) or []}
    # Observations seen by an earlier pass are run again too: their verified files are skipped.
    partitions = sorted(set(instance.get_dynamic_partitions("observations")) & set(observations_in(instance)))
    print(f"\nThe sensor added {len(new)} new observation partitions; running all {len(partitions)}:")
    job = defs.resolve_job_def("observation_job")
    failures = 0
    failed: list[str] = []
    totals = {"downloaded": 0, "skipped": 0, "verified": 0, "bytes": 0, "seconds": 0.0}
    for partition in partitions:
        run = job.execute_in_process(
            instance=instance, partition_key=partition, run_config=QUIET, raise_on_error=False
        )
        files = latest_metadata(instance, "fits_files", partition) if run.success else {}
        if not run.success:
            failures += 1
            failed.append(partition)
            print(f"  {partition:<44} FAILED (run {run.run_id})")
            continue
        totals["downloaded"] += files["files_downloaded"]
        totals["skipped"] += files["files_skipped"]
        totals["verified"] += files["files_verified_checksum"]
        totals["bytes"] += files["bytes_fetched"]
        totals["seconds"] += files["seconds"]
        fetched = (
            f"{files['files_downloaded']} fetched at {files['bytes_per_second'] / 1e6:.1f} MB/s"
            if files["files_downloaded"]
            else "nothing fetched"
        )
        print(
            f"  {partition:<40} {files['dagster/row_count']:>2} files {files['bytes_total'] / 1e6:6.1f} MB: "
            f"{fetched}, {files['files_verified_checksum']} FITS checksums ok, "
            f"{files['files_skipped']} already verified"
        )
    speed = totals["bytes"] / totals["seconds"] / 1e6 if totals["seconds"] else 0.0
    print(
        f"\nDownloaded {totals['downloaded']} files ({totals['bytes'] / 1e6:.1f} MB, {speed:.1f} MB/s), "
        f"{totals['skipped']} already verified, {totals['verified']} FITS checksums verified, {failures} failed runs."
    )
    failures += _measure_quality(instance, defs, home, [p for p in partitions if p not in failed])
    if not defs.resolve_job_def("catalog_job").execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False).success:
        print("Publishing the catalog failed; see the run in the Dagster UI.")
        return 1
    failures += _make_products(instance, defs, home)
    if not defs.resolve_job_def("catalog_job").execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False).success:
        print("Publishing the catalog failed; see the run in the Dagster UI.")
        return 1
    rows = latest_metadata(instance, "catalog")["rows"]
    print(f"\nCatalog: {rows.get('images', 0)} images of {rows.get('observations', 0)} observations, "
          f"{rows.get('mosaics', 0)} mosaics, {rows.get('composites', 0)} composites")
    print(f"\nFITS files:      {home.files}")
    print(f"Catalog:         {home.root / 'catalog.duckdb'}  (or skyassets.catalog.db.connect() in a notebook)")
    print(f"Parquet tables:  {home.lake}")
    command = Path(sys.executable).parent / "skyassets"
    print("\nOpen these runs in the Dagster UI (then browse http://127.0.0.1:3000):")
    print(f"  SKYASSETS_HOME={home.root} DAGSTER_HOME={dagster_home} {command} dev")
    return 1 if failures else 0


def _measure_quality(instance: DagsterInstance, defs: Definitions, home: Home, partitions: list[str]) -> int:
    """Run quality_job over the partitions in batched runs, print the flags; return failed runs."""
    if not partitions:
        return 0
    job = defs.resolve_job_def("quality_job")
    print(f"\nMeasuring image quality of {len(partitions)} observations:")
    failures, flags, worst = 0, Counter(), []
    for first, last in partition_batches(instance, partitions, 25):
        tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
        run = job.execute_in_process(instance=instance, tags=tags, run_config=QUIET, raise_on_error=False)
        failures += not run.success
        for check in run.get_asset_check_evaluations():
            if not check.passed:
                print(f"  check {check.check_name} failed: {check.description}")
    for partition in partitions:
        path = home.table("image_quality", partition)
        if path.exists():
            rows = read_parquet(path)
            flags.update(rows["flag"])
            worst += rows[["obs_id", "file_name", "filter", "score", "flag"]].to_dict("records")
    print("  flags: " + ", ".join(f"{n} {flag}" for flag, n in flags.most_common()))
    for row in sorted(worst, key=lambda r: r["score"])[:3]:
        print(f"  lowest: {row['file_name']} ({row['filter']}) score {row['score']:.0f} {row['flag']}")
    print(f"  details: skyassets quality {partitions[0]}")
    return failures


def _make_products(instance: DagsterInstance, defs: Definitions, home: Home) -> int:
    """Run products_job for each target that target_groups found; return failed runs. (In ``skyassets
    dev`` declarative automation does this for the targets whose images change.)"""
    targets = instance.get_dynamic_partitions("targets")
    print(f"\nMosaics and composites for {len(targets)} targets:")
    failures = 0
    for target in targets:
        run = defs.resolve_job_def("products_job").execute_in_process(
            instance=instance, partition_key=target, run_config=QUIET, raise_on_error=False
        )
        failures += not run.success
        made = read_parquet(home.table("composites", target)) if run.success else None
        count = len(read_parquet(home.table("mosaics", target))) if run.success else 0
        print(f"  {target:<24} {count} mosaics, {0 if made is None else len(made)} composites"
              + ("" if run.success else f" FAILED (run {run.run_id})"))
        print(f"  {'':<24} {home.target_dir(target)}")
    print("  see one: skyassets show TARGET")
    return failures
