"""notebooks/catalog.ipynb, executed headlessly against the output of ``skyassets demo``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import nbformat
import numpy as np
import pytest
from astropy.io import fits

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "catalog.ipynb"


def _text(cell) -> str:
    """Everything a code cell printed or displayed as text."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output:
            parts += [output.data.get("text/plain", ""), output.data.get("text/html", "")]
    return "\n".join(parts)


def _tagged(nb, tag: str):
    cells = [c for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _pngs(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def test_notebook_is_committed_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "outputs are saved in the notebook"


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory) -> Path:
    """A SKYASSETS_HOME filled by the real demo pipeline (offline, on the emulator)."""
    tmp = tmp_path_factory.mktemp("notebook")
    home = tmp / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYASSETS_", "DAGSTER_"))}
    env["SKYASSETS_HOME"] = str(home)
    done = subprocess.run(
        [sys.executable, "-m", "skyassets.cli.main", "demo"],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, f"skyassets demo failed:\n{done.stdout}\n{done.stderr}"
    # Beside the archive's files, two local ones of the kind observers land: a plain image with a
    # WCS and none of the archive's keywords, so calib_level, instrument and friends are NULL.
    landed = tmp / "landed"
    landed.mkdir()
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:128, 0:128]
    for i in range(2):
        header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 151.7 + i / 100,
                              "CRVAL2": -40.4, "CRPIX1": 64, "CRPIX2": 64, "CDELT1": -1e-4, "CDELT2": 1e-4,
                              "DATE-OBS": f"2024-03-0{i + 1}T01:00:00", "OBJECT": "night sky"})
        sky = rng.normal(100.0, 3.0, (128, 128))
        for x, y in rng.uniform(12, 116, (15, 2)):  # stars 2.5 px wide, so the images are usable
            sky += rng.uniform(300, 3000) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.06**2))
        fits.PrimaryHDU(sky.astype(np.float32), header).writeto(landed / f"night-{i}.fits")
    done = subprocess.run(
        [sys.executable, "-m", "skyassets.cli.main", "ingest", str(landed)],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, f"skyassets ingest failed:\n{done.stdout}\n{done.stderr}"
    return home


@pytest.fixture(scope="module")
def executed(demo_home):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    workdir = demo_home.parent / "work"  # not the notebook's folder: the home comes from the environment
    workdir.mkdir()
    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits this process's environment
        mp.setenv("SKYASSETS_HOME", str(demo_home))
        mp.delenv("MPLBACKEND", raising=False)
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


@pytest.mark.slow
def test_notebook_runs_against_the_demo_catalog(executed, demo_home):
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    assert str(demo_home) in _text(executed.cells[1])  # the setup cell names the home it read

    # the table counts: every core table has rows (an empty catalog must not pass)
    counts = _text(_tagged(executed, "tables"))
    for table in ("observations", "products", "files", "images"):
        found = re.search(rf"^{table}\s+(\d+)\s*$", counts, re.MULTILINE)
        assert found and int(found.group(1)) > 0, f"no {table} rows in:\n{counts}"

    # the cone search around NGC 3132, from Python and from SQL
    cone = _text(_tagged(executed, "cone-search"))
    assert "jw02733" in cone and int(re.search(r"(\d+) images within", cone).group(1)) > 0, cone
    assert "jw02733" in _text(_tagged(executed, "cone-sql"))
    assert "jw02736" not in cone  # SMACS 0723 is elsewhere on the sky

    # the footprint and time examples found images
    footprint = _text(_tagged(executed, "footprint"))
    assert int(re.search(r"(\d+) images contain", footprint).group(1)) > 0, footprint
    assert "True" in footprint and "False" in footprint  # some images cover the point, some do not
    assert "jw02733" in _text(_tagged(executed, "time-date"))
    window = _text(_tagged(executed, "time-range"))
    assert int(re.search(r"(\d+) images overlap", window).group(1)) > 0, window

    # the question in words: the Southern Ring's F444W combined images, with the filters it applied
    found = _text(_tagged(executed, "find"))
    assert "reddest filter F444W" in found and "jw02733" in found and "_i2d.fits" in found, found

    # the level-3 products near NGC 3132 opened by their full location
    taken = _text(_tagged(executed, "take-files"))
    assert re.search(r"jw02733\S*_i2d\.fits: HDU 1 SCI, \d+x\d+ pixels", taken), taken

    # the published sky tiles in ipyaladin: the composite served from loopback, with two overlays
    sky = _text(_tagged(executed, "sky"))
    assert re.search(r"http://127\.0\.0\.1:\d+/collection/NGC-3132/composite\S* with 2 overlays", sky), sky

    # the plots
    for tag in ("plot-footprints", "plot-exposure", "plot-footprint-point"):
        assert _pngs(_tagged(executed, tag)) == 1, f"no figure from the cell tagged {tag!r}"
    exposure = _text(_tagged(executed, "plot-exposure"))
    assert re.search(r"F444W\s+\S+\s+\S+\s+\d+\s+[1-9]", exposure), exposure


@pytest.mark.slow
def test_the_catalog_holds_the_landed_files_with_null_archive_columns(demo_home):
    from skyassets.catalog import connect

    rows = connect(demo_home).execute(
        "SELECT file_name, calib_level, instrument_name FROM images WHERE file_name LIKE 'night-%'"
    ).fetchall()
    assert sorted(r[0] for r in rows) == ["night-0.fits", "night-1.fits"]
    assert all(r[1] is None and r[2] is None for r in rows)


@pytest.mark.slow
def test_a_second_demo_on_an_unchanged_home_materialises_nothing_new(demo_home):
    from dagster import AssetRecordsFilter, DagsterInstance

    def events() -> dict[str, int]:
        with DagsterInstance.from_config(str(demo_home / "dagster")) as instance:
            return {
                key.to_user_string(): len(instance.fetch_materializations(AssetRecordsFilter(key), 10000).records)
                for key in instance.get_asset_keys()
            }

    before = events()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYASSETS_", "DAGSTER_"))}
    env["SKYASSETS_HOME"] = str(demo_home)
    done = subprocess.run(
        [sys.executable, "-m", "skyassets.cli.main", "demo"],
        cwd=demo_home.parent, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, f"skyassets demo failed:\n{done.stdout}\n{done.stderr}"
    after = events()
    # The watchlist is asked again (that is how a change would be seen); nothing else is remade.
    changed = {k for k in after if after[k] != before.get(k, 0)}
    assert changed <= {"mast_observations"}, (changed, done.stdout)
    assert "nothing to fetch" in done.stdout and "up to date" in done.stdout
    # said plainly, not as counts of nothing
    assert ("\nNothing needed fetching: the files of every observation found are stored and verified.\n"
            in done.stdout), done.stdout
    assert "\nNo new observations; " in done.stdout and "Downloaded" not in done.stdout, done.stdout
    assert not re.search(r"\b0 (files|FITS|failed|new|observations)", done.stdout), done.stdout
    # the way to the sky viewer starts with installing it, where it is not installed yet
    viewer = f"scripts/viewer.sh install {demo_home / 'viewer'}   # once: Aladin Lite, from the npm registry\n"
    assert viewer in done.stdout and "sky NGC" in done.stdout.split(viewer)[1], done.stdout


def _materialisations(demo_home: Path, asset: str) -> dict[str, int]:
    """How many times each partition of ``asset`` has been materialised in the demo home's instance."""
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

    with DagsterInstance.from_config(str(demo_home / "dagster")) as instance:
        records = instance.fetch_materializations(AssetRecordsFilter(AssetKey(asset)), 10000).records
    counts: dict[str, int] = {}
    for record in records:
        counts[record.partition_key] = counts.get(record.partition_key, 0) + 1
    return counts


def _demo_again(demo_home: Path, **settings: str) -> subprocess.CompletedProcess:
    """``skyassets demo`` once more on the demo home (with ``settings`` in its environment); it must succeed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYASSETS_", "DAGSTER_"))}
    env.update(SKYASSETS_HOME=str(demo_home), **settings)
    done = subprocess.run(
        [sys.executable, "-m", "skyassets.cli.main", "demo"],
        cwd=demo_home.parent, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, f"skyassets demo failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_a_demo_fetches_again_a_file_gone_from_the_home_and_nothing_else(demo_home):
    gone = sorted((demo_home / "files" / "JWST").rglob("*_cal.fits"))[0]
    digest = subprocess.run(["sha256sum", str(gone)], capture_output=True, text=True).stdout.split()[0]
    gone.unlink()
    before = _materialisations(demo_home, "fits_files")
    done = _demo_again(demo_home)
    assert f"  {gone.parent.name}: 1 file gone from the home since fetched ({gone.name}); fetched again" \
        in done.stdout, done.stdout
    assert subprocess.run(["sha256sum", str(gone)], capture_output=True, text=True).stdout.split()[0] == digest
    after = _materialisations(demo_home, "fits_files")
    assert {k for k in after if after[k] != before.get(k, 0)} == {gone.parent.name}, done.stdout


@pytest.mark.slow
def test_a_demo_lists_again_the_observations_whose_products_the_watchlist_now_chooses_otherwise(demo_home):
    import yaml

    from skyassets.archive.choices import products_rechosen
    from skyassets.archive.watchlist import load_watchlist
    from skyassets.catalog import connect
    from skyassets.lake.home import Home

    raw = yaml.safe_load(resources.files("skyassets").joinpath("watchlist.yaml").read_text())
    (entry,) = [e for e in raw["entries"] if e["name"] == "smacs-0723-program"]
    entry["products"] = {"subgroups": ["I2D"]}  # the combined images only, no longer the exposures
    raw["entries"] = [e for e in raw["entries"] if e["name"] != "m74-field"]  # and one entry removed
    watchlist = demo_home.parent / "watchlist.yaml"
    watchlist.write_text(yaml.safe_dump(raw))
    home = Home(demo_home)
    found = home.tables.read("mast_observations", columns=["obs_id", "watchlist_entry"])
    smacs = sorted(found[found["watchlist_entry"].str.contains("smacs-0723-program")]["obs_id"])
    assert smacs
    before = _materialisations(demo_home, "mast_products")
    done = _demo_again(demo_home, SKYASSETS_WATCHLIST=str(watchlist))
    for obs_id in smacs:
        assert (f"  {obs_id}: the watchlist (smacs-0723-program) now chooses other products; listed and fetched "
                "again") in done.stdout, done.stdout
    after = _materialisations(demo_home, "mast_products")
    assert {k for k in after if after[k] != before.get(k, 0)} == set(smacs), done.stdout
    # the target's products are remade, and said to be for a target made before whose images changed
    assert re.search(r"\nMosaics and composites of \d+ other targets are up to date\.\n\n"
                     r"Mosaics and composites for 1 target whose images changed:\n  SMACS-0723 ", done.stdout), \
        done.stdout
    # the exposures no longer chosen stay where they are, said, and leave the catalog
    exposures = sorted((demo_home / "files" / "JWST").glob("jw02736*/*_cal.fits"))
    assert exposures and all(re.search(rf"^  {obs_id}: \d+ files? the watchlist no longer chooses \(.*\) stay in "
                                       rf"{re.escape(str(demo_home))}/files/JWST/{obs_id}, no longer catalogued$",
                                       done.stdout, re.M) for obs_id in {p.parent.name for p in exposures}), done.stdout
    catalogued = connect(demo_home).sql("SELECT file_name FROM files WHERE obs_id LIKE 'jw02736%'").fetchall()
    assert catalogued and not [name for (name,) in catalogued if name.endswith("_cal.fits")]
    # the removed entry's observations stay catalogued, said with the query that lists them
    from skyassets.cli.demo import UNWATCHED

    unwatched = {obs_id for (obs_id,) in connect(demo_home).sql(UNWATCHED).fetchall()}
    assert unwatched and all(o.startswith("j8pu") or "02107" in o for o in unwatched), unwatched  # M74's
    assert (f"  {len(unwatched)} catalogued observations the watchlist no longer finds (an entry removed or "
            "narrowed) stay, with their files, images and products, and no row in `observations`:") in done.stdout
    # the choice is recorded as made now: a next demo lists nothing again
    assert products_rechosen(home.tables, load_watchlist(watchlist), list(found["obs_id"])) == {}
