import csv
import hashlib
import subprocess
import sys

import pandas as pd
import pytest

from skyassets.catalog.export import export_files
from skyassets.lake.home import Home


def test_export_copies_checks_and_records(tmp_path):
    home = Home(tmp_path / "home")
    (home.files / "JWST" / "a").mkdir(parents=True)
    (home.files / "JWST" / "b").mkdir(parents=True)
    one = home.files / "JWST" / "a" / "x.fits"
    two = home.files / "JWST" / "b" / "x.fits"  # same name, other folder
    one.write_bytes(b"one")
    two.write_bytes(b"two")
    selection = pd.DataFrame(
        {
            "path": [str(one.relative_to(home.root)), str(two.relative_to(home.root)), str(one.relative_to(home.root))],
            "sha256": [hashlib.sha256(b"one").hexdigest(), hashlib.sha256(b"two").hexdigest(), None],
        }
    )
    dest = export_files(selection, home, tmp_path / "out", "SELECT * FROM images")
    with (dest / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {(dest / r["path"]).read_bytes() for r in rows} == {b"one", b"two"}
    subprocess.run(["sha256sum", "-c", "--quiet", "-"], input="".join(f"{r['sha256']}  {r['path']}\n" for r in rows),
                   text=True, cwd=dest, check=True)
    assert "SELECT * FROM images" in (dest / "README.md").read_text()


def test_export_refuses_paths_outside_the_home_and_wrong_bytes(tmp_path):
    home = Home(tmp_path / "home")
    home.root.mkdir()
    (tmp_path / "secret.fits").write_bytes(b"s")
    with pytest.raises(ValueError, match="not a file of the skyassets home"):
        export_files(pd.DataFrame({"path": ["../secret.fits"]}), home, tmp_path / "o1", "q")
    (home.root / "f.fits").write_bytes(b"changed")
    with pytest.raises(ValueError, match="differs from the catalogue"):
        export_files(pd.DataFrame({"path": ["f.fits"], "sha256": ["0" * 64]}), home, tmp_path / "o2", "q")
    with pytest.raises(ValueError, match="'path' column"):
        export_files(pd.DataFrame({"obs_id": ["a"]}), home, tmp_path / "o3", "q")


def test_catalog_command_prints_a_query(tmp_path):
    env_home = tmp_path / "home"
    result = subprocess.run(
        [sys.executable, "-m", "skyassets.cli.main", "catalog", "SELECT count(*) AS n FROM images"],
        capture_output=True, text=True, env={"SKYASSETS_HOME": str(env_home), "PATH": "/usr/bin:/bin"}, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "n" in result.stdout and "0" in result.stdout
