"""Runs launched the way the Dagster UI launches them.

The command line starts a headless Dagster webserver on loopback for its own lifetime and submits
each run through its GraphQL API (the ``launchRun`` mutation the UI's Launch button sends). Runs are
made for the code location that ``skyassets dev`` and the deployments load, so the UI lists them on the job, asset and
timeline pages and can re-execute them; each runs in its own run-worker process, as under the daemon.

The webserver uses an instance of its own that shares the home instance's storage but launches runs
at once (``DefaultRunCoordinator``): the command line orders and limits its runs itself, so they need
no daemon to leave a queue, and no sensor of a daemon started for the purpose acts beside them. For
the same reason it runs again, from where it stopped, a run whose process died (killed, out of
memory), as the daemon's run retries do under ``skyassets dev`` and in the deployments.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from skyassets.cli.output import one_line
from skyassets.defs.tags import COMMAND_LINE, FAILURE_REASON, HOST, LAUNCHED_BY, MAX_RETRIES

log = logging.getLogger(__name__)

# The code location: a run re-executes only in a location of the name that made it, so the command
# line, ``skyassets dev`` (``code_location_workspace``), the repository's workspace.yaml and
# pyproject.toml, and the deployments in deploy/ all name it alike.
MODULE = "skyassets.definitions"
LOCATION = "skyassets"

POLL_SECONDS = 0.3
# Times a run whose process died is run again by the command line: run_retries' max_retries in
# skyassets/dagster.yaml, what the daemon does beside `skyassets dev`.
MAX_RERUNS = 2
# Seconds between two looks for a step waiting beside a free slot of its pool (defs/pools.py).
STALL_SECONDS = 20.0
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
UNFINISHED = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
              DagsterRunStatus.CANCELING]
# The settings of the home instance that the launching instance shares; the rest (run queue, run
# monitoring, schedules) belongs to the daemon.
# python_logs: skyassets' own warnings (a file sent over HTTP, an archive call asked again) go to the
# run's event log for the runs the command line launches too
SHARED_SETTINGS = ("storage", "compute_logs", "local_artifact_storage", "run_launcher", "telemetry", "secrets",
                   "python_logs")
IMMEDIATE = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}


# Runs the rest of its arguments as Python (``exec``, the same process) after asking Linux to send it
# SIGTERM when the command that started it dies, even by kill -9 or the OOM killer, which leave no
# time to stop it: the webserver then stops its code server, rather than serve no one for ever. It
# exits at once when that command is already gone (argv[1], its pid, is no longer its parent).
_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):  # not Linux: the command's own exit still stops it
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class LaunchError(RuntimeError):
    """The webserver would not start or refused a run; the message says which and why."""


@dataclass(frozen=True)
class Submission:
    """A run to launch: the job, its tags (partition or partition range) and run config, and
    ``assets``, the job's assets to materialise when not all of them (as the UI's asset selection)."""

    job: str
    tags: Mapping[str, str]
    run_config: Mapping
    assets: tuple[str, ...] = ()


def launching_home(dagster_home: Path) -> Path:
    """The launching instance's directory under ``dagster_home``: the home instance's storage,
    compute logs and run launcher, with runs launched as soon as they are submitted."""
    settings = yaml.safe_load((dagster_home / "dagster.yaml").read_text()) or {}
    launching = {k: settings[k] for k in SHARED_SETTINGS if k in settings}
    launching.setdefault("storage", {"sqlite": {"base_dir": str(dagster_home)}})
    launching.setdefault(
        "local_artifact_storage",
        {"module": "dagster._core.storage.root", "class": "LocalArtifactStorage",
         "config": {"base_dir": str(dagster_home)}},
    )
    launching.setdefault(
        "compute_logs",
        {"module": "dagster._core.storage.local_compute_log_manager", "class": "LocalComputeLogManager",
         "config": {"base_dir": str(dagster_home / "storage")}},
    )
    pools = (settings.get("concurrency") or {}).get("pools")
    if pools:
        launching["concurrency"] = {"pools": pools}
    launching["run_coordinator"] = IMMEDIATE
    folder = dagster_home / "launcher"
    folder.mkdir(exist_ok=True)
    text = "# Written by the skyassets command line from ../dagster.yaml; edit that one.\n" + yaml.safe_dump(launching)
    target = folder / "dagster.yaml"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return folder


def code_location_workspace(folder: Path, working_directory: str | None = None) -> Path:
    """A workspace file in ``folder`` loading the definitions as the ``skyassets`` code location
    (``dagster dev -m`` and ``dagster-webserver -m`` would name it after the module)."""
    entry: dict = {"module_name": MODULE, "location_name": LOCATION}
    if working_directory:
        entry["working_directory"] = working_directory
    text = ("# Written by the skyassets command line: the code location its runs are made for.\n"
            + yaml.safe_dump({"load_from": [{"python_module": entry}]}))
    target = folder / "skyassets-workspace.yaml"  # a DAGSTER_HOME's own workspace.yaml is left as it is
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return target


def _last_line(message: str | None) -> str:
    """The line of a Python error message that says what went wrong (its last non-empty line)."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(group: int, grace: float = 10.0) -> None:
    """Stop what is left of the process group ``group``: SIGTERM, then SIGKILL after ``grace`` seconds."""
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while _group_alive(group):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            return
        time.sleep(0.2)


