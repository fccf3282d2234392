"""The archive assets end to end on a real Dagster instance against the emulator."""

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    SkipReason,
    build_run_status_sensor_context,
    build_sensor_context,
    instance_for_test,
)

import skyassets
from skyassets.defs.archive.assets import fits_files, mast_observations, mast_products
from skyassets.defs.archive.jobs import observation_job, watchlist_job
from skyassets.defs.archive.sensors import failed_batch_sensor, failed_observations_sensor, new_observations_sensor
from skyassets.defs.catalog.assets import image_metadata
from skyassets.defs.partitions import requested_partitions
from skyassets.defs.resources import (
    ArchiveResource,
    DownloaderResource,
    HomeResource,
    LandingResource,
    WatchlistResource,
)
from skyassets.defs.tags import COMMAND_LINE, LAUNCHED_BY, PARENT_RUN, partition_range


def _defs(emu, home: Path, watchlist: str = "packaged:watchlist.yaml") -> Definitions:
    return Definitions(
        assets=[mast_observations, mast_products, fits_files, image_metadata],
        jobs=[watchlist_job, observation_job],
        sensors=[new_observations_sensor],
        resources={
            "home": HomeResource(root=str(home)),
            "watchlist": WatchlistResource(path=watchlist),
            "archive": ArchiveResource(url=emu.url, s3_endpoint=emu.s3_endpoint),
            "downloader": DownloaderResource(read_timeout=5, retries=3, backoff_base=0.01, backoff_max=0.05),
            "landing": LandingResource(),
        },
    )


def _tick(instance: DagsterInstance, defs: Definitions, cursor: str | None = None):
    context = build_sensor_context(instance=instance, definitions=defs, cursor=cursor, resources=defs.resources)
    result = new_observations_sensor(context)
    for request in getattr(result, "dynamic_partitions_requests", []):
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def _downloads(emu) -> int:
    return sum(1 for r in emu.requests if r["method"] == "GET" and "Download/file" in r["path"])


@pytest.fixture
def pipeline(emu, tmp_path):
    with instance_for_test() as instance:
        yield instance, _defs(emu, tmp_path / "home"), tmp_path / "home"


def test_a_landed_observation_in_a_run_of_mast_products_fails_saying_it_is_landed(emu, pipeline):
    """A UI backfill of missing mast_products partitions reaches the landed ones too: told why, not to delete them."""
    instance, defs, home = pipeline
    assert defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance).success
    instance.add_dynamic_partitions("observations", ["landed-NIGHT1"])
    run = defs.resolve_job_def("observation_job").execute_in_process(
        instance=instance, partition_key="landed-NIGHT1", raise_on_error=False)
    assert not run.success
    said = [e.message for e in instance.all_logs(run.run_id) if "no product list" in (e.message or "")]
    assert said == ["no product list: landed-NIGHT1 is an observation of landed files: MAST lists nothing for it, "
                    "its files come from the landing folder (landing_job); leave landed-* partitions out of runs "
                    "of mast_products"]


