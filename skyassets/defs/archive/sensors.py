"""Sensors of the archive: new observations found by the watchlist query."""

from __future__ import annotations

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from skyassets.defs.archive.jobs import observation_job
from skyassets.defs.partitions import add_observations_request, observations_partitions
from skyassets.lake.names import InvalidNameError, validate_obs_id
from skyassets.lake.parquet import read_parquet

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
