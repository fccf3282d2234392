"""Declarative automation keeps the catalogue side and the targets' products fresh after files arrive."""

import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    AutomationCondition,
    DagsterRunStatus,
    DataVersion,
    DynamicPartitionsDefinition,
    MaterializeResult,
    RunsFilter,
    asset,
    evaluate_automation_conditions,
    instance_for_test,
    materialize,
    observable_source_asset,
)

from skyassets.definitions import defs
from skyassets.defs.automation import automation_sensor, catch_up, data_changed, follows, read_latest
from skyassets.defs.tags import DATA_VERSION

IMAGES, CATALOG = AssetKey("image_metadata"), AssetKey("catalog")


def test_new_files_are_catalogued_per_observation():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("observations", ["obs-a", "obs-b"])
        first = evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.get_requested_partitions(IMAGES) == set()  # nothing downloaded yet

        instance.report_runless_asset_event(AssetMaterialization("fits_files", partition="obs-a"))
        second = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert second.get_requested_partitions(IMAGES) == {"obs-a"}

        instance.report_runless_asset_event(AssetMaterialization("image_metadata", partition="obs-a"))
        third = evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert third.get_requested_partitions(IMAGES) == set()  # obs-a is done; obs-b has no files


def test_files_catalogued_before_the_first_evaluation_are_measured_on_it():
    """``skyassets ingest --catalog-only`` leaves quality to the daemon: its first tick measures
    what was catalogued before it ever ran, as eager() alone would not."""
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("observations", ["obs-a", "obs-b"])
        for asset in ("fits_files", "image_metadata"):
            instance.report_runless_asset_event(AssetMaterialization(asset, partition="obs-a"))
        first = evaluate_automation_conditions(defs=defs, instance=instance)
        for asset in ("image_quality", "source_catalogs"):
            assert first.get_requested_partitions(AssetKey(asset)) == {"obs-a"}  # obs-b has no files
        assert first.get_requested_partitions(IMAGES) == set()
        second = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert second.get_requested_partitions(AssetKey("image_quality")) == set()  # asked once


def test_a_missing_observation_does_not_block_the_catalog():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("observations", ["obs-a", "obs-b"])
        first = evaluate_automation_conditions(defs=defs, instance=instance)
        instance.report_runless_asset_event(AssetMaterialization("mast_observations"))
        second = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert second.get_num_requested(CATALOG) == 1
        instance.report_runless_asset_event(AssetMaterialization("catalog"))
        settled = evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert settled.get_num_requested(CATALOG) == 0  # up to date
        # obs-a is catalogued; obs-b never arrives (failed, or still proprietary).
        for asset in ("mast_products", "fits_files", "image_metadata"):
            instance.report_runless_asset_event(AssetMaterialization(asset, partition="obs-a"))
        third = evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
        assert third.get_num_requested(CATALOG) == 1


MOSAICS, COMPOSITES, GROUPS = AssetKey("mosaics"), AssetKey("composites"), AssetKey("target_groups")


def _images_changed(instance, target: str, digest: str) -> None:
    """What target_groups records when a target's images change: a new data version of target_images."""
    instance.report_runless_asset_event(
        AssetMaterialization("target_images", partition=target, tags={DATA_VERSION: digest})
    )


def test_targets_are_regrouped_when_an_observation_is_measured_even_if_another_never_arrives():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("observations", ["obs-a", "obs-b"])
        first = evaluate_automation_conditions(defs=defs, instance=instance)
        instance.report_runless_asset_event(AssetMaterialization("target_groups"))
        second = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert second.get_num_requested(GROUPS) == 0
        # obs-a is measured; obs-b never is (failed, or still proprietary)
        for asset in ("image_metadata", "image_quality"):
            instance.report_runless_asset_event(AssetMaterialization(asset, partition="obs-a"))
        third = evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert third.get_num_requested(GROUPS) == 1


