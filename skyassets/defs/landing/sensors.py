"""Sensors of the landing zone: files that have stopped changing in a folder or under an S3 prefix."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from dagster import (
    DefaultSensorStatus,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from skyassets.defs.landing.jobs import landing_job
from skyassets.defs.partitions import LANDED_PARTITIONS_PER_RUN, batched_requests, observations_partitions
from skyassets.defs.resources import HomeResource, LandingResource
from skyassets.lake.lease import LockBusy
from skyassets.landing.zone import LandedFile, LandingZone, S3LandingZone, Tick

# Seconds a tick spends reading ready files' headers for their partition keys; the rest waits for the
# next tick, so a tick ends well within Dagster's 60 s limit for a sensor evaluation.
KEY_SECONDS = 20.0
# Seconds a tick waits for the landing lock (held by the command line, or another machine landing into
# the same store) before it offers its files again to a later tick.
LOCK_SECONDS = 15.0


def _version(items: Iterable[str]) -> str:
    """A short digest of what a partition's run will read, for its run key."""
    return hashlib.sha256("|".join(sorted(items)).encode()).hexdigest()[:16]


def _record(
    context: SensorEvaluationContext, home: HomeResource, zone: LandingZone | S3LandingZone,
    groups: dict[str, list[LandedFile]], moved: dict[str, list[str]],
) -> dict[str, str]:
    """Record the tick's partitions under the landing lock: partition -> version, and in ``moved``
    each partition a file left -> its locations (filled in as soon as the landing index says so).
    Raises ``LockBusy`` when the command line or another machine sharing the store holds the lock for
    over ``LOCK_SECONDS``, or when the lock was lost by the block's end."""
    from skyassets.landing.ingest import record_landed, recording, relocate_landed

    versions: dict[str, str] = {}
    with recording(home.home, wait=LOCK_SECONDS):
        try:  # a file whose header now names another observation leaves the partition that held it
            moved.update(relocate_landed(home.home, groups))
        except Exception as exc:  # the tick's files go on; only the old versions stay catalogued
            context.log.error(f"landing index not updated, files that changed observation stay in the old one "
                              f"too: {exc}")
        for key, files in groups.items():
            try:
                record_landed(home.home, key, files)
            except Exception as exc:  # one partition's record (an unreadable earlier one) must not stop the tick
                zone.release(files)
                context.log.error(f"{key}: landing record not written, its {len(files)} files offered again later: "
                                  f"{exc}")
                continue
            versions[key] = _version(f"{f.location}:{f.signature}" for f in files)
    return versions


def _landing_result(
    context: SensorEvaluationContext, home: HomeResource, zone: LandingZone | S3LandingZone, tick: Tick, client=None
) -> SensorResult:
    """Record each ready file's partition and request their copy-and-catalogue runs, many partitions a run.

    The partitions of a tick's files become a few partition-range runs, however many there are; a
    bad file does not hold its batch back, as ``fits_files`` and ``image_metadata`` quarantine it.
    A partition whose landing record cannot be written is logged and its files released, to be
    offered again by a later tick, as are the files whose headers the tick had no time left to read.
    """
    # imported here: it brings in the downloader (requests), which run processes seldom need
    from skyassets.landing.ingest import group_within

    for relative, why in tick.skipped[:20]:  # said once per file, by the tick that first meets it
        context.log.warning(f"not taken from the landing zone: {relative}: {why}")
    if len(tick.skipped) > 20:
        context.log.warning(f"... and {len(tick.skipped) - 20} more entries not taken")
    groups, later = group_within(tick.ready, KEY_SECONDS, client=client)
    if later:
        zone.release(later)
        context.log.info(f"{len(later)} ready files left for the next tick: their headers took the tick's time")
    moved: dict[str, list[str]] = {}
    try:
        versions = _record(context, home, zone, groups, moved)
    except LockBusy as busy:  # the files wait for a later tick; the tick does not hang
        zone.release([f for files in groups.values() for f in files])
        offered = f"{sum(map(len, groups.values()))} ready files offered again next tick: {busy}"
        context.log.warning(offered)
        if not moved:
            return SensorResult(cursor=tick.cursor, skip_reason=offered)
        # the lock was lost after the index moved files on: the partitions they left run again all the
        # same, as no later tick will see them leave
        versions = {}
    # a partition a file left runs again; its run key follows the version that left, so each time it runs once
    arrived = {f.location: f.signature for files in groups.values() for f in files}
    for key, locations in moved.items():
        context.log.info(f"{key}: {len(locations)} files now belong to another partition; run again without them")
        versions.setdefault(key, _version(f"left:{location}:{arrived.get(location)}" for location in locations))
    known = context.instance.get_dynamic_partitions(observations_partitions.name) if versions else []
    requests, added = batched_requests(
        known, versions, per_run=LANDED_PARTITIONS_PER_RUN, run_key_prefix="landed:"
    )
    new = len(added[0].partition_keys) if added else 0
    summary = (f"{len(tick.ready)} files ready in {len(versions)} partitions ({new} new), {len(requests)} runs; "
               f"{tick.pending} waiting to settle; {tick.scanned} entries scanned in {tick.seconds:.2f} s"
               + (f"; {len(tick.skipped)} not taken (the tick's log says why)" if tick.skipped else ""))
    if requests or tick.pending or tick.skipped or moved:  # an idle tick's skip reason says it all
        context.log.info(summary)
    # a tick with no run says why in the UI's tick history, not only in its log
    return SensorResult(run_requests=requests, dynamic_partitions_requests=added, cursor=tick.cursor,
                        skip_reason=None if requests else summary)


# Every 10 s: a tick hands on at most ``max_ready`` files, so the interval bounds throughput (3,000
# files per 10 s); an idle tick only lists the folder.
@sensor(
    job=landing_job,
    minimum_interval_seconds=10,
    default_status=DefaultSensorStatus.RUNNING,
    description="Takes FITS files that have stopped changing in the landing folder and requests their copy and "
    "catalogue run.",
)
def landing_zone_sensor(context: SensorEvaluationContext, home: HomeResource, landing: LandingResource):
    root = home.home
    folder = landing.path(root)
    folder.mkdir(parents=True, exist_ok=True)
    zone = LandingZone(
        folder, root.root / "landing-state.sqlite", recursive=landing.recursive,
        max_files=landing.max_files, max_ready=landing.max_ready,
    )
    return _landing_result(context, home, zone, zone.tick(context.cursor))


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
    return _landing_result(context, home, zone, zone.tick(context.cursor), client=client)
