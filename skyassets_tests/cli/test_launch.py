"""Runs from the command line are launched the way the UI launches them, and the UI can re-execute them."""

import contextlib
import logging
import os

import pytest
import requests
import yaml
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from skyassets.cli.commands import prepare_dagster_home
from skyassets.cli.launch import LOCATION, Launcher, LaunchError, Submission, launching_home
from skyassets.cli.runs import QUIET
from skyassets.defs.pools import stalled_steps
from skyassets.defs.tags import retried_by_the_command_line
from skyassets.lake.home import Home


def test_the_launching_instance_shares_the_homes_storage_and_pools(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    dagster_home = prepare_dagster_home(Home(tmp_path / "home"))
    settings = yaml.safe_load((launching_home(dagster_home) / "dagster.yaml").read_text())
    assert settings["storage"] == {"sqlite": {"base_dir": str(dagster_home)}}
    assert settings["compute_logs"]["config"]["base_dir"] == str(dagster_home / "storage")
    assert settings["run_coordinator"]["class"] == "DefaultRunCoordinator"
    home_settings = yaml.safe_load((dagster_home / "dagster.yaml").read_text())
    assert settings["concurrency"] == {"pools": home_settings["concurrency"]["pools"]}
    assert settings["python_logs"] == home_settings["python_logs"]  # skyassets' warnings in the runs' logs
    with DagsterInstance.from_config(str(launching_home(dagster_home))) as launching:
        assert "skyassets" in launching.managed_python_loggers
    # A PostgreSQL home keeps its storage section as it is.
    postgres = {"postgres": {"postgres_url": {"env": "SKYASSETS_POSTGRES_URL"}}}
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump({"storage": postgres}))
    assert yaml.safe_load((launching_home(dagster_home) / "dagster.yaml").read_text())["storage"] == postgres


