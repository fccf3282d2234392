"""The pipeline on a PostgreSQL instance with S3 step logs (deploy/dagster.yaml), under a real `dagster dev`.

Several observation runs at once, the daemon's sensors and automation on top, and every event accounted
for: each run's materialisations are in the asset index exactly once, none is missing, none doubled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
import yaml
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster_graphql import DagsterGraphQLClient

from skyassets.cli.commands import EVENT_BATCH_ENV
from skyassets.cli.runs import ingest, latest_metadata
from skyassets.lake.home import Home
from skyassets_tests.postgres import new_database, running_postgres
from skyassets_tests.servers import free_port, serving

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LOGS_BUCKET = "skyassets-logs"
OBSERVATION_ASSETS = {"mast_products", "fits_files", "image_metadata"}
UNFINISHED = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
              DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


@pytest.fixture(scope="module")
def postgres_server():
    with running_postgres() as url:
        yield url


@pytest.fixture
def deployed_instance(postgres_server, emu, tmp_path, monkeypatch, request):
    """$DAGSTER_HOME holding deploy/dagster.yaml, its database new and its step-log bucket in the emulator's S3."""
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copyfile(ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        "DAGSTER_HOME": str(dagster_home),
        "SKYASSETS_HOME": str(tmp_path / "home"),
        "SKYASSETS_POSTGRES_URL": new_database(postgres_server, request.node.name.lower()),
        "SKYASSETS_COMPUTE_LOGS_BUCKET": LOGS_BUCKET,
        "SKYASSETS_COMPUTE_LOGS_ENDPOINT": emu.s3_endpoint,
        "AWS_ACCESS_KEY_ID": "skyassets",
        "AWS_SECRET_ACCESS_KEY": "skyassets",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SKYASSETS_MAST_URL": emu.url,
        "SKYASSETS_S3_ENDPOINT": emu.s3_endpoint,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=emu.s3_endpoint)
    s3.create_bucket(Bucket=LOGS_BUCKET)
    return dagster_home, s3


def test_the_deployment_settings_load_as_a_postgres_instance(deployed_instance):
    dagster_home, _ = deployed_instance
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.compute_log_manager).__name__ == "S3ComputeLogManager"
        assert instance.get_runs() == []


def test_concurrent_runs_sensors_and_automation_on_postgres(deployed_instance, emu, tmp_path):
    dagster_home, s3 = deployed_instance
    target = "NGC-3132"
    obs_ids = sorted(o["obs_id"] for o in emu.sky.observations if o["obs_id"].startswith("jw02733-o001"))
    assert len(obs_ids) == 3
    watchlist = tmp_path / "watchlist.yaml"
    watchlist.write_text("entries:\n" + "".join(f"  - obs_id: {obs_id}\n" for obs_id in obs_ids))
    port = free_port()
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1",
               "-p", str(port)]
    env = {**os.environ, "SKYASSETS_WATCHLIST": str(watchlist), "SKYASSETS_AUTOMATION_INTERVAL": "5"}
    instance = DagsterInstance.from_config(str(dagster_home))
    instance.add_dynamic_partitions("observations", obs_ids)
    # The archive pool allows one step at a time by default, which holds queued observation runs back one
    # by one; an operator raises it as the README says, and the runs go together.
    subprocess.run([sys.executable, "-m", "dagster", "instance", "concurrency", "set", "mast_api", str(len(obs_ids))],
                   check=True, capture_output=True)
    with serving(command, ready_url=f"http://127.0.0.1:{port}/server_info", env=env, cwd=tmp_path,
                 log=tmp_path / "dagster-dev.log"):
        def launch(job_name: str, obs_id: str | None = None) -> str:
            client = DagsterGraphQLClient("127.0.0.1", port_number=port)  # one per thread: a client is not shared
            return client.submit_job_execution(
                job_name, repository_location_name="skyassets", repository_name="__repository__",
                tags={"dagster/partition": obs_id} if obs_id else None,
            )

        # The watchlist query first (its table is what the observation runs read); the partitions exist
        # already, so new_observations_sensor finds nothing new to request.
        wait_for(instance, [launch("watchlist_job")])
        with ThreadPoolExecutor(len(obs_ids)) as pool:
            run_ids = dict(zip(obs_ids, pool.map(lambda obs_id: launch("observation_job", obs_id), obs_ids),
                               strict=True))
        wait_for(instance, list(run_ids.values()))
        # Then automation takes the observations on (quality, the target, its products, the catalog) until
        # nothing is left to do.
        deadline = time.monotonic() + 900
        quiet_since = None
        while True:
            assert time.monotonic() < deadline, f"the pipeline did not settle: {summary(instance)}"
            busy = instance.get_runs_count(RunsFilter(statuses=UNFINISHED))
            # measured and the products made: on two busy cores the daemon's next tick can come after
            # a quiet spell, so the end state, not the quiet alone, says the pipeline has settled
            done = partitions_of(instance, "image_quality") >= set(obs_ids) and target in partitions_of(
                instance, "mosaics")
            if busy or not done:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 25:  # five automation ticks with nothing new
                break
            time.sleep(5)

    runs = instance.get_runs()
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs), summary(instance)
    # The observation runs were in progress together: launched (their processes starting, writing events)
    # before the others had ended. Their steps are short next to a process start on two busy cores, so the
    # windows run from the launch, not from the first step.
    windows = [(launched(instance, run_ids[obs_id]), instance.get_run_record_by_id(run_ids[obs_id]).end_time)
               for obs_id in obs_ids]
    # Each was in progress while another was: runs that start quickly may finish before the last starts.
    assert all(any(start < other_end and other_start < end for other_start, other_end in windows[:i] + windows[i + 1:])
               for i, (start, end) in enumerate(windows)), windows

    # Every run's own log against the asset index, both read back from PostgreSQL.
    by_run = Counter()
    for run in runs:
        for record in instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
            by_run[(record.asset_key.to_user_string(), record.partition_key, run.run_id)] += 1
    indexed = Counter()
    for key in instance.get_asset_keys():
        for record in instance.fetch_materializations(AssetRecordsFilter(asset_key=key), limit=10_000).records:
            indexed[(key.to_user_string(), record.partition_key, record.run_id)] += 1
    assert by_run == indexed
    assert set(by_run.values()) == {1}  # no asset partition materialised twice by one run
    for obs_id in obs_ids:
        made = {(asset, run_id) for asset, partition, run_id in by_run if partition == obs_id}
        assert {(asset, run_ids[obs_id]) for asset in OBSERVATION_ASSETS} <= made
        assert sum(1 for asset, _ in made if asset == "fits_files") == 1  # one run downloaded it

    # The daemon evaluated the automation: it measured every observation and made the target's products.
    for obs_id in obs_ids:
        quality = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("image_quality"), asset_partitions=[obs_id]), limit=1
        ).records[0]
        assert instance.get_run_by_id(quality.run_id).tags.get("dagster/sensor_name") == "automation_sensor"
    assert instance.get_dynamic_partitions("targets") == [target]
    assert partitions_of(instance, "mosaics") == {target}
    # Step logs went to S3, as deploy/dagster.yaml says.
    assert s3.list_objects_v2(Bucket=LOGS_BUCKET, Prefix="skyassets/compute-logs/").get("KeyCount", 0) > 0