def test_watchlist_to_verified_files(emu, pipeline):
    instance, defs, home = pipeline
    assert defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance).success
    observations = pd.read_parquet(home / "lake" / "mast_observations.parquet")
    event = instance.get_latest_materialization_event(AssetKey("mast_observations"))
    metadata = event.asset_materialization.metadata
    assert metadata["dagster/row_count"].value == len(observations) > 0
    assert metadata["proprietary_left_out"].value >= 1
    assert {c.name for c in metadata["dagster/column_schema"].value.columns} >= {"obs_id", "s_ra", "watchlist_entry"}
    # a position entry's distance, in the unit MAST gives it, beside null for the other entries'
    field = pq.read_schema(home / "lake" / "mast_observations.parquet").field("distance")
    assert field.type == pa.float64() and field.metadata[b"unit"] == b"arcsec"
    assert observations["distance"].notna().any() and observations["distance"].max() < 3600
    # The archive answers the same again: nothing is materialised, so nothing downstream is redone.
    again = defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance)
    assert again.success and not again.get_asset_materialization_events()
    assert instance.get_latest_materialization_event(AssetKey("mast_observations")).run_id == event.run_id
    # A changed answer is materialised as usual.
    pd.read_parquet(home / "lake" / "mast_observations.parquet").iloc[1:].to_parquet(
        home / "lake" / "mast_observations.parquet")
    assert len(defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance)
               .get_asset_materialization_events()) == 1
    assert pd.read_parquet(home / "lake" / "mast_observations.parquet").equals(observations)

    result = _tick(instance, defs)
    every = instance.get_dynamic_partitions("observations")
    keys = sorted(k for r in result.run_requests for k in requested_partitions(r, every))
    assert keys == sorted(observations["obs_id"])
    assert sorted(instance.get_dynamic_partitions("observations")) == keys
    assert isinstance(_tick(instance, defs, cursor=result.cursor), SkipReason)  # nothing new: no runs

    job = defs.resolve_job_def("observation_job")
    obs_id = next(k for k in keys if k.startswith("jw"))
    assert job.execute_in_process(instance=instance, partition_key=obs_id).success
    manifest = pd.read_parquet(home / "lake" / "fits_files" / f"{obs_id}.parquet")
    products = pd.read_parquet(home / "lake" / "mast_products" / f"{obs_id}.parquet")
    assert sorted(manifest["filename"]) == sorted(products["productFilename"])
    # a product names where its file is stored, as its manifest row does once downloaded
    assert dict(zip(products["productFilename"], products["path"], strict=True)) == dict(
        zip(manifest["filename"], manifest["path"], strict=True))
    for row in manifest.itertuples():
        path = home / row.path
        assert path.is_relative_to(home / "files" / "JWST" / obs_id)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256
        assert path.stat().st_size == row.size
        assert row.status == "downloaded" and row.fits_checksum == "ok" and row.source == "s3"
    assert not list((home / "files").rglob("*.part"))
    images = pd.read_parquet(home / "lake" / "image_metadata" / f"{obs_id}.parquet")
    assert sorted(set(images["file_name"])) == sorted(manifest["filename"]) and (images["obs_id"] == obs_id).all()

    files_event = instance.get_latest_materialization_event(AssetKey("fits_files"))
    files_meta = files_event.asset_materialization.metadata
    assert files_meta["files_downloaded"].value == len(manifest)
    assert files_meta["bytes_fetched"].value == manifest["size"].sum()

    # Re-running skips what is verified: no download request reaches the archive.
    before = _downloads(emu)
    assert job.execute_in_process(instance=instance, partition_key=obs_id).success
    again = pd.read_parquet(home / "lake" / "fits_files" / f"{obs_id}.parquet")
    assert list(again["sha256"]) == list(manifest["sha256"])
    again_meta = instance.get_latest_materialization_event(AssetKey("fits_files")).asset_materialization.metadata
    assert (again_meta["files_skipped"].value, again_meta["files_downloaded"].value) == (len(manifest), 0)
    # A skipped file is said unchanged, and keeps the record of how it was fetched and checked.
    assert set(again["status"]) == {"unchanged"}
    assert list(again["source"]) == list(manifest["source"])
    assert list(again["fits_checksum"]) == list(manifest["fits_checksum"])
    assert _downloads(emu) == before


def test_an_entry_that_can_no_longer_be_read_keeps_its_rows_and_is_materialised_once(emu, tmp_path):
    """An entry mistyped after it found observations fails alone under the name it had (its rows
    kept, their product choice the watchlist's defaults), and the same failure again is said already."""
    watchlist = tmp_path / "watchlist.yaml"
    good = 'entries:\n  - coordinates: "24.1739 15.7836"\n    radius: 4 arcmin\n  - {name: ring, target: NGC 3132}\n'
    watchlist.write_text(good)
    home = tmp_path / "home"
    job = _defs(emu, home, str(watchlist)).resolve_job_def("watchlist_job")
    table = home / "lake" / "mast_observations.parquet"
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance).success
        before = pd.read_parquet(table)
        field = before[before["watchlist_entry"].str.contains("coordinates:24.1739 15.7836")]
        assert len(field)
        watchlist.write_text(good.replace("4 arcmin", "99 deg"))  # a radius past 30 degrees: cannot be read
        mistyped = job.execute_in_process(instance=instance)
        (event,) = mistyped.get_asset_materialization_events()
        (why,) = event.materialization.metadata["failed_entry_reasons"].value
        assert "radius must be an angle" in why, why
        assert event.materialization.metadata["kept_from_failed_entries"].value > 0
        assert set(field["obs_id"]) <= set(pd.read_parquet(table)["obs_id"])
        again = job.execute_in_process(instance=instance)  # the same failure: said already
        assert again.success and not again.get_asset_materialization_events()
        watchlist.write_text(good)  # mended: its recovery is shown
        assert job.execute_in_process(instance=instance).get_asset_materialization_events()
        # an entry added that finds nothing changes no row, but how the entries fared: shown
        watchlist.write_text(good + '  - {name: empty-sky, coordinates: "0.5 -89.5", radius: 1 arcsec}\n')
        (added,) = job.execute_in_process(instance=instance).get_asset_materialization_events()
        assert added.materialization.metadata["rows_per_entry"].value["empty-sky"] == 0
        again = job.execute_in_process(instance=instance)
        assert again.success and not again.get_asset_materialization_events()


