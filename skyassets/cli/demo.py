"""One pass of the pipeline through a real Dagster instance, as the daemon would run it.

The watchlist job runs, the new-observations sensor is evaluated and its partitions added, and the
observations not yet catalogued are fetched in partition-range runs; quality, targets, products and
the catalog follow. Every run is launched through a webserver the way the UI launches runs
(``skyassets.cli.launch``), so the Dagster UI lists them and can re-execute them afterwards.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from dagster import DagsterInstance, build_sensor_context

from skyassets.archive.choices import products_rechosen
from skyassets.cli.launch import Launcher, Submission
from skyassets.cli.output import counted, one_line
from skyassets.cli.runs import (
    QUIET,
    Runner,
    bring_up_to_date,
    failed_checks,
    failure_metadata,
    failure_reasons,
    latest_metadata,
    latest_storage_id,
    outdated,
    partition_batches,
    run_materializations,
    run_totals,
    text_progress,
)
from skyassets.defs.partitions import split_failed_run
from skyassets.defs.tags import partition_range
from skyassets.lake.home import Home
from skyassets.landing.keys import LANDED_PREFIX
from skyassets.tiles.viewer import aladin_script

# Observations per demo run, and runs at once: the archive's pool lets one download at a time, so a
# second run only overlaps its cataloguing with the other's downloads.
DEMO_OBSERVATIONS_PER_RUN = 6
DEMO_RUNS_AT_ONCE = 2


@contextmanager
def keeping_sigterm() -> Iterator[None]:
    """Keep the command's SIGTERM handler across a sensor evaluated in this process: Dagster's
    interrupt handling gives SIGTERM whatever SIGINT has, which a background job (``demo &``) has
    set to ignored, so ``kill`` would no longer stop the demo."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, handler)


def files_lost(home: Home, obs_ids: list[str]) -> dict[str, list[str]]:
    """The files each observation's manifest says were stored, but which the home no longer holds
    (deleted by hand, a disk restored from an older backup): by observation, their names."""
    stored = {
        (obs_id, row["filename"]): row["path"]
        for obs_id, manifest in home.tables.read_partitions(
            "fits_files", obs_ids, columns=["filename", "path", "status"]).items()
        for row in manifest.to_pylist() if row["status"] != "quarantined" and row["path"]
    }
    gone = home.missing(stored.values())
    lost: dict[str, list[str]] = {}
    for (obs_id, filename), path in sorted(stored.items()):
        if path in gone:
            lost.setdefault(obs_id, []).append(filename)
    return lost


def files_unchosen(home: Home, obs_ids: list[str]) -> dict[str, tuple[str, list[str]]]:
    """The files an observation's folder holds that its manifest no longer lists (the watchlist
    chooses other products of it now): kept, but no longer catalogued. By observation, its folder
    and their names."""
    from skyassets.archive.download import RESERVED_SUFFIXES

    left: dict[str, tuple[str, list[str]]] = {}
    for obs_id, manifest in home.tables.read_partitions("fits_files", obs_ids, columns=["path"]).items():
        listed = {PurePosixPath(p) for p in manifest.column("path").to_pylist() if p}
        for folder in sorted({p.parent for p in listed}):
            if home.storage is not None:
                held = list(home.stored_files(folder))
            else:
                held = [p.name for p in (home.root / folder).iterdir() if p.is_file()] \
                    if (home.root / folder).is_dir() else []
            names = sorted(n for n in held if "/" not in n and not n.startswith(".")
                           and not n.lower().endswith(RESERVED_SUFFIXES) and folder / n not in listed)
            if names:
                left[obs_id] = (str(folder), names)
    return left


def observations_in(home: Home) -> list[str]:
    """The observation ids of the latest mast_observations table."""
    return list(home.tables.read("mast_observations", columns=["obs_id"], missing_ok=True)["obs_id"])


def run_demo(home: Home, dagster_home: Path) -> int:
    instance = DagsterInstance.get()
    print(f"skyassets home: {home.root}")
    print(f"Dagster home:   {dagster_home}")
    with Launcher(dagster_home, instance) as launcher:
        return _demo(launcher, home, dagster_home)


