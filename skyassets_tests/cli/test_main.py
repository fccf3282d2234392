"""The entry point: an interrupt at any moment of a command ends it in one line and exit status 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

INTERRUPTED = "skyassets demo: interrupted"


def _demo(tmp_path: Path) -> subprocess.Popen:
    """``skyassets demo`` on a fresh home, in a process group of its own as a shell's foreground job is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYASSETS_", "DAGSTER_"))}
    env.update(SKYASSETS_HOME=str(tmp_path / "home"), SKYASSETS_EMULATOR_IMAGE_SIZE="64", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "skyassets.cli.main", "demo"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _ctrl_c(command: subprocess.Popen) -> tuple[str, str]:
    """Ctrl-C as a terminal sends it, to every process of the group; the command's output once every
    process of the group has gone."""
    os.killpg(command.pid, signal.SIGINT)
    out, err = command.communicate(timeout=120)
    deadline = time.monotonic() + 30
    while _session(command.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _session(command.pid), f"left running: {_session(command.pid)}"
    return out, err


def _session(sid: int) -> list[str]:
    """The processes of a session still running (not zombies)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(stat.parent.name)
    return alive


def _entry_point_started(pid: int) -> bool:
    """Whether the process catches SIGTERM: the entry point's first act, before it loads the commands
    (the interpreter alone would still die of an interrupt, as any program does before it starts)."""
    caught = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & 1 << (signal.SIGTERM - 1))


def test_ctrl_c_while_the_command_still_loads_is_one_line(tmp_path):
    command = _demo(tmp_path)
    deadline = time.monotonic() + 60
    while not _entry_point_started(command.pid):  # however slowly the interpreter starts on a busy machine
        assert time.monotonic() < deadline and command.poll() is None
        time.sleep(0.005)
    # Dagster, pandas and astropy are being imported
    out, err = _ctrl_c(command)
    assert command.returncode == 130, out + err
    assert "Traceback" not in err and err.strip() == INTERRUPTED, err


@pytest.mark.slow
def test_ctrl_c_once_the_emulator_runs_is_one_line_and_its_s3_server_exits_quietly(tmp_path):
    command = _demo(tmp_path)
    assert command.stdout is not None
    said = []
    for line in command.stdout:  # the archive line is printed once the emulator and its S3 server run
        said.append(line)
        if line.startswith("MAST:"):
            break
    else:
        pytest.fail("".join(said) + command.stderr.read())
    out, err = _ctrl_c(command)
    assert command.returncode == 130, "".join(said) + out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"{INTERRUPTED}; runs it had started were stopped"), err
