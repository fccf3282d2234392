"""Servers started by the end-to-end tests: on a free loopback port, in their own process group, always stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import requests


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(
    command: Sequence[str], *, ready_url: str, env: Mapping[str, str], cwd: Path, log: Path, timeout: float = 180
) -> Iterator[subprocess.Popen]:
    """Run ``command`` until the block ends, once ``ready_url`` answers; its output goes to ``log``.

    The server runs in a new session so that it and every process it starts (code servers, the daemon,
    run workers) are stopped together: SIGTERM to the group, SIGKILL if it lingers.
    """
    with open(log, "w") as out:
        process = subprocess.Popen(
            list(command), cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(ready_url, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None:
                raise AssertionError(f"{command[0]} exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{command[0]} did not answer in {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the process group of ``process`` (a session leader), then SIGKILL after ``grace`` seconds."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group (code servers, run workers)
    except ProcessLookupError:
        pass
    process.wait()