def _demo(runner: Runner, home: Home, dagster_home: Path) -> int:
    started = time.time()
    from skyassets.archive.query import CLOUD_DOWN_SECONDS, CloudLookup
    from skyassets.definitions import defs
    from skyassets.defs.archive.assets import CLOUD_DOWN_NOTE
    from skyassets.defs.archive.sensors import new_observations_sensor

    instance = runner.instance
    runs_before = instance.get_runs_count()
    archive = defs.resources["archive"]
    server, s3 = archive.endpoints(home)
    where = f"{server}; " if server != archive.url else ""
    print(f"MAST:           {archive.url} ({where}S3 {s3 or 'AWS'})")

    # the archive's warnings as they come: one that is down is retried for minutes before the run ends
    (result,) = runner.run_all([Submission("watchlist_job", {}, QUIET)], echo_warnings=True)
    if not result.is_success:
        why = "; ".join(failure_reasons(instance, result.run_id)) or "no step failed (see the run)"
        print(f"The watchlist query failed: {why}; see run {result.run_id} in the Dagster UI.", file=sys.stderr)
        return 1
    observations = latest_metadata(instance, "mast_observations")
    granted = observations.get("exclusive_access_granted", 0)
    print(f"\nQueried the watchlist: {counted(observations['dagster/row_count'], 'observations')}"
          + (f", {granted} of them exclusive-access ones the MAST token grants" if granted else ""))
    found = observations.get("observations_per_entry") or {}
    for entry, rows in observations["rows_per_entry"].items():
        count = found.get(entry, rows)
        print(f"  {entry:<32} {counted(count, 'observations'):>16}"
              + (f" ({rows} rows from MAST)" if rows != count else ""))
    print(f"  exclusive-access left out: {observations['proprietary_left_out']}")
    if kept := observations.get("kept_from_failed_entries", 0):
        print(f"  kept from the last query: {counted(kept, 'observations')} (of entries that failed, "
              "or exclusive-access ones granted before the token was refused)")
    for note in observations.get("entries_to_check") or []:
        print(f"  check: {one_line(note)}")
    # a token MAST refused (expired) leaves public data to fetch: said, and the demo exits 1
    token_refused = failed_checks(instance, result.run_id)
    for check in token_refused:
        print(f"  check failed: {one_line(check)}")
    failed_entries = observations.get("failed_entry_reasons") or []
    if failed_entries:
        print(f"  failed entries: {len(failed_entries)} (what an earlier query found for them is kept):")
        for reason in failed_entries:
            print(f"    {one_line(reason)}")

    context = build_sensor_context(instance=instance, definitions=defs, resources=defs.resources)
    context.log.setLevel(logging.WARNING)  # the sensor's own log line repeats what is printed next
    with keeping_sigterm():
        sensor_result = new_observations_sensor(context)
    for request in getattr(sensor_result, "dynamic_partitions_requests", []):
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    new = {k for r in getattr(sensor_result, "dynamic_partitions_requests", []) for k in r.partition_keys}
    watched = sorted(set(instance.get_dynamic_partitions("observations")) & set(observations_in(home)))
    # An observation catalogued by an earlier pass is not run again: a re-run over an unchanged
    # archive materialises nothing new. One whose run failed has no catalogue and is tried again,
    # and one a file of which has gone from the home since is fetched again.
    # So is one whose products the watchlist now chooses otherwise, and one listed again since it
    # was catalogued but not catalogued since (that run failed after the listing).
    catalogued = [p for p in watched if latest_storage_id(instance, "image_metadata", p)]
    lost = files_lost(home, catalogued)
    rechosen = products_rechosen(home.tables, defs.resources["watchlist"].load(), catalogued)
    unfinished = set(outdated(instance, "image_metadata", "mast_products", catalogued))
    partitions = [p for p in watched if p not in catalogued or p in lost or p in rechosen or p in unfinished]
    for obs_id, names in sorted(lost.items()):
        print(f"  {obs_id}: {counted(len(names), 'files')} gone from the home since fetched "
              f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); fetched again")
    for obs_id, entries in sorted(rechosen.items()):
        print(f"  {obs_id}: the watchlist ({entries}) now chooses other products; listed and fetched again")
    ranges = partition_batches(instance, partitions, DEMO_OBSERVATIONS_PER_RUN)
    already = len(watched) - len(partitions)
    print("\n" + (f"The sensor added {counted(len(new), 'new observation partitions')}; " if new
                  else "No new observations; ")
          + (f"{counted(already, 'observations')} catalogued already; " if already else "")
          + (f"fetching {len(partitions)} in {counted(len(ranges), 'runs')}:" if ranges else "nothing to fetch."))
    submissions = [Submission("observation_job", partition_range(first, last), QUIET) for first, last in ranges]
    failed_runs: list[str] = []
    totals = {"downloaded": 0, "skipped": 0, "verified": 0, "bytes": 0, "seconds": 0.0, "files": 0, "runs": 0}
    lines: list[str] = []

    def finished(submission: Submission, run) -> None:
        first, last = ranges[submissions.index(submission)]
        what = first if first == last else f"{first} .. {last}"
        parts = run_materializations(instance, run.run_id, "fits_files") if run.is_success else []
        # the run's download figures: on each partition of a run that succeeded, else on its step's failure
        files = run_totals(parts[0]) if parts else failure_metadata(instance, run.run_id, "fits_files")
        for key, name in (("downloaded", "files_downloaded"), ("skipped", "files_skipped"),
                          ("verified", "files_verified_checksum"), ("bytes", "bytes_fetched"), ("seconds", "seconds")):
            totals[key] += files.get(name, 0)
        if not parts:
            failed_runs.append(run.run_id)
            why = "; ".join(failure_reasons(instance, run.run_id))
            fetched = f"; {files['files_downloaded']} files fetched before it failed" if files else ""
            lines.append(f"  {what}: FAILED (run {run.run_id})" + (f": {one_line(why)}" if why else "") + fetched)
        else:
            count, size = sum(p["dagster/row_count"] for p in parts), sum(p["bytes_total"] for p in parts)
            totals["files"] += count
            fetched = (f"{files['files_downloaded']} fetched at {files['bytes_per_second'] / 1e6:.1f} MB/s"
                       if files["files_downloaded"] else "nothing fetched")
            lines.append(f"  {what}: {counted(count, 'files')} {size / 1e6:.1f} MB, "
                         f"{fetched}, {counted(files['files_verified_checksum'], 'FITS checksums')} ok")
        totals["runs"] += 1
        text_progress(totals["runs"], len(submissions), totals["files"], None)

    runner.run_all(submissions, at_once=DEMO_RUNS_AT_ONCE, on_finished=finished)
    # a batch that failed for some of its observations only: those alone, the rest again (as failed_batch_sensor)
    split = {run_id: split_failed_run(instance, instance.get_run_by_id(run_id)) for run_id in failed_runs}
    again = [batch for batches in split.values() for batch in batches]
    if again:
        failed_runs[:] = [run_id for run_id in failed_runs if not split[run_id]]
        lines.append(f"  tried again in {counted(len(again), 'runs')}, each failing observation alone "
                     "and the rest of its batch apart:")
        ranges += [(batch[0], batch[-1]) for batch in again]
        retries = [Submission("observation_job", partition_range(b[0], b[-1]), QUIET) for b in again]
        submissions += retries
        runner.run_all(retries, at_once=DEMO_RUNS_AT_ONCE, on_finished=finished)
    if lines:
        print("\n".join(lines))
    found_down = CloudLookup.last_found_down(home.root / CLOUD_DOWN_NOTE)
    if found_down is not None and found_down[0] >= started:  # slow downloads, and this is why
        print(f"  the cloud path lookup was down ({one_line(found_down[1])}): files went over HTTP, and it is "
              f"asked again {CLOUD_DOWN_SECONDS / 60:.0f} minutes after")
    print("\n" + download_summary(totals, len(failed_runs), len(watched)))
    for obs_id, (folder, names) in sorted(files_unchosen(home, sorted(rechosen)).items()):
        print(f"  {obs_id}: {counted(len(names), 'files')} the watchlist no longer chooses "
              f"({', '.join(names[:2])}{', ...' if len(names) > 2 else ''}) stay in {home.url(folder)}, "
              "no longer catalogued")
    ready = [p for p in watched if latest_storage_id(instance, "image_metadata", p)]
    downstream = bring_up_to_date(runner, home, ready, QUIET)
    if downstream is None:
        return 1
    failures = len(failed_runs) + downstream + len(failed_entries) + len(token_refused)
    rows = latest_metadata(instance, "catalog")["rows"]
    command = Path(sys.executable).parent / "skyassets"
    catalogued, unwatched = _catalogued_observations(home)
    print(f"\nCatalog: {counted(rows.get('images', 0), 'images')} of {counted(catalogued, 'observations')} "
          f"({rows.get('observations', 0)} found by the watchlist), "
          f"{counted(rows.get('mosaics', 0), 'mosaics')}, {counted(rows.get('composites', 0), 'composites')}")
    if unwatched:  # nothing is deleted for an edit of the watchlist: say what stays, and how to list it
        print(f"  {counted(unwatched, 'catalogued observations')} the watchlist no longer finds (an entry removed "
              "or narrowed) stay, with their files, images and products, and no row in `observations`:\n"
              f"  {command} catalog \"{UNWATCHED}\"")
    print("\n" + where_outputs_are(home))
    targets = instance.get_dynamic_partitions("targets")
    if targets:
        print("\nPan and zoom the targets over the sky:")
        try:
            aladin_script(home)
        except FileNotFoundError:  # the viewer's script comes from the npm registry, once
            script = Path(__file__).resolve().parents[2] / "scripts" / "viewer.sh"  # the project's, when run from it
            print(f"  {shlex.quote(str(script)) if script.is_file() else 'scripts/viewer.sh'} install "
                  f"{shlex.quote(str(home.root / 'viewer'))}   # once: Aladin Lite, from the npm registry")
        print(f"  SKYASSETS_HOME={home.root} {command} sky {targets[0]}")
    # a pass over an unchanged archive runs the watchlist query alone: the runs to see are the earlier ones
    opened = ("Open these runs" if instance.get_runs_count() - runs_before > 1
              else "Only the watchlist query ran this time; open it and the earlier runs")
    print(f"\n{opened} in the Dagster UI (then browse http://127.0.0.1:3000):")
    print(f"  {settings_line(home, dagster_home)} {command} dev")
    if os.environ.get("MAST_API_TOKEN"):
        print("  (with MAST_API_TOKEN set, as it is here)")
    return 1 if failures else 0


