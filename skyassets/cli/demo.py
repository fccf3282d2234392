"""One pass of the pipeline through a real Dagster instance, as the daemon would run it.

The watchlist job runs, the new-observations sensor is evaluated, its partitions are added and its
per-observation runs executed; every run is recorded in ``$DAGSTER_HOME`` so the Dagster UI shows
them afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dagster import DagsterInstance, build_sensor_context

from skyassets.cli.runs import QUIET, bring_up_to_date, latest_metadata, latest_storage_id
from skyassets.lake.home import Home


def observations_in(home: Home) -> list[str]:
    """The observation ids of the latest mast_observations table."""
    return list(home.tables.read("mast_observations", columns=["obs_id"], missing_ok=True)["obs_id"])


def run_demo(home: Home, dagster_home: Path) -> int:
    from skyassets.definitions import defs
    from skyassets.defs.archive.sensors import new_observations_sensor

    instance = DagsterInstance.get()
    archive = defs.resources["archive"]
    print(f"skyassets home: {home.root}")
    print(f"Dagster home:   {dagster_home}")
    server, s3 = archive.endpoints(home)
    print(f"MAST:           {archive.url} ({server}; S3 {s3 or 'AWS'})")

    result = defs.resolve_job_def("watchlist_job").execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=False
    )
    if not result.success:
        print("The watchlist query failed; see the run in the Dagster UI.")
        return 1
    observations = latest_metadata(instance, "mast_observations")
    print(f"\nQueried the watchlist: {observations['dagster/row_count']} public observations")
    for entry, count in observations["rows_per_entry"].items():
        print(f"  {entry:<32} {count:>4} rows")
    print(f"  proprietary left out: {observations['proprietary_left_out']}")

    context = build_sensor_context(instance=instance, definitions=defs, resources=defs.resources)
    sensor_result = new_observations_sensor(context)
    for request in getattr(sensor_result, "dynamic_partitions_requests", []):
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    new = {k for r in getattr(sensor_result, "dynamic_partitions_requests", []) for k in r.partition_keys}
    watched = sorted(set(instance.get_dynamic_partitions("observations")) & set(observations_in(home)))
    # An observation catalogued by an earlier pass is not run again: a re-run over an unchanged
    # archive materialises nothing new. One whose run failed has no catalogue and is tried again.
    partitions = [p for p in watched if not latest_storage_id(instance, "image_metadata", p)]
    print(f"\nThe sensor added {len(new)} new observation partitions; {len(watched) - len(partitions)} "
          f"observations are catalogued already; running {len(partitions)}:")
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
    downstream = bring_up_to_date(instance, home, [p for p in watched if p not in failed], QUIET)
    if downstream is None:
        return 1
    failures += downstream
    rows = latest_metadata(instance, "catalog")["rows"]
    print(f"\nCatalog: {rows.get('images', 0)} images of {rows.get('observations', 0)} observations, "
          f"{rows.get('mosaics', 0)} mosaics, {rows.get('composites', 0)} composites")
    print(f"\nFITS files:      {home.files}")
    print(f"Catalog:         {home.root / 'catalog.duckdb'}  (or skyassets.connect() in a notebook)")
    print(f"Parquet tables:  {home.lake}")
    command = Path(sys.executable).parent / "skyassets"
    print("\nOpen these runs in the Dagster UI (then browse http://127.0.0.1:3000):")
    print(f"  SKYASSETS_HOME={home.root} DAGSTER_HOME={dagster_home} {command} dev")
    return 1 if failures else 0

