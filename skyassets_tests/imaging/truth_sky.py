"""A synthetic sky of known truth and JWST-like cal files of it, for mosaic tests and bench/mosaic.py.

Stars with Gaussian PSFs (the same width in arcsec at every pixel scale, integrated over pixels
exactly), seen through rotated and dithered pointings at one or two pixel scales, with a different
background level per exposure, white noise whose power per unit sky area is the same at every
pixel scale (equal depth), unflagged cosmic rays, flagged-but-good pixels (JUMP_DET, whose value is
left untouched) and hot pixels flagged DO_NOT_USE (finite, wrong values). Star fluxes are in
MJy/sr x arcsec^2: a star's pixels in MJy/sr summed and times the pixel area in arcsec^2 give it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy.special import erf

from skyassets.emulator.sky import make_wcs

RA, DEC = 150.0, 2.0
FWHM_ARCSEC = 0.08
JUMP_DET, DO_NOT_USE = 4, 1


@dataclass
class Exposure:
    """One cal file and what was put in it."""

    path: Path
    wcs: WCS
    scale: float
    noise: float  # MJy/sr per pixel
    background: float
    cosmic_rays: list[tuple[int, int]] = field(default_factory=list)
    jump_blobs: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Truth:
    """The stars (RA, Dec in degrees; flux in MJy/sr arcsec^2) and the exposures made of them."""

    ra: np.ndarray
    dec: np.ndarray
    flux: np.ndarray
    exposures: list[Exposure]


def stars(n: int, side_arcsec: float, seed: int, margin: float = 1.5) -> tuple[np.ndarray, ...]:
    """Up to ``n`` stars over a square ``side_arcsec`` wide, at least ``margin`` arcsec apart (fewer
    when they do not fit), log-uniform fluxes."""
    rng = np.random.default_rng(seed)
    xs: list[float] = []
    ys: list[float] = []
    for _ in range(100 * n):
        if len(xs) == n:
            break
        x, y = rng.uniform(-side_arcsec / 2, side_arcsec / 2, 2)
        if all(math.hypot(x - a, y - b) >= margin for a, b in zip(xs, ys, strict=True)):
            xs.append(x)
            ys.append(y)
    ra = RA + np.array(xs) / 3600.0 / math.cos(math.radians(DEC))
    dec = DEC + np.array(ys) / 3600.0
    return ra, dec, 10.0 ** rng.uniform(-1.0, 0.5, len(xs))


def _gaussian_stamp(x: float, y: float, sigma: float, radius: int, shape: tuple[int, int]):
    """Unit-flux Gaussian integrated exactly over the pixels around 0-based (x, y)."""
    ix, iy = int(round(x)), int(round(y))
    x0, x1 = max(ix - radius, 0), min(ix + radius + 1, shape[1])
    y0, y1 = max(iy - radius, 0), min(iy + radius + 1, shape[0])
    if x0 >= x1 or y0 >= y1:
        return None
    s = sigma * math.sqrt(2.0)
    ex = np.diff(erf((np.arange(x0, x1 + 1) - 0.5 - x) / s)) / 2.0
    ey = np.diff(erf((np.arange(y0, y1 + 1) - 0.5 - y) / s)) / 2.0
    return slice(y0, y1), slice(x0, x1), ey[:, None] * ex[None, :]


def render(wcs: WCS, shape: tuple[int, int], scale: float, ra: np.ndarray, dec: np.ndarray,
           flux: np.ndarray) -> np.ndarray:
    """The stars on a grid, in MJy/sr (float64), without noise or background."""
    image = np.zeros(shape)
    sigma = FWHM_ARCSEC / scale / 2.3548
    radius = int(math.ceil(6 * sigma)) + 1
    x, y = wcs.world_to_pixel_values(ra, dec)
    for xi, yi, f in zip(x, y, flux, strict=True):
        stamp = _gaussian_stamp(xi, yi, sigma, radius, shape)
        if stamp is not None:
            image[stamp[0], stamp[1]] += f / scale**2 * stamp[2]
    return image


def make_sky(folder: Path, *, scales: tuple[float, ...] = (0.031,), per_scale: int = 4, size_arcsec: float = 16.0,
             n_stars: int = 60, seed: int = 7, cosmic_rays: int = 25, jump_blobs: int = 10, hot_pixels: int = 40,
             noise: float = 0.02, bunit: str = "MJy/sr", photmjsr: float = 0.5, program: int = 1001) -> Truth:
    """Cal files of one sky: ``per_scale`` dithered, rotated pointings at each pixel scale.

    ``noise`` is the per-pixel noise (MJy/sr) at 0.031"; at other scales it falls with the pixel
    side so that every exposure is equally deep. ``bunit`` "DN/s" stores count rates per pixel:
    MJy/sr divided by PHOTMJSR, ``photmjsr`` at 0.031" and larger in proportion to the pixel area.
    JUMP_DET blobs go in the first exposure's part of the field that no other exposure covers (a
    strip ``size_arcsec`` / 4 wide west of the others).
    """
    rng = np.random.default_rng(seed)
    ra, dec, flux = stars(n_stars, size_arcsec * 0.85, seed)
    folder.mkdir(parents=True, exist_ok=True)
    exposures = []
    k = 0
    for scale in scales:
        n = int(round(size_arcsec / scale))
        for j in range(per_scale):
            dx, dy = rng.uniform(-0.6, 0.6, 2)  # arcsec
            if k == 0:
                dx -= size_arcsec / 4  # the first exposure reaches where no other does
            wcs = make_wcs(RA + dx / 3600 / math.cos(math.radians(DEC)), DEC + dy / 3600, scale,
                           3.0 + 7.0 * j + 2.0 * k, n, sip=False)
            sigma_pix = noise * 0.031 / scale
            background = 0.1 + 0.05 * k
            sci = render(wcs, (n, n), scale, ra, dec, flux)
            sci += background + rng.normal(0.0, sigma_pix, (n, n))
            dq = np.zeros((n, n), np.uint32)
            exposure = Exposure(folder / f"jw{program:05d}{k + 1:03d}001_02101_00001_nrcb1_cal.fits", wcs, scale,
                                sigma_pix, background)
            for _ in range(cosmic_rays):
                cx, cy = (int(v) for v in rng.integers(3, n - 3, 2))
                sci[cy, cx] += 400 * sigma_pix
                sci[cy, cx + 1] += 150 * sigma_pix
                exposure.cosmic_rays.append((cx, cy))
            if k == 0:
                for _ in range(jump_blobs):  # west strip only this exposure covers
                    cx, cy = int(rng.integers(n - n // 6, n - 4)), int(rng.integers(4, n - 4))
                    dq[cy - 1:cy + 2, cx - 1:cx + 2] |= JUMP_DET
                    exposure.jump_blobs.append((cx, cy))
            hot = rng.integers(0, n, (hot_pixels, 2))
            sci[hot[:, 1], hot[:, 0]] += 1000 * sigma_pix
            dq[hot[:, 1], hot[:, 0]] |= DO_NOT_USE
            err = np.full((n, n), sigma_pix, np.float32)
            calibration = photmjsr * (0.031 / scale) ** 2  # DN/s are per pixel: PHOTMJSR holds the pixel area
            values = sci if bunit == "MJy/sr" else sci / calibration
            errors = err if bunit == "MJy/sr" else err / calibration
            header = wcs.to_header()
            primary = fits.PrimaryHDU()
            primary.header.update(TELESCOP="JWST", INSTRUME="NIRCAM", DETECTOR="NRCB1", FILTER="F150W")
            hdu = fits.ImageHDU(values.astype(np.float32), header=header, name="SCI")
            hdu.header["BUNIT"] = bunit
            if bunit != "MJy/sr":
                hdu.header["PHOTMJSR"] = calibration
            fits.HDUList([primary, hdu, fits.ImageHDU(errors, header=header, name="ERR"),
                          fits.ImageHDU(dq, header=header, name="DQ")]).writeto(exposure.path, overwrite=True)
            exposures.append(exposure)
            k += 1
    return Truth(ra, dec, flux, exposures)


def measure(sci: np.ndarray, wcs: WCS, truth: Truth, aperture: float = 0.3,
            annulus: tuple[float, float] = (0.45, 0.7)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flux ratio to truth, position offset in mas, which stars were measured) of the truth stars
    on a surface-brightness image ``sci``: aperture sums (radius in arcsec) minus the annulus median,
    and first-moment centroids within the aperture. Stars with a NaN within the annulus are left out."""
    scale = math.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600
    x, y = wcs.world_to_pixel_values(truth.ra, truth.dec)
    ratios, offsets, ok = [], [], np.zeros(len(x), bool)
    half = int(math.ceil(annulus[1] / scale)) + 1
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        ix, iy = int(round(xi)), int(round(yi))
        if not (half <= ix < sci.shape[1] - half and half <= iy < sci.shape[0] - half):
            continue
        box = sci[iy - half:iy + half + 1, ix - half:ix + half + 1].astype(np.float64)
        gy, gx = np.mgrid[iy - half:iy + half + 1, ix - half:ix + half + 1]
        r = np.hypot(gx - xi, gy - yi) * scale
        ring = (r >= annulus[0]) & (r <= annulus[1])
        if not np.isfinite(box[r <= annulus[1]]).all():
            continue
        source = box - np.median(box[ring])
        inner = r <= aperture
        total = source[inner].sum()
        ratios.append(total * scale**2 / truth.flux[i])
        cx = (source[inner] * gx[inner]).sum() / total
        cy = (source[inner] * gy[inner]).sum() / total
        offsets.append(math.hypot(cx - xi, cy - yi) * scale * 1000.0)
        ok[i] = True
    return np.array(ratios), np.array(offsets), ok
