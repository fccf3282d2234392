"""Sensors of the archive: new observations found by the watchlist query."""

from __future__ import annotations

from collections.abc import Iterator

from dagster import (
    AssetKey,
    AssetPartitionStatus,
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)

from skyassets.archive.choices import choices_digest, products_rechosen
from skyassets.archive.watchlist import WatchlistError
from skyassets.defs.archive.jobs import observation_job, watchlist_job
from skyassets.defs.partitions import (
    OBSERVATIONS_PER_RUN,
    batched_requests,
    failed_runs_since_success,
    observations_partitions,
    split_failed_run,
)
from skyassets.defs.resources import ArchiveResource, HomeResource, WatchlistResource
from skyassets.defs.tags import partition_range, retried_by_the_command_line
from skyassets.lake.names import InvalidNameError, validate_obs_id

MAST_OBSERVATIONS = AssetKey("mast_observations")
# The assets of observation_job, in order; an observation whose last try failed at any of them is tried
# again, and one whose last is materialised has succeeded as a whole.
OBSERVATION_ASSETS = (AssetKey("mast_products"), AssetKey("fits_files"), AssetKey("image_metadata"))
# The tag of the runs failed_observations_sensor requests, by which it counts an observation's daily retries.
DAILY_RETRY = {"skyassets/retry": "daily"}
# New observations handed on per tick (a few tens of runs): a first query of a large watchlist is
# taken over several ticks, each bounded, rather than in one tick submitting hundreds of runs.
NEW_OBSERVATIONS_PER_TICK = 500


@sensor(
    job=observation_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Adds a partition for each new observation in mast_observations and requests their runs, "
    f"{OBSERVATIONS_PER_RUN} observations a run.",
)
def new_observations_sensor(context: SensorEvaluationContext, home: HomeResource, watchlist: WatchlistResource):
    """New observations of the watchlist's answer, as partitions and partition-range runs, and the
    known ones whose products the watchlist now chooses otherwise (an entry's ``products`` edited)."""
    records = context.instance.fetch_materializations(MAST_OBSERVATIONS, limit=1).records
    if not records:
        return SkipReason("mast_observations has not been materialised yet")
    event = records[0]
    # the cursor: the materialisation last read, and the watchlist's product choices last compared
    last_read, _, last_choices = (context.cursor or "").partition(" ")
    if last_read and int(last_read) >= event.storage_id:
        return SkipReason("no new materialisation of mast_observations")
    # The lake's table is the one that materialisation wrote, or a newer one the next tick sees anyway.
    found = home.home.tables.read("mast_observations", columns=["obs_id"], missing_ok=True)["obs_id"]
    known = context.instance.get_dynamic_partitions(observations_partitions.name)
    known_set = set(known)
    new = []
    for obs_id in found:
        if obs_id in known_set:
            continue
        try:
            new.append(validate_obs_id(obs_id))
        except InvalidNameError as err:
            context.log.error(str(err))
    new = sorted(set(new))
    taken = new[:NEW_OBSERVATIONS_PER_TICK]
    left = len(new) > len(taken)
    # The known observations whose products the watchlist now chooses otherwise join once every new
    # one is handed on: a materialisation read again by the next tick would batch them otherwise.
    again, choices = [], last_choices
    if not left:
        rechosen, now = _rechosen(context, home, watchlist, [k for k in found if k in known_set], last_choices)
        again = rechosen[:NEW_OBSERVATIONS_PER_TICK - len(taken)]
        if len(again) == len(rechosen):  # all handed on: compared again once the choices change
            choices = now
    # New partitions are added together, so contiguous: a few range runs, not one run each.
    requests, added = batched_requests(
        known, dict.fromkeys([*taken, *again], str(event.storage_id)), per_run=OBSERVATIONS_PER_RUN,
        run_key_prefix=f"new@{event.storage_id}:",
    )
    said = (f"{len(new)} new observations in mast_observations: {len(taken)} handed on in {len(requests)} runs"
            + (f" with {len(again)} whose products the watchlist now chooses otherwise" if again else "")
            + (", the rest on the next ticks" if left else ""))
    context.log.info(said)
    # The cursor moves past this materialisation once all its new observations are taken; until
    # then the next tick reads it again, and finds the ones taken here among the known partitions.
    cursor = f"{event.storage_id} {choices}".strip() if not left else context.cursor
    return SensorResult(run_requests=requests, dynamic_partitions_requests=added, cursor=cursor,
                        skip_reason=None if requests else said)  # what the UI's tick history says


def _rechosen(context: SensorEvaluationContext, home: HomeResource, watchlist: WatchlistResource,
              known: list[str], compared: str) -> tuple[list[str], str]:
    """The known observations whose products the watchlist now chooses otherwise, and what was
    compared (``<digest of its choices>@<the last mast_products materialisation read>``). With the
    choices those ``compared`` last, only the observations listed since are read: another process
    (a command line with another watchlist) may have listed them by other choices. None when the
    watchlist cannot be read (its query fails and says why)."""
    try:
        chosen = watchlist.load()
    except (OSError, WatchlistError) as err:
        context.log.warning(f"product choices not compared: {err}")
        return [], compared
    digest = choices_digest(chosen)
    last_digest, _, seen = compared.partition("@")
    listed = context.instance.fetch_materializations(OBSERVATION_ASSETS[0], limit=1).records
    latest = listed[0].storage_id if listed else 0
    if digest == last_digest:
        since = int(seen) if seen.isdigit() else 0
        if latest <= since:
            return [], f"{digest}@{latest}"
        relisted = _listed_since(context.instance, since)
        known = [k for k in known if k in relisted]
    rechosen = products_rechosen(home.home.tables, chosen, known)
    for obs_id, entries in list(rechosen.items())[:10]:
        context.log.info(f"{obs_id}: the watchlist ({entries}) now chooses other products; listed again")
    return list(rechosen), f"{digest}@{latest}"