def _run_started(instance, deps: Iterable[AssetKey]) -> dict[str, str]:
    """The provenance a run records when its step starts now: each dependency's latest materialisation."""
    tags = {"dagster/code_version": "1"}
    for dep in deps:
        latest = instance.fetch_materializations(dep, limit=1).records
        tags[f"dagster/input_event_pointer/{dep.to_user_string()}"] = str(latest[0].storage_id) if latest else "NULL"
    return tags


def _deps(asset: AssetKey) -> set[AssetKey]:
    return defs.resolve_asset_graph().get(asset).parent_keys


def test_an_update_landing_as_a_table_finishes_is_not_lost():
    """target_groups and catalog run alongside the quality run of the same new observation (they
    cannot share its run: they are not partitioned). When quality lands on the tick they finish,
    they run again: eager() would forget it and leave the catalogue without that quality."""
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("observations", ["obs-a", "obs-b"])
        first = evaluate_automation_conditions(defs=defs, instance=instance)
        instance.report_runless_asset_event(AssetMaterialization("image_metadata", partition="obs-a"))
        second = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert second.get_requested_partitions(AssetKey("image_quality")) == {"obs-a"}
        assert second.get_num_requested(GROUPS) == 1 and second.get_num_requested(CATALOG) == 1
        # before the next tick: the tables' run, started before quality landed, finishes, and so does quality's
        started = {asset: _run_started(instance, _deps(asset)) for asset in (GROUPS, CATALOG)}
        instance.report_runless_asset_event(AssetMaterialization("image_quality", partition="obs-a"))
        for asset in (GROUPS, CATALOG):
            instance.report_runless_asset_event(AssetMaterialization(asset, tags=started[asset]))
        third = evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert third.get_num_requested(GROUPS) == 1 and third.get_num_requested(CATALOG) == 1
        # the run that follows reads it
        for asset in (GROUPS, CATALOG):
            instance.report_runless_asset_event(AssetMaterialization(asset, tags=_run_started(instance, _deps(asset))))
        settled = evaluate_automation_conditions(defs=defs, instance=instance, cursor=third.cursor)
        assert settled.get_num_requested(GROUPS) == 0 and settled.get_num_requested(CATALOG) == 0


def test_only_targets_whose_images_changed_get_new_products():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("targets", ["M-16", "NGC-3132"])
        for target in ("M-16", "NGC-3132"):
            _images_changed(instance, target, "v1")
        # first evaluation: every target without products gets them, mosaics and composites together
        first = evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.get_requested_partitions(MOSAICS) == {"M-16", "NGC-3132"}
        assert first.get_requested_partitions(COMPOSITES) == {"M-16", "NGC-3132"}
        for target in ("M-16", "NGC-3132"):
            for asset in ("mosaics", "composites"):
                instance.report_runless_asset_event(AssetMaterialization(asset, partition=target))
        settled = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert settled.get_num_requested(MOSAICS) == 0 and settled.get_num_requested(COMPOSITES) == 0

        _images_changed(instance, "NGC-3132", "v2")  # a new observation of NGC 3132 is catalogued
        _images_changed(instance, "M-16", "v1")  # M 16 recorded again with the same images
        changed = evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
        assert changed.get_requested_partitions(MOSAICS) == {"NGC-3132"}
        assert changed.get_requested_partitions(COMPOSITES) == {"NGC-3132"}

        # a new target appears: its products are made, the others are left alone
        instance.add_dynamic_partitions("targets", ["CRAB"])
        _images_changed(instance, "CRAB", "v1")
        new = evaluate_automation_conditions(defs=defs, instance=instance, cursor=changed.cursor)
        assert new.get_requested_partitions(MOSAICS) == {"CRAB"}


def test_a_failed_products_run_is_not_retried_until_the_images_change():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("targets", ["M-16"])
        _images_changed(instance, "M-16", "v1")
        first = evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.get_requested_partitions(MOSAICS) == {"M-16"}
        # the run fails: nothing is materialised
        again = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert again.get_num_requested(MOSAICS) == 0
        _images_changed(instance, "M-16", "v2")
        fixed = evaluate_automation_conditions(defs=defs, instance=instance, cursor=again.cursor)
        assert fixed.get_requested_partitions(MOSAICS) == {"M-16"}