def test_a_ranged_run_s_events_are_written_in_batches_each_partition_keeping_its_own(
    deployed_instance, emu, tmp_path, monkeypatch
):
    """The deployment batches event writes (its compose file sets the size, as the command line does): a
    landing run of several partitions stores each asset's materialisations in one write, and every
    partition still has its own record and figures, in the run's log and the asset index alike."""
    dagster_home, _ = deployed_instance
    environment = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["x-dagster"]["environment"]
    monkeypatch.setenv(EVENT_BATCH_ENV, environment[EVENT_BATCH_ENV])
    drop = tmp_path / "night"
    drop.mkdir()
    cal = sorted(emu.sky.root.rglob("*_cal.fits"))[:4]
    for path in cal:
        shutil.copy(path, drop / path.name)
    home = Home(tmp_path / "home")
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        storage = instance.event_log_storage
        batches = []
        store_batch = storage.store_event_batch

        def recorded(events):
            batches.append([(e.dagster_event.event_type, e.dagster_event.asset_key.to_user_string(),
                             e.dagster_event.partition) for e in events])
            store_batch(events)

        monkeypatch.setattr(storage, "store_event_batch", recorded)
        report = ingest([drop], home, instance)
        assert report.ok and report.runs == 1, report
        partitions = sorted(report.partitions)
        assert len(partitions) == len(cal)
        # each asset's materialisations of the whole range in one write, not one per partition
        written = sorted(
            (batch[0][1], sorted(partition for _, _, partition in batch)) for batch in batches
            if {kind for kind, _, _ in batch} == {DagsterEventType.ASSET_MATERIALIZATION}
        )
        assert written == [("fits_files", partitions), ("image_metadata", partitions)]
        (run,) = instance.get_runs()
        by_run = Counter(
            (r.asset_key.to_user_string(), r.partition_key)
            for r in instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
        )
        indexed = Counter(
            (key, r.partition_key) for key in ("fits_files", "image_metadata")
            for r in instance.fetch_materializations(AssetKey(key), limit=100).records
        )
        assert by_run == indexed == Counter((a, p) for a in ("fits_files", "image_metadata") for p in partitions)
        for partition in partitions:
            figures = latest_metadata(instance, "image_metadata", partition)
            assert figures["dagster/row_count"] == 1
            assert [r.data["obs_id"] for r in figures["preview"].records] == [partition]


def wait_for(instance: DagsterInstance, run_ids: list[str], timeout: float = 300) -> None:
    """Until the runs have finished, all successfully."""
    deadline = time.monotonic() + timeout
    while any(instance.get_run_by_id(run_id).status in UNFINISHED for run_id in run_ids):
        assert time.monotonic() < deadline, f"runs still going after {timeout} s: {summary(instance)}"
        time.sleep(2)
    assert all(instance.get_run_by_id(run_id).status == DagsterRunStatus.SUCCESS for run_id in run_ids), summary(
        instance
    )


def launched(instance: DagsterInstance, run_id: str) -> float:
    """When the daemon launched the run (its RUN_STARTING event)."""
    (record,) = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_STARTING).records
    return record.timestamp


def partitions_of(instance: DagsterInstance, asset: str) -> set[str]:
    records = instance.fetch_materializations(AssetKey(asset), limit=10_000).records
    return {r.partition_key for r in records}


def summary(instance: DagsterInstance) -> str:
    runs = [(r.job_name, r.tags.get("dagster/partition"), r.status.value) for r in instance.get_runs()]
    errors = [
        str(e.dagster_event.event_specific_data) if e.dagster_event else e.user_message
        for r in instance.get_runs() if r.status == DagsterRunStatus.FAILURE
        for e in instance.all_logs(r.run_id) if e.level >= 40
    ]
    return f"runs: {runs}\n" + "\n".join(errors[-10:])
