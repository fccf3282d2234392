"""Exclusive-access data with a MAST token from the environment, which is never written anywhere."""

import uuid
from pathlib import Path

import pandas as pd
from dagster import AssetKey, Definitions, EnvVar, instance_for_test

from skyassets.defs.archive.assets import fits_files, mast_observations, mast_products
from skyassets.defs.archive.jobs import observation_job, watchlist_job
from skyassets.defs.catalog.assets import image_metadata
from skyassets.defs.resources import (
    ArchiveResource,
    DownloaderResource,
    HomeResource,
    LandingResource,
    WatchlistResource,
    default_resources,
)


def _files_holding(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


def test_token_from_the_environment_fetches_granted_data_and_is_never_stored(emu, tmp_path, monkeypatch):
    token = f"mast-{uuid.uuid4().hex}"
    monkeypatch.delenv("MAST_API_TOKEN", raising=False)
    assert default_resources()["archive"].token is None
    monkeypatch.setenv("MAST_API_TOKEN", "  \n")
    assert default_resources()["archive"].token is None  # blank: no token
    monkeypatch.setenv("MAST_API_TOKEN", token + "\n")  # as a secret mounted from a file ends
    configured = default_resources()["archive"].token
    assert isinstance(configured, EnvVar) and configured.env_var_name == "MAST_API_TOKEN"  # the name, not the value
    exclusive = sorted(o["obs_id"] for o in emu.sky.observations if o["dataRights"] == "EXCLUSIVE_ACCESS")
    home = tmp_path / "home"
    defs = Definitions(
        assets=[mast_observations, mast_products, fits_files, image_metadata],
        jobs=[watchlist_job, observation_job],
        resources={
            "home": HomeResource(root=str(home)),
            "watchlist": WatchlistResource(),
            "archive": ArchiveResource(url=emu.url, s3_endpoint=emu.s3_endpoint, token=EnvVar("MAST_API_TOKEN")),
            "downloader": DownloaderResource(read_timeout=5, retries=1, backoff_base=0.01, backoff_max=0.02),
            "landing": LandingResource(),
        },
    )
    emu.grant(token, "2107")
    (tmp_path / "dagster").mkdir()
    try:
        with instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
            assert defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance).success
            observations = pd.read_parquet(home / "lake" / "mast_observations.parquet")
            assert set(exclusive) <= set(observations["obs_id"])
            metadata = instance.get_latest_materialization_event(AssetKey("mast_observations")).asset_materialization
            assert metadata.metadata["exclusive_access_granted"].value == len(exclusive)
            assert metadata.metadata["proprietary_left_out"].value == 0

            obs_id = exclusive[0]
            instance.add_dynamic_partitions("observations", [obs_id])
            job = defs.resolve_job_def("observation_job")
            assert job.execute_in_process(instance=instance, partition_key=obs_id).success
            manifest = pd.read_parquet(home / "lake" / "fits_files" / f"{obs_id}.parquet")
            assert len(manifest) and set(manifest["source"]) == {"http"}
            assert set(manifest["fits_checksum"]) == {"ok"}

            # The token expires: public data is still queried, what it granted keeps its rows, and the
            # token's check fails with the reason (never the token).
            emu.revoke(token)
            expired = defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance)
            assert expired.success
            (check,) = expired.get_asset_check_evaluations()
            assert check.check_name == "mast_token_accepted" and not check.passed
            assert check.description.startswith("MAST refused the token (MAST_API_TOKEN")
            after = pd.read_parquet(home / "lake" / "mast_observations.parquet")
            assert sorted(after["obs_id"]) == sorted(observations["obs_id"])
            # the same rows, but this query granted nothing: said by a materialisation of its own
            said = instance.get_latest_materialization_event(AssetKey("mast_observations")).asset_materialization
            assert said.metadata["exclusive_access_granted"].value == 0
            assert said.metadata["kept_from_failed_entries"].value == len(exclusive)
            logged = [e.message for e in instance.all_logs(expired.run_id) if "keep their rows" in (e.message or "")]
            assert logged == [f"the MAST token was refused: public data only; {len(exclusive)} exclusive-access "
                              "observations it granted before keep their rows"]
            emu.grant(token, "2107")
            renewed = defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance)
            assert [c.passed for c in renewed.get_asset_check_evaluations()] == [True]
            said = instance.get_latest_materialization_event(AssetKey("mast_observations")).asset_materialization
            assert said.metadata["exclusive_access_granted"].value == len(exclusive)
            assert said.metadata["kept_from_failed_entries"].value == 0
            # The archive fails one access check (a 503 asking longer than the retries may wait): that
            # observation is not gone, nor counted proprietary; it keeps its row, and the log says why.
            emu.faults.add("status", endpoint="download", status=503, match="jw02107", times=1, retry_after=100_000)
            outage = defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance)
            assert outage.success and not emu.faults.on("status")  # the fault struck
            during = pd.read_parquet(home / "lake" / "mast_observations.parquet")
            assert sorted(during["obs_id"]) == sorted(observations["obs_id"])
            said = [e.message for e in instance.all_logs(outage.run_id) if "its last row is kept" in (e.message or "")]
            assert len(said) == 1 and "cannot tell whether the MAST token grants it" in said[0]
        # Nothing of the run (event log, run storage, compute logs) nor the lake and files holds the token,
        # though the event log searched holds what the runs logged.
        assert _files_holding(tmp_path / "dagster", f"{obs_id}: 3 products".encode())
        assert _files_holding(tmp_path, token.encode()) == []
    finally:
        emu.revoke(token)