def test_the_automation_interval_is_a_setting():
    probe = "from skyassets.defs.automation import automation_sensor as s; print(s.minimum_interval_seconds)"
    env = {"SKYASSETS_AUTOMATION_INTERVAL": "7", "PATH": ""}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "7"
    assert automation_sensor.minimum_interval_seconds == 30  # Dagster's own default, unless set


# The conditions on real runs, whose materialisations record what each step read (Dagster's provenance).
PARTS = DynamicPartitionsDefinition(name="obs")
RELEASE_SLOW = threading.Event()  # ends the run measuring observation "slow"


@asset(partitions_def=PARTS)
def files() -> None:
    """Files catalogued into an observation."""


@asset(partitions_def=PARTS, deps=[files], automation_condition=follows())
def measured(context: AssetExecutionContext) -> None:
    """Quality of an observation's files; in observation "busy" a file lands while they are measured."""
    if context.partition_key == "busy":
        context.instance.report_runless_asset_event(AssetMaterialization("files", partition="busy"))
    if context.partition_key == "slow":
        assert RELEASE_SLOW.wait(120)


@asset(deps=[measured], automation_condition=catch_up())
def table() -> None:
    """A table over every observation's quality."""


@asset(partitions_def=PARTS)
def images(context: AssetExecutionContext) -> MaterializeResult:
    return MaterializeResult(data_version=DataVersion("v1"))


@asset(partitions_def=PARTS, deps=[images], automation_condition=data_changed())
def products() -> None:
    """A target's products, made from its images."""


TOY = [files, measured, table, images, products]


def _run(instance, assets, partition: str | None = None) -> None:
    assert materialize(assets, instance=instance, partition_key=partition, selection=assets).success


def test_a_file_landing_while_its_observation_is_measured_is_measured_after():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("obs", ["calm", "busy"])
        start = evaluate_automation_conditions(defs=TOY, instance=instance)
        for obs in ("calm", "busy"):
            _run(instance, [files], obs)
        asked = evaluate_automation_conditions(defs=TOY, instance=instance, cursor=start.cursor)
        assert asked.get_requested_partitions(measured.key) == {"calm", "busy"}
        # the quality run ends between two ticks; in "busy" a file landed after its step started
        _run(instance, [measured], "calm")
        _run(instance, [measured], "busy")
        after = evaluate_automation_conditions(defs=TOY, instance=instance, cursor=asked.cursor)
        assert after.get_requested_partitions(measured.key) == {"busy"}


def test_runs_made_while_the_daemon_was_stopped_are_not_made_again():
    """``skyassets demo`` brings everything up to date while the daemon is stopped: restarted, its
    automation finds every dependency's update already read, and makes nothing."""
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("obs", ["calm"])
        start = evaluate_automation_conditions(defs=TOY, instance=instance)
        for assets in ([files], [measured], [images], [products]):
            _run(instance, assets, "calm")
        _run(instance, [table])
        restarted = evaluate_automation_conditions(defs=TOY, instance=instance, cursor=start.cursor)
        assert restarted.total_requested == 0
        # an observation measured after the table was made has it made again
        instance.add_dynamic_partitions("obs", ["busy"])
        _run(instance, [files], "busy")
        _run(instance, [measured], "busy")
        again = evaluate_automation_conditions(defs=TOY, instance=instance, cursor=restarted.cursor)
        assert again.get_num_requested(table.key) == 1