def download_summary(totals: dict[str, float], failed_runs: int, found: int) -> str:
    """What the fetch runs did for the ``found`` observations of the watchlist, in a sentence that
    names only what happened: a pass with nothing to fetch says so plainly rather than in counts of
    nothing, and why (every file there, or no observation found)."""
    if not totals["runs"]:
        if not found:
            return "Nothing to fetch: the watchlist found no observations."
        return "Nothing needed fetching: the files of every observation found are stored and verified."
    if totals["downloaded"]:
        speed = totals["bytes"] / totals["seconds"] / 1e6 if totals["seconds"] else 0.0
        parts = [f"Downloaded {counted(int(totals['downloaded']), 'files')} "
                 f"({totals['bytes'] / 1e6:.1f} MB, {speed:.1f} MB/s)"]
    else:
        parts = ["Downloaded nothing"]
    if totals["skipped"]:
        parts.append(f"{counted(int(totals['skipped']), 'files')} already verified")
    if totals["verified"]:
        parts.append(f"{counted(int(totals['verified']), 'FITS checksums')} verified")
    if failed_runs:
        parts.append(counted(failed_runs, "failed runs"))
    return ", ".join(parts) + "."


def where_outputs_are(home: Home) -> str:
    """Where the demo's files, catalogue and tables are: in the store when the home has one."""
    return (f"FITS files:      {home.url('files')}\n"
            f"Catalog:         {home.url('catalog.duckdb')}  (or skyassets.connect() in a notebook)\n"
            f"Parquet tables:  {home.url('lake')}")