def test_http_fallback_when_cloud_is_off_and_failure_keeps_verified_files(emu, tmp_path):
    home = tmp_path / "home"
    defs = _defs(emu, home)
    resources = dict(defs.resources)
    resources["archive"] = ArchiveResource(url=emu.url, s3_endpoint=emu.s3_endpoint, cloud=False)
    resources["downloader"] = DownloaderResource(read_timeout=5, retries=1, backoff_base=0.01, backoff_max=0.02)
    defs = Definitions(assets=defs.assets, jobs=defs.jobs, resources=resources)
    with instance_for_test() as instance:
        assert defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance).success
        obs_id = next(o["obs_id"] for o in emu.sky.observations if o["obs_collection"] == "HST")
        instance.add_dynamic_partitions("observations", [obs_id])
        emu.faults.add("status", match="_drz", status=503, times=-1)
        job = defs.resolve_job_def("observation_job")
        run = job.execute_in_process(instance=instance, partition_key=obs_id, raise_on_error=False)
        assert not run.success
        failure = next(e for e in run.all_events if e.is_step_failure)
        assert "_drz" in str(failure.event_specific_data.error) and "failed" in str(failure.event_specific_data.error)
        assert f"files failed ({obs_id}: {obs_id}_drz.fits: HTTP 503" in str(failure.event_specific_data.error)
        assert failure.event_specific_data.user_failure_data.metadata["failed_partitions"].value == [obs_id]
        kept = [p for p in (home / "files" / "HST" / obs_id).glob("*.fits")]
        assert kept and not any("_drz" in p.name for p in kept)
        assert not (home / "lake" / "fits_files" / f"{obs_id}.parquet").exists()

        emu.faults.clear()
        before = _downloads(emu)
        again = job.execute_in_process(instance=instance, partition_key=obs_id)
        assert again.success
        manifest = pd.read_parquet(home / "lake" / "fits_files" / f"{obs_id}.parquet")
        assert set(manifest[manifest["status"] == "downloaded"]["source"]) == {"http"}
        assert dict(manifest.groupby("status").size()) == {"downloaded": 1, "unchanged": len(kept)}
        # the run checked one file's sums; the others it trusted as verified before, and says so
        figures = again.asset_materializations_for_node("fits_files")[0].metadata
        assert (figures["files_verified_checksum"].value, figures["files_skipped"].value) == (1, len(kept))
        # the files verified by the run that failed keep how they came and what their sums said
        unchanged = manifest[manifest["status"] == "unchanged"]
        assert set(unchanged["source"]) == {"http"} and set(unchanged["fits_checksum"]) == {"ok"}
        assert _downloads(emu) - before == 1


