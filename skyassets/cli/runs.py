"""Running the pipeline's jobs from the command line, recorded in the Dagster instance like any run.

The command line launches its runs through a headless webserver (``skyassets.cli.launch``), the way
the UI does; tests and benchmarks that time the pipeline itself run the same submissions in this
process (``InProcess``).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance, DagsterRun

from skyassets.cli.launch import Submission
from skyassets.cli.output import counted, one_line
from skyassets.defs.tags import PARTITION, partition_range
from skyassets.lake.home import Home
from skyassets.lake.quarantine import notes as quarantine_notes
from skyassets.landing.ingest import (
    LANDING_COLLECTION,
    NOT_COPIED,
    group_by_partition,
    local_files,
    record_landed,
    recording,
    relocate_landed,
)
from skyassets.landing.zone import LINKED_FOLDER, LandedFile

# The command line prints its own summary; the full run logs stay in the instance for the UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def home_run_config(home: Home) -> dict:
    """Run config that points a run at ``home``, its store included: a resource's config in run
    config replaces the whole of it, so every field is given, not the folder alone."""
    config = {"root": str(home.root), "storage": home.storage, "storage_endpoint": home.endpoint,
              "cache_gb": home.cache_bytes / (1 << 30)}
    return {**QUIET, "resources": {"home": {"config": config}}}


class Runner(Protocol):
    """Something that runs submissions and returns their finished runs (``Launcher`` or ``InProcess``)."""

    instance: DagsterInstance

    def run_all(
        self,
        submissions: Sequence[Submission],
        *,
        at_once: int = 1,
        on_finished: Callable[[Submission, DagsterRun], None] | None = None,
        echo_warnings: bool = False,
    ) -> list[DagsterRun]: ...


class InProcess:
    """Runs executed one after another in this process (``execute_in_process``): for tests and
    benchmarks that measure the pipeline rather than process start-up."""

    def __init__(self, instance: DagsterInstance):
        self.instance = instance

    def run_all(
        self,
        submissions: Sequence[Submission],
        *,
        at_once: int = 1,
        on_finished: Callable[[Submission, DagsterRun], None] | None = None,
        echo_warnings: bool = False,  # a run here logs to this process as it goes
    ) -> list[DagsterRun]:
        from skyassets.definitions import defs

        runs = []
        for submission in submissions:
            result = defs.resolve_job_def(submission.job).execute_in_process(
                instance=self.instance, tags=dict(submission.tags), run_config=dict(submission.run_config),
                raise_on_error=False, asset_selection=[AssetKey(a) for a in submission.assets] or None,
            )
            runs.append(self.instance.get_run_by_id(result.run_id))
            if on_finished:
                on_finished(submission, runs[-1])
        return runs


def as_runner(runner: Runner | DagsterInstance) -> Runner:
    return InProcess(runner) if isinstance(runner, DagsterInstance) else runner


def run_materializations(instance: DagsterInstance, run_id: str, asset: str) -> list[dict]:
    """The metadata of each of ``asset``'s materialisations in one run: a partition's own figures,
    and the run's totals, which every partition of a ranged run repeats."""
    return [
        {k: v.value for k, v in record.asset_materialization.metadata.items()}
        for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
        if record.asset_materialization is not None and record.asset_materialization.asset_key == AssetKey(asset)
    ]


def run_totals(metadata: dict) -> dict:
    """A materialisation's metadata with the run's figures under their own names: a run of several
    partitions names them ``<figure>_in_run`` beside each partition's own."""
    return {**metadata, **{k.removesuffix("_in_run"): v for k, v in metadata.items() if k.endswith("_in_run")}}


def failed_checks(instance: DagsterInstance, run_id: str) -> list[str]:
    """``name: description`` of every asset check that failed in a run."""
    failed = []
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if not evaluation.passed:
            failed.append(f"{evaluation.check_name}: {evaluation.description or 'failed'}")
    return failed


def _why(instance: DagsterInstance, run_id: str) -> str:
    """A failed run's reasons in one line, for a summary."""
    return one_line("; ".join(failure_reasons(instance, run_id)) or "no step failed (see the run in the Dagster UI)")


