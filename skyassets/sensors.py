"""Sensors: react to events outside Dagster's own graph."""

from __future__ import annotations

import hashlib

from dagster import (
    AssetKey,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from .ingest import group_by_partition, record_landed
from .jobs import landing_job, observation_job
from .lake import read_parquet
from .landing import LandingZone, S3LandingZone, Tick
from .names import InvalidNameError, validate_obs_id
from .partitions import add_observations_request, observations_partitions
from .resources import HomeResource, LandingResource

MAST_OBSERVATIONS = AssetKey("mast_observations")


@sensor(
    job=observation_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Adds a partition for each new observation in mast_observations and requests its run.",
)
def new_observations_sensor(context: SensorEvaluationContext):
    records = context.instance.fetch_materializations(MAST_OBSERVATIONS, limit=1).records
    if not records:
        return SkipReason("mast_observations has not been materialised yet")
    event = records[0]
    if context.cursor and int(context.cursor) >= event.storage_id:
        return SkipReason("no new materialisation of mast_observations")
    path = event.asset_materialization.metadata["path"].value
    known = set(context.instance.get_dynamic_partitions(observations_partitions.name))
    new = []
    for obs_id in read_parquet(path)["obs_id"]:
        if obs_id in known:
            continue
        try:
            new.append(validate_obs_id(obs_id))
        except InvalidNameError as err:
            context.log.error(str(err))
    new = sorted(set(new))
    context.log.info(f"{len(new)} new observations in {path}")
    return SensorResult(
        run_requests=[RunRequest(partition_key=obs_id, run_key=f"{obs_id}@{event.storage_id}") for obs_id in new],
        dynamic_partitions_requests=[add_observations_request(new)] if new else [],
        cursor=str(event.storage_id),
    )


def _landing_result(context: SensorEvaluationContext, home: HomeResource, tick: Tick, client=None) -> SensorResult:
    """Record each ready file's partition and request one copy-and-catalogue run per partition."""
    groups = group_by_partition(tick.ready, client=client)
    requests = []
    for key, files in sorted(groups.items()):
        record_landed(home.home, key, files)
        version = hashlib.sha256("|".join(sorted(f"{f.location}:{f.signature}" for f in files)).encode()).hexdigest()
        requests.append(RunRequest(partition_key=key, run_key=f"{key}:{version[:16]}"))
    context.log.info(
        f"{len(tick.ready)} files ready in {len(groups)} partitions; {tick.pending} waiting to settle; "
        f"{tick.scanned} entries scanned in {tick.seconds:.2f} s"
    )
    return SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[add_observations_request(groups)] if groups else [],
        cursor=tick.cursor,
    )


@sensor(
    job=landing_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Takes FITS files that have stopped changing in the landing folder and requests their copy and catalogue run.",
)
def landing_zone_sensor(context: SensorEvaluationContext, home: HomeResource, landing: LandingResource):
    root = home.home
    folder = landing.path(root)
    folder.mkdir(parents=True, exist_ok=True)
    zone = LandingZone(
        folder, root.root / "landing-state.sqlite", recursive=landing.recursive,
        max_files=landing.max_files, max_ready=landing.max_ready,
    )
    return _landing_result(context, home, zone.tick(context.cursor))


@sensor(
    job=landing_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="The landing zone on S3 (the landing resource's s3_url), when one is configured.",
)
def landing_s3_sensor(context: SensorEvaluationContext, home: HomeResource, landing: LandingResource):
    if not landing.s3_url:
        return SkipReason("no S3 landing prefix configured (landing.s3_url / SKYASSETS_LANDING_S3)")
    bucket, prefix = landing.s3_location()
    client = landing.s3_client()
    zone = S3LandingZone(
        client, bucket, prefix, home.home.root / "landing-s3-state.sqlite", recursive=landing.recursive,
        max_keys_per_tick=landing.max_files, max_ready=landing.max_ready,
    )
    return _landing_result(context, home, zone.tick(context.cursor), client=client)


# Dagster's implicit default_automation_condition_sensor starts stopped; this one runs as soon as the
# daemon does, so quality, targets, products and the catalog follow new files without a toggle.
automation_sensor = AutomationConditionSensorDefinition(
    "automation_sensor",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates every asset's automation condition: quality, target groups, products and the catalog.",
)
