"""Landing at scale: files dropped into the landing folder, taken by its sensor and catalogued, tick by tick.

    python bench/landing.py                     # 20,000 files
    python bench/landing.py --files 2000        # quick look
    python bench/landing.py --large             # 100,000 files (on disk under /tmp: ~18 GB with the copies)

Generates JWST-like ``_cal`` files with ``bench/ingest.py`` (89 kB; ten files share an OBS_ID, so a
partition, as a NIRCam exposure's detectors do; ``--per-observation 1`` gives every file its own),
times the bare header loop of ``bench/ingest.py`` on them, then runs the landing path as
``dagster-daemon`` would, on a real ``DagsterInstance`` (skyassets' ``dagster.yaml``, SQLite) in a
temporary ``DAGSTER_HOME``:
  sensor  ``landing_zone_sensor`` evaluated tick after tick with the cursor each tick returned
          (``build_sensor_context(instance=..., cursor=..., resources=...)``); its new partitions are
          added as the daemon adds them (only those not there yet, in order), and a run key already
          launched is not launched again;
  runs    each requested run executes in a process of its own, as the run launcher starts one
          (Python start, skyassets and Dagster imports, then ``landing_job`` on the run's partition or
          partition range, recorded in the instance); at most ``--concurrent-runs`` at once, the
          others wait in a queue, as the run queue holds them. Ticks go on while runs execute.
A tick starts the sensor's ``minimum_interval_seconds`` after the previous one started, as the
daemon paces it (``--interval 0``: back to back, to see what the ticks and runs alone take).
Ends when every file has been handed on and every run has finished, then checks that every file
has its row in ``image_metadata``. Prints files/s against the bare loop (target >= 50 %), ticks,
runs, the slowest tick and peak memory. Everything lives in one temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import bare_loop, make_files  # noqa: E402  (bench/ingest.py: same files, same bare loop)

TARGET = 0.5
TICK_LIMIT = 5.0


@dataclass
class Figures:
    ticks: int = 0
    tick_seconds: list[float] = field(default_factory=list)  # sensor evaluations
    zone_seconds: list[float] = field(default_factory=list)  # of which the landing zone's scan and state
    daemon_seconds: float = 0.0  # adding partitions, checking run keys
    runs: int = 0
    failed_runs: int = 0
    handed_on: int = 0
    partitions: int = 0
    max_files_in_a_tick: int = 0
    max_runs_in_a_tick: int = 0
    seconds: float = 0.0


def run_worker(request: str) -> int:
    """One requested run, in this process, as a run worker executes it."""
    from dagster import DagsterInstance

    from skyassets.cli.runs import QUIET
    from skyassets.definitions import defs

    asked = json.loads(request)
    job = defs.resolve_job_def("landing_job")
    with DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, partition_key=asked["partition_key"], tags=asked["tags"], run_config=QUIET,
            raise_on_error=False,
        )
    return 0 if result.success else 1


def run_landing(work: Path, count: int, *, max_ready: int | None, concurrent: int, interval: float) -> Figures:
    """Drive the landing sensor and its runs until all ``count`` files are handed on and catalogued."""
    from dagster import DagsterInstance, build_sensor_context

    import skyassets.defs.landing.sensors as landing_sensors
    from skyassets.cli.commands import prepare_dagster_home
    from skyassets.definitions import defs
    from skyassets.lake.home import Home

    home = Home(work / "home")
    prepare_dagster_home(home)
    resources = dict(defs.resources)
    if max_ready is not None:
        landing = resources["landing"]
        resources["landing"] = type(landing)(**{**landing.model_dump(), "max_ready": max_ready})
    zone_ticks = []
    zone_tick = landing_sensors.LandingZone.tick

    def recorded_tick(zone, cursor):
        tick = zone_tick(zone, cursor)
        zone_ticks.append(tick)
        return tick

    landing_sensors.LandingZone.tick = recorded_tick
    figures = Figures()
    launched: set[str] = set()
    queue: deque[dict] = deque()
    running: list[subprocess.Popen] = []
    cursor = None
    instance = DagsterInstance.get()
    started = next_tick = time.perf_counter()
    try:
        while figures.handed_on < count or queue or running:
            for process in [p for p in running if p.poll() is not None]:
                running.remove(process)
                figures.failed_runs += process.returncode != 0
            while queue and len(running) < concurrent:
                command = [sys.executable, __file__, "--run-worker", json.dumps(queue.popleft())]
                running.append(subprocess.Popen(command))
            if figures.handed_on >= count or time.perf_counter() < next_tick:
                time.sleep(0.05)
                continue
            tick_started = time.perf_counter()
            next_tick = tick_started + interval
            context = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
            result = landing_sensors.landing_zone_sensor(context)
            figures.tick_seconds.append(time.perf_counter() - tick_started)
            figures.ticks += 1
            cursor = result.cursor
            daemon_started = time.perf_counter()
            for request in result.dynamic_partitions_requests:
                name, keys = request.partitions_def_name, list(request.partition_keys)
                existing = set(instance.get_dynamic_partitions(name))
                instance.add_dynamic_partitions(name, [k for k in keys if k not in existing])
            for request in result.run_requests:
                if request.run_key in launched:
                    continue
                launched.add(request.run_key)
                queue.append({"partition_key": request.partition_key, "tags": dict(request.tags)})
                figures.runs += 1
            figures.daemon_seconds += time.perf_counter() - daemon_started
            ready = len(zone_ticks[-1].ready)
            figures.zone_seconds.append(zone_ticks[-1].seconds)
            figures.handed_on += ready
            figures.max_files_in_a_tick = max(figures.max_files_in_a_tick, ready)
            figures.max_runs_in_a_tick = max(figures.max_runs_in_a_tick, len(result.run_requests))
            if figures.ticks > 4 * count + 10:
                raise RuntimeError(f"the sensor stopped handing files on: {figures}")
        figures.seconds = time.perf_counter() - started
        figures.partitions = len(instance.get_dynamic_partitions("observations"))
    finally:
        landing_sensors.LandingZone.tick = zone_tick
        for process in running:
            process.kill()
        instance.dispose()
    names = home.tables.read_arrow("image_metadata", columns=["file_name"]).column("file_name").to_pylist()
    if figures.failed_runs or len(set(names)) != count:
        raise RuntimeError(f"not every file was catalogued: {len(set(names))} of {count}; {figures}")
    return figures


def report(count: int, bare: float, figures: Figures, interval: float) -> float:
    bare_rate, rate = count / bare, count / figures.seconds
    ratio = rate / bare_rate
    slowest = max(figures.tick_seconds)
    zone = figures.zone_seconds[figures.tick_seconds.index(slowest)]
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"files: {count} in {figures.partitions} partitions")
    print(f"bare loop : {bare_rate:8.1f} files/s  ({bare:.2f} s, one process)")
    print(f"landing   : {rate:8.1f} files/s  ({figures.seconds:.2f} s, sensor ticks and runs)")
    print(f"ratio     : {100 * ratio:.0f}% of the bare loop (target >= {100 * TARGET:.0f}%)")
    print(f"ticks     : {figures.ticks}, {sum(figures.tick_seconds):.1f} s in all, slowest {slowest:.2f} s "
          f"({zone:.2f} s of it the zone's scan; target <= {TICK_LIMIT:.0f} s); "
          f"at most {figures.max_files_in_a_tick} files and {figures.max_runs_in_a_tick} runs a tick")
    print(f"runs      : {figures.runs} ({figures.failed_runs} failed); daemon-side {figures.daemon_seconds:.1f} s")
    print(f"memory    : peak {own:.0f} MB in the sensor's process, {children:.0f} MB in the largest run")
    print(f"pacing    : a tick every {interval:g} s, so at most {figures.max_files_in_a_tick / interval:.0f} files/s "
          "from the sensor" if interval else "pacing    : ticks back to back")
    return ratio if slowest <= TICK_LIMIT else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=20000, help="number of files (default 20000)")
    parser.add_argument("--large", action="store_true", help="100,000 files, in a folder under /tmp")
    parser.add_argument("--workdir", default=None,
                        help="where the temporary folder goes (default /dev/shm, /tmp with --large)")
    parser.add_argument("--per-observation", type=int, default=10,
                        help="files sharing one OBS_ID, i.e. one partition (default 10; 1: a partition a file)")
    parser.add_argument("--max-ready", type=int, default=None,
                        help="files handed on per tick (default: the landing resource's max_ready)")
    parser.add_argument("--concurrent-runs", type=int, default=os.cpu_count() or 2,
                        help="runs executing at once (default: the number of CPUs)")
    parser.add_argument("--interval", type=float, default=None,
                        help="seconds from one tick's start to the next (default: the sensor's minimum interval)")
    parser.add_argument("--run-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    if args.run_worker:
        return run_worker(args.run_worker)
    count = 100_000 if args.large else args.files
    workdir = args.workdir or ("/tmp" if args.large or not os.path.isdir("/dev/shm") else "/dev/shm")
    work = Path(tempfile.mkdtemp(prefix="skyassets-bench-landing-", dir=workdir))
    os.environ.update({
        "DAGSTER_HOME": str(work / "dagster"), "SKYASSETS_HOME": str(work / "home"),
        "SKYASSETS_LANDING": str(work / "drop"),
    })
    try:
        started = time.perf_counter()
        paths = make_files(work / "drop", count, True, args.per_observation)
        print(f"generated {len(paths)} files of {paths[0].stat().st_size / 1e3:.0f} kB in "
              f"{time.perf_counter() - started:.1f} s under {work}")
        bare = bare_loop(paths)
        from skyassets.defs.landing.sensors import landing_zone_sensor

        interval = landing_zone_sensor.minimum_interval_seconds if args.interval is None else args.interval
        figures = run_landing(work, count, max_ready=args.max_ready, concurrent=args.concurrent_runs,
                              interval=interval)
        ratio = report(count, bare, figures, interval)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