def failure_reasons(instance: DagsterInstance, run_id: str) -> list[str]:
    """``step: message`` of every step that failed in a run (the message's first line); for a run
    whose process died, how it died."""
    reasons = []
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records:
        event = record.event_log_entry.dagster_event
        error = getattr(event.event_specific_data, "error", None)
        while error is not None and error.cls_name == "DagsterExecutionStepExecutionError" and error.cause:
            error = error.cause  # Dagster's wrapper says only where; the cause says why
        message = (error.message if error else "").strip().splitlines()
        line = message[0] if message else "failed"
        named, said, rest = line.partition(": ")
        if error and said and named.rsplit(".", 1)[-1] == error.cls_name:  # the class without its module
            line = rest if error.cls_name == "Failure" else f"{error.cls_name}: {rest}"  # a Failure: its own words
        reasons.append(f"{event.step_key}: {line}")
    if not reasons:  # no step failed: the run's process died (killed, out of memory), as Dagster recorded it
        for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records:
            said = record.event_log_entry.message or ""
            if (at := said.find("Run execution process for ")) >= 0:  # after the code server's own tag
                reasons.append(said[at:].split(". ", 1)[0].removesuffix("."))
    return reasons


def failure_metadata(instance: DagsterInstance, run_id: str, step: str) -> dict:
    """The metadata values of the ``Failure`` a run's step raised (its figures so far), else {}."""
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records:
        event = record.event_log_entry.dagster_event
        data = getattr(event.event_specific_data, "user_failure_data", None)
        if event.step_key == step and data is not None:
            return {k: v.value for k, v in data.metadata.items()}
    return {}


def latest_metadata(instance: DagsterInstance, asset: str, partition: str | None = None) -> dict:
    """The metadata values of an asset's (or one partition's) latest materialisation."""
    partitions = None if partition is None else [partition]
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=partitions), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return {}
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def updated_since(instance: DagsterInstance, upstream: str, asset: str) -> bool:
    """Whether any partition of ``upstream`` was materialised after ``asset`` last was (one lookup)."""
    after = latest_storage_id(instance, asset)
    return bool(instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(upstream), after_storage_id=after or None), limit=1).records)


def catalog_outdated(instance: DagsterInstance) -> bool:
    """Whether catalog.duckdb was never published, or a table it holds that quality does not
    measure changed since: files catalogued (a spectrum beside an observation's unchanged images is
    measured by nothing, but is a row of the catalog's files), or the watchlist's answers or product
    lists (an observation no longer found, exclusive data no longer granted)."""
    return not latest_storage_id(instance, "catalog") or any(
        updated_since(instance, upstream, "catalog") for upstream in ("image_metadata", "mast_observations",
                                                                       "mast_products"))


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
    """What ``ingest`` did with each file, counted apart: catalogued, quarantined, failed and refused
    (each with the reason); and the partitions and runs it took."""

    catalogued: list[str] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # never taken: links, devices, names not UTF-8
    unchanged: int = 0  # of the catalogued and quarantined: ingested before as they are, not run again
    partitions: list[str] = field(default_factory=list)
    # partitions run again because files they held now name another observation: {partition: files}
    left: dict[str, list[str]] = field(default_factory=dict)
    runs: int = 0
    failed_runs: list[str] = field(default_factory=list)
    # catalogued files stored under another name than their own (unsafe, too long, or taken): location -> name
    renamed: dict[str, str] = field(default_factory=dict)

    @property
    def folders_refused(self) -> list[str]:
        """The refused that are folders (one that cannot be listed, a link to one), not files."""
        return [path for path in self.refused if os.path.isdir(path)]

    @property
    def files(self) -> int:
        return (len(self.catalogued) + len(self.quarantined) + len(self.failed) + len(self.refused)
                - len(self.folders_refused))

    @property
    def ok(self) -> bool:
        """Nothing lost: a link to a folder is said, but its files are the folder's own to take."""
        refused = [why for why in self.refused.values() if why != LINKED_FOLDER]
        return not (self.quarantined or self.failed or refused or self.failed_runs)


