"""The command line's set-up of a Dagster home."""

import os
import subprocess
import sys
import time

from skyassets.cli.main import prepare_dagster_home
from skyassets.lake.home import Home

# Every process waits for the same instant, then creates the instance on the same new home.
_PREPARE = """
import sys, time
from pathlib import Path
from skyassets.cli.main import prepare_dagster_home
from skyassets.lake.home import Home
start = float(sys.argv[2])
while time.time() < start:
    pass
prepare_dagster_home(Home(Path(sys.argv[1])))
"""


def test_commands_started_together_on_a_new_home_all_get_an_instance(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    home = tmp_path / "home"
    start = time.time() + 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PREPARE, str(home), str(start)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for _ in range(4)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stdout.read()
    assert (home / "dagster" / "dagster.yaml").exists()


def test_an_existing_dagster_yaml_is_kept(tmp_path, monkeypatch):
    dagster_home = tmp_path / "dh"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    assert prepare_dagster_home(Home(tmp_path / "home")) == dagster_home.resolve()
    assert (dagster_home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    assert (dagster_home / "history" / "runs.db").exists()
