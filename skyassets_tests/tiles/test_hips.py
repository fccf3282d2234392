"""HiPS pyramids: pixel values against the synthetic truth, the HiPS layout, the coverage, and reproject's tiles."""

import warnings

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from mocpy import MOC
from PIL import Image
from reproject import reproject_interp
from reproject.hips import reproject_to_hips

from skyassets.tiles.hips import (
    ArrayRows,
    FitsRows,
    build_hips,
    read_properties,
    tile_lonlat,
    tile_path,
    tile_subindex,
)
from skyassets_tests.tiles.conftest import make_wcs, truth, write_mosaic

WIDTH = 64  # small tiles keep the pyramids deep and the tests fast


def _deep_tiles(root, order, ext="fits"):
    return sorted((root / f"Norder{order}").rglob(f"Npix*.{ext}"))


def test_each_tile_pixel_is_the_mosaic_resampled_at_its_centre(mosaic, tmp_path):
    path, wcs = mosaic
    made = build_hips(FitsRows(path, "SCI"), tmp_path / "hips", tile_format="fits", title="t",
                      creator_did="ivo://skyassets/P/test", width=WIDTH)
    sub = tile_subindex(WIDTH)
    checked = 0
    for tile in _deep_tiles(made.path, made.order):
        index = int(tile.stem.removeprefix("Npix"))
        values = fits.getdata(tile)
        lon, lat = tile_lonlat(made.order, index, sub, WIDTH)
        x, y = wcs.world_to_pixel_values(lon, lat)
        interior = (x > 0.5) & (x < 398.5) & (y > 0.5) & (y < 298.5)
        assert np.isfinite(values[interior]).all()
        np.testing.assert_allclose(values[interior], truth(x[interior], y[interior]), atol=2e-5)
        outside = (x < -0.6) | (x > 399.6) | (y < -0.6) | (y > 299.6)
        assert np.isnan(values[outside]).all()
        checked += int(interior.sum())
    assert checked > 300 * 400  # the image's pixels are all covered (tile pixels are a little finer)