def without_images(home: Home, report: IngestReport) -> list[str]:
    """The catalogued files that hold no image HDU (a spectrum, a table): each has its row in the
    catalog's ``files`` but none in ``images``, which a count of "catalogued" alone does not say."""
    catalogued = set(report.catalogued)
    keys = sorted({*report.partitions, *report.left})
    if not catalogued or not keys:
        return []
    manifests = home.tables.read_partitions("fits_files", keys, columns=["dataURI", "path"])
    images = home.tables.read_partitions("image_metadata", keys, columns=["path"])
    found = []
    for key, manifest in manifests.items():
        pictured = set(images[key].column("path").to_pylist()) if key in images else set()
        found += [row["dataURI"] for row in manifest.to_pylist()
                  if row["dataURI"] in catalogued and row["path"] not in pictured]
    return sorted(found)


def _quarantine_reasons(home: Home, since: float) -> dict[str, str]:
    """The reason of every file quarantined since ``since`` (from the sidecars), under the landed
    location its reason starts with and under the path it was moved from (a file refused while
    being catalogued is moved from the store, and its reason may not name where it was landed)."""
    reasons: dict[str, str] = {}
    for _, note in quarantine_notes(home.quarantine, since):  # a file quarantined again: its newest reason
        whole = str(note.get("reason", "")) or "quarantined"
        location = note.get("landed_location")
        if location and whole.startswith(f"{location}: "):  # a name may hold ": " itself
            reason = whole[len(location) + 2:]
        else:
            location, _, reason = whole.partition(": ")
            reason = reason or whole
        # the copy's own error names the file again: said once, by its location
        reasons[location] = reason.removeprefix(f"{location.rsplit('/', 1)[-1]}: ") or reason
        if note.get("original_path"):
            reasons[str(note["original_path"])] = whole
    return reasons


def _stored_paths(home: Home, keys: Sequence[str]) -> dict[str, dict[str, str]]:
    """Per partition: landed location -> where its copy is stored, from the landing records."""
    stored = {}
    for key, record in home.tables.read_partitions("landing", keys, columns=["filename", "location"]).items():
        where = home.observation_dir(LANDING_COLLECTION, key)
        stored[key] = {r["location"]: str(where / r["filename"]) for r in record.to_pylist()}
    return stored


def _outcomes_before(home: Home, groups: Mapping[str, list[LandedFile]]) -> dict[str, tuple[str, str]]:
    """Files an earlier ingest already took exactly as they are now (same size and mtime in their
    landing record): location -> ("catalogued", "") or ("quarantined", reason). A file whose
    earlier outcome is unknown (its run failed, its record is damaged) is not among them."""
    keys = sorted(groups)
    try:
        records = home.tables.read_partitions("landing", keys, columns=["location", "size", "signature"])
        manifests = home.tables.read_partitions("fits_files", keys, columns=["dataURI", "status"])
    except Exception:  # an unreadable record or manifest: its files are taken again
        return {}
    catalogued = {key for key in keys if key in manifests and home.tables.exists("image_metadata", key)}
    reasons = _quarantine_reasons(home, 0.0) if records else {}
    outcomes: dict[str, tuple[str, str]] = {}
    for key, record in records.items():
        seen = {r["location"]: (r["size"], r["signature"]) for r in record.to_pylist()}
        rows = manifests[key].to_pylist() if key in manifests else []
        copied = {r["dataURI"] for r in rows if r["status"] not in ("failed", "quarantined")}
        for file in groups[key]:
            if seen.get(file.location) != (file.size, file.signature):
                continue
            # the partition's manifest is its last run's, which took the file as it is now: catalogued
            # there, an older version's quarantine note no longer speaks for it
            if key in catalogued and file.location in copied:
                outcomes[file.location] = ("catalogued", "")
            elif file.location in reasons:
                outcomes[file.location] = ("quarantined", reasons[file.location])
    return outcomes