def test_a_batch_that_fails_for_one_observation_runs_the_others_again_and_that_one_alone(emu, pipeline):
    instance, defs, home = pipeline
    assert defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance).success
    observations = pd.read_parquet(home / "lake" / "mast_observations.parquet")
    first, bad, last = observations.sort_values("obs_id").head(3).to_dict("records")
    instance.add_dynamic_partitions("observations", [first["obs_id"], bad["obs_id"], last["obs_id"]])
    # the archive refuses that one observation's product list, every time
    emu.faults.add("status", match=f'"obsid": "{bad["obsid"]}"', status=400, times=-1, endpoint="invoke")
    job = defs.resolve_job_def("observation_job")
    batch = job.execute_in_process(instance=instance, tags=partition_range(first["obs_id"], last["obs_id"]),
                                   raise_on_error=False)
    assert not batch.success
    error = next(e for e in batch.all_events if e.is_step_failure).event_specific_data.error.message
    assert f"1 of 3 observations have no product list ({bad['obs_id']}: " in error
    # the others were listed all the same
    assert sorted(p.stem for p in (home / "lake" / "mast_products").glob("*.parquet")) == sorted(
        [first["obs_id"], last["obs_id"]])

    failure = next(e for e in batch.all_events if e.event_type_value == "PIPELINE_FAILURE")
    context = build_run_status_sensor_context(
        "failed_batch_sensor", failure, instance, instance.get_run_by_id(batch.run_id)
    ).for_run_failure()
    requests = list(failed_batch_sensor(context))
    assert [requested_partitions(r, instance.get_dynamic_partitions("observations")) for r in requests] == [
        [first["obs_id"]], [bad["obs_id"]], [last["obs_id"]]]
    # the same run launched by the command line, which splits it itself: left to it; re-executed from
    # the UI (the tag copied, a parent run named), the sensor's again
    batch_run = instance.get_run_by_id(batch.run_id)
    launched = batch_run.with_tags({**batch_run.tags, LAUNCHED_BY: COMMAND_LINE})
    by_cli = build_run_status_sensor_context("failed_batch_sensor", failure, instance, launched).for_run_failure()
    [skipped] = failed_batch_sensor(by_cli)
    assert isinstance(skipped, SkipReason) and "launched by the command line" in skipped.skip_message
    again = launched.with_tags({**launched.tags, PARENT_RUN: "an-earlier-run"})
    from_ui = build_run_status_sensor_context("failed_batch_sensor", failure, instance, again).for_run_failure()
    assert len(list(failed_batch_sensor(from_ui))) == 3
    # a backfill of the observation assets from the UI runs as Dagster's asset job: split the same way;
    # a failed run of other assets is not the sensor's to retry as observation_job
    for job_name, selected, splits in (("__ASSET_JOB", ["fits_files", "image_metadata"], 3),
                                       ("__ASSET_JOB", ["image_quality"], 0),
                                       ("landing_job", ["fits_files", "image_metadata"], 0)):
        backfilled = batch_run._replace(job_name=job_name, asset_selection=frozenset(map(AssetKey, selected)))
        as_asset_job = build_run_status_sensor_context(
            "failed_batch_sensor", failure, instance, backfilled).for_run_failure()
        assert len(_split(as_asset_job)) == splits, selected
    outcome = {}
    for request in requests:
        run = job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags,
                                     raise_on_error=False)
        outcome[request.partition_key] = run.success
        # a run of one observation that fails is not split again
        if not run.success:
            failure = next(e for e in run.all_events if e.event_type_value == "PIPELINE_FAILURE")
            again = build_run_status_sensor_context(
                "failed_batch_sensor", failure, instance, instance.get_run_by_id(run.run_id)).for_run_failure()
            assert _split(again) == []
    assert outcome == {first["obs_id"]: True, bad["obs_id"]: False, last["obs_id"]: True}
    assert instance.get_materialized_partitions(AssetKey("image_metadata")) == {first["obs_id"], last["obs_id"]}

    # every product list refused (the archive down): nothing to split, and not said to be
    emu.faults.add("status", match="Mast.Caom.Products", status=400, times=-1, endpoint="invoke")
    down = job.execute_in_process(instance=instance, tags=partition_range(first["obs_id"], last["obs_id"]),
                                  raise_on_error=False)
    error = next(e for e in down.all_events if e.is_step_failure).event_specific_data.error.message
    assert "none of the 3 observations has a product list" in error and "failed_batch_sensor" not in error
    failure = next(e for e in down.all_events if e.event_type_value == "PIPELINE_FAILURE")
    context = build_run_status_sensor_context(
        "failed_batch_sensor", failure, instance, instance.get_run_by_id(down.run_id)).for_run_failure()
    assert _split(context) == []


def _split(context) -> list:
    """The runs failed_batch_sensor asks for (a tick that asks for none says why, in a SkipReason)."""
    return [r for r in failed_batch_sensor(context) if not isinstance(r, SkipReason)]


