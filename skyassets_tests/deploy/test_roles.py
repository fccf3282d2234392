"""Roles at the door: a read-only webserver for viewers refuses to launch runs, the full one for operators does.

Both serve the same instance and the project's workspace.yaml, as in deploy/docker-compose.yml.
"""

import os
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests
from dagster import DagsterInstance, DagsterRunStatus

from skyassets_tests.servers import free_port, serving

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""


def launch(port: int, job_name: str) -> dict:
    """The answer of the webserver on ``port`` to the GraphQL mutation launching ``job_name``."""
    params = {
        "selector": {"repositoryLocationName": "skyassets", "repositoryName": "__repository__", "jobName": job_name},
        "runConfigData": {},
    }
    answer = requests.post(
        f"http://127.0.0.1:{port}/graphql",
        json={"query": LAUNCH_RUN, "variables": {"executionParams": params}},
        timeout=120,
    )
    answer.raise_for_status()
    body = answer.json()
    assert "errors" not in body, body
    return body["data"]["launchRun"]


def test_read_only_webserver_refuses_to_launch_and_the_full_one_launches(tmp_path):
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    # The packaged settings queue runs; no daemon runs here, so the accepted run stays queued.
    shutil.copyfile(ROOT / "skyassets" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "SKYASSETS_HOME": str(tmp_path / "home")}
    ports = {"viewers": free_port(), "operators": free_port()}
    with ExitStack() as stack:
        for role, port in ports.items():
            command = [
                sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
                "-w", str(ROOT / "workspace.yaml"), *(["--read-only"] if role == "viewers" else []),
            ]
            stack.enter_context(
                serving(command, ready_url=f"http://127.0.0.1:{port}/server_info", env=env, cwd=tmp_path,
                        log=tmp_path / f"{role}.log")
            )
        refused = launch(ports["viewers"], "watchlist_job")
        accepted = launch(ports["operators"], "watchlist_job")

    assert refused["__typename"] == "UnauthorizedError", refused  # "Authorization failed"
    assert accepted["__typename"] == "LaunchRunSuccess", accepted
    instance = DagsterInstance.from_config(str(dagster_home))
    runs = instance.get_runs()
    assert [(r.run_id, r.job_name) for r in runs] == [(accepted["run"]["runId"], "watchlist_job")]
    assert runs[0].status == DagsterRunStatus.QUEUED