def ingest(
    paths: Sequence[str],
    home: Home,
    runner: Runner | DagsterInstance,
    *,
    batch: int = 250,
    progress: Callable[[int, int, int, int], None] | None = None,
    waiting: Callable[[str], None] | None = None,
) -> IngestReport:
    """Catalogue local files through the landing job and say, per file, what became of it.

    The runs go one after another: side by side they were slower here, as each run's events wait on
    the same SQLite instance and its header reads already use every core. ``progress`` hears
    (runs done, runs, files done, files) as each run ends; ``waiting`` hears who holds the landing
    lock, when the sensor or another machine sharing the home's store is recording at that moment.
    """
    runner = as_runner(runner)
    instance = runner.instance
    started = time.time()
    refused: dict[str, str] = {}
    landing = Path(os.environ.get("SKYASSETS_LANDING") or home.root / "landing").expanduser().resolve()
    files = local_files(paths, refused, home=home.root.resolve(), landing=landing)
    every_group = group_by_partition(files)
    before = _outcomes_before(home, every_group)
    # a partition runs again only if one of its files is new, changed or without a known outcome
    groups = {k: v for k, v in every_group.items() if not all(f.location in before for f in v)}
    report = IngestReport(partitions=sorted(every_group), refused=refused)
    for key in every_group.keys() - groups.keys():
        for file in every_group[key]:
            outcome, reason = before[file.location]
            report.unchanged += 1
            if outcome == "quarantined":
                report.quarantined[file.location] = reason
            else:
                report.catalogued.append(file.location)
    with recording(home, on_wait=waiting):  # a file whose header now names another observation leaves its old one
        report.left = relocate_landed(home, groups)
        for key, landed in groups.items():
            record_landed(home, key, landed)
    groups.update({key: [] for key in report.left if key not in groups})
    if groups:
        instance.add_dynamic_partitions("observations", sorted(groups))
    run_config = home_run_config(home)
    every = instance.get_dynamic_partitions("observations")
    position = {k: i for i, k in enumerate(every)}
    ranges = partition_batches(instance, sorted(groups), batch)
    covered = [every[position[first]: position[last] + 1] for first, last in ranges]
    submissions = [Submission("landing_job", partition_range(first, last), run_config) for first, last in ranges]
    total_files = sum(len(v) for v in groups.values())
    done = {"runs": 0, "files": 0}

    def finished(submission: Submission, run: DagsterRun) -> None:
        keys = covered[submissions.index(submission)]
        done["runs"] += 1
        done["files"] += sum(len(groups.get(k, ())) for k in keys)
        if progress:
            progress(done["runs"], len(submissions), done["files"], total_files)

    failed_in: dict[str, str] = {}
    succeeded: list[str] = []
    for keys, run in zip(covered, runner.run_all(submissions, on_finished=finished), strict=True):
        report.runs += 1
        if run.is_success:
            succeeded.append(run.run_id)
        else:
            report.failed_runs.append(run.run_id)
            why = "; ".join(failure_reasons(instance, run.run_id)) or "no step failed (see it in the Dagster UI)"
            failed_in.update(dict.fromkeys(keys, f"its run {run.run_id} failed: {why}"))
    from skyassets.fits.meta import quarantined_versions  # astropy: not for the commands that need none

    quarantined = _quarantine_reasons(home, started - 1)
    held = quarantined_versions(home.quarantine)  # files left in the quarantine as they are now
    manifests = home.tables.read_partitions("fits_files", sorted(groups), columns=["dataURI", "status"])
    stored_paths = _stored_paths(home, sorted(groups))
    for key, landed in sorted(groups.items()):
        manifest = manifests.get(key)
        status = ({} if manifest is None else
                  dict(zip(manifest.column("dataURI").to_pylist(), manifest.column("status").to_pylist(), strict=True)))
        stored = stored_paths.get(key, {})
        for file in landed:
            # the manifest of a run that succeeded is this run's: a file it lists as catalogued is,
            # whatever an older version's quarantine note said; one refused by cataloguing is listed as quarantined
            reason = quarantined.get(file.location) or quarantined.get(stored.get(file.location, ""))
            if key not in failed_in and status.get(file.location) not in (None, "failed", "quarantined"):
                report.catalogued.append(file.location)
                name = stored.get(file.location, file.location).rsplit("/", 1)[-1]
                if name != file.location.rsplit("/", 1)[-1]:
                    report.renamed[file.location] = name
            elif reason or status.get(file.location) == "quarantined":
                report.quarantined[file.location] = reason or "refused while being catalogued (see the run's log)"
            elif (version := held.get(file.location)) and version[0] == file.signature:
                report.quarantined[file.location] = version[1]
            elif key in failed_in:
                report.failed[file.location] = failed_in[key]
            else:
                report.failed[file.location] = "not copied (see the landing run's log in the Dagster UI)"
    if report.failed and succeeded:  # why, in the words of the run that could not copy them
        report.failed.update(_not_copied(instance, succeeded, list(report.failed)))
    return report