def test_a_table_waits_for_observations_in_progress_at_most_ten_minutes():
    """While files keep arriving, some observation is always being measured: the catalogue still
    follows, at most ten minutes behind."""
    start = datetime(2026, 12, 6, 12, 1, tzinfo=timezone.utc)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("obs", ["calm", "slow"])
        first = evaluate_automation_conditions(defs=TOY, instance=instance, evaluation_time=start)
        for obs in ("calm", "slow"):
            _run(instance, [files], obs)
        _run(instance, [measured], "calm")
        RELEASE_SLOW.clear()
        slow = threading.Thread(target=_run, args=(instance, [measured], "slow"))
        slow.start()
        try:
            deadline = time.monotonic() + 60
            while not instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
                assert time.monotonic() < deadline, "the slow run did not start"
                time.sleep(0.1)
            waiting = evaluate_automation_conditions(
                defs=TOY, instance=instance, cursor=first.cursor, evaluation_time=start + timedelta(minutes=1))
            assert waiting.get_num_requested(table.key) == 0  # "slow" is being measured
            later = evaluate_automation_conditions(
                defs=TOY, instance=instance, cursor=waiting.cursor, evaluation_time=start + timedelta(minutes=10))
            assert later.get_num_requested(table.key) == 1  # 12:10 passed: what is measured goes in
        finally:
            RELEASE_SLOW.set()
            slow.join()


@asset
def settings() -> None:
    """A table every observation's measurement reads."""


@asset(partitions_def=PARTS, deps=[files, settings],
       automation_condition=~read_latest() & ~AutomationCondition.missing())
def stale() -> None:
    """Asked for where its latest run did not read every dependency's latest update."""


def test_what_a_run_read_is_told_per_partition_from_its_provenance():
    toy = [files, settings, stale]
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("obs", ["a", "b"])
        _run(instance, [settings])
        for obs in ("a", "b"):
            _run(instance, [files], obs)
            _run(instance, [stale], obs)

        def stale_now() -> set[str]:
            return evaluate_automation_conditions(defs=toy, instance=instance).get_requested_partitions(stale.key)

        assert stale_now() == set()
        _run(instance, [settings])  # read by every partition
        assert stale_now() == {"a", "b"}
        for obs in ("a", "b"):
            _run(instance, [stale], obs)
        assert stale_now() == set()
        _run(instance, [files], "b")  # read by its own partition only
        assert stale_now() == {"b"}
        # reported outside a run, it has no provenance: up to date, as eager() counts it
        instance.report_runless_asset_event(AssetMaterialization("stale", partition="b"))
        assert stale_now() == set()


def test_the_latest_of_many_partitions_is_found_past_the_first_page():
    """One partition's only materialisation is older than a thousand others: it is still found, and up to date."""
    toy = [files, settings, stale]
    others = [f"p{i:03d}" for i in range(499)]
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("obs", ["a", *others])
        instance.report_runless_asset_event(AssetMaterialization("settings"))

        def made(partition: str, times: int) -> None:
            instance.report_runless_asset_event(AssetMaterialization("files", partition=partition))
            for _ in range(times):
                tags = _run_started(instance, [files.key, settings.key])
                instance.report_runless_asset_event(AssetMaterialization("stale", partition=partition, tags=tags))

        made("a", 1)
        for partition in others:
            made(partition, 2)
        result = evaluate_automation_conditions(defs=toy, instance=instance)
        assert result.get_requested_partitions(stale.key) == set()


@observable_source_asset
def archive_release() -> DataVersion:
    """A source the pipeline observes and never makes."""
    return DataVersion("v1")


@asset(deps=[archive_release], automation_condition=follows())
def release_notes(context: AssetExecutionContext) -> None:
    """Reads the release; a new one is observed while it runs."""
    context.instance.report_runless_asset_event(AssetObservation("archive_release", tags={DATA_VERSION: "v2"}))


def test_an_observation_landing_while_a_run_reads_its_source_is_followed():
    toy = [archive_release, release_notes]
    with instance_for_test() as instance:
        start = evaluate_automation_conditions(defs=toy, instance=instance)
        instance.report_runless_asset_event(AssetObservation("archive_release", tags={DATA_VERSION: "v1"}))
        asked = evaluate_automation_conditions(defs=toy, instance=instance, cursor=start.cursor)
        assert asked.get_num_requested(release_notes.key) == 1
        _run(instance, [release_notes])  # v2 is observed while it runs
        after = evaluate_automation_conditions(defs=toy, instance=instance, cursor=asked.cursor)
        assert after.get_num_requested(release_notes.key) == 1
