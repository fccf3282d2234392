"""The archive assets end to end against the emulator answering like the real MAST."""

import pandas as pd
from dagster import AssetKey, Definitions, instance_for_test

from skyassets.cli.runs import failed_checks, failure_reasons
from skyassets.defs.archive.assets import fits_files, mast_observations, mast_products
from skyassets.defs.archive.jobs import observation_job, watchlist_job
from skyassets.defs.catalog.assets import image_metadata
from skyassets.defs.resources import (
    ArchiveResource,
    DownloaderResource,
    HomeResource,
    LandingResource,
    WatchlistResource,
)


def test_real_archive_answers_through_the_pipeline(emu, tmp_path):
    emu.real_answers()
    emu.faults.add("status", endpoint="any", status=503, times=3, retry_after=0)
    # the bucket is busy too: a SlowDown, then an object cut mid-body
    emu.faults.add("status", endpoint="s3", match="/stpubdata/", status=503, times=1, retry_after=0)
    emu.faults.add("drop", endpoint="s3", match="/stpubdata/", after_bytes=20_000, times=1)
    home = tmp_path / "home"
    defs = Definitions(
        assets=[mast_observations, mast_products, fits_files, image_metadata],
        jobs=[watchlist_job, observation_job],
        resources={
            "home": HomeResource(root=str(home)),
            "watchlist": WatchlistResource(),
            "archive": ArchiveResource(url=emu.url, s3_endpoint=emu.s3_endpoint),
            "downloader": DownloaderResource(read_timeout=5, retries=3, backoff_base=0.01, backoff_max=0.05),
            "landing": LandingResource(),
        },
    )
    with instance_for_test() as instance:
        assert defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance).success
        observations = pd.read_parquet(home / "lake" / "mast_observations.parquet").set_index("obs_id")
        assert observations.index.is_unique
        assert {"J8PU01010", "6380006183007027200", "hst_10402_01_acs_wfc_f435w"} <= set(observations.index)
        assert observations.loc["jw02733-o001_t001_nircam_clear-f090w", "filters"] == "F090W;CLEAR"
        event = instance.get_latest_materialization_event(AssetKey("mast_observations")).asset_materialization
        assert event.metadata["failed_entries"].value == 0

        job = defs.resolve_job_def("observation_job")
        for obs_id, collection in (("J8PU01010", "HST"), ("6380006183007027200", "GALEX"),
                                   ("hst_10402_01_acs_wfc_f435w", "HLA")):
            instance.add_dynamic_partitions("observations", [obs_id])
            assert job.execute_in_process(instance=instance, partition_key=obs_id).success
            manifest = pd.read_parquet(home / "lake" / "fits_files" / f"{obs_id}.parquet")
            assert len(manifest) and set(manifest["fits_checksum"]) == {"ok"}
            assert all((home / path).is_relative_to(home / "files" / collection / obs_id) for path in manifest["path"])
            # the catalogue names the archive's collection and level, which an HLA header (TELESCOP
            # HST) or a GALEX one (no level) does not say
            images = pd.read_parquet(home / "lake" / "image_metadata" / f"{obs_id}.parquet")
            products = pd.read_parquet(home / "lake" / "mast_products" / f"{obs_id}.parquet").set_index("dataURI")
            assert len(images) and set(images["obs_collection"]) == {collection}, obs_id
            assert list(images["calib_level"]) == [products.loc[u, "calib_level"] for u in images["access_url"]]
            assert images["calib_level"].notna().all(), obs_id
            assert set(images["obs_publisher_did"].fillna("-")) == (
                {f"ivo://archive.stsci.edu/hst?{obs_id}"} if collection == "HST" else {"-"}), obs_id
        galex = pd.read_parquet(home / "lake" / "fits_files" / "6380006183007027200.parquet")
        assert list(galex["filename"]) == ["NGA_NGC0628-nd-int.fits.gz"]
        assert [f["times"] for f in emu.faults.list() if f["endpoint"] == "s3"] == [0, 0]  # both struck


def test_an_archive_outage_keeps_the_observations_of_the_entries_it_failed(emu, tmp_path):
    home = tmp_path / "home"
    defs = Definitions(
        assets=[mast_observations],
        jobs=[watchlist_job],
        resources={
            "home": HomeResource(root=str(home)),
            "watchlist": WatchlistResource(),
            "archive": ArchiveResource(url=emu.url, s3_endpoint=emu.s3_endpoint, retry_seconds=0.3),
            "downloader": DownloaderResource(),
            "landing": LandingResource(),
        },
    )
    table = home / "lake" / "mast_observations.parquet"
    job = defs.resolve_job_def("watchlist_job")
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance).success
        before = pd.read_parquet(table)
        ring = before[before["watchlist_entry"].str.contains("southern-ring-nircam")]
        assert len(ring) and len(ring) < len(before)

        emu.faults.add("status", endpoint="any", status=503, times=-1, retry_after=0)
        outage = job.execute_in_process(instance=instance, raise_on_error=False)
        assert not outage.success  # every entry failed: the step fails, the table stays as it was
        failure = next(e for e in outage.all_events if e.event_type_value == "STEP_FAILURE")
        assert "every watchlist entry failed" in failure.event_specific_data.error.message
        assert pd.read_parquet(table).equals(before)
        (reason,) = failure_reasons(instance, outage.run_id)  # what the demo prints of a failed query
        assert reason.startswith("mast_observations: every watchlist entry failed") and "\n" not in reason

        emu.faults.clear()
        wrong = {**defs.resources, "archive": ArchiveResource(url=emu.url, s3_endpoint=emu.s3_endpoint,
                                                             retry_seconds=0.3, token="not-a-token")}
        refused = Definitions(assets=[mast_observations], jobs=[watchlist_job], resources=wrong).resolve_job_def(
            "watchlist_job").execute_in_process(instance=instance, raise_on_error=False)
        # public data goes on; the token's check fails, saying why without the token itself
        assert refused.success and pd.read_parquet(table).equals(before)
        (reason,) = failed_checks(instance, refused.run_id)
        assert reason.startswith("mast_token_accepted: MAST refused the token (MAST_API_TOKEN"), reason
        assert "not-a-token" not in reason
        emu.faults.add("status", endpoint="resolver", match="NGC 3132", status=503, times=-1, retry_after=0)
        assert job.execute_in_process(instance=instance).success
        after = pd.read_parquet(table)
        assert sorted(after["obs_id"]) == sorted(before["obs_id"])  # the ring's rows kept, not dropped
        event = instance.get_latest_materialization_event(AssetKey("mast_observations")).asset_materialization
        assert event.metadata["failed_entries"].value == 1
        (why,) = event.metadata["failed_entry_reasons"].value  # the entry by name, and the archive's answer
        assert "southern-ring-nircam" in why and "HTTP 503" in why, why
        assert event.metadata["kept_from_failed_entries"].value == len(set(ring["obs_id"]) - set(
            before[~before.index.isin(ring.index)]["obs_id"]))
        # the entry answers again, with the same rows: its recovery is materialised, once
        emu.faults.clear()
        assert len(job.execute_in_process(instance=instance).get_asset_materialization_events()) == 1
        recovered = instance.get_latest_materialization_event(AssetKey("mast_observations")).asset_materialization
        assert recovered.metadata["failed_entries"].value == 0
        assert not job.execute_in_process(instance=instance).get_asset_materialization_events()