def _listed_since(instance: DagsterInstance, storage_id: int) -> set[str]:
    """The observations whose products were listed (mast_products materialised) after ``storage_id``."""
    found, cursor = set(), None
    while True:
        page = instance.fetch_materializations(
            AssetRecordsFilter(OBSERVATION_ASSETS[0], after_storage_id=storage_id), limit=1000, cursor=cursor)
        found.update(r.partition_key for r in page.records if r.partition_key)
        if not page.has_more:
            return found
        cursor = page.cursor


def _observation_batch(run: DagsterRun) -> bool:
    """A run of observation_job, or one Dagster runs as its asset job for observation assets (a
    backfill from the UI, an automation run): what failed_batch_sensor tries again as observation_job."""
    if run.job_name == observation_job.name:
        return True
    implicit = run.job_name.startswith("__ASSET_JOB")  # not landing_job, whose partitions are landed files
    return implicit and bool(run.asset_selection and run.asset_selection & set(OBSERVATION_ASSETS))


# Every job of the code location: a backfill's runs are Dagster's asset job, not observation_job.
@run_failure_sensor(
    request_job=observation_job,
    default_status=DefaultSensorStatus.RUNNING,
    description="When a batch of observations failed for some of them only (the archive failing one's product "
    "list, one's file that will not download), runs each of those alone and the rest again, so one bad "
    "observation does not keep its batch from being catalogued; for observation_job and for backfills and "
    "automation runs of its assets.",
)
def failed_batch_sensor(context: RunFailureSensorContext) -> Iterator[RunRequest | SkipReason]:
    run = context.dagster_run
    if not _observation_batch(run):
        yield SkipReason(f"run {run.run_id} ({run.job_name}) is not a batch of observations")
        return
    if retried_by_the_command_line(run.tags):
        yield SkipReason(f"run {run.run_id} was launched by the command line, which tries its failures again")
        return
    batches = split_failed_run(context.instance, run)
    if not batches:  # the same try would fail the same way: said, so that a red run is not left unexplained
        yield SkipReason(
            f"run {run.run_id} failed for all of its observations, or for its only one, or did not say which "
            "(an archive outage, say): not split; failed_observations_sensor tries them again after the next "
            "successful watchlist query (the daily_watchlist schedule, or a watchlist_job run)")
        return
    for batch in batches:
        run_key = f"split:{run.run_id}:{batch[0]}..{batch[-1]}"
        if len(batch) == 1:
            yield RunRequest(run_key=run_key, partition_key=batch[0])
        else:
            yield RunRequest(run_key=run_key, tags=partition_range(batch[0], batch[-1]))


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[watchlist_job],
    request_job=observation_job,
    default_status=DefaultSensorStatus.RUNNING,
    description="After each successful watchlist query (daily), tries again the observations of the watchlist "
    f"whose last run failed (an archive outage, a file that would not download), {OBSERVATIONS_PER_RUN} a run; "
    "one that failed its last daily_retries (archive resource, 7) retries is left alone until a run of it succeeds.",
)
def failed_observations_sensor(context: RunStatusSensorContext, home: HomeResource, archive: ArchiveResource):
    """An observation that failed, alone or with its whole batch in an outage, is not new to
    new_observations_sensor and nothing else asks for it again; the next query of the archive does,
    so a failure is retried once a day, not in a loop, and one that lasts is said in each day's log.
    One that fails every retry (a file the archive serves corrupt) stops costing a download a day."""
    if retried_by_the_command_line(context.dagster_run.tags):
        return SkipReason("the watchlist query was run by the command line, which tries failed observations again")
    instance = context.instance
    known = instance.get_dynamic_partitions(observations_partitions.name)
    watched = set(home.home.tables.read("mast_observations", columns=["obs_id"], missing_ok=True)["obs_id"])
    keys = [key for key in known if key in watched]
    failed: set[str] = set()
    for asset in OBSERVATION_ASSETS:
        statuses = instance.get_status_by_partition(asset, keys, observations_partitions) or {}
        failed |= {key for key, status in statuses.items() if status == AssetPartitionStatus.FAILED}
    given_up: set[str] = set()
    if failed and archive.daily_retries > 0:
        tries = failed_runs_since_success(instance, failed, job_name=observation_job.name, tags=DAILY_RETRY,
                                          last_asset=OBSERVATION_ASSETS[-1], at_least=archive.daily_retries)
        given_up = {key for key, count in tries.items() if count >= archive.daily_retries}
        if given_up:
            context.log.warning(
                f"{len(given_up)} observations failed each of their last {archive.daily_retries} daily retries and "
                f"are no longer tried by themselves (materialise them from the UI once the cause is fixed): "
                + _listed(given_up))
    retry = failed - given_up
    if not retry:
        return SkipReason("no observation of the watchlist has a failed last run"
                          + (f" that is still retried ({len(given_up)} given up)" if given_up else ""))
    run_id = context.dagster_run.run_id
    requests, _ = batched_requests(
        known, dict.fromkeys(retry, run_id), per_run=OBSERVATIONS_PER_RUN, run_key_prefix=f"retry@{run_id}:",
        tags=DAILY_RETRY,
    )
    context.log.info(f"{len(retry)} observations failed in their last run, tried again in {len(requests)} runs: "
                     + _listed(retry))
    return requests


def _listed(keys: set[str], most: int = 20) -> str:
    return ", ".join(sorted(keys)[:most]) + (", ..." if len(keys) > most else "")
