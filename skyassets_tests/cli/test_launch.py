"""Runs from the command line are launched the way the UI launches them, and the UI can re-execute them."""

import os

import pytest
import requests
import yaml
from dagster import DagsterInstance, DagsterRunStatus

from skyassets.cli.launch import LOCATION, Launcher, Submission, launching_home
from skyassets.cli.main import prepare_dagster_home
from skyassets.cli.runs import QUIET
from skyassets.lake.home import Home


def test_the_launching_instance_shares_the_homes_storage_and_pools(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    dagster_home = prepare_dagster_home(Home(tmp_path / "home"))
    settings = yaml.safe_load((launching_home(dagster_home) / "dagster.yaml").read_text())
    assert settings["storage"] == {"sqlite": {"base_dir": str(dagster_home)}}
    assert settings["compute_logs"]["config"]["base_dir"] == str(dagster_home / "storage")
    assert settings["run_coordinator"]["class"] == "DefaultRunCoordinator"
    assert settings["concurrency"] == {"pools": yaml.safe_load((dagster_home / "dagster.yaml").read_text())[
        "concurrency"]["pools"]}
    # A PostgreSQL home keeps its storage section as it is.
    postgres = {"postgres": {"postgres_url": {"env": "SKYASSETS_POSTGRES_URL"}}}
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump({"storage": postgres}))
    assert yaml.safe_load((launching_home(dagster_home) / "dagster.yaml").read_text())["storage"] == postgres


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    answer = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables or {}},
                           timeout=120)
    answer.raise_for_status()
    assert not answer.json().get("errors"), answer.json()
    return answer.json()["data"]


@pytest.mark.slow
def test_launched_runs_have_the_code_locations_origin_and_re_execute_from_the_ui(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("SKYASSETS_HOME", str(tmp_path / "home"))
    home = Home(tmp_path / "home")
    dagster_home = prepare_dagster_home(home)
    with DagsterInstance.get() as instance, Launcher(dagster_home, instance) as launcher:
        (run,) = launcher.run_all([Submission("watchlist_job", {"team": "survey"}, QUIET)])
        assert run.status == DagsterRunStatus.SUCCESS and run.tags["team"] == "survey"
        assert run.remote_job_origin.location_name == LOCATION  # what "Re-execute" needs
        # The job page lists it (it did not for runs executed in the command's own process).
        listed = _graphql(launcher.port, '{ runsOrError(filter: {pipelineName: "watchlist_job"}) '
                                         '{ ... on Runs { results { runId } } } }')
        assert [r["runId"] for r in listed["runsOrError"]["results"]] == [run.run_id]
        # The UI's "Re-execute all" button sends this mutation.
        answer = _graphql(launcher.port, """
            mutation($parent: String!) {
              launchRunReexecution(reexecutionParams: {parentRunId: $parent, strategy: ALL_STEPS}) {
                __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
              }
            }""", {"parent": run.run_id})["launchRunReexecution"]
        assert answer["__typename"] == "LaunchRunSuccess", answer
        child = answer["run"]["runId"]
        launcher.wait([child])
        again = instance.get_run_by_id(child)
        assert again.status == DagsterRunStatus.SUCCESS and again.parent_run_id == run.run_id
    assert home.tables.exists("mast_observations")
    assert os.environ["DAGSTER_HOME"] == str(dagster_home)  # the webserver's instance never leaked here