def test_a_launcher_starts_its_webserver_for_the_first_run_and_again_after_a_failed_start(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    dagster_home = prepare_dagster_home(Home(tmp_path / "home"))
    submission = Submission("catalog_job", {}, QUIET)
    with DagsterInstance.get() as instance, Launcher(dagster_home, instance, start_timeout=0) as launcher:
        assert launcher.run_all([]) == [] and launcher.port == 0  # nothing to launch: no webserver
        for _ in range(2):  # a start that fails says so, each time, and leaves nothing running
            with pytest.raises(LaunchError, match="did not load"):
                launcher.run_all([submission])
            assert not launcher.running


def test_a_module_beside_the_user_shadows_nothing_and_a_webserver_that_stops_says_why(tmp_path, monkeypatch):
    """A notebook folder's own ``starlette.py`` (or ``gql.py``) is not what the webserver imports; a
    webserver that cannot start says the line of its log that tells why."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    dagster_home = prepare_dagster_home(Home(tmp_path / "home"))
    mine = tmp_path / "notebooks"
    mine.mkdir()
    (mine / "starlette.py").write_text("raise ImportError('the folder s own starlette')\n")
    monkeypatch.chdir(mine)
    with DagsterInstance.get() as instance, Launcher(dagster_home, instance) as launcher:
        (run,) = launcher.run_all([Submission("catalog_job", {}, QUIET)])
        assert run.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)  # started, and ended
    monkeypatch.setenv("PYTHONPATH", str(mine))  # put there on purpose: it is imported, and the failure said
    with DagsterInstance.get() as instance, Launcher(dagster_home, instance) as launcher:
        with pytest.raises(LaunchError, match=r"webserver stopped: ImportError: the folder s own starlette "
                                              r"\(the whole log: .*webserver.log\)"):
            launcher.run_all([Submission("catalog_job", {}, QUIET)])


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
        assert retried_by_the_command_line(run.tags)  # the daemon's sensors leave its failures to the command
        # the webserver fails to answer the pool-slot housekeeping once: the runs go on all the same
        answer_for_real, asked = launcher._graphql, []

        def hiccup(query: str, variables: dict | None = None) -> dict:
            if "concurrencyLimits" in query and not asked:
                asked.append(query)
                raise requests.ConnectionError("connection reset by peer")
            return answer_for_real(query, variables)

        monkeypatch.setattr(launcher, "_graphql", hiccup)
        (after,) = launcher.run_all([Submission("watchlist_job", {}, QUIET)])
        assert asked and after.status == DagsterRunStatus.SUCCESS
        # why it materialised nothing is in its log, where the UI shows it (a step's info lines are kept)
        said = [e.message for e in instance.all_logs(after.run_id) if e.level == logging.INFO]
        assert any("the same as the last answers; nothing materialised" in m for m in said), said
        monkeypatch.setattr(launcher, "_graphql", answer_for_real)
        # The job page lists it (it did not for runs executed in the command's own process).
        listed = _graphql(launcher.port, '{ runsOrError(filter: {pipelineName: "watchlist_job"}) '
                                         '{ ... on Runs { results { runId } } } }')
        assert sorted(r["runId"] for r in listed["runsOrError"]["results"]) == sorted([run.run_id, after.run_id])
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
        assert not retried_by_the_command_line(again.tags)  # a failure of it would be the daemon's to retry
    assert home.tables.exists("mast_observations")
    assert os.environ["DAGSTER_HOME"] == str(dagster_home)  # the webserver's instance never leaked here


def test_a_run_waiting_out_the_archive_says_so_while_it_waits(emu, tmp_path, monkeypatch, caplog):
    """The demo's watchlist query against an archive that refuses for a while: its retries are said
    as they happen, not only once the run has ended."""
    _, dagster_home = _one_observation_home(emu, tmp_path, monkeypatch)
    emu.faults.add("status", endpoint="invoke", status=503, times=2, retry_after=2)
    caplog.set_level(logging.WARNING, logger="skyassets.cli.launch")
    with DagsterInstance.get() as instance, Launcher(dagster_home, instance) as launcher:
        (quiet,) = launcher.run_all([Submission("watchlist_job", {}, QUIET)])
        assert quiet.status == DagsterRunStatus.SUCCESS
        assert not [r for r in caplog.records if "trying again" in r.getMessage()]  # not asked to
        emu.faults.add("status", endpoint="invoke", status=503, times=2, retry_after=2)
        (run,) = launcher.run_all([Submission("watchlist_job", {}, QUIET)], echo_warnings=True)
    assert run.status == DagsterRunStatus.SUCCESS
    said = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(said) == 2 and all("503" in m for m in said), said


def _one_observation_home(emu, tmp_path, monkeypatch) -> tuple[str, object]:
    """A home watching one JWST observation of the emulator (over HTTP); its observation id and
    Dagster home."""
    obs_id = next(o["obs_id"] for o in emu.sky.observations if o["obs_collection"] == "JWST")
    watchlist = tmp_path / "watchlist.yaml"
    watchlist.write_text(f"entries:\n  - name: one\n    obs_id: {obs_id}\n")
    for name, value in {"DAGSTER_HOME": tmp_path / "dagster", "SKYASSETS_HOME": tmp_path / "home",
                        "SKYASSETS_WATCHLIST": watchlist, "SKYASSETS_MAST_URL": emu.url, "SKYASSETS_CLOUD": "0",
                        "SKYASSETS_S3_ENDPOINT": emu.s3_endpoint}.items():
        monkeypatch.setenv(name, str(value))
    return obs_id, prepare_dagster_home(Home(tmp_path / "home"))


def _claimed(port: int) -> set[str]:
    limits = _graphql(port, "{ instance { concurrencyLimits { claimedSlots { runId } } } }")["instance"]
    return {slot["runId"] for limit in limits["concurrencyLimits"] for slot in limit["claimedSlots"]}


def _fetch_holding_the_slot(emu, instance, launcher, obs_id: str, fetch: Submission) -> tuple[str, int]:
    """The watchlist queried, then ``fetch`` launched over a slow link: once it holds the pool's one
    slot, its run id and its worker's pid. The caller sets ``emu.throttle`` back to 0."""
    import re
    import time

    (query,) = launcher.run_all([Submission("watchlist_job", {}, QUIET)])
    assert query.status == DagsterRunStatus.SUCCESS
    instance.add_dynamic_partitions("observations", [obs_id])
    emu.throttle = 100_000  # bytes/s: the download lasts, holding the pool's one slot
    run_id = launcher.submit(fetch)
    deadline = time.monotonic() + 120
    while run_id not in _claimed(launcher.port):
        assert time.monotonic() < deadline, "the run never took its slot"
        time.sleep(0.2)
    pid = next(int(m.group(1)) for e in instance.all_logs(run_id)
               if (m := re.search(r"Started process for run \(pid: (\d+)\)", e.message or "")))
    return run_id, pid


@pytest.mark.slow
def test_a_run_killed_holding_a_pool_slot_does_not_hold_up_the_next_runs(emu, tmp_path, monkeypatch):
    """A run process killed mid-download dies holding its `mast_api` slot; with no daemon beside the
    command, the launcher gives it back, so the next run of the pool is not held up for ever."""
    import signal
    import threading
    import time

    from dagster import RunsFilter

    from skyassets.defs.tags import PARTITION

    obs_id, dagster_home = _one_observation_home(emu, tmp_path, monkeypatch)
    fetch = Submission("observation_job", {PARTITION: obs_id}, QUIET)
    with DagsterInstance.get() as instance, Launcher(dagster_home, instance) as launcher:
        try:
            killed, pid = _fetch_holding_the_slot(emu, instance, launcher, obs_id, fetch)
            deadline = time.monotonic() + 120
            os.kill(pid, signal.SIGKILL)
            while instance.get_run_by_id(killed).status != DagsterRunStatus.FAILURE:  # the code server sees it die
                assert time.monotonic() < deadline, "the killed run was not marked failed"
                time.sleep(0.2)
            assert killed in _claimed(launcher.port)  # dead, and still holding the slot
            from skyassets.cli.runs import failure_reasons

            assert failure_reasons(instance, killed) == [  # what the command line says of it
                f"Run execution process for {killed} was terminated by signal 9 (SIGKILL)"]
        finally:
            emu.throttle = 0
        finished: list = []
        worker = threading.Thread(target=lambda: finished.extend(launcher.run_all([fetch])), daemon=True)
        worker.start()
        worker.join(300)
        assert finished and finished[0].status == DagsterRunStatus.SUCCESS, "the next run waited for the dead one"
        assert not _claimed(launcher.port)
        assert len(instance.get_runs(RunsFilter(job_name="observation_job"))) == 2


@pytest.mark.slow
def test_a_run_left_unfinished_by_a_command_killed_with_it_is_ended_by_the_next_command(emu, tmp_path, monkeypatch):
    """A command killed with its webserver and its run (kill -9 of them all, as a crash or the OOM
    killer does): nothing is left to say the run ended, so it stays STARTED holding its `mast_api`
    slot, and every later run of the pool would wait for it for ever. The next command on this
    machine finds its process gone, marks it failed, and its runs go ahead."""
    import signal
    import threading
    import time

    import psutil

    from skyassets.defs.tags import PARTITION

    obs_id, dagster_home = _one_observation_home(emu, tmp_path, monkeypatch)
    fetch = Submission("observation_job", {PARTITION: obs_id}, QUIET)
    with DagsterInstance.get() as instance:
        with Launcher(dagster_home, instance) as first:
            try:
                killed, pid = _fetch_holding_the_slot(emu, instance, first, obs_id, fetch)
                server = next(p for p in psutil.process_iter(["cmdline"]) if "dagster_webserver" in
                              (p.info["cmdline"] or []) and str(first.port) in p.info["cmdline"])
                os.killpg(server.pid, signal.SIGKILL)  # the webserver and its code server, at once
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                psutil.wait_procs([server], timeout=30)
            finally:
                emu.throttle = 0
        time.sleep(2.0)
        assert instance.get_run_by_id(killed).status == DagsterRunStatus.STARTED  # nothing said it ended
        with Launcher(dagster_home, instance) as second:
            finished: list = []
            worker = threading.Thread(target=lambda: finished.extend(second.run_all([fetch])), daemon=True)
            worker.start()
            worker.join(300)
            assert finished and finished[0].status == DagsterRunStatus.SUCCESS, "the next run waited for the dead one"
        assert instance.get_run_by_id(killed).status == DagsterRunStatus.FAILURE
        said = [e.message for e in instance.all_logs(killed) if e.dagster_event and e.dagster_event.is_run_failure]
        assert said and f"its process (pid {pid})" in said[-1], said


@pytest.mark.slow
def test_a_run_whose_process_dies_is_run_again_from_where_it_stopped(emu, tmp_path, monkeypatch):
    """With no daemon beside it, the command line does what run retries do: a run killed mid-download
    is re-executed from its failure, and the re-run is the one the command reports."""
    import re
    import signal
    import threading
    import time

    from dagster import RunsFilter

    from skyassets.cli.launch import MAX_RERUNS
    from skyassets.defs.tags import MAX_RETRIES, PARTITION

    obs_id, dagster_home = _one_observation_home(emu, tmp_path, monkeypatch)
    with DagsterInstance.get() as instance, Launcher(dagster_home, instance) as launcher:
        (query,) = launcher.run_all([Submission("watchlist_job", {}, QUIET)])
        assert query.status == DagsterRunStatus.SUCCESS
        instance.add_dynamic_partitions("observations", [obs_id])
        emu.throttle = 100_000  # bytes/s: the download lasts until the run is killed
        finished: list = []
        worker = threading.Thread(daemon=True, target=lambda: finished.extend(
            launcher.run_all([Submission("observation_job", {PARTITION: obs_id}, QUIET)])))
        try:
            worker.start()
            deadline = time.monotonic() + 120
            pid = None
            while pid is None:
                assert time.monotonic() < deadline, "the run never started its process"
                time.sleep(0.2)
                runs = instance.get_runs(RunsFilter(job_name="observation_job"))
                pid = next((int(m.group(1)) for r in runs for e in instance.all_logs(r.run_id)
                            if (m := re.search(r"Started process for run \(pid: (\d+)\)", e.message or ""))), None)
            time.sleep(1.0)  # mid-download
            os.kill(pid, signal.SIGKILL)
        finally:
            time.sleep(0.5)
            emu.throttle = 0
        worker.join(300)
        assert finished, "run_all did not return"
        (rerun,) = finished
        killed = instance.get_run_by_id(rerun.parent_run_id)
        assert killed.status == DagsterRunStatus.FAILURE and launcher.died(killed)
        assert rerun.status == DagsterRunStatus.SUCCESS and rerun.root_run_id == killed.run_id
        # the daemon's run retries leave it to the command line: a daemon beside it would retry it too
        assert killed.tags[MAX_RETRIES] == rerun.tags[MAX_RETRIES] == "0"
        assert len(instance.get_runs(RunsFilter(job_name="observation_job"))) == 2 <= 1 + MAX_RERUNS
    assert Home(tmp_path / "home").tables.exists("image_metadata", obs_id)


@pytest.mark.slow
def test_a_step_left_waiting_beside_a_free_pool_slot_is_given_it(tmp_path, monkeypatch):
    """Dagster assigns a pool's slot as it is freed; a step that queued just then (a race of its
    SQLite storage) would wait for ever, its run process spinning. The command line gives it the slot."""
    import skyassets.cli.launch as launch

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("SKYASSETS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(launch, "STALL_SECONDS", 0.0)
    dagster_home = prepare_dagster_home(Home(tmp_path / "home"))
    with DagsterInstance.get() as instance, Launcher(dagster_home, instance) as launcher:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("test_pool", 1)
        instance.add_run(DagsterRun(job_name="observation_job", run_id="a-run", status=DagsterRunStatus.STARTED))
        storage.add_pending_step("test_pool", "a-run", "a-step", should_assign=False)  # left as the race leaves it
        assert stalled_steps(instance) == {"test_pool": ("a-run", "a-step")}
        (run,) = launcher.run_all([Submission("watchlist_job", {}, QUIET)])
        assert run.status == DagsterRunStatus.SUCCESS
        [step] = storage.get_concurrency_info("test_pool").pending_steps
        assert step.assigned_timestamp is not None and stalled_steps(instance) == {}


def test_a_slot_given_to_a_stopped_run_s_waiting_step_is_given_back(tmp_path, monkeypatch):
    """A run stopped (Ctrl-C on its command) while one of its steps waited for a pool slot: the slot
    freed next went to that step, which will never take it, so no claimed slot showed why every
    later run of the pool waited. The command line gives it back before its runs."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("SKYASSETS_HOME", str(tmp_path / "home"))
    dagster_home = prepare_dagster_home(Home(tmp_path / "home"))
    with DagsterInstance.get() as instance, Launcher(dagster_home, instance) as launcher:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("test_pool", 1)
        for run_id, status in (("holder", DagsterRunStatus.STARTED), ("stopped", DagsterRunStatus.CANCELED)):
            instance.add_run(DagsterRun(job_name="observation_job", run_id=run_id, status=status))
        assert storage.claim_concurrency_slot("test_pool", "holder", "fetch").is_claimed
        assert not storage.claim_concurrency_slot("test_pool", "stopped", "fetch").is_claimed  # it waits
        storage.free_concurrency_slot_for_step("holder", "fetch")  # the slot goes to the waiting step
        assert not storage.claim_concurrency_slot("test_pool", "next", "fetch").is_claimed
        (run,) = launcher.run_all([Submission("watchlist_job", {}, QUIET)])
        assert run.status == DagsterRunStatus.SUCCESS
        assert storage.claim_concurrency_slot("test_pool", "next", "fetch").is_claimed
