"""`skyassets sky` in a real headless Chromium: the page loads, tiles show, the footprint overlay is the
catalog's, and a click on an image shows its catalog row. Aladin Lite and Chromium come from
scripts/viewer.sh; where they cannot be installed the browser tests skip, except in CI, where they fail."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skyassets.lake.home import Home
from skyassets.tiles.products import tile_target
from skyassets.tiles.publish import FolderDestination, publish_collection
from skyassets.tiles.viewer import collection_index
from skyassets_tests.servers import free_port, serving
from skyassets_tests.tiles.test_products import IMAGES, TARGET, add_images, make_products

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "viewer.sh"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--enable-unsafe-swiftshader", "--window-size=1100,700"]


def _setup(*args: str) -> str:
    """The last line scripts/viewer.sh prints, or skip (fail in CI) saying why it could not."""
    try:
        done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=900)
        problem = "" if done.returncode == 0 else done.stderr.strip()[-2000:] or f"exit {done.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem:
        reason = f"scripts/viewer.sh {' '.join(args)} failed: {problem}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A home with one target's products, catalogued images, tiles and published collection; the viewer
    serving it through `skyassets sky`; Chromium."""
    base = tmp_path_factory.mktemp("viewer")
    home = Home(base / "home")
    make_products(home, shape=(600, 800))
    ids = add_images(home)
    tile_target(home, TARGET)
    publish_collection(home, FolderDestination(home.root / "published"))
    aladin = Path(_setup("install", str(base / "aladin"))) / "node_modules" / "aladin-lite" / "dist" / "aladin.js"
    chromium = _setup("chromium")
    port = free_port()
    env = {**os.environ, "SKYASSETS_HOME": str(home.root), "SKYASSETS_ALADIN_JS": str(aladin)}
    command = [sys.executable, "-m", "skyassets.cli.main", "sky", TARGET, "--port", str(port), "--no-browser"]
    with serving(command, ready_url=f"http://127.0.0.1:{port}/collection.json", env=env, cwd=base,
                 log=base / "sky.log", timeout=120):
        yield {"url": f"http://127.0.0.1:{port}/", "chromium": chromium, "ids": ids, "base": base}


def _chromium(site, *args: str, profile: str) -> subprocess.CompletedProcess:
    return subprocess.run([site["chromium"], *FLAGS, f"--user-data-dir={site['base'] / profile}",
                           "--virtual-time-budget=15000", *args], capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_the_page_draws_the_catalogued_footprints_and_a_click_shows_the_row(site):
    ra, dec = IMAGES[1][2]
    page = _chromium(site, "--dump-dom", f"{site['url']}?target={TARGET}&select={ra},{dec}", profile="dom")
    found = re.search(r'<pre id="status"[^>]*>(.*?)</pre>', page.stdout, re.S)
    assert found, page.stdout[-2000:] + page.stderr[-2000:]
    status = json.loads(found.group(1))
    assert status["ready"] and status["target"] == TARGET
    assert status["footprints"] == site["ids"] and status["drawn"] == len(site["ids"])
    assert status["selected"] == site["ids"][1]  # the image under the click, from the catalog
    assert "score: 80" in page.stdout and IMAGES[1][0] in page.stdout


@pytest.mark.slow
def test_the_page_shows_the_tiles(site):
    shot = site["base"] / "shot.png"
    _chromium(site, f"--screenshot={shot}", f"{site['url']}?target={TARGET}", profile="shot")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    sky = pixels[100:600, 420:1000]  # the view, away from the side panel and the controls
    red = (sky[..., 0] > 150) & (sky[..., 1] < 80) & (sky[..., 2] < 80)  # the composite is red
    assert red.mean() > 0.2, f"only {red.mean():.1%} of the view shows the composite's tiles"


def test_the_collection_index_lists_targets_and_layers_composites_first(tmp_path):
    home = Home(tmp_path / "home")
    make_products(home)
    tile_target(home, TARGET, width=64)
    publish_collection(home, FolderDestination(tmp_path / "site"))
    [entry] = collection_index(tmp_path / "site")
    assert entry["target"] == TARGET
    assert [layer["kind"] for layer in entry["layers"]] == ["composite", "mosaic"]
    assert entry["layers"][1]["path"] == f"{TARGET}/mosaic_nircam_f444w" and entry["layers"][1]["cut"]
    with pytest.raises(FileNotFoundError, match="hipslist missing"):
        collection_index(tmp_path / "nowhere")


def test_sky_says_what_is_missing(tmp_path, monkeypatch, capsys):
    from skyassets.cli.main import main

    monkeypatch.setenv("SKYASSETS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SKYASSETS_ALADIN_JS", raising=False)
    assert main(["sky", "--no-browser"]) == 1  # what was asked for is said first: nothing published yet
    assert "no published collection" in capsys.readouterr().err
    home = Home(tmp_path / "home")
    make_products(home)
    tile_target(home, TARGET, width=64)
    publish_collection(home, FolderDestination(home.root / "published"))
    assert main(["sky", "--no-browser"]) == 1
    assert "Aladin Lite not found" in capsys.readouterr().err
    script = tmp_path / "aladin.js"
    script.write_text("export default {};")
    monkeypatch.setenv("SKYASSETS_ALADIN_JS", str(script))
    assert main(["sky", "NGC-9999", "--no-browser"]) == 1
    assert f"published: {TARGET}" in capsys.readouterr().err