def test_a_cloud_lookup_given_up_is_said_in_the_runs_log_and_its_files_come_over_http(emu, tmp_path):
    settings = yaml.safe_load((Path(skyassets.__file__).parent / "dagster.yaml").read_text())
    home = tmp_path / "home"
    defs = _defs(emu, home)
    resources = dict(defs.resources)
    resources["archive"] = ArchiveResource(url=emu.url, s3_endpoint=emu.s3_endpoint, retry_seconds=1.0)
    defs = Definitions(assets=defs.assets, jobs=defs.jobs, resources=resources)
    with instance_for_test(overrides={"python_logs": settings["python_logs"]}) as instance:
        assert defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance).success
        obs_id = next(o["obs_id"] for o in emu.sky.observations if o["obs_collection"] == "HST")
        instance.add_dynamic_partitions("observations", [obs_id])
        emu.faults.add("status", endpoint="path_lookup", status=503, times=-1, retry_after=0)
        run = defs.resolve_job_def("observation_job").execute_in_process(instance=instance, partition_key=obs_id)
        messages = [r.event_log_entry.user_message for r in instance.get_records_for_run(run.run_id).records]
        # the next run, minutes later, does not wait out the same retries again
        other = next(o["obs_id"] for o in emu.sky.observations if o["obs_collection"] == "JWST")
        instance.add_dynamic_partitions("observations", [other])
        lookups = sum("path_lookup" in r["path"] for r in emu.requests)
        later = defs.resolve_job_def("observation_job").execute_in_process(instance=instance, partition_key=other)
        assert sum("path_lookup" in r["path"] for r in emu.requests) == lookups
        said = [r.event_log_entry.user_message for r in instance.get_records_for_run(later.run_id).records]
        assert any("no cloud lookups: a run" in m and "found the service down" in m for m in said), said
    assert any(m.startswith(f"{obs_id}: cloud path lookup: HTTP 503") and "no more cloud lookups" in m
               for m in messages), messages
    manifest = pd.read_parquet(home / "lake" / "fits_files" / f"{obs_id}.parquet")
    assert set(manifest["source"]) == {"http"}
    assert set(pd.read_parquet(home / "lake" / "fits_files" / f"{other}.parquet")["source"]) == {"http"}


def _batch_of_four(emu, home: Path, instance: DagsterInstance) -> tuple[Definitions, list[dict]]:
    """The pipeline with archive calls retried for 1 s at most, and four observations of the watchlist."""
    defs = _defs(emu, home)
    resources = {**defs.resources, "archive": ArchiveResource(url=emu.url, s3_endpoint=emu.s3_endpoint,
                                                              retry_seconds=1.0)}
    defs = Definitions(assets=defs.assets, jobs=defs.jobs, resources=resources)
    assert defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance).success
    observations = pd.read_parquet(home / "lake" / "mast_observations.parquet")
    batch = observations.sort_values("obs_id").head(4).to_dict("records")
    instance.add_dynamic_partitions("observations", [o["obs_id"] for o in batch])
    return defs, batch


def test_an_observation_whose_list_keeps_failing_fails_alone_and_the_batch_goes_on(emu, tmp_path):
    with instance_for_test() as instance:
        defs, batch = _batch_of_four(emu, tmp_path / "home", instance)
        # the archive answers, but never for that one observation's product list
        emu.faults.add("status", match=f'"obsid": "{batch[1]["obsid"]}"', status=503, times=-1, endpoint="invoke",
                       retry_after=0)
        run = defs.resolve_job_def("observation_job").execute_in_process(
            instance=instance, tags=partition_range(batch[0]["obs_id"], batch[-1]["obs_id"]), raise_on_error=False)
        error = next(e for e in run.all_events if e.is_step_failure).event_specific_data.error.message
        assert f"1 of 4 observations have no product list ({batch[1]['obs_id']}: " in error
        listed = sorted(p.stem for p in (tmp_path / "home" / "lake" / "mast_products").glob("*.parquet"))
        assert listed == sorted(o["obs_id"] for o in batch if o is not batch[1])
        failure = next(e for e in run.all_events if e.event_type_value == "PIPELINE_FAILURE")
        context = build_run_status_sensor_context(
            "failed_batch_sensor", failure, instance, instance.get_run_by_id(run.run_id)).for_run_failure()
        requests = list(failed_batch_sensor(context))
        every = instance.get_dynamic_partitions("observations")
        assert [requested_partitions(r, every) for r in requests] == [
            [batch[0]["obs_id"]], [batch[1]["obs_id"]], [o["obs_id"] for o in batch[2:]]]


