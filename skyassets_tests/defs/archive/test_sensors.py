"""new_observations_sensor requests the new observations in partition-range runs, a bounded number a tick;
failed_observations_sensor requests again, after a watchlist query, the observations whose last run failed."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pandas as pd
from dagster import (
    AssetMaterialization,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    MetadataValue,
    RunsFilter,
    SensorResult,
    SkipReason,
    asset,
    build_run_status_sensor_context,
    build_sensor_context,
    define_asset_job,
    instance_for_test,
)

from skyassets.archive.watchlist import load_watchlist
from skyassets.defs.archive.jobs import observation_job
from skyassets.defs.archive.sensors import (
    NEW_OBSERVATIONS_PER_TICK,
    failed_observations_sensor,
    new_observations_sensor,
)
from skyassets.defs.partitions import OBSERVATIONS_PER_RUN, observations_partitions, requested_partitions
from skyassets.defs.resources import ArchiveResource, HomeResource, WatchlistResource
from skyassets.defs.tags import COMMAND_LINE, LAUNCHED_BY, partition_range
from skyassets.lake.home import Home


def _query_result(instance: DagsterInstance, home: Path, obs_ids: list[str], entries: list[str] | None = None) -> None:
    """A materialisation of mast_observations listing ``obs_ids`` (found by ``entries``), as watchlist_job
    records it."""
    found = pd.DataFrame({"obs_id": obs_ids, **({"watchlist_entry": entries} if entries else {})})
    path = Home(home).tables.write("mast_observations", found)
    instance.report_runless_asset_event(
        AssetMaterialization("mast_observations", metadata={"path": MetadataValue.path(str(path))})
    )


def _tick(
    instance: DagsterInstance, home: Path, cursor: str | None, *, apply: bool = True, watchlist: Path | None = None
) -> SensorResult | SkipReason:
    """One evaluation; ``apply`` adds its partitions as the daemon does before it launches the runs."""
    defs = Definitions(jobs=[observation_job], sensors=[new_observations_sensor])
    chosen = WatchlistResource(path=str(watchlist)) if watchlist else WatchlistResource()
    context = build_sensor_context(
        instance=instance, definitions=defs, cursor=cursor,
        resources={"home": HomeResource(root=str(home)), "watchlist": chosen},
    )
    result = new_observations_sensor(context)
    if apply and isinstance(result, SensorResult):
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def _read(cursor: str) -> int:
    """The materialisation of mast_observations a cursor says was read last."""
    return int(cursor.split()[0])


def _covered(instance: DagsterInstance, result: SensorResult) -> list[str]:
    every = instance.get_dynamic_partitions("observations")
    return [k for r in result.run_requests for k in requested_partitions(r, every)]


def test_sixty_new_observations_are_three_runs_requested_once(tmp_path):
    obs_ids = [f"jw01234-o{i:03d}_t001_nircam" for i in range(60)]
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("observations", ["earlier-1"])
        _query_result(instance, tmp_path, ["earlier-1", *obs_ids, "not/valid"])
        lost = _tick(instance, tmp_path, None, apply=False)
        assert len(lost.run_requests) == math.ceil(60 / OBSERVATIONS_PER_RUN) <= 3
        result = _tick(instance, tmp_path, None)  # the same evaluation again: the same run keys
        assert [r.run_key for r in result.run_requests] == [r.run_key for r in lost.run_requests]
        keys = _covered(instance, result)
        assert sorted(keys) == obs_ids and len(keys) == len(set(keys))
        assert all(len(requested_partitions(r, obs_ids)) <= OBSERVATIONS_PER_RUN for r in result.run_requests)
        assert isinstance(_tick(instance, tmp_path, result.cursor), SkipReason)
        # A new query finding one more observation asks for that one only.
        _query_result(instance, tmp_path, ["earlier-1", *obs_ids, "jw01234-o999_t001_nircam"])
        later = _tick(instance, tmp_path, result.cursor)
        assert _covered(instance, later) == ["jw01234-o999_t001_nircam"]
        assert _tick(instance, tmp_path, result.cursor).run_requests == []  # re-evaluated: nothing new
        # a query that finds nothing new says so in the UI's tick history, and moves the cursor on
        _query_result(instance, tmp_path, ["earlier-1", *obs_ids, "jw01234-o999_t001_nircam"])
        same = _tick(instance, tmp_path, later.cursor)
        assert same.run_requests == [] and _read(same.cursor) > _read(later.cursor)
        assert same.skip_reason.skip_message == "0 new observations in mast_observations: 0 handed on in 0 runs"


def test_observations_whose_products_the_watchlist_now_chooses_otherwise_are_run_again(tmp_path):
    watchlist = tmp_path / "watchlist.yaml"
    watchlist.write_text("entries:\n  - name: ring\n    target: NGC 3132\n")
    obs_ids = ["jw02733-o001_t001_nircam", "jw02733-o002_t001_nircam", "jw02736-o001_t001_nircam"]
    entries = ["ring", "ring", "smacs"]  # smacs: an entry since taken out of the watchlist
    lake = Home(tmp_path).tables
    with instance_for_test() as instance:
        _query_result(instance, tmp_path, obs_ids, entries)
        first = _tick(instance, tmp_path, None, watchlist=watchlist)
        assert sorted(_covered(instance, first)) == obs_ids
        for obs_id, entry in zip(obs_ids, entries, strict=True):  # as mast_products records them when it lists
            choice = load_watchlist(watchlist).products_for(entry).text
            lake.write("product_choices", [{"obs_id": obs_id, "products": choice}], partition=obs_id)
        _query_result(instance, tmp_path, obs_ids, entries)
        unchanged = _tick(instance, tmp_path, first.cursor, watchlist=watchlist)
        assert unchanged.run_requests == [] and _read(unchanged.cursor) > _read(first.cursor)
        watchlist.write_text("entries:\n  - name: ring\n    target: NGC 3132\n    products: {extensions: [fits]}\n")
        _query_result(instance, tmp_path, obs_ids, entries)
        rechosen = _tick(instance, tmp_path, unchanged.cursor, watchlist=watchlist)
        assert sorted(_covered(instance, rechosen)) == obs_ids[:2]  # the entry's: not the one it no longer has
        assert _read(rechosen.cursor) > _read(unchanged.cursor)
        # the next query, their runs not done yet: the same choices, not compared (nor asked for) again
        _query_result(instance, tmp_path, obs_ids, entries)
        assert _tick(instance, tmp_path, rechosen.cursor, watchlist=watchlist).run_requests == []
        chosen = load_watchlist(watchlist).products_for("ring").text
        for obs_id in obs_ids[:2]:  # their runs list them by the watchlist's choice
            lake.write("product_choices", [{"obs_id": obs_id, "products": chosen}], partition=obs_id)
            instance.report_runless_asset_event(AssetMaterialization("mast_products", partition=obs_id))
        _query_result(instance, tmp_path, obs_ids, entries)
        settled = _tick(instance, tmp_path, rechosen.cursor, watchlist=watchlist)
        assert settled.run_requests == []
        # a command line with a watchlist of its own lists one by other choices; the daemon's is unchanged
        mine = tmp_path / "mine.yaml"
        mine.write_text("entries:\n  - name: ring\n    target: NGC 3132\n    products: {subgroups: [I2D]}\n")
        other = load_watchlist(mine).products_for("ring").text
        assert other != chosen
        lake.write("product_choices", [{"obs_id": obs_ids[0], "products": other}], partition=obs_ids[0])
        instance.report_runless_asset_event(AssetMaterialization("mast_products", partition=obs_ids[0]))
        _query_result(instance, tmp_path, obs_ids, entries)
        back = _tick(instance, tmp_path, settled.cursor, watchlist=watchlist)
        assert _covered(instance, back) == [obs_ids[0]]  # listed again by the daemon's watchlist
        watchlist.write_text("entries: [")  # a watchlist that cannot be read compares nothing, fails no tick
        _query_result(instance, tmp_path, obs_ids, entries)
        assert _tick(instance, tmp_path, rechosen.cursor, watchlist=watchlist).run_requests == []


def test_a_batched_run_materialises_every_partition_it_covers(tmp_path):
    obs_ids = [f"hst_{i:04d}_acs_wfc" for i in range(40)]
    seen: list[str] = []

    @asset(partitions_def=observations_partitions)
    def per_observation(context) -> None:
        seen.extend(context.partition_keys)

    job = Definitions(assets=[per_observation], jobs=[define_asset_job("stand_in")]).resolve_job_def("stand_in")
    with instance_for_test() as instance:
        _query_result(instance, tmp_path, obs_ids)
        result = _tick(instance, tmp_path, None)
        for request in result.run_requests:
            run = job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags)
            assert run.success
        assert instance.get_materialized_partitions(per_observation.key) == set(obs_ids)
    assert sorted(seen) == obs_ids


def test_a_large_first_query_is_handed_on_over_bounded_ticks(tmp_path):
    total = 2 * NEW_OBSERVATIONS_PER_TICK + 7
    obs_ids = [f"obs-{i:05d}" for i in range(total)]
    with instance_for_test() as instance:
        _query_result(instance, tmp_path, obs_ids)
        cursor, taken, ticks = None, [], 0
        while True:
            result = _tick(instance, tmp_path, cursor)
            if isinstance(result, SkipReason):
                break
            ticks += 1
            keys = _covered(instance, result)
            assert len(keys) <= NEW_OBSERVATIONS_PER_TICK
            assert len(result.run_requests) <= math.ceil(NEW_OBSERVATIONS_PER_TICK / OBSERVATIONS_PER_RUN)
            taken += keys
            cursor = result.cursor
    assert ticks == math.ceil(total / NEW_OBSERVATIONS_PER_TICK)
    assert sorted(taken) == obs_ids


def test_after_a_query_the_observations_whose_last_run_failed_are_asked_again_in_ranges(tmp_path):
    obs_ids = [f"hst_{i:04d}_acs_wfc" for i in range(12)]
    broken: set[str] = set()

    @asset(partitions_def=observations_partitions)
    def fits_files(context) -> None:  # stands in for the asset of observation_job
        if broken & set(context.partition_keys):
            raise RuntimeError("the archive would not serve it")

    @asset
    def mast_observations() -> None:
        pass

    defs = Definitions(assets=[fits_files, mast_observations], jobs=[define_asset_job("fetch", [fits_files]),
                                                                      define_asset_job("query", [mast_observations])])
    fetch, query = defs.resolve_job_def("fetch"), defs.resolve_job_def("query")

    def after_query(tags: dict | None = None) -> list | SkipReason:
        run = query.execute_in_process(instance=instance, tags=tags)
        success = next(e for e in run.all_events if e.event_type_value == "PIPELINE_SUCCESS")
        context = build_run_status_sensor_context("failed_observations_sensor", success, instance,
                                                  instance.get_run_by_id(run.run_id),
                                                  resources={"home": HomeResource(root=str(tmp_path)),
                                                             "archive": ArchiveResource()})
        return failed_observations_sensor(context)

    with instance_for_test() as instance:
        _query_result(instance, tmp_path, obs_ids[:-1])  # the last observation left the watchlist
        instance.add_dynamic_partitions("observations", obs_ids)
        assert fetch.execute_in_process(instance=instance, tags=partition_range(obs_ids[0], obs_ids[-1])).success
        assert isinstance(after_query(), SkipReason)
        broken.update(obs_ids[i] for i in (3, 4, 7, 10, 11))
        for i in (3, 4, 7, 10, 11):
            run = fetch.execute_in_process(instance=instance, partition_key=obs_ids[i], raise_on_error=False)
            assert not run.success
        broken.clear()
        assert fetch.execute_in_process(instance=instance, partition_key=obs_ids[7]).success  # repaired since
        # a query the command line ran (skyassets demo) is followed by its own retries
        assert "command line" in after_query({LAUNCHED_BY: COMMAND_LINE}).skip_message
        requests = after_query()
        every = instance.get_dynamic_partitions("observations")
        assert [requested_partitions(r, every) for r in requests] == [[obs_ids[3], obs_ids[4]], [obs_ids[10]]]
        assert len({r.run_key for r in requests}) == 2
        for request in requests:
            assert fetch.execute_in_process(instance=instance, partition_key=request.partition_key,
                                            tags=request.tags).success
        assert isinstance(after_query(), SkipReason)


def test_an_observation_failing_every_daily_retry_is_left_alone_until_a_run_of_it_succeeds(tmp_path):
    a, ok, b = "hst_0001_acs_wfc", "hst_0002_acs_wfc", "hst_0003_acs_wfc"
    broken = {a, b}

    # observation_job's three assets: its product list is materialised before its file fails
    @asset(partitions_def=observations_partitions)
    def mast_products() -> None:
        pass

    @asset(partitions_def=observations_partitions, deps=[mast_products])
    def fits_files(context) -> None:
        if broken & set(context.partition_keys):
            raise RuntimeError("the archive serves it corrupt")

    @asset(partitions_def=observations_partitions, deps=[fits_files])
    def image_metadata() -> None:
        pass

    @asset
    def mast_observations() -> None:
        pass

    chain = [mast_products, fits_files, image_metadata]
    defs = Definitions(assets=[*chain, mast_observations], jobs=[define_asset_job("observation_job", chain),
                                                                  define_asset_job("query", [mast_observations])])
    fetch, query = defs.resolve_job_def("observation_job"), defs.resolve_job_def("query")

    def day(daily_retries: int = 2) -> list:
        """A watchlist query, the sensor's answer, and its retries run as the daemon would."""
        run = query.execute_in_process(instance=instance)
        success = next(e for e in run.all_events if e.event_type_value == "PIPELINE_SUCCESS")
        logs: list[str] = []
        context = build_run_status_sensor_context(
            "failed_observations_sensor", success, instance, instance.get_run_by_id(run.run_id),
            resources={"home": HomeResource(root=str(tmp_path)),
                       "archive": ArchiveResource(daily_retries=daily_retries)})
        context.log.warning = logs.append  # what the tick's log would say
        answer = failed_observations_sensor(context)
        if isinstance(answer, SkipReason):
            return [answer.skip_message, *logs]
        every = instance.get_dynamic_partitions("observations")
        for request in answer:
            assert request.tags["skyassets/retry"] == "daily"
            fetch.execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags,
                                     raise_on_error=False)
        return [requested_partitions(r, every) for r in answer]

    with instance_for_test() as instance:
        _query_result(instance, tmp_path, [a, ok, b])
        instance.add_dynamic_partitions("observations", [a, ok, b])
        for key in (a, ok, b):
            fetch.execute_in_process(instance=instance, partition_key=key, raise_on_error=False)
        broken.discard(b)  # b is fixed at the archive; a stays broken
        assert day() == [[a], [b]]
        # Dagster ran a's retry again after its process died: one try, however many runs
        (last,) = instance.get_runs(RunsFilter(job_name="observation_job", tags={"skyassets/retry": "daily"},
                                               statuses=[DagsterRunStatus.FAILURE]), limit=1)
        assert last.tags["dagster/partition"] == a
        instance.add_run(DagsterRun(job_name=last.job_name, run_id=str(uuid.uuid4()), tags=last.tags,
                                    status=DagsterRunStatus.FAILURE, root_run_id=last.run_id,
                                    parent_run_id=last.run_id))
        assert day() == [[a]]
        assert day(daily_retries=3) == [[a]]  # a larger allowance gives it more days
        skipped, said = day()
        assert skipped == "no observation of the watchlist has a failed last run that is still retried (1 given up)"
        assert said.startswith("1 observations failed each of their last 2 daily retries") and a in said
        assert day(daily_retries=0) == [[a]]  # 0: retried without end
        broken.clear()  # repaired, and run again by hand: its count starts over
        assert fetch.execute_in_process(instance=instance, partition_key=a).success
        broken.add(a)
        fetch.execute_in_process(instance=instance, partition_key=a, raise_on_error=False)
        assert day() == [[a]]