def _not_copied(instance: DagsterInstance, run_ids: Sequence[str], locations: Sequence[str]) -> dict[str, str]:
    """location -> why, for each of ``locations`` the runs' logs say they could not copy."""
    said = {}
    for run_id in run_ids:
        for entry in instance.all_logs(run_id):
            message = entry.user_message or ""
            if entry.dagster_event is not None or not message.startswith(NOT_COPIED):
                continue
            rest = message[len(NOT_COPIED):]
            said.update({loc: rest[len(loc) + 2:].removeprefix(loc.rsplit("/", 1)[-1] + ": ")  # named once
                         for loc in locations if rest.startswith(f"{loc}: ")})
    return said


def text_progress(done: int, total: int, files_done: int | None = None, files: int | None = None) -> None:
    """A one-line progress bar on stderr: runs, and files when known."""
    width = 30
    filled = int(width * done / total) if total else width
    also = "" if files_done is None else f", {files_done} files" if files is None else f", {files_done}/{files} files"
    # a terminal redraws the bar in place; a log file or a pipe gets a line per step
    start, end = ("\r", "\n" if done == total else "") if sys.stderr.isatty() else ("", "\n")
    sys.stderr.write(f"{start}[{'#' * filled}{'.' * (width - filled)}] {done}/{total} runs{also}{end}")
    sys.stderr.flush()


def working(what: str) -> None:
    """Say on stderr, beside the progress bars, which step the runs about to start are for: a step
    of a few seconds' runs would otherwise pass without a word."""
    print(f"{what} ...", file=sys.stderr, flush=True)


def measure_quality(runner: Runner, home: Home, partitions: list[str], run_config: Mapping) -> tuple[int, int]:
    """Run quality_job in batched runs over the partitions catalogued since their quality was last
    materialised, as the daemon's automation would (so a daemon started afterwards finds nothing
    left to do), print what was measured and the flags; return (partitions run, failed runs). An
    image catalogued again with the same bytes keeps its measurement: the asset measures only what
    is new, and an observation whose files all left it loses its old scores."""
    instance = runner.instance
    partitions = list(dict.fromkeys(partitions))  # a file moved between two of them names both
    todo = outdated(instance, "image_quality", "image_metadata", partitions)
    if len(todo) < len(partitions):
        print(f"\nImage quality of {counted(len(partitions) - len(todo), 'observations')} is up to date.")
    if not todo:
        return 0, 0
    partitions = todo
    print(f"\nMeasuring image quality of {counted(len(partitions), 'observations')}:")
    submissions = [
        Submission("quality_job", partition_range(first, last), run_config)
        for first, last in partition_batches(instance, partitions, 25)
    ]
    failures, flags, worst, figures = 0, Counter(), [], Counter()
    for run in runner.run_all(submissions, on_finished=lambda s, r: text_progress(
            submissions.index(s) + 1, len(submissions))):
        failures += not run.is_success
        said = run_totals((run_materializations(instance, run.run_id, "image_quality") or [{}])[0])
        figures.update({k: int(v) for k, v in said.items() if k in ("images", "measured")})
        for check in failed_checks(instance, run.run_id):
            print(f"  check {check}")
    if kept := figures["images"] - figures["measured"]:
        print(f"  {counted(figures['measured'], 'images')} measured, {kept} kept as measured before "
              "from the same bytes")
    for partition in partitions:
        if home.tables.exists("image_quality", partition):
            rows = home.tables.read("image_quality", partition)
            flags.update(rows["flag"])
            worst += rows[["obs_id", "file_name", "hdu_index", "filter", "score", "flag"]].to_dict("records")
    if flags:
        print("  flags: " + ", ".join(f"{n} {flag}" for flag, n in flags.most_common()))
    lowest = [r for r in sorted(worst, key=lambda r: r["score"]) if r["flag"] != "good"][:3]  # what needs a look
    for row in lowest:
        band = row["filter"] if isinstance(row["filter"], str) and row["filter"] else "no filter"
        # the observation and HDU too: the same file may be landed twice, an image file hold several images
        print(f"  lowest: {row['obs_id']} {row['file_name']}[{row['hdu_index']}] ({band}) "
              f"score {row['score']:.0f} {row['flag']}")
    if lowest:
        print(f"  details: skyassets quality {lowest[0]['obs_id']}")
    return len(partitions), failures