def settings_line(home: Home, dagster_home: Path) -> str:
    """The environment the demo ran with, as shell assignments, for the daemon and the UI's
    re-executions to use the same archive, landing folder and settings: every ``SKYASSETS_``
    variable set. One that holds a secret (a database URL with its password, a variable named for a
    password, key, secret or token) is given as a reference to itself (``"$NAME"``), so the line
    works in the shell that ran the demo and prints no secret (the MAST token is never printed)."""
    settings = {"SKYASSETS_HOME": str(home.root), "DAGSTER_HOME": str(dagster_home)}
    settings |= {name: value for name, value in sorted(os.environ.items())
                 if name.startswith("SKYASSETS_") and name != "SKYASSETS_HOME" and value}
    return " ".join(f'{name}="${name}"' if _secret(name, value) else f"{name}={shlex.quote(value)}"
                    for name, value in settings.items())


def _secret(name: str, value: str) -> bool:
    """Whether a setting holds a secret: by its name, or a URL's password."""
    if any(word in name.upper() for word in ("PASSWORD", "SECRET", "TOKEN", "KEY")):
        return True
    try:
        return bool(urlsplit(value).password)
    except ValueError:  # not a URL
        return False


# archive observations catalogued that the watchlist's last query did not find (landed ones it never finds)
UNWATCHED = ("SELECT DISTINCT obs_id FROM images ANTI JOIN observations USING (obs_id) "
             f"WHERE obs_id NOT LIKE '{LANDED_PREFIX}%'")


def _catalogued_observations(home: Home) -> tuple[int, int]:
    """Observations with an image in the published catalog (the watchlist may find more), and how
    many of the archive's among them the watchlist no longer finds (an entry removed or narrowed)."""
    from skyassets.catalog.db import connect

    con = connect(home, published=True)
    try:
        catalogued = con.execute("SELECT count(DISTINCT obs_id) FROM images").fetchone()[0]
        return catalogued, con.execute(f"SELECT count(*) FROM ({UNWATCHED})").fetchone()[0]
    finally:
        con.close()