def test_a_pyramid_has_the_hips_layout_allsky_moc_and_averaged_lower_orders(mosaic, tmp_path):
    path, wcs = mosaic
    made = build_hips(FitsRows(path, "SCI"), tmp_path / "hips", tile_format="fits", title="NGC 1 F444W",
                      creator_did="ivo://skyassets/P/test", width=WIDTH)
    props = read_properties(made.path)
    assert props["hips_tile_format"] == "fits" and props["hips_frame"] == "equatorial"
    assert int(props["hips_order"]) == made.order and props["hips_order_min"] == "3"
    assert props["hips_tile_width"] == str(WIDTH) and props["hips_pixel_bitpix"] == "-32"
    low, high = map(float, props["hips_pixel_cut"].split())
    assert 0.5 < low < high < 4
    for order in range(3, made.order + 1):
        assert _deep_tiles(made.path, order), f"no tile at order {order}"
    # a parent's pixel is the mean of the 2x2 children pixels below it
    child = _deep_tiles(made.path, made.order)[0]
    index = int(child.stem.removeprefix("Npix"))
    parent = fits.getdata(tile_path(made.path, made.order - 1, index // 4, "fits"))
    h = WIDTH // 2
    half = {0: (slice(h, None), slice(None, h)), 1: (slice(None, h), slice(None, h)),
            2: (slice(h, None), slice(h, None)), 3: (slice(None, h), slice(h, None))}
    data = fits.getdata(child).reshape(h, 2, h, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # blocks wholly outside the image
        expected = np.nanmean(data, axis=(1, 3))
    np.testing.assert_allclose(parent[half[index % 4]], expected, rtol=1e-6)
    allsky = fits.getdata(made.path / "Norder3" / "Allsky.fits")
    assert allsky.shape == (29 * 32, 27 * 32) and np.isfinite(allsky).any()
    moc = MOC.from_fits(made.path / "Moc.fits")
    centre = wcs.pixel_to_world(200, 150)
    assert moc.contains_skycoords(SkyCoord([centre.ra], [centre.dec]))[0]
    assert not moc.contains_skycoords(SkyCoord([centre.ra.deg + 1], [centre.dec.deg], unit="deg"))[0]
    area = 300 * 400 * (0.25 / 3600) ** 2 / (4 * np.pi * (180 / np.pi) ** 2)
    assert area < made.sky_fraction < 3 * area  # the coverage, rounded out to its cells


def test_colour_tiles_are_png_transparent_outside_and_in_hips_orientation(tmp_path):
    shape = (200, 260)
    wcs = make_wcs(shape, ra=10.0, dec=20.0)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    rgb = np.stack([truth(xx, yy) * 40, np.full(shape, 128.0), 255 - truth(xx, yy) * 40], axis=-1)
    made = build_hips(ArrayRows(rgb, wcs), tmp_path / "rgb", tile_format="png", title="c",
                      creator_did="ivo://skyassets/P/c", width=WIDTH)
    sub = tile_subindex(WIDTH)
    for tile in _deep_tiles(made.path, made.order, "png"):
        index = int(tile.stem.removeprefix("Npix"))
        pixels = np.flipud(np.asarray(Image.open(tile)))  # PNG rows run top-down
        lon, lat = tile_lonlat(made.order, index, sub, WIDTH)
        x, y = wcs.world_to_pixel_values(lon, lat)
        inside = (x > 0.5) & (x < shape[1] - 1.5) & (y > 0.5) & (y < shape[0] - 1.5)
        assert (pixels[..., 3][inside] == 255).all()
        assert not inside.any() or np.abs(pixels[..., 0][inside] - truth(x[inside], y[inside]) * 40).max() <= 1
        outside = (x < -0.6) | (x > shape[1] - 0.4) | (y < -0.6) | (y > shape[0] - 0.4)
        assert (pixels[..., 3][outside] == 0).all()
    assert (made.path / "Norder3" / "Allsky.png").exists()


def test_tiles_agree_with_reprojects_hips_on_the_same_input(tmp_path):
    path = tmp_path / "small.fits"
    write_mosaic(path, (90, 120), scale_arcsec=1.0)
    ours = build_hips(FitsRows(path, "SCI"), tmp_path / "ours", tile_format="fits", title="t",
                      creator_did="ivo://skyassets/P/t", width=WIDTH)
    reproject_to_hips((fits.getdata(path, "SCI"), fits.getheader(path, "SCI")), coord_system_out="equatorial",
                      reproject_function=reproject_interp, output_directory=tmp_path / "theirs", tile_size=WIDTH,
                      level=ours.order)
    theirs = {p.name: p for p in _deep_tiles(tmp_path / "theirs", ours.order)}
    mine = {p.name: p for p in _deep_tiles(ours.path, ours.order)}
    assert set(mine) == set(theirs)
    for name in mine:
        a, b = fits.getdata(mine[name]), fits.getdata(theirs[name])
        both = np.isfinite(a) & np.isfinite(b)
        assert both.sum() >= 0.99 * max(np.isfinite(b).sum(), 1) - 2 * WIDTH
        np.testing.assert_allclose(a[both], b[both], atol=1e-5)


def test_the_image_is_read_through_a_window_of_rows(tmp_path):
    path = tmp_path / "tall.fits"
    write_mosaic(path, (3000, 120))
    source = FitsRows(path, "SCI")
    build_hips(source, tmp_path / "tall", tile_format="fits", title="t", creator_did="ivo://skyassets/P/t",
               width=256)
    assert source.peak_window_rows < 3000 / 3, source.peak_window_rows


def test_bad_input_is_named(tmp_path):
    path = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((2, 3, 4), np.float32)).writeto(path)
    with pytest.raises(ValueError, match="cube.fits.*not a 2-D image"):
        FitsRows(path)
    with pytest.raises(ValueError, match="no extension 'SCI'"):
        FitsRows(path, "SCI")
