"""The pipeline under a real `dagster dev` (webserver + daemon) on loopback, driven through GraphQL."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import requests
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster_graphql import DagsterGraphQLClient

from skyassets.catalog.db import connect
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


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    """`dagster dev` on a free loopback port, pointed at a standalone emulator, with a one-observation watchlist."""
    tmp_path = tmp_path_factory.mktemp("dev")
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
            "SKYASSETS_AUTOMATION_INTERVAL": "5",
        }
        log = open(tmp_path / "dev.log", "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [sys.executable, "-m", "skyassets.cli.main", "dev", "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT,  # where a user starts it, beside the project's own dagster.yaml
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 240
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok:
                        break
                except requests.ConnectionError:
                    pass
                assert process.poll() is None, "dagster dev exited"
                assert time.monotonic() < deadline, "dagster dev did not start"
                time.sleep(1)
            while not _location_loaded(port):
                assert time.monotonic() < deadline + 120, "the code location did not load"
                time.sleep(1)
            shutil.copyfile(tmp_path / "dev.log", tmp_path / "startup.log")
            yield DagsterGraphQLClient("127.0.0.1", port_number=port), dagster_home, tmp_path, obs_id
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            log.close()


def _location_loaded(port: int) -> bool:
    query = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
    answer = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=10).json()
    entries = answer["data"]["workspaceOrError"]["locationEntries"]
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


def test_skyassets_dev_starts_without_warnings(dagster_dev):
    startup = (dagster_dev[2] / "startup.log").read_text()
    assert "Serving dagster-webserver" in startup  # the log is the UI's own
    assert "warning" not in startup.lower(), startup


def _errors(instance: DagsterInstance, run_id: str) -> str:
    runs = [(r.job_name, r.tags.get("dagster/partition"), r.status.value) for r in instance.get_runs()]
    return f"runs: {runs}\n" + "\n".join(
        str(e.dagster_event.event_specific_data) if e.dagster_event else e.user_message
        for e in instance.all_logs(run_id)
        if e.level >= 40
    )


def test_dagster_dev_runs_the_observation_job_for_one_partition(dagster_dev):
    client, dagster_home, folder, obs_id = dagster_dev
    home = folder / "home"
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

    # From here declarative automation alone takes the observation on: its quality is measured, it is
    # grouped into a target, the target's mosaics and composites are made, and the published catalog
    # gathers all of it (quality included, though it lands while target_groups and catalog first run).
    deadline = time.monotonic() + 420
    while not _caught_up(home, obs_id):
        assert time.monotonic() < deadline, f"automation did not catch up: {_errors(instance, run_id)}"
        time.sleep(5)
    made = instance.fetch_materializations(AssetKey("mosaics"), limit=1).records[0]
    run = instance.get_run_by_id(made.run_id)
    assert run.tags.get("dagster/sensor_name") == "automation_sensor"
    assert instance.get_dynamic_partitions("targets") == [made.partition_key]
    assert list((home / "products" / made.partition_key).glob("mosaic_*.fits"))


def _caught_up(home: Path, obs_id: str) -> bool:
    """The published catalog has the observation's quality and a mosaic of its target."""
    if not (home / "catalog.duckdb").exists():
        return False
    try:
        con = connect(home, published=True)
    except duckdb.Error:  # being replaced
        return False
    try:
        tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}
        if not {"quality", "mosaics"} <= tables:
            return False
        measured = con.execute("SELECT count(*) FROM quality WHERE obs_id = ?", [obs_id]).fetchone()[0]
        return measured > 0 and con.execute("SELECT count(*) FROM mosaics").fetchone()[0] > 0
    finally:
        con.close()


def _run_pid(instance: DagsterInstance, run_id: str) -> int | None:
    """The pid of a run's process, from the event Dagster logs when it starts it."""
    for entry in instance.all_logs(run_id):
        if found := re.search(r"Started process for run \(pid: (\d+)\)", entry.message or ""):
            return int(found.group(1))
    return None


def test_a_landing_run_whose_process_dies_is_run_again_by_itself(dagster_dev):
    """A run killed mid-way (out of memory, a machine lost) is marked failed by the code server and
    run again by the daemon (``run_retries``), so the file it was landing is catalogued unattended."""
    client, dagster_home, folder, _ = dagster_dev
    home = folder / "home"
    instance = DagsterInstance.from_config(str(dagster_home))
    before = {r.run_id for r in instance.get_runs(RunsFilter(job_name="landing_job"))}
    cal = sorted((folder / "emulator-home").rglob("*_cal.fits"))[0]
    (home / "landing").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cal, home / "landing" / "killed.fits")
    deadline = time.monotonic() + 180
    while True:  # the sensor hands the file on once it has settled
        runs = [r for r in instance.get_runs(RunsFilter(job_name="landing_job")) if r.run_id not in before]
        if runs and (pid := _run_pid(instance, runs[0].run_id)) is not None:
            break
        assert time.monotonic() < deadline, "no landing run started"
        time.sleep(0.1)
    (killed,) = runs
    os.kill(pid, signal.SIGKILL)
    assert _wait_for_run(client, killed.run_id) == DagsterRunStatus.FAILURE
    while not (retries := instance.get_runs(RunsFilter(tags={"dagster/parent_run_id": killed.run_id}))):
        assert time.monotonic() < deadline + 120, f"not run again: {_errors(instance, killed.run_id)}"
        time.sleep(1)
    (retry,) = retries
    assert _wait_for_run(client, retry.run_id) == DagsterRunStatus.SUCCESS, _errors(instance, retry.run_id)
    key = killed.tags["dagster/partition"]
    assert home.joinpath("lake", "image_metadata", f"{key}.parquet").exists()


def test_skyassets_dev_started_by_a_script_stops_on_sigterm(tmp_path):
    """A script's background job starts with SIGINT ignored; `kill` must still stop dev and its children."""
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster"), "SKYASSETS_HOME": str(tmp_path / "home")}
    process = subprocess.Popen(
        [sys.executable, "-m", "skyassets.cli.main", "dev", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as a non-interactive shell's `&`
    )
    try:
        deadline = time.monotonic() + 240
        while not _serving(port):
            assert process.poll() is None and time.monotonic() < deadline, "dagster dev did not start"
            time.sleep(1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) is not None
        deadline = time.monotonic() + 30  # the webserver, daemon and code server go with it
        while _group_alive(process.pid):
            assert time.monotonic() < deadline, "dagster dev's processes outlived it"
            time.sleep(0.5)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _serving(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok
    except requests.ConnectionError:
        return False
