"""Synthetic images with a known truth: a sky whose value is a linear function of the image pixel, so
bilinear resampling reproduces it exactly and any misplaced tile pixel shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS


def make_wcs(shape: tuple[int, int], ra: float = 150.0, dec: float = -40.0, scale_arcsec: float = 0.25,
             angle: float = 0.3) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    wcs.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    wcs.wcs.pc = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return wcs


def truth(x, y):
    """The synthetic sky's value at image pixel (x, y)."""
    return 2.0 + 0.003 * x - 0.002 * y


def write_mosaic(path: Path, shape: tuple[int, int], **wcs_args) -> WCS:
    """A mosaic file like the products' (SCI, CON, WHT) holding :func:`truth`."""
    wcs = make_wcs(shape, **wcs_args)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    header = wcs.to_header()
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([
        fits.PrimaryHDU(),
        fits.ImageHDU(truth(xx, yy).astype(np.float32), header=header, name="SCI"),
        fits.ImageHDU(np.ones(shape, np.int16), header=header, name="CON"),
        fits.ImageHDU(np.ones(shape, np.float32), header=header, name="WHT"),
    ]).writeto(path, overwrite=True)
    return wcs


@pytest.fixture
def mosaic(tmp_path):
    path = tmp_path / "mosaic.fits"
    wcs = write_mosaic(path, (300, 400))
    return path, wcs
