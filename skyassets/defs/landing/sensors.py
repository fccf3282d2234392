"""Sensors of the landing zone: files that have stopped changing in a folder or under an S3 prefix."""

from __future__ import annotations

import hashlib

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from skyassets.defs.landing.jobs import landing_job
from skyassets.defs.partitions import add_observations_request
from skyassets.defs.resources import HomeResource, LandingResource
from skyassets.landing.ingest import group_by_partition, record_landed
from skyassets.landing.zone import LandingZone, S3LandingZone, Tick


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