def test_an_archive_that_keeps_failing_stops_the_batch_at_once_and_is_not_split(emu, tmp_path):
    with instance_for_test() as instance:
        defs, batch = _batch_of_four(emu, tmp_path / "home", instance)
        observations = pd.read_parquet(tmp_path / "home" / "lake" / "mast_observations.parquet")
        emu.faults.add("status", match="Mast.Caom.Products", status=503, times=-1, endpoint="invoke", retry_after=0)
        run = defs.resolve_job_def("observation_job").execute_in_process(
            instance=instance, tags=partition_range(batch[0]["obs_id"], batch[-1]["obs_id"]), raise_on_error=False)
        error = next(e for e in run.all_events if e.is_step_failure).event_specific_data.error.message
        assert "the archive kept failing (the next observation's list too), so the rest of the batch was not asked" \
            in error
        # one observation waited out the retries, the next was tried once; the others were not asked
        assert batch[0]["obs_id"] in error and not any(o["obs_id"] in error for o in batch[1:])
        failure = next(e for e in run.all_events if e.event_type_value == "PIPELINE_FAILURE")
        context = build_run_status_sensor_context(
            "failed_batch_sensor", failure, instance, instance.get_run_by_id(run.run_id)).for_run_failure()
        [skipped] = failed_batch_sensor(context)  # not split, and the tick says why and what follows
        assert isinstance(skipped, SkipReason) and "failed for all of its observations" in skipped.skip_message
        assert "after the next successful watchlist query" in skipped.skip_message

        # the archive back: the next successful query tries the batch again, and only it
        emu.faults.clear()
        never_run = sorted(set(observations["obs_id"]) - {o["obs_id"] for o in batch})[0]
        instance.add_dynamic_partitions("observations", [never_run])
        requests = _after_query(instance, defs)
        assert [requested_partitions(r, instance.get_dynamic_partitions("observations")) for r in requests] == [
            [o["obs_id"] for o in batch]]
        retried = defs.resolve_job_def("observation_job").execute_in_process(
            instance=instance, partition_key=requests[0].partition_key, tags=requests[0].tags)
        assert retried.success
        assert instance.get_materialized_partitions(AssetKey("image_metadata")) == {o["obs_id"] for o in batch}
        assert isinstance(_after_query(instance, defs), SkipReason)


def _after_query(instance: DagsterInstance, defs: Definitions):
    """failed_observations_sensor's answer to a successful watchlist query."""
    query = defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance)
    success = next(e for e in query.all_events if e.event_type_value == "PIPELINE_SUCCESS")
    context = build_run_status_sensor_context(
        "failed_observations_sensor", success, instance, instance.get_run_by_id(query.run_id),
        resources=defs.resources)
    return failed_observations_sensor(context)


def test_a_batch_whose_download_fails_says_what_it_fetched_before(emu, tmp_path):
    """The step fails naming the observation whose file would not download, and its Failure
    carries the run's download figures, so a summary counts the files the batch did fetch."""
    from skyassets.cli.runs import failure_metadata

    with instance_for_test() as instance:
        defs, batch = _batch_of_four(emu, tmp_path / "home", instance)
        uri = emu.sky.products[str(batch[1]["obsid"])][0]["dataURI"]  # one of its files will not download
        emu.faults.add("status", endpoint="download", match=uri, status=500, times=-1)
        resources = {**defs.resources, "downloader": DownloaderResource(retries=0),
                     "archive": ArchiveResource(url=emu.url, cloud=False, retry_seconds=1.0)}  # over HTTP
        defs = Definitions(assets=defs.assets, jobs=defs.jobs, resources=resources)
        run = defs.resolve_job_def("observation_job").execute_in_process(
            instance=instance, tags=partition_range(batch[0]["obs_id"], batch[-1]["obs_id"]), raise_on_error=False)
        assert not run.success
        figures = failure_metadata(instance, run.run_id, "fits_files")
        assert figures["failed_partitions"] == [batch[1]["obs_id"]]
        kept = list((tmp_path / "home" / "files").rglob("*.fits"))  # every file verified, the bad one's fellows too
        assert kept and all(p.with_name(p.name + ".sha256").exists() for p in kept)
        assert figures["files_downloaded"] == len(kept)
        assert figures["bytes_fetched"] == sum(p.stat().st_size for p in kept)
