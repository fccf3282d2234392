"""Mosaics built block by block on a local Dask cluster of worker processes: the same pixels as in
one piece, background matched globally, each worker's memory bounded by the block."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from distributed import Client, LocalCluster

from skyassets.emulator.sky import make_wcs
from skyassets.imaging.blocks import MARGIN, build_mosaic_blocks, grid_blocks
from skyassets.imaging.mosaic import MosaicInput, build_mosaic

SIZE = 200
SKY = (0.25, 0.40, 0.30, 0.55)  # a different background per input, for matching to level


def make_inputs(folder: Path, size: int = SIZE, count: int = 4, seed: int = 7) -> list[MosaicInput]:
    """``count`` overlapping JWST-like cal files (SCI MJy/sr, ERR, DQ) with stars, cosmic rays and
    their own sky level, on a 2-column pattern overlapping by about a third."""
    rng = np.random.default_rng(seed)
    scale, shift = 0.031, 0.65 * size * 0.031 / 3600
    yy, xx = np.mgrid[-6:7, -6:7]
    star = np.exp(-(xx**2 + yy**2) / 2.0).astype(np.float32)
    sources = rng.uniform(0, 1.65 * size * scale / 3600, (60, 2))
    paths = []
    for k in range(count):
        fx, fy = k % 2, k // 2
        wcs = make_wcs(30.0 + fx * shift / math.cos(math.radians(-10.0)), -10.0 + fy * shift, scale,
                       20.0 + 0.5 * k, size, sip=False)
        sci = rng.normal(SKY[k % len(SKY)], 0.03, (size, size)).astype(np.float32)
        ra = 30.0 + sources[:, 0] / math.cos(math.radians(-10.0)) - shift / 2
        x, y = wcs.world_to_pixel_values(ra, -10.0 + sources[:, 1] - shift / 2)
        for xi, yi in zip(np.round(x).astype(int), np.round(y).astype(int), strict=True):
            if 6 <= xi < size - 6 and 6 <= yi < size - 6:
                sci[yi - 6:yi + 7, xi - 6:xi + 7] += 5 * star
        hits = rng.integers(0, size, (20, 2))
        sci[hits[:, 1], hits[:, 0]] += 50.0  # cosmic rays only this exposure has
        header = wcs.to_header()
        primary = fits.PrimaryHDU()
        primary.header["TELESCOP"] = "JWST"
        primary.header["MJD-BEG"], primary.header["MJD-END"] = 60000.0 + k, 60000.1 + k
        hdu = fits.ImageHDU(sci, header=header, name="SCI")
        hdu.header["BUNIT"] = "MJy/sr"
        err = fits.ImageHDU(np.full((size, size), 0.03, np.float32), header=header, name="ERR")
        dq = fits.ImageHDU(np.zeros((size, size), np.uint32), header=header, name="DQ")
        path = folder / f"in{k}_cal.fits"
        fits.HDUList([primary, hdu, err, dq]).writeto(path)
        paths.append(MosaicInput(path))
    return paths


@pytest.fixture(scope="module")
def cluster():
    # the workers start from a parent holding more than their limit: a block's peak must be its own
    ballast = np.ones(150_000_000)  # 1.2 GB, touched
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="1GiB") as local, Client(local) as client:
        del ballast
        yield client


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"))


def test_blocks_cover_the_grid_once_with_margins():
    blocks = grid_blocks((250, 130), (100, 64))
    covered = np.zeros((250, 130), int)
    for b in blocks:
        covered[b.y0:b.y1, b.x0:b.x1] += 1
        assert b.my0 == max(0, b.y0 - MARGIN) and b.mx1 == min(130, b.x1 + MARGIN)
    assert len(blocks) == 9 and (covered == 1).all()


@pytest.mark.slow
def test_blocks_on_worker_processes_give_the_one_piece_mosaic(cluster, inputs, tmp_path):
    whole = build_mosaic(inputs, tmp_path / "whole.fits", match_background=False)
    blocked = build_mosaic_blocks(inputs, tmp_path / "blocked.fits", cluster.get_executor(),
                                  match_background=False, block=(200, 200))
    assert blocked.shape == whole.shape and blocked.header["NBLOCKS"] == 4
    for name in ("SCI", "CON", "WHT"):
        a, b = fits.getdata(whole.path, name), fits.getdata(blocked.path, name)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=name)
    # the same cosmic rays rejected, also at block edges (the pixels above); margins count twice
    assert whole.n_rejected > 0 and whole.n_rejected <= blocked.n_rejected < 2 * whole.n_rejected
    workers = {w["id"] for w in cluster.scheduler_info()["workers"].values()}
    assert len(workers) == 2
    assert 0 < blocked.header["BLKPEAK"] < 1024  # MB, within the workers' memory limit
    assert blocked.preview_png.startswith(b"\x89PNG")


@pytest.mark.slow
def test_a_mosaic_in_blocks_says_what_all_its_inputs_say_not_its_first_block(cluster, inputs, tmp_path):
    # blocks small enough that the first one reaches one input only (60001.0 to 60001.1)
    blocked = build_mosaic_blocks(inputs, tmp_path / "blocked.fits", cluster.get_executor(),
                                  match_background=False, block=(100, 100))
    assert blocked.header["NBLOCKS"] == 16 and blocked.header["NINPUTS"] == 4
    # the whole time span of the inputs, and what they all agree on
    assert (blocked.header["TELESCOP"], blocked.header["MJD-BEG"], blocked.header["MJD-END"]) == (
        "JWST", 60000.0, 60003.1)


@pytest.mark.slow
def test_background_is_matched_over_the_whole_grid_not_per_block(cluster, inputs, tmp_path):
    whole = build_mosaic(inputs, tmp_path / "whole.fits", match_background=True, reject_sigma=None)
    raw = build_mosaic(inputs, tmp_path / "raw.fits", match_background=False, reject_sigma=None)
    blocked = build_mosaic_blocks(inputs, tmp_path / "blocked.fits", cluster.get_executor(),
                                  match_background=True, reject_sigma=None, block=(200, 200), coarse=4)
    a, b, c = (fits.getdata(r.path, "SCI") for r in (whole, blocked, raw))
    finite = np.isfinite(a) & np.isfinite(b)
    off_unmatched = np.nanmedian(np.abs(c - a))
    off_blocked = np.median(np.abs(b - a)[finite])
    assert off_unmatched > 0.02  # the inputs' skies differ by up to 0.3
    assert off_blocked < 0.1 * off_unmatched
    offsets = [blocked.header[f"BG{k:04d}"] for k in range(1, 5)]
    expected = [whole.header[f"BG{k:04d}"] for k in range(1, 5)]
    np.testing.assert_allclose(offsets, expected, atol=0.01)


def test_no_input_left_is_an_error(cluster, inputs, tmp_path):
    rejected = [MosaicInput(i.path, flag="reject") for i in inputs]
    with pytest.raises(ValueError, match="no inputs left"):
        build_mosaic_blocks(rejected, tmp_path / "none.fits", cluster.get_executor())


@pytest.mark.slow
def test_inputs_named_in_any_script_are_joined_by_their_escaped_names(cluster, inputs, tmp_path):
    renamed = []
    for k, source in enumerate(inputs[:2]):
        path = tmp_path / f"ñébula ☆ {k}_cal.fits"
        path.write_bytes(Path(source.path).read_bytes())
        renamed.append(MosaicInput(path))
    blocked = build_mosaic_blocks(renamed, tmp_path / "blocked.fits", cluster.get_executor(), block=(200, 200))
    written = fits.getheader(blocked.path)
    assert written["NBLOCKS"] > 1
    assert sorted(written[f"IN{k:04d}"] for k in (1, 2)) == ["\\xf1\\xe9bula \\u2606 0_cal.fits[1]",
                                                          "\\xf1\\xe9bula \\u2606 1_cal.fits[1]"]
