"""The resampler mosaics and composites share: known shifts and rotations, surface brightness, masks."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs.utils import proj_plane_pixel_area
from scipy.ndimage import map_coordinates

from skyassets.emulator.sky import make_wcs
from skyassets.imaging.composite import reproject_channels
from skyassets.imaging.mosaic import MosaicInput, build_mosaic
from skyassets.imaging.resample import bilinear, footprint_box, resample_image, resample_slabs, row_slabs

N = 64


@pytest.fixture
def grid():
    """A 64 x 64 input grid at 0.1"/px, north up."""
    return make_wcs(10.0, 20.0, 0.1, 0.0, N, sip=False)


@pytest.mark.parametrize("shape", [(40, 30), (1, 25), (25, 1), (1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bilinear_interpolation_is_map_coordinates_on_every_plane(shape, dtype):
    """Inside, on the last row and column, beyond every edge and far off the image (the -10 of a
    centre off the input's sky), as scipy's order-1 ``mode="nearest"`` interpolation."""
    rng = np.random.default_rng(3)
    planes = tuple(rng.normal(size=shape).astype(dtype) for _ in range(2))
    ny, nx = shape
    coords = np.stack([rng.uniform(-2.0, ny + 1.0, (50, 60)), rng.uniform(-2.0, nx + 1.0, (50, 60))])
    coords[:, 0, :4] = [[ny - 1, ny - 1, 0, -10.0], [nx - 1, 0, nx - 1, -10.0]]
    coords[:, 1, :3] = [[ny - 1.5, 0.25, ny - 1], [nx - 1.5, nx - 1, 0.75]]
    got = bilinear(planes, coords, np.dtype(dtype))
    for plane, values in zip(planes, got, strict=True):
        want = map_coordinates(plane, coords, order=1, mode="nearest", prefilter=False, output=dtype)
        assert values.dtype == dtype and values.shape == coords.shape[1:]
        np.testing.assert_allclose(values, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    np.testing.assert_array_equal(got[0][0, :4], planes[0][[ny - 1, ny - 1, 0, 0], [nx - 1, 0, nx - 1, 0]])


def test_integer_shift_copies_pixels_exactly(grid):
    data = np.random.default_rng(1).normal(size=(N, N))
    out = grid.deepcopy()
    out.wcs.crpix = [grid.wcs.crpix[0] + 7, grid.wcs.crpix[1] + 5]  # input (x, y) is output (x + 7, y + 5)
    resampled = resample_image(data, grid, out, (80, 80))
    np.testing.assert_array_equal(resampled[5:5 + N, 7:7 + N], data)
    covered = np.zeros((80, 80), bool)
    covered[5:5 + N, 7:7 + N] = True
    assert np.isnan(resampled[~covered]).all()


def test_quarter_turn_of_the_sky_turns_the_array(grid):
    data = np.arange(N * N, dtype=float).reshape(N, N)
    turned = make_wcs(10.0, 20.0, 0.1, 90.0, N, sip=False)
    np.testing.assert_array_equal(resample_image(data, grid, turned, (N, N)), np.rot90(data))


def test_shifted_rotated_source_lands_where_the_wcs_says(grid):
    """A Gaussian spot resampled onto a finer grid, rotated 33 degrees and offset, centred where the
    two WCS put it to 0.01 px."""
    yy, xx = np.mgrid[:N, :N]
    x0, y0 = 20.3, 40.7
    spot = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 2.0**2))
    out = make_wcs(10.0004, 19.9997, 0.08, 33.0, 96, sip=False)
    resampled = resample_image(spot, grid, out, (96, 96))
    ex, ey = out.world_to_pixel(grid.pixel_to_world(x0, y0))
    yo, xo = np.mgrid[:96, :96]
    light = np.nan_to_num(resampled) * (np.hypot(xo - ex, yo - ey) < 12)
    assert abs((light * xo).sum() / light.sum() - ex) < 0.01
    assert abs((light * yo).sum() / light.sum() - ey) < 0.01


def test_constant_surface_brightness_keeps_its_value_per_pixel(grid):
    """Onto smaller, rotated pixels a constant surface brightness keeps its value in every covered
    pixel, and the covered area is the input's: to the edges of its pixels, not their centres."""
    data = np.full((N, N), 4.2, np.float32)
    out = make_wcs(10.0, 20.0, 0.037, 20.0, 256, sip=False)
    resampled = resample_image(data, grid, out, (256, 256))
    covered = np.isfinite(resampled)
    np.testing.assert_allclose(resampled[covered], 4.2, rtol=1e-6)
    area = covered.sum() * proj_plane_pixel_area(out)
    assert area == pytest.approx(N**2 * proj_plane_pixel_area(grid), rel=0.005)


def test_masked_pixels_do_not_leak(grid):
    data = np.full((N, N), 2.0)
    data[30, 31] = np.nan
    data[10:14, 50:52] = np.nan
    out = make_wcs(10.0, 20.0, 0.07, 12.0, 100, sip=False)
    resampled = resample_image(data, grid, out, (100, 100))
    np.testing.assert_allclose(resampled[np.isfinite(resampled)], 2.0, rtol=1e-12)
    inside = np.isfinite(resample_image(np.full((N, N), 2.0), grid, out, (100, 100)))
    holes = inside & ~np.isfinite(resampled)
    # NaN only between the centres of NaN pixels: less than their own area (9 input pixels of 2.04
    # output pixels each), where plain bilinear interpolation of NaN blanks a pixel all round them
    assert 0 < holes.sum() < 9 * (0.1 / 0.07) ** 2


def test_result_does_not_depend_on_the_slab_size(grid):
    data = np.random.default_rng(2).normal(size=(N, N)).astype(np.float32)
    out = make_wcs(10.0, 20.0, 0.05, 45.0, 150, sip=False)
    np.testing.assert_array_equal(resample_image(data, grid, out, (150, 150), slab=37),
                                  resample_image(data, grid, out, (150, 150)))
    box = footprint_box(grid, (N, N), out, (150, 150))
    parts = list(resample_slabs(data, np.ones_like(data), grid, out, box, slab=1000))
    assert [(p.y0, p.y1) for p in parts] == list(row_slabs(box[0], box[1], box[3] - box[2], 1000))
    assert all(p.value.dtype == np.float32 and p.value.shape == (p.y1 - p.y0, box[3] - box[2]) for p in parts)


def test_off_grid_image_has_no_box(grid):
    far = make_wcs(100.0, -40.0, 0.1, 0.0, N, sip=False)
    assert footprint_box(grid, (N, N), far, (N, N)) is None
    assert np.isnan(resample_image(np.ones((N, N)), grid, far, (N, N))).all()


def test_mosaic_and_composite_resample_alike(tmp_path, grid):
    """One surface-brightness image through ``build_mosaic`` and through ``reproject_channels`` onto
    the same rotated grid: the same pixels, NaN in the same places."""
    data = np.random.default_rng(3).normal(5.0, 1.0, (N, N)).astype(np.float32)
    data[20:23, 40:42] = np.nan
    hdu = fits.ImageHDU(data, header=grid.to_header(), name="SCI")
    hdu.header["BUNIT"] = "MJy/sr"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "in.fits")
    out = make_wcs(10.0002, 20.0001, 0.06, 25.0, 120, sip=False)
    mosaic = build_mosaic([MosaicInput(tmp_path / "in.fits", weight=None)], tmp_path / "m.fits", wcs=out,
                          shape=(120, 120), match_background=False, reject_sigma=None, block_size=(16, 120))
    sci = fits.getdata(mosaic.path, "SCI")
    (channel,), _, _ = reproject_channels([(data, grid)], wcs=out, shape=(120, 120))
    np.testing.assert_array_equal(np.isnan(sci), np.isnan(channel))
    np.testing.assert_allclose(sci[np.isfinite(sci)], channel[np.isfinite(channel)], rtol=1e-6)


def test_coverage_ends_at_the_edges_of_valid_pixels(grid):
    """Onto pixels a third the size, the covered area is exactly the valid input pixels' area: it
    reaches the image border and stops at the border of a masked region, half a pixel from the
    centres on either side."""
    data = np.ones((N, N), np.float32)
    data[20:30, 20:30] = np.nan
    fine = make_wcs(10.0, 20.0, 0.1 / 3, 0.0, 3 * N, sip=False)
    resampled = resample_image(data, grid, fine, (3 * N, 3 * N))
    assert np.isfinite(resampled).sum() == 9 * (N * N - 100)
    assert np.isnan(resampled[60:90, 60:90]).all() and np.isfinite(resampled[57:60, 57:93]).all()
