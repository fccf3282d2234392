"""A target's pyramids from its catalogued products: made once, kept while the products stay the same,
replaced whole when they change."""

import json
import os

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from skyassets.lake.home import Home
from skyassets.tiles.hips import read_properties
from skyassets.tiles.products import MANIFEST, footprints, target_manifest, tile_target, tiles_root
from skyassets_tests.tiles.conftest import write_mosaic

TARGET = "NGC-0001"


def make_products(home: Home, shape=(120, 160)) -> None:
    """A catalogued mosaic and composite of TARGET, as the products assets write them."""
    folder = home.target_dir(TARGET)
    wcs = write_mosaic(folder / "mosaic_nircam_f444w.fits", shape, scale_arcsec=1.0)
    rgb = np.zeros((*shape, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(folder / "composite_pair.png")
    header = wcs.to_header_string(relax=True)
    home.tables.write("mosaics", [{
        "target": TARGET, "instrument_name": "NIRCAM", "filter": "F444W",
        "path": f"products/{TARGET}/mosaic_nircam_f444w.fits",
        "n_inputs": 1, "n_rejected": 0, "naxis1": shape[1], "naxis2": shape[0], "s_ra": 150.0, "s_dec": -40.0,
        "inputs": "a.fits", "wcs_header": header,
    }], partition=TARGET)
    home.tables.write("composites", [{
        "target": TARGET, "recipe": "pair", "kind": "classic", "rank": 1, "filters": "F200W;F444W", "hues": "0;240",
        "method": "screen", "stretch": "asinh", "png": f"products/{TARGET}/composite_pair.png",
        "cube": f"products/{TARGET}/composite_pair.tif", "naxis1": shape[1], "naxis2": shape[0], "wcs_header": header,
    }], partition=TARGET)


IMAGES = [("jw00001001001_02101_00001", "a_cal.fits", (149.995, -40.003)),
          ("jw00001001001_02101_00002", "b_cal.fits", (150.006, -39.996))]


def add_images(home: Home) -> list[str]:
    """Two catalogued images of TARGET (target_images and their image_metadata with footprints); their ids."""
    rows = []
    for obs_id, name, (ra, dec) in IMAGES:
        half = 0.002
        corners = [(ra - half, dec - half), (ra + half, dec - half), (ra + half, dec + half), (ra - half, dec + half)]
        region = "POLYGON ICRS " + " ".join(f"{a:.6f} {d:.6f}" for a, d in corners)
        home.tables.write("image_metadata", [{"obs_id": obs_id, "file_name": name, "hdu_index": 1, "s_ra": ra,
                                              "s_dec": dec, "s_region": region}], partition=obs_id)
        rows.append({"target": TARGET, "obs_id": obs_id, "file_name": name, "path": f"files/x/{name}",
                     "hdu_index": 1, "instrument_name": "NIRCAM", "filter": "F444W", "score": 80.0, "flag": "good"})
    home.tables.write("target_images", rows, partition=TARGET)
    return [f"{obs_id}/{name}[1]" for obs_id, name, _ in IMAGES]


def test_footprints_are_the_catalogued_images_with_their_polygons(tmp_path):
    home = Home(tmp_path / "home")
    ids = add_images(home)
    found = footprints(home, TARGET)
    assert [f"{f['obs_id']}/{f['file_name']}[{f['hdu_index']}]" for f in found] == ids
    assert found[0]["polygon"][0] == pytest.approx([149.993, -40.005]) and len(found[0]["polygon"]) == 4
    assert found[1]["filter"] == "F444W" and found[1]["score"] == 80.0


def test_a_target_is_tiled_once_and_again_only_when_its_products_change(tmp_path):
    home = Home(tmp_path / "home")
    make_products(home)
    first = tile_target(home, TARGET, width=64)
    assert first.changed and [p["name"] for p in first.pyramids] == ["mosaic_nircam_f444w", "composite_pair"]
    link = tiles_root(home) / TARGET
    assert link.is_symlink()
    assert read_properties(link / "mosaic_nircam_f444w")["hips_tile_format"] == "fits"
    assert read_properties(link / "composite_pair")["hips_tile_format"] == "png"
    assert target_manifest(home, TARGET)["digest"] == first.digest
    version = link.resolve()

    again = tile_target(home, TARGET, width=64)
    assert not again.changed and link.resolve() == version  # the same products: nothing re-tiled

    mosaic = home.target_dir(TARGET) / "mosaic_nircam_f444w.fits"
    os.utime(mosaic, ns=(mosaic.stat().st_atime_ns, mosaic.stat().st_mtime_ns + 10**9))  # remade
    changed = tile_target(home, TARGET, width=64)
    assert changed.changed and changed.digest != first.digest
    assert link.resolve() != version and not version.exists()  # swapped in, the old version removed
    assert json.loads((link / MANIFEST).read_text())["digest"] == changed.digest


def test_a_failed_tiling_leaves_the_current_pyramids_in_place(tmp_path):
    home = Home(tmp_path / "home")
    make_products(home)
    made = tile_target(home, TARGET, width=64)
    served = (tiles_root(home) / TARGET).resolve()
    png = home.target_dir(TARGET) / "composite_pair.png"
    png.write_bytes(b"not a png")  # a remade composite that cannot be read
    with pytest.raises(ValueError, match="composite_pair.png: cannot read the composite"):
        tile_target(home, TARGET, width=64)
    assert (tiles_root(home) / TARGET).resolve() == served
    assert target_manifest(home, TARGET)["digest"] == made.digest
    versions = list((tiles_root(home) / ".versions" / TARGET).iterdir())
    assert versions == [served]  # the half-made version was removed
    assert fits.getdata(next((served / "mosaic_nircam_f444w").rglob("Npix*.fits"))).dtype.kind == "f"


def test_two_processes_tiling_a_target_at_once_take_turns_and_leave_it_whole(tmp_path, monkeypatch):
    """A command line and the daemon's automation may tile one target at once: one tiles it, the
    other waits and takes its pyramids; neither removes the version the other writes."""
    import threading

    from skyassets.tiles import products

    home = Home(tmp_path / "home")
    make_products(home)
    building, most, lock = [0], [0], threading.Lock()
    real = products.build_hips

    def slow_build(*args, **kwargs):
        with lock:
            building[0] += 1
            most[0] = max(most[0], building[0])
        try:
            threading.Event().wait(0.2)  # long enough for the other to start, were it let in
            return real(*args, **kwargs)
        finally:
            with lock:
                building[0] -= 1

    monkeypatch.setattr(products, "build_hips", slow_build)
    start, done = threading.Barrier(2), []

    def tile() -> None:
        start.wait()
        done.append(tile_target(home, TARGET, width=64))

    workers = [threading.Thread(target=tile) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert most[0] == 1 and len(done) == 2 and sorted(t.changed for t in done) == [False, True]
    link = tiles_root(home) / TARGET
    assert all((link / p["name"] / "properties").is_file() for p in target_manifest(home, TARGET)["pyramids"])
    assert [v for v in (tiles_root(home) / ".versions" / TARGET).iterdir()] == [link.resolve()]


def test_pyramids_found_broken_are_tiled_again_though_the_products_did_not_change(tmp_path):
    home = Home(tmp_path / "home")
    make_products(home)
    first = tile_target(home, TARGET, width=64)
    (tiles_root(home) / TARGET / "mosaic_nircam_f444w" / "properties").unlink()  # a version left half there
    again = tile_target(home, TARGET, width=64)
    assert again.changed and again.digest == first.digest
    assert read_properties(tiles_root(home) / TARGET / "mosaic_nircam_f444w")["hips_tile_format"] == "fits"