def _group_alive(group: int) -> bool:
    """Whether a process of ``group`` still runs (a zombie, which waits for a parent to reap it, does not)."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


class Launcher:
    """A headless webserver for the duration of a ``with`` block, and the runs submitted through it.

    The webserver starts when it is first needed (a run to submit), so a command that finds
    nothing to run (an ingest of files taken before) does not wait for one to start."""

    def __init__(self, dagster_home: Path, instance: DagsterInstance, *, start_timeout: float = 180.0):
        self.dagster_home = dagster_home
        self.instance = instance
        self.start_timeout = start_timeout
        self.port = 0
        self._server: subprocess.Popen | None = None
        self._log = None
        self._submitted: list[str] = []
        self._stalled: tuple[float, dict[str, tuple[str, str]]] = (time.monotonic(), {})

    def __enter__(self) -> Launcher:
        return self

    def _start(self) -> None:
        print("Starting a Dagster webserver for this command's runs ...", file=sys.stderr, flush=True)
        home = launching_home(self.dagster_home)
        self.port = _free_port()
        # PYTHONSAFEPATH: the webserver, its code server and its runs import nothing from the folder the
        # command was started in (a notebook's own gql.py or dagster.py beside the user would shadow Dagster's)
        env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONSAFEPATH": "1"}
        self._log = open(home / "webserver.log", "w")  # noqa: SIM115 - closed in __exit__
        self._server = subprocess.Popen(
            [sys.executable, "-c", _WITH_PARENT, str(os.getpid()), "-m", "dagster_webserver",
             "-w", str(code_location_workspace(home)), "-h", "127.0.0.1", "-p", str(self.port), "--suppress-warnings"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            self._wait_until_loaded()
        except BaseException:
            self.__exit__(None, None, None)
            self._server = self._log = None  # stopped: a later run starts it again, and the exit has nothing to do
            raise

    def __exit__(self, *exc: object) -> None:
        if self._server is not None and self._server.poll() is None:
            self._cancel_unfinished()
            os.killpg(self._server.pid, signal.SIGTERM)
            try:
                self._server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._server.pid, signal.SIGKILL)
                self._server.wait()
        if self._server is not None:
            _stop_group(self._server.pid)  # the code server and run processes it started, which outlive it
        if self._log is not None:
            self._log.close()

    def _cancel_unfinished(self) -> None:
        """Cancel this command's runs that have not finished (it is stopping: Ctrl-C, SIGTERM, an
        error), as the UI's "Terminate" does, so none is left STARTED with no process, and give back
        their pool slots."""
        unfinished = [r.run_id for r in self.instance.get_runs(RunsFilter(run_ids=self._submitted))
                      if r.status not in FINISHED] if self._submitted else []
        if not unfinished:
            return
        try:
            self._graphql("mutation($runs: [String!]!) { terminateRuns(runIds: $runs, "
                          "terminatePolicy: MARK_AS_CANCELED_IMMEDIATELY) { __typename } }", {"runs": unfinished})
            self.free_ended_runs_slots()
        except (requests.RequestException, LaunchError):  # the webserver is gone: its processes are stopped below
            pass

    def _graphql(self, query: str, variables: dict | None = None) -> dict:
        if self._server is None:
            self._start()
        answer = requests.post(
            f"http://127.0.0.1:{self.port}/graphql", json={"query": query, "variables": variables or {}}, timeout=120
        )
        answer.raise_for_status()
        body = answer.json()
        if body.get("errors"):
            raise LaunchError(f"the Dagster webserver answered: {body['errors'][0].get('message')}")
        return body["data"]

    def _wait_until_loaded(self) -> None:
        """Until the webserver answers and the code location is loaded (its definitions import)."""
        deadline = time.monotonic() + self.start_timeout
        query = ("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                 "locationOrLoadError { __typename ... on PythonError { message causes { message } } } } } } }")
        while time.monotonic() < deadline:
            self._check_running()
            try:
                entries = self._graphql(query)["workspaceOrError"]["locationEntries"]
            except (requests.RequestException, KeyError, LaunchError):
                time.sleep(0.5)
                continue
            entry = next((e for e in entries if e["name"] == LOCATION), None)
            if entry and entry["loadStatus"] == "LOADED":
                loaded = entry["locationOrLoadError"] or {}
                if loaded.get("__typename") == "PythonError":
                    root = (loaded.get("causes") or [loaded])[-1]  # the error the loading error came from
                    raise LaunchError(f"the skyassets definitions failed to load: {_last_line(root.get('message'))} "
                                      f"(the whole error: {self._log.name})")
                return
            time.sleep(0.5)
        raise LaunchError(f"the Dagster webserver did not load {LOCATION} in {self.start_timeout:.0f} s")

    def free_ended_runs_slots(self) -> list[str]:
        """Give back the pool slots that runs which have ended still hold, as the UI's "free
        concurrency slots" does; the runs freed. A run process that died (killed, out of memory) never
        gave its slot back, and with no daemon beside this command nothing else would: every later run
        of that pool would wait for it forever."""
        # a step of a stopped run that waited for a slot may have been given one it will never take
        query = "{ instance { concurrencyLimits { claimedSlots { runId } pendingSteps { runId } } } }"
        limits = self._graphql(query)["instance"]["concurrencyLimits"]
        holders = {slot["runId"] for limit in limits for slot in limit["claimedSlots"] + limit["pendingSteps"]}
        ended = [run.run_id for run in self.instance.get_runs(RunsFilter(run_ids=sorted(holders)))
                 if run.status in FINISHED] if holders else []
        for run_id in ended:
            self._graphql("mutation($run: String!) { freeConcurrencySlotsForRun(runId: $run) }", {"run": run_id})
        return ended

    def end_orphaned_runs(self) -> list[str]:
        """Mark failed the runs the command line launched on this machine earlier that never ended
        though their process is gone (the command, its webserver and their runs killed together: no
        process was left to say the run ended, and with no daemon no run monitoring does); the runs
        marked. Left running, such a run holds its pool slot for ever and every later run of the pool
        waits for it. A run launched on another machine sharing the instance is left to that machine
        (or to the UI's Terminate): only there can its process be looked for."""
        here = socket.gethostname()
        ended = []
        for record in self.instance.get_run_records(RunsFilter(statuses=UNFINISHED, tags={LAUNCHED_BY: COMMAND_LINE})):
            run = record.dagster_run
            if run.run_id in self._submitted or run.tags.get(HOST) != here:
                continue
            pid = self._run_pid(run)
            if pid is None or _alive_since(pid, record.start_time):
                continue
            self.instance.report_run_failed(
                run, f"its process (pid {pid}) on {here} is gone, and nothing said the run ended (the command "
                     "that launched it was killed with it); marked failed so that its pool slots are given back")
            log.warning("run %s of %s was left unfinished by a command that was killed; its process is gone: "
                        "marked failed", run.run_id, run.job_name)
            ended.append(run.run_id)
        return ended

    def _run_pid(self, run: DagsterRun) -> int | None:
        """The process id the run's worker gave when it started ("Started process for run (pid: N)")."""
        records = self.instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ENGINE_EVENT).records
        for record in records:
            event = record.event_log_entry.dagster_event
            data = event.engine_event_data if event is not None else None
            pid = data.metadata.get("pid") if data is not None else None
            if pid is not None:
                return int(pid.value)
        return None

    def _free_slots_between_runs(self) -> None:
        """:meth:`free_ended_runs_slots` as housekeeping: a webserver that fails to answer this once
        does not stop the runs (a dead one is noticed by ``_check_running``); the next call frees them."""
        try:
            self.free_ended_runs_slots()
        except (requests.RequestException, LaunchError, KeyError) as error:
            log.warning("could not give back the pool slots of ended runs this time: %s", error)

    def _unstall_pools(self) -> None:
        """:func:`give_free_slots` every ``STALL_SECONDS``: no daemon runs beside this command."""
        from skyassets.defs.pools import give_free_slots

        since, before = self._stalled
        if time.monotonic() - since < STALL_SECONDS:
            return
        try:
            given, stalled = give_free_slots(self.instance, before)
        except Exception as error:  # noqa: BLE001 - housekeeping (a locked database): the runs go on
            log.warning("could not look for steps waiting beside a free pool slot this time: %s", error)
            self._stalled = (time.monotonic(), before)
            return
        for pool in sorted(given):
            log.warning("a step has waited for pool %s beside a free slot for %.0f s or more; giving it the slot",
                        pool, STALL_SECONDS)
        self._stalled = (time.monotonic(), stalled)

    def submit(self, submission: Submission) -> str:
        """Launch one run through the webserver, as the UI's Launch button does; its run id."""
        mutation = """
        mutation($params: ExecutionParams!) {
          launchRun(executionParams: $params) {
            __typename
            ... on LaunchRunSuccess { run { runId } }
            ... on PythonError { message }
            ... on RunConfigValidationInvalid { errors { message } }
            ... on Error { message }
          }
        }"""
        selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "jobName": submission.job}
        if submission.assets:
            selector["assetSelection"] = [{"path": [asset]} for asset in submission.assets]
        params = {
            "selector": selector,
            "runConfigData": dict(submission.run_config),
            # the command line re-executes a run whose process died (run_all); the daemon's run
            # retries, when a daemon shares the instance, would re-execute it a second time at once
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in
                                           {**submission.tags, LAUNCHED_BY: COMMAND_LINE, MAX_RETRIES: "0",
                                            HOST: socket.gethostname()}.items()]},
        }
        answer = self._graphql(mutation, {"params": params})["launchRun"]
        if answer["__typename"] != "LaunchRunSuccess":
            reasons = [e["message"] for e in answer.get("errors", [])] or [answer.get("message", answer["__typename"])]
            raise LaunchError(f"{submission.job} was refused: {'; '.join(reasons)}")
        self._submitted.append(answer["run"]["runId"])
        return answer["run"]["runId"]

    @property
    def running(self) -> bool:
        """Whether this launcher's webserver is up (it starts at the first run to launch)."""
        return self._server is not None and self._server.poll() is None

    def _check_running(self) -> None:
        if self._server.poll() is not None:
            self._log.flush()
            try:
                said = _last_line(Path(self._log.name).read_text(errors="replace"))
            except OSError:
                said = "no message"
            raise LaunchError(f"the Dagster webserver stopped: {said} (the whole log: {self._log.name})")

    def wait(self, run_ids: Sequence[str]) -> list[DagsterRun]:
        """Until every run of ``run_ids`` has finished (however it was launched); those runs, in order."""
        pending = set(run_ids)
        while pending:
            time.sleep(POLL_SECONDS)
            self._check_running()
            runs = self.instance.get_runs(RunsFilter(run_ids=list(pending)))
            pending -= {run.run_id for run in runs if run.status in FINISHED}
        return [self.instance.get_run_by_id(run_id) for run_id in run_ids]

    def died(self, run: DagsterRun) -> bool:
        """Whether ``run`` failed because its process died (killed, out of memory, its machine lost)
        rather than because a step failed or the job could not start: the failures run retries take."""
        if run.status != DagsterRunStatus.FAILURE:
            return False
        if run.tags.get(FAILURE_REASON) in ("STEP_FAILURE", "JOB_INITIALIZATION_FAILURE"):
            return False
        return not self.instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.STEP_FAILURE, limit=1).records

    def _echo_warnings(self, run_id: str, cursors: dict[str, str | None]) -> None:
        """The run's warnings and errors logged since the last look, each on a line of stderr."""
        got = self.instance.get_records_for_run(run_id, cursor=cursors.get(run_id))
        cursors[run_id] = got.cursor
        for record in got.records:
            entry = record.event_log_entry
            if entry.dagster_event is None and entry.level >= logging.WARNING:
                log.warning("  %s", one_line(entry.user_message))

    def rerun(self, run: DagsterRun) -> str:
        """Re-execute ``run`` from where it stopped, as the UI's "Re-execute from failure" does; the new run's id."""
        mutation = """
        mutation($parent: String!) {
          launchRunReexecution(reexecutionParams: {parentRunId: $parent, strategy: FROM_FAILURE}) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message }
          }
        }"""
        answer = self._graphql(mutation, {"parent": run.run_id})["launchRunReexecution"]
        if answer["__typename"] != "LaunchRunSuccess":
            raise LaunchError(f"run {run.run_id} could not be run again: {answer.get('message', answer['__typename'])}")
        self._submitted.append(answer["run"]["runId"])
        return answer["run"]["runId"]

    def run_all(
        self,
        submissions: Sequence[Submission],
        *,
        at_once: int = 1,
        on_finished: Callable[[Submission, DagsterRun], None] | None = None,
        echo_warnings: bool = False,
    ) -> list[DagsterRun]:
        """Launch ``submissions`` with at most ``at_once`` running, wait for all of them, and return
        their finished runs in submission order; ``on_finished`` hears of each as it ends. A run whose
        process died is run again from where it stopped, ``MAX_RERUNS`` times at most; its last run
        is the one returned. With ``echo_warnings`` the runs' warnings and errors are said on stderr
        as they come: a run that waits out an archive's outage says so while it waits."""
        if not submissions:  # nothing to launch: no webserver to start for it
            return []
        if self._server is None:  # started here, so that a webserver that cannot start says why
            self._start()
        waiting = list(enumerate(submissions))
        running: dict[str, int] = {}
        done: dict[int, DagsterRun] = {}
        reruns = dict.fromkeys(range(len(submissions)), 0)
        cursors: dict[str, str | None] = {}  # how far each run's log has been echoed
        self.end_orphaned_runs()  # of commands killed with their runs before this one
        self._free_slots_between_runs()  # of runs that died before this command, in this home
        while waiting or running:
            while waiting and len(running) < max(1, at_once):
                index, submission = waiting.pop(0)
                running[self.submit(submission)] = index
            time.sleep(POLL_SECONDS)
            self._check_running()
            self._unstall_pools()
            if echo_warnings:
                for run_id in list(running):
                    self._echo_warnings(run_id, cursors)
            for run in self.instance.get_runs(RunsFilter(run_ids=list(running))):
                if run.status in FINISHED:
                    index = running.pop(run.run_id)
                    if run.status != DagsterRunStatus.SUCCESS:  # its process may have died holding a slot
                        self._free_slots_between_runs()
                    if reruns[index] < MAX_RERUNS and self.died(run):
                        reruns[index] += 1
                        again = self.rerun(run)
                        log.warning("run %s of %s ended when its process died; running it again from where it "
                                    "stopped as run %s (%d of %d)", run.run_id, run.job_name, again,
                                    reruns[index], MAX_RERUNS)
                        running[again] = index
                        continue
                    done[index] = run
                    if on_finished:
                        on_finished(submissions[index], run)
        return [done[i] for i in range(len(submissions))]


def _alive_since(pid: int, started: float | None) -> bool:
    """Whether process ``pid`` runs and was started by the time its run began (``started``; one started
    later took the id of the run's process after it ended)."""
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:  # another user's: alive, whoever it is
        return True
    return started is None or created <= started + 5.0
