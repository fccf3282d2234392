"""Partitions: one per MAST observation, keyed by its validated ``obs_id``; one per target (``target_groups``).

Sensors request work on many observations at once as partition-range runs (see ``batched_requests``).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Mapping, Sequence

from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    AssetRecordsFilter,
    BackfillPolicy,
    BetaWarning,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DynamicPartitionsDefinition,
    MetadataValue,
    RunRequest,
    RunsFilter,
)

from skyassets.defs.tags import PARTITION, PARTITION_RANGE_END, PARTITION_RANGE_START, partition_range
from skyassets.lake.names import validate_obs_id

observations_partitions = DynamicPartitionsDefinition(name="observations")
targets_partitions = DynamicPartitionsDefinition(name="targets")

# Observations downloaded in one run: a backfill of thousands of observations, or a watchlist query's
# new ones, runs as tens of runs, not thousands of processes, while one run's downloads stay a few GB.
OBSERVATIONS_PER_RUN = 25
# Landed partitions copied and catalogued in one run: a landing tick's files (``max_ready``) are
# already bounded and small, and each run pays a process start (~3.5 s), so a tick is one run or a few.
LANDED_PARTITIONS_PER_RUN = 1000

# Backfill policies are marked beta; skyassets relies on them knowingly, and the warning each asset
# definition would print at every start of the UI, the daemon and each run is nothing a user can act on.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=BetaWarning)
observation_backfill_policy = BackfillPolicy.multi_run(max_partitions_per_run=OBSERVATIONS_PER_RUN)


def add_observations_request(obs_ids: Iterable[str]) -> AddDynamicPartitionsRequest:
    """A request adding partitions for ``obs_ids``; every key is validated first (raises on a bad one)."""
    return observations_partitions.build_add_request([validate_obs_id(key) for key in obs_ids])


def batched_requests(
    known: Sequence[str], versions: Mapping[str, str], *, per_run: int, run_key_prefix: str,
    tags: Mapping[str, str] | None = None,
) -> tuple[list[RunRequest], list[AddDynamicPartitionsRequest]]:
    """Runs covering exactly the partitions of ``versions`` (key -> what its run will read), and the
    request adding the new ones.

    Dynamic partitions are ordered by insertion, and the new keys are added in sorted order after
    ``known`` (the partitions as they are now), so new keys form one contiguous stretch: a tick's new
    partitions take ``ceil(new / per_run)`` runs, each a partition range. Keys already known go where
    they are, one run per contiguous stretch; a range never spans a partition that was not asked for.
    The run key is a digest of the batch's keys and versions, so an evaluation repeated with the same
    input asks for the same runs and Dagster launches each once. ``tags`` go on every run.
    """
    if per_run < 1:
        raise ValueError("per_run must be at least 1")
    known_set = set(known)
    new = sorted(k for k in versions if k not in known_set)
    order = [*known, *new]
    batches: list[list[str]] = []
    previous = -2
    for position, key in enumerate(order):
        if key not in versions:
            continue
        if position != previous + 1 or len(batches[-1]) == per_run:
            batches.append([])
        batches[-1].append(key)
        previous = position
    requests = []
    for batch in batches:
        digest = hashlib.sha256("|".join(f"{k}={versions[k]}" for k in batch).encode()).hexdigest()[:16]
        run_key = f"{run_key_prefix}{batch[0]}..{batch[-1]}:{len(batch)}:{digest}"
        if len(batch) == 1:
            requests.append(RunRequest(partition_key=batch[0], run_key=run_key, tags=dict(tags or {})))
        else:
            requests.append(RunRequest(run_key=run_key, tags={**(tags or {}), **partition_range(batch[0], batch[-1])}))
    return requests, [add_observations_request(new)] if new else []


def _covered(partition_key: str | None, tags: Mapping[str, str], partitions: Sequence[str]) -> list[str]:
    """The partitions of a run (or request) tagged so: its key, or its range within ``partitions``
    (the keys in their order, as the run resolves them); none when the range is not there."""
    if partition_key:
        return [partition_key]
    first, last = tags.get(PARTITION_RANGE_START), tags.get(PARTITION_RANGE_END)
    keys = list(partitions)
    if first not in keys or last not in keys:
        return []
    return keys[keys.index(first): keys.index(last) + 1]


def requested_partitions(request: RunRequest, partitions: Sequence[str]) -> list[str]:
    """The partitions a run request covers, within ``partitions`` (the keys in their order)."""
    return _covered(request.partition_key, request.tags, partitions)


# The metadata key under which a step that failed for some of its run's partitions names them.
FAILED_PARTITIONS = "failed_partitions"


def failed_partitions_metadata(failed: Iterable[str]) -> dict[str, MetadataValue]:
    """What a step's ``Failure`` carries when only some of its run's partitions failed."""
    return {FAILED_PARTITIONS: MetadataValue.json(sorted(set(failed)))}


def run_partitions(instance: DagsterInstance, run: DagsterRun) -> list[str]:
    """The observations a run covered: its partition, or every key of its range, in order."""
    ranged = PARTITION_RANGE_START in run.tags and not run.tags.get(PARTITION)
    keys = instance.get_dynamic_partitions(observations_partitions.name) if ranged else []
    return _covered(run.tags.get(PARTITION), run.tags, keys)


def split_failed_run(instance: DagsterInstance, run: DagsterRun) -> list[list[str]]:
    """The runs that try a failed batch again so that its bad observations fail alone.

    Dagster marks every partition of a failed partition-range run failed; a step that failed for
    some of them names them (:data:`FAILED_PARTITIONS`). Then each of those runs alone and the others
    run again in the contiguous stretches between them (files already verified are not fetched
    again). Nothing is split when the run had one partition, when no step named its failed ones, or
    when they are all of them: the same try would fail the same way.
    """
    partitions = run_partitions(instance, run)
    if len(partitions) < 2:
        return []
    failed: set[str] = set()
    for record in instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_FAILURE).records:
        data = getattr(record.event_log_entry.dagster_event.event_specific_data, "user_failure_data", None)
        named = data.metadata.get(FAILED_PARTITIONS) if data is not None else None
        if named is None:
            return []  # a step failed for all of them, or did not say which
        failed.update(named.value)
    failed &= set(partitions)
    if not failed or failed == set(partitions):
        return []
    batches: list[list[str]] = []
    for key in partitions:
        if key in failed:
            batches.append([key])
        elif batches and batches[-1][-1] not in failed:
            batches[-1].append(key)
        else:
            batches.append([key])
    return batches


def failed_runs_since_success(
    instance: DagsterInstance, keys: Iterable[str], *, job_name: str, tags: Mapping[str, str],
    last_asset: AssetKey, at_least: int = 1, limit: int = 5000,
) -> dict[str, int]:
    """For each of ``keys`` covered by at least ``at_least`` failed runs of ``job_name`` tagged
    ``tags``, how many of those came after ``last_asset`` (the job's last asset, so the whole run's
    success) was last materialised for it: its failed tries in a row. A run that Dagster ran again
    after its process died counts once with its re-runs. The latest ``limit`` runs are read; a key
    is looked up in the asset's records only when it has tries enough to count."""
    wanted = set(keys)
    records = instance.get_run_records(
        RunsFilter(job_name=job_name, statuses=[DagsterRunStatus.FAILURE], tags=dict(tags)), limit=limit)
    if not records or not wanted:
        return {}
    known = instance.get_dynamic_partitions(observations_partitions.name)
    tried: dict[str, dict[str, float]] = {}  # key -> the root run of each try -> when its latest run began
    for record in records:
        run = record.dagster_run
        root, began = run.root_run_id or run.run_id, record.create_timestamp.timestamp()
        for key in _covered(run.tags.get(PARTITION), run.tags, known):
            if key in wanted:
                tries = tried.setdefault(key, {})
                tries[root] = max(began, tries.get(root, began))
    counts = {}
    for key, tries in tried.items():
        if len(tries) < at_least:
            continue
        latest = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=last_asset, asset_partitions=[key]), limit=1).records
        since = latest[0].timestamp if latest else 0.0
        counts[key] = sum(began > since for began in tries.values())
    return counts
