"""Two runs writing partitions at once while a notebook connection is open."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from skyassets.catalog.db import connect, refresh

pytestmark = pytest.mark.slow


def test_two_ingests_and_an_open_notebook_connection(emu, tmp_path):
    cal = sorted(emu.sky.root.rglob("*_cal.fits"))
    halves = {"night1": cal[: len(cal) // 2], "night2": cal[len(cal) // 2 :]}
    for name, files in halves.items():
        (tmp_path / name).mkdir()
        for path in files:
            shutil.copy(path, tmp_path / name / path.name)
    home = tmp_path / "home"
    env = {**os.environ, "SKYASSETS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    con = connect(home)  # opened before anything exists, held throughout
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "skyassets.cli.main", "ingest", str(tmp_path / name), "--batch", "6",
             "--catalog-only"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name in halves
    ]
    counts = []
    deadline = time.monotonic() + 240
    while any(w.poll() is None for w in writers):
        assert time.monotonic() < deadline, "the ingests did not finish"
        refresh(con)
        counts.append(con.execute("SELECT count(*) FROM images").fetchone()[0])
        time.sleep(0.05)
    for writer in writers:
        assert writer.wait() == 0, writer.stdout.read()
    refresh(con)
    total = con.execute("SELECT count(*) FROM images").fetchone()[0]
    assert total == len(cal)  # one SCI row per cal file, none lost
    assert counts == sorted(counts)  # the reader only ever saw the catalogue grow
    assert set(con.execute("SELECT unnest(locations) FROM images").df().iloc[:, 0].str.split("/").str[-1]) == {
        p.name for p in cal
    }
