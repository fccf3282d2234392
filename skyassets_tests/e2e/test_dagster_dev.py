"""The pipeline under a real `dagster dev` (webserver + daemon) on loopback, driven through GraphQL."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from dagster import DagsterInstance, DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

from skyassets.emulator import Emulator

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_run(client: DagsterGraphQLClient, run_id: str, timeout: float = 240) -> DagsterRunStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_run_status(run_id)
        if status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
            return status
        time.sleep(1)
    raise AssertionError(f"run {run_id} still {status} after {timeout} s")


@pytest.fixture
def dagster_dev(tmp_path):
    """`dagster dev` on a free loopback port, pointed at a standalone emulator, with a one-observation watchlist."""
    with Emulator(tmp_path / "emulator-home") as emu:
        obs_id = next(o["obs_id"] for o in emu.sky.observations if o["obs_collection"] == "JWST")
        watchlist = tmp_path / "watchlist.yaml"
        watchlist.write_text(f"entries:\n  - name: one\n    obs_id: {obs_id}\n")
        dagster_home = tmp_path / "dagster"
        dagster_home.mkdir()
        shutil.copyfile(ROOT / "skyassets" / "dagster.yaml", dagster_home / "dagster.yaml")
        port = _free_port()
        env = {
            **os.environ,
            "DAGSTER_HOME": str(dagster_home),
            "SKYASSETS_HOME": str(tmp_path / "home"),
            "SKYASSETS_WATCHLIST": str(watchlist),
            "SKYASSETS_MAST_URL": emu.url,
            "SKYASSETS_S3_ENDPOINT": emu.s3_endpoint,
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-m", "skyassets.definitions", "-h", "127.0.0.1", "-p", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok:
                        break
                except requests.ConnectionError:
                    pass
                assert process.poll() is None, "dagster dev exited"
                assert time.monotonic() < deadline, "dagster dev did not start"
                time.sleep(1)
            yield DagsterGraphQLClient("127.0.0.1", port_number=port), dagster_home, tmp_path / "home", obs_id
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _errors(instance: DagsterInstance, run_id: str) -> str:
    runs = [(r.job_name, r.tags.get("dagster/partition"), r.status.value) for r in instance.get_runs()]
    return f"runs: {runs}\n" + "\n".join(
        str(e.dagster_event.event_specific_data) if e.dagster_event else e.user_message
        for e in instance.all_logs(run_id)
        if e.level >= 40
    )


def test_dagster_dev_runs_the_observation_job_for_one_partition(dagster_dev):
    client, dagster_home, home, obs_id = dagster_dev
    instance = DagsterInstance.from_config(str(dagster_home))
    watchlist_run = client.submit_job_execution("watchlist_job")
    assert _wait_for_run(client, watchlist_run) == DagsterRunStatus.SUCCESS, _errors(instance, watchlist_run)

    # The daemon's sensor adds the partition; make sure it exists before launching by hand too.
    if obs_id not in instance.get_dynamic_partitions("observations"):
        instance.add_dynamic_partitions("observations", [obs_id])
    run_id = client.submit_job_execution("observation_job", tags={"dagster/partition": obs_id})
    assert _wait_for_run(client, run_id) == DagsterRunStatus.SUCCESS, _errors(instance, run_id)

    manifest = home / "lake" / "fits_files" / f"{obs_id}.parquet"
    assert manifest.exists()
    files = list((home / "files" / "JWST" / obs_id).glob("*.fits"))
    assert files and all(Path(f"{f}.sha256").exists() for f in files)