def unusable_images(home: Home, partitions: Sequence[str]) -> dict[str, str]:
    """``file[hdu] -> reason`` of each image of the partitions that quality found no step can use
    (catalogued, left out of targets and products). A landed file is named where it was landed,
    as the rest of an ingest's report names it; an archive file by its observation and name."""
    found: dict[str, str] = {}
    try:
        records = home.tables.read_partitions("landing", list(partitions), columns=["filename", "location"])
    except Exception:  # noqa: BLE001 - a damaged record: its images are named by observation instead
        records = {}
    landed = {key: dict(zip(t.column("filename").to_pylist(), t.column("location").to_pylist(), strict=True))
              for key, t in records.items()}
    for partition in partitions:
        if not home.tables.exists("image_quality", partition):
            continue
        rows = home.tables.read("image_quality", partition, columns=["file_name", "hdu_index", "usable", "problem"])
        for row in rows[~rows["usable"].astype(bool)].itertuples(index=False):
            image = f"{row.file_name}[{row.hdu_index}]"
            where = landed.get(partition, {}).get(row.file_name) or f"{partition}/{row.file_name}"
            found[f"{where}[{row.hdu_index}]"] = str(row.problem or "not usable").removeprefix(f"{image}: ")
    return found


def make_products(runner: Runner, home: Home, run_config: Mapping) -> tuple[int, int]:
    """Run products_job for each target whose images changed since its products were made; return
    (runs, failed runs). (In ``skyassets dev`` declarative automation does this.)"""
    instance = runner.instance
    every = instance.get_dynamic_partitions("targets")
    targets = outdated(instance, "composites", "target_images", every)
    if len(targets) < len(every):
        kept = "other targets" if targets else "targets"
        print(f"\nMosaics and composites of {counted(len(every) - len(targets), kept)} are up to date.")
    if not targets:
        return 0, 0
    again = sum(1 for target in targets if latest_storage_id(instance, "composites", target))
    which = (counted(len(targets), "new targets") if not again else
             f"{counted(len(targets), 'targets')} whose images changed" if again == len(targets) else
             f"{counted(len(targets), 'targets')} ({len(targets) - again} new, {again} whose images changed)")
    print(f"\nMosaics and composites for {which}:")
    submissions = [Submission("products_job", {PARTITION: target}, run_config) for target in targets]
    failures = 0
    for target, run in zip(targets, runner.run_all(submissions, at_once=2), strict=True):
        failures += not run.is_success
        made = ", ".join(made_or_kept(instance, asset, target) for asset in ("mosaics", "composites")) \
            if run.is_success else f"FAILED (run {run.run_id}): " + _why(instance, run.run_id)
        print(f"  {target:<24} {made}")
        for line in latest_metadata(instance, "mosaics", target).get("not_made", []) if run.is_success else []:
            print(f"  {'':<24} not made: {one_line(line)}")
        print(f"  {'':<24} {home.url(home.target_dir(target).relative_to(home.root))}")
    print("  see one: skyassets show TARGET")
    return len(targets), failures


def made_or_kept(instance: DagsterInstance, asset: str, target: str) -> str:
    """"5 mosaics (1 made, 4 as made before)": how many of a target's products its last run made anew."""
    said = latest_metadata(instance, asset, target)
    count, kept = int(said.get("dagster/row_count", 0)), int(said.get("kept", 0))
    return counted(count, asset) + (f" ({count - kept} made, {kept} as made before)" if kept else "")


# catalog_job in two parts, with each target's products made between them: the catalog is published
# once, holding the new images and the products made of them
GROUPING, PUBLISHING = ("target_groups",), ("catalog", "search_index")


def publish_catalog(runner: Runner, run_config: Mapping, assets: tuple[str, ...]) -> bool:
    """Group targets or publish catalog.duckdb (the ``assets`` of catalog_job); False, with a line
    said, if it failed."""
    what = "Grouping the images into targets" if assets == GROUPING else "Publishing the catalog"
    working(what)
    (run,) = runner.run_all([Submission("catalog_job", {}, run_config, assets)])
    if not run.is_success:
        print(f"{what} failed (run {run.run_id}): {_why(runner.instance, run.run_id)}")
    return run.is_success


def publish_outdated(instance: DagsterInstance) -> bool:
    """Nothing published yet, or a target tiled since the last publish: one that failed after a
    tiling (this command's or another process's) is tried again."""
    tiled = max((latest_storage_id(instance, "sky_tiles", t) for t in instance.get_dynamic_partitions("targets")),
                default=0)
    published = latest_storage_id(instance, "publish")
    return not published or published < tiled


def publish_sky(runner: Runner, home: Home, run_config: Mapping) -> tuple[int, int]:
    """Tile each target whose products changed (tiles_job) and publish the collection (publish_job)
    when anything changed or nothing was published yet; return (targets tiled, failed runs)."""
    instance = runner.instance
    targets = outdated(instance, "sky_tiles", "composites", instance.get_dynamic_partitions("targets"))
    if targets:
        working(f"Tiling the sky of {counted(len(targets), 'targets')}")
    runs = runner.run_all(
        [Submission("tiles_job", {PARTITION: target}, run_config) for target in targets], at_once=2
    )
    failures = sum(not run.is_success for run in runs)
    for target, run in zip(targets, runs, strict=True):
        if not run.is_success:
            print(f"  tiling {target} FAILED (run {run.run_id}): {_why(instance, run.run_id)}")
    if targets or publish_outdated(instance):
        working("Publishing the sky tiles")
        (run,) = runner.run_all([Submission("publish_job", {}, run_config)])
        failures += not run.is_success
        published = latest_metadata(instance, "publish") if run.is_success else {}
        if published:
            print(f"\nPublished {counted(published['targets'], 'targets')} "
                  f"({counted(published['pyramids'], 'HiPS pyramids')}) "
                  f"to {published['destination']}")
        else:
            print(f"\nPublishing the sky tiles failed (run {run.run_id}): {_why(instance, run.run_id)}")
    return len(targets), failures


def bring_up_to_date(runner: Runner, home: Home, partitions: list[str], run_config: Mapping) -> int | None:
    """What the daemon's automation does after new files: quality of ``partitions``, the targets,
    each target's products, then the catalog (once, with the products), the sky tiles and their
    publication. Returns failed runs, or None when the catalog could not be published."""
    measured, failures = measure_quality(runner, home, partitions, run_config)
    grouped = bool(measured) or catalog_outdated(runner.instance)
    if grouped and not publish_catalog(runner, run_config, GROUPING):
        return None
    made, failed = make_products(runner, home, run_config)
    if (grouped or made) and not publish_catalog(runner, run_config, PUBLISHING):
        return None
    _, unpublished = publish_sky(runner, home, run_config)
    return failures + failed + unpublished
