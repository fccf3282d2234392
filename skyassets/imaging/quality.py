"""Image quality: what one image delivers, measured from its pixels, and a 0–100 score.

Per image: the sky background and its noise (photutils ``Background2D``; a global sigma-clipped
estimate when every box is masked), the sources a DAOFIND star finder detects above the noise
(cosmic rays told apart by data-quality bits, sharpness and roundness), the PSF FWHM and
ellipticity from pixel-integrated elliptical Moffat fits to a bounded sample of bright isolated
unsaturated stars, the fractions of NaN, zero, saturated and DQ-flagged pixels, a WCS sanity check
(pixel scale against the instrument's nominal one, a finite footprint), the header's own quality
flags (JWST ``ENG_QUAL``, HST ``EXPFLAG``/``FGSLOCK``) and the 5σ point-source depth from the noise,
the PSF's noise-equivalent area and the AB zero point.

:func:`score` turns the metrics of many images into a score from physically meaningful terms
(effective exposure time against comparable images, PSF elongation, usable pixels) and a
good / usable / reject flag. ``docs/quality.md`` gives the formula, its constants and why.
Everything here is plain Python (no Dagster), one image at a time; the background, the detection
and the PSF fits run once each.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.stats import SigmaClip, sigma_clipped_stats
from astropy.wcs import WCS
from astropy.wcs.utils import pixel_to_skycoord, proj_plane_pixel_area
from photutils.background import Background2D, SExtractorBackground
from photutils.detection import DAOStarFinder
from scipy.ndimage import label
from scipy.spatial import cKDTree

from skyassets.fits.dq import DQ_BITS, PixelMasks, dq_kind_of, pixel_masks, saturation_level
from skyassets.fits.limits import check_image
from skyassets.fits.meta import HeaderKeys, parse_bunit, zero_point_ab
from skyassets.imaging.mosaic import grown, large_parts
from skyassets.lake.schemas import QUALITY_SCHEMA, SOURCE_SCHEMA

# ------------------------------------------------------------------------------------ constants
# Background: boxes of about 1/8 of the image side (16–64 px): many times the PSF, yet small
# against real sky gradients; 3x3 median filter of the box grid against single bad boxes.
BOX_MIN, BOX_MAX, BOX_FRACTION = 16, 64, 8
BOX_FILTER = 3
CLIP_SIGMA = 3.0
# The background's second pass masks what stands this many rms above the first one, in segments
# of at least this many pixels, grown by this radius (pixels).
SOURCE_MASK_SIGMA, SOURCE_MASK_PIXELS, SOURCE_MASK_GROW = 2.0, 5, 5
# Flagged pixels (DQ unusable, not saturated) are replaced, for detection only, by the mean of the
# good pixels within this many pixels: a hot pixel then looks like the sky around it.
FILL_RADIUS = 2
# Detection: peaks 5σ over the noise (a 5σ noise peak occurs about once per 3.5 million
# independent pixels), found with a 2-pixel Gaussian kernel (space PSFs are 1–3 px wide; wider
# ground PSFs are still found, at a slightly lower signal-to-noise).
DETECT_SIGMA = 5.0
FINDER_FWHM_PIX = 2.0
# First PSF width: from the half-maximum area of the brightest sources, within 15 px of their peaks.
WIDTH_BOX = 15
# PSF sample: at most 40 of the brightest isolated unsaturated stars whose peak is at least 10σ:
# 40 stars give the FWHM to better than 1 % and cost milliseconds to fit.
FIT_STARS = 40
FIT_MIN_PEAK_SIGMA = 10.0
# A neighbour inside the fitting box brighter than this fraction of the star spoils its fit;
# masked pixels (bad columns, flagged or saturated pixels) only lose weight, up to a quarter of it.
NEIGHBOUR_FLUX_FRACTION = 0.05
MASKED_FRACTION = 0.25
# Pixel integration: the model is averaged over k x k sub-pixels, k = 3 for PSFs under 4 px wide,
# 2 under 8 px, 1 beyond; ignoring it would widen a 2-px PSF by 6 %, an 8-px one by 0.4 %.
SUBSAMPLING = ((4.0, 3), (8.0, 2))
FIT_ITERATIONS = 50
FIT_TOLERANCE = 1e-5  # relative chi-square gain below which a fit has converged
# Fits narrower than half a pixel along their minor axis are hot pixels or cosmic rays: even the
# most undersampled HST/JWST PSFs (F070W at 0.031", F105W at 0.13") are 0.7-0.9 px wide.
MIN_FWHM_PIX = 0.5
# Stars are the tightest cluster of fitted widths (galaxies and blends are wider) and share one
# elongation (tracks of cosmic rays and edge-on galaxies are far more elongated).
STAR_WIDTH_TOLERANCE = 0.25
STAR_ELLIPTICITY_TOLERANCE = 0.3
# The stars' FWHMs are averaged with inverse-variance weights; the 1 % floor stands for real
# PSF changes across the field, so that one very bright star cannot decide alone.
FWHM_FLOOR = 0.01
# Cosmic rays: sharper than the stars by more than this (DAOFIND sharpness), or, when bright,
# far less round (a track rather than a PSF).
SHARPNESS_MARGIN = 0.2
STAR_SHARPNESS = 0.7  # stars 1.5-4 px wide, 2-px kernel: 0.55-0.8
ROUNDNESS_MARGIN = 0.5
ROUNDNESS_MIN_PEAK_SIGMA = 20.0
DEPTH_SIGMA = 5.0

# Score (docs/quality.md explains each).
MIN_STARS = 3
ELLIPTICITY_FREE = 0.10
ELLIPTICITY_ZERO = 0.40
PIXEL_SCALE_TOLERANCE = 0.10
GOOD_SCORE = 50.0
REJECT_SCORE = 100.0 / 3.0
REASON_BELOW = 90.0  # terms below this are named in flag_reason
# The measuring code's version, part of each row's ``measured_from``: raise it with any change that
# changes what :func:`measure_image` finds for the same file, so that images measured before are
# measured again rather than kept.
QUALITY_RECIPE = 1
# What of an image's catalogue row the measurement reads besides the file's pixels and headers.
MEASURED_FROM = ("sha256", "zp_ab", "pixel_scale", "wcs_problem")

# ------------------------------------------------------------------------------------- schemas
# QUALITY_SCHEMA and SOURCE_SCHEMA are declared with the lake's other tables.
SCORE_COLUMNS: tuple[str, ...] = ("score", "score_depth", "score_shape", "score_data", "depth_reference_ab",
                                  "effective_time_ratio", "flag", "flag_reason")
_METRIC_COLUMNS = [n for n in QUALITY_SCHEMA.names if n not in SCORE_COLUMNS]


@dataclass
class Measurement:
    """One image's metrics (a :data:`QUALITY_SCHEMA` row without the score), its detected sources
    and its pixels for previews (None when unreadable, or not read again: then ``thumbnail`` may
    name where a thumbnail of them was stored)."""

    metrics: dict[str, Any]
    sources: pd.DataFrame
    image: np.ndarray | None
    thumbnail: str | None = None

    def of(self, row: Mapping[str, Any]) -> Measurement:
        """The same measurement named for the image of catalogue ``row``: another copy of the same
        bytes (a file under two names, an image kept from an earlier run), the pixels left unread."""
        hdu_index = int(self.metrics["hdu_index"])
        identity = _identity(row, hdu_index, self.metrics["file_name"])
        metrics = {**self.metrics, **identity}
        problem, was = metrics.get("problem"), f"{self.metrics['file_name']}[{hdu_index}]: "
        if isinstance(problem, str) and problem.startswith(was):
            metrics["problem"] = f"{identity['file_name']}[{hdu_index}]: {problem.removeprefix(was)}"
        sources = self.sources.copy()
        for key in _SOURCE_IDENTITY:
            sources[key] = identity[key]
        return Measurement(metrics, sources, self.image, self.thumbnail)


# --------------------------------------------------------------------------------- instruments
@dataclass(frozen=True)
class _Instrument:
    """One row of ``data/instruments.csv``."""

    telescope: str
    instrument: str
    detector: str
    pixel_scale: float
    dq_kind: str | None


@cache
def _instruments() -> tuple[_Instrument, ...]:
    """The rows of ``data/instruments.csv``."""
    text = resources.files("skyassets").joinpath("data/instruments.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return tuple(_Instrument(r["telescope"], r["instrument"], r["detector"], float(r["pixel_scale_arcsec"]),
                             r["dq_kind"] or None) for r in rows)


def _instrument_of(header: Mapping[str, Any] | None) -> tuple[float | None, str | None]:
    """(nominal pixel scale in arcsec, DQ convention) of the imager that wrote ``header``, from
    TELESCOP, INSTRUME and DETECTOR/CHANNEL/CAMERA; (None, None) for an unknown one."""
    if header is None:
        return None, None
    telescope = str(header.get("TELESCOP") or "").strip().upper()
    name = str(header.get("INSTRUME") or "").strip().upper()
    parts = [str(header.get(k) or "").strip().upper() for k in ("DETECTOR", "CHANNEL", "CAMERA")]
    for row in _instruments():
        if row.telescope == telescope and row.instrument == name and (
                row.detector == "*" or any(fnmatchcase(p, row.detector) for p in parts if p)):
            return row.pixel_scale, row.dq_kind
    return None, None


# ------------------------------------------------------------------------------------ measuring
def measure_array(data: np.ndarray, *, dq: np.ndarray | None = None, dq_kind: str | None = None,
                  header: fits.Header | None = None, pixel_scale: float | None = None,
                  nominal_pixel_scale: float | None = None, zp_ab: float | None = None,
                  saturation: float | None = None, wcs: WCS | None = None) -> Measurement:
    """All metrics of one image given as arrays. dq_kind is a key of ``DQ_BITS`` ("jwst", "hst",
    "wfc3_ir", "wfpc2") or None.

    ``header`` gives the nominal pixel scale and DQ convention when they are not passed, the
    saturation level (SATURATE) and the instrument's quality keywords; ``pixel_scale`` overrides
    the one the WCS gives. Without a celestial ``wcs`` the image is measured but not usable.
    """
    start = time.perf_counter()
    raw = np.asarray(data)
    image = _first_plane(raw)
    image = image.astype(np.float32) if image.dtype != np.float32 or not image.dtype.isnative else image
    metrics: dict[str, Any] = dict.fromkeys(_METRIC_COLUMNS)
    problems: list[str] = []
    if image.ndim != 2:
        metrics.update(usable=False, problem=f"not an image: {image.ndim}-D data",
                       seconds=time.perf_counter() - start)
        return Measurement(metrics, _empty_sources(), None)
    if raw.ndim > 2:
        problems.append(f"{raw.ndim}-D data: only the first image plane was measured")
    scale_nominal, header_dq_kind = _instrument_of(header)
    nominal_pixel_scale = nominal_pixel_scale or scale_nominal
    if dq is not None and dq_kind is None:
        dq_kind = dq_kind_of(header) or header_dq_kind
    if dq is not None:
        dq = _first_plane(np.asarray(dq))
        dq = dq.astype(np.uint32) if dq.shape == image.shape and dq_kind in DQ_BITS else None

    pixels = pixel_masks(image, dq, dq_kind, saturation_level(saturation, header))
    metrics.update(pixels.fractions)
    scale, footprint, wcs_problem = _wcs_check(wcs, image.shape)
    metrics.update(pixel_scale=pixel_scale or scale, pixel_scale_nominal=nominal_pixel_scale,
                   footprint_finite=footprint, header_flags=_header_flags(header), zp_ab=zp_ab)
    if metrics["pixel_scale"] and nominal_pixel_scale:
        metrics["pixel_scale_ratio"] = metrics["pixel_scale"] / nominal_pixel_scale
    if wcs_problem:
        problems.append(wcs_problem)
    if pixels.n_good == 0:
        problems.append("no finite, non-zero pixel")
        metrics.update(usable=False, problem="; ".join(problems), seconds=time.perf_counter() - start)
        return Measurement(metrics, _empty_sources(), image)

    background, level, rms, method = _background(image, pixels.mask)
    metrics.update(background=level, background_method=method)
    if not rms > 0:
        problems.append("no sky noise: the pixels are constant")
        metrics.update(usable=False, problem="; ".join(problems), seconds=time.perf_counter() - start)
        return Measurement(metrics, _empty_sources(), image)
    # The depth takes the noise between the sources; detection, the PSF sample and the cosmic rays
    # keep the boxes' spread as their scale, higher in a field of galaxies and cluster light: at the
    # lower noise the finder takes in faint cluster members, and the SMACS 0723 frames were left
    # with 2 isolated stars for the PSF instead of 11.
    noise = _noise(image, pixels.mask, background, rms, method)
    metrics["background_rms"] = noise
    residual = image - background
    residual[pixels.fill] = 0.0
    _fill_flagged(residual, pixels)
    sources = _detect(residual, rms)
    psf = _psf(residual, sources, pixels, rms)
    _classify(sources, psf, rms)
    metrics.update(n_sources=len(sources), n_cosmic_rays=int(sources["cosmic_ray"].sum()),
                   n_stars_fitted=psf.n_stars, fwhm_pix=psf.fwhm, ellipticity=psf.ellipticity,
                   psf_beta=psf.beta, n_eff_pix=psf.n_eff)
    if psf.fwhm is not None and metrics["pixel_scale"]:
        metrics["fwhm_arcsec"] = psf.fwhm * metrics["pixel_scale"]
    if zp_ab is not None and psf.n_eff is not None:
        metrics["depth_5sigma_ab"] = zp_ab - 2.5 * math.log10(DEPTH_SIGMA * noise * math.sqrt(psf.n_eff))
    metrics.update(usable=wcs_problem is None, problem="; ".join(problems) or None)
    table = _source_table(sources, wcs if footprint else None)
    metrics["seconds"] = time.perf_counter() - start
    return Measurement(metrics, table, image)


def _first_plane(data: np.ndarray) -> np.ndarray:
    """The first 2-D plane of a cube (the image itself when 2-D). The pixels are then used as
    native float32: FITS arrays are big-endian, which numpy handles several times slower."""
    while data.ndim > 2:
        data = data[0]
    return data


def _background(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray | float, float, float, str]:
    """(background map or level, median level, spread per pixel, method). Background2D over boxes
    of ~1/8 of the image; when it cannot work (every box mostly masked, as in crowded or heavily
    flagged fields, or an image smaller than a box), one sigma-clipped mode over the whole image.
    The spread is the clipped standard deviation corrected for the clipping
    (:func:`_clipped_std_ratio`): the noise in a field of stars, more than the noise where
    galaxies and cluster light fill the boxes (:func:`_noise`)."""
    try:
        return (*_background_2d(image, mask, _box(image.shape)), "Background2D")
    except ValueError:
        values = image[~mask] if (~mask).any() else image[np.isfinite(image)]
        mean, median, std = sigma_clipped_stats(values, sigma=CLIP_SIGMA, maxiters=10)
        mode = 2.5 * median - 1.5 * mean if abs(mean - median) < 0.3 * std else median  # SExtractor's rule
        return float(mode), float(mode), float(std) / _clipped_std_ratio(CLIP_SIGMA), "sigma_clipped_stats"


def _noise(image: np.ndarray, mask: np.ndarray, background: np.ndarray | float, spread: float, method: str) -> float:
    """The noise per pixel: Background2D's spread again, with the sources the background reveals
    masked (:func:`_source_mask`), as photutils recommends. Within boxes a field full of galaxies
    and cluster light reads as noise: the emulator's SMACS 0723 frames measured 0.20 for a noise of
    0.13 (their ERR's) and were rejected as 0.6 mag too shallow; a median absolute deviation over
    the whole masked image instead still read 0.15, the light the boxes' mesh does not follow.
    Detection keeps the first spread as its scale (see :func:`measure_array`)."""
    if method != "Background2D":
        return spread
    sources = _source_mask(image - background, mask, spread)
    if sources is None:
        return spread
    try:
        return _background_2d(image, mask | sources, _box(image.shape))[2]
    except ValueError:  # too little sky left between the sources
        return spread


def _box(shape: tuple[int, ...]) -> int:
    return int(np.clip(min(shape) // BOX_FRACTION, BOX_MIN, BOX_MAX))


def _background_2d(image: np.ndarray, mask: np.ndarray, box: int) -> tuple[np.ndarray, float, float]:
    """(map, median level, noise) from Background2D; ValueError when too few boxes have sky."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bkg = Background2D(image, box, mask=mask if mask.any() else None, filter_size=BOX_FILTER,
                           sigma_clip=SigmaClip(sigma=CLIP_SIGMA), bkg_estimator=SExtractorBackground())
        level = _expand(np.asarray(bkg.background_mesh, float), box, image.shape)
        rms = float(bkg.background_rms_median) / _clipped_std_ratio(CLIP_SIGMA)
        return level, float(bkg.background_median), rms


def _source_mask(residual: np.ndarray, mask: np.ndarray, rms: float) -> np.ndarray | None:
    """Pixels of the sources: 8-connected segments of ``SOURCE_MASK_PIXELS`` or more above
    ``SOURCE_MASK_SIGMA`` rms, grown by a square of ``SOURCE_MASK_GROW`` pixels; None when there
    are none. The segments of photutils' ``detect_sources`` and the grown mask of its
    ``make_source_mask`` (an FFT convolution) took 2.1 s of a 2048² star field (`bench/quality.py`);
    the segments of a size and the dilation the mosaics use (:func:`~skyassets.imaging.mosaic.large_parts`,
    :func:`~skyassets.imaging.mosaic.grown`) give the same mask but for the footprint's corners in a
    fraction of that."""
    sources = large_parts((residual > SOURCE_MASK_SIGMA * rms) & ~mask, SOURCE_MASK_PIXELS, diagonal=True)
    if not sources.any():
        return None
    return grown(sources, SOURCE_MASK_GROW)


def _clipped_std_ratio(k: float, iterations: int = 10) -> float:
    """The standard deviation iterative k-sigma clipping returns for unit Gaussian noise: each pass
    keeps |x| < k s and measures the truncated Gaussian's deviation, s = sqrt(1 - 2 t φ(t) / (2 Φ(t) - 1))
    at t = k s (0.9866 after one pass at k = 3, 0.9814 once converged). Dividing by it removes the
    clipping bias of the noise (astropy's SigmaClip and photutils' StdBackgroundRMS do not)."""
    s = 1.0
    for _ in range(iterations):
        t = k * s
        inside = math.erf(t / math.sqrt(2.0))
        density = math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
        s = math.sqrt(1.0 - 2.0 * t * density / inside)
    return s


def _fill_flagged(residual: np.ndarray, pixels: PixelMasks) -> None:
    """Replace, in place, finite pixels the DQ array marks unusable (hot, dead, DO_NOT_USE; not
    saturated, which stay as the plateau of a bright star) by the mean of the good pixels within
    ``FILL_RADIUS``, 0 (the background) when there is none: detection then never sees them."""
    flagged = pixels.mask & ~pixels.saturated & ~pixels.fill
    if not flagged.any():
        return
    good = ~pixels.mask
    ys, xs = np.nonzero(flagged)
    ny, nx = residual.shape
    offsets = np.arange(-FILL_RADIUS, FILL_RADIUS + 1)
    iy = np.clip(ys[:, None, None] + offsets[None, :, None], 0, ny - 1)
    ix = np.clip(xs[:, None, None] + offsets[None, None, :], 0, nx - 1)
    ok = good[iy, ix]
    total = np.where(ok, residual[iy, ix], 0.0).sum(axis=(1, 2))
    count = ok.sum(axis=(1, 2))
    residual[ys, xs] = np.where(count > 0, total / np.maximum(count, 1), 0.0)


def _expand(mesh: np.ndarray, box: int, shape: tuple[int, int]) -> np.ndarray:
    """The box grid interpolated bilinearly to every pixel (box values sit at the box centres,
    constant beyond the outer ones), as two matrix products: under a tenth of the time of
    photutils' cubic spline zoom, and the same to far below the noise for a background that is
    smooth over boxes."""
    def weights(n: int, m: int) -> np.ndarray:
        """Interpolation weights (n pixels x m boxes) along one axis."""
        t = np.clip((np.arange(n) + 0.5) / box - 0.5, 0, m - 1)
        low = np.minimum(t.astype(int), max(m - 2, 0))
        frac = t - low
        w = np.zeros((n, m))
        w[np.arange(n), low] = 1.0 - frac
        if m > 1:
            w[np.arange(n), low + 1] += frac
        return w

    rows, cols = weights(shape[0], mesh.shape[0]), weights(shape[1], mesh.shape[1])
    return (rows @ mesh @ cols.T).astype(np.float32)


def _detect(residual: np.ndarray, rms: float) -> pd.DataFrame:
    """DAOFIND detections over the background-subtracted image, without its sharpness and
    roundness cuts (cosmic rays are classified afterwards, not dropped)."""
    columns = ["x", "y", "flux", "peak", "sharpness", "roundness1", "roundness2"]
    finder = DAOStarFinder(DETECT_SIGMA * rms, FINDER_FWHM_PIX, min_separation=0, sharpness_range=None,
                           roundness_range=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = finder(residual)
    if found is None:
        return pd.DataFrame(columns=columns, dtype=float)
    return pd.DataFrame({
        "x": np.asarray(found["x_centroid"], float), "y": np.asarray(found["y_centroid"], float),
        "flux": np.asarray(found["flux"], float), "peak": np.asarray(found["peak"], float),
        "sharpness": np.asarray(found["sharpness"], float), "roundness1": np.asarray(found["roundness1"], float),
        "roundness2": np.asarray(found["roundness2"], float),
    })


def _near(mask: np.ndarray, x: np.ndarray, y: np.ndarray, radius: int) -> np.ndarray:
    """Whether ``mask`` is set anywhere in the (2 radius + 1)² box around each rounded position."""
    ny, nx = mask.shape
    offsets = np.arange(-radius, radius + 1)
    iy = np.clip(np.rint(y).astype(int)[:, None, None] + offsets[None, :, None], 0, ny - 1)
    ix = np.clip(np.rint(x).astype(int)[:, None, None] + offsets[None, None, :], 0, nx - 1)
    return mask[iy, ix].reshape(len(x), -1).any(axis=1)


# ---------------------------------------------------------------------------------------- PSF
@dataclass
class _Psf:
    """The PSF from the fitted stars, and the stars' DAOFIND sharpness and roundness (the
    reference that tells cosmic rays apart)."""

    n_stars: int = 0
    fwhm: float | None = None
    ellipticity: float | None = None
    beta: float | None = None
    n_eff: float | None = None
    sharpness: float | None = None
    roundness: float | None = None


def _psf(residual: np.ndarray, sources: pd.DataFrame, pixels: PixelMasks, rms: float) -> _Psf:
    """Fit the brightest isolated unsaturated stars and mark the sources (fitted, saturated,
    edge) in place. The stars are the tightest cluster of fitted widths, which leaves out
    galaxies, blends and cosmic rays; the PSF FWHM is their inverse-variance weighted mean."""
    sources["fwhm_pix"] = np.nan
    sources["ellipticity"] = np.nan
    sources["fitted"] = False
    sources["saturated"] = _near(pixels.saturated, sources["x"].to_numpy(), sources["y"].to_numpy(), 2) \
        if len(sources) and pixels.saturated.any() else False
    sources["dq_cosmic_ray"] = _near(pixels.cosmic_ray, sources["x"].to_numpy(), sources["y"].to_numpy(), 1) \
        if len(sources) and pixels.cosmic_ray is not None and pixels.cosmic_ray.any() else False
    sources["edge"] = False
    if not len(sources):
        return _Psf()
    bright = sources[(sources["peak"] >= FIT_MIN_PEAK_SIGMA * rms) & ~sources["saturated"]
                     & ~sources["dq_cosmic_ray"]].sort_values("flux", ascending=False)
    width = _width_estimate(residual, bright.head(2 * FIT_STARS), pixels.mask)
    radius = int(np.clip(math.ceil(2.5 * width) + 1, 4, 15))
    ny, nx = residual.shape
    x, y = sources["x"].to_numpy(), sources["y"].to_numpy()
    sources["edge"] = (x < radius) | (y < radius) | (x > nx - 1 - radius) | (y > ny - 1 - radius) | \
        _near(pixels.fill, x, y, 2)
    chosen = _isolated(sources, bright.index, radius, pixels.mask)
    if not chosen:
        return _Psf()
    k = next((k for below, k in SUBSAMPLING if width < below), 1)
    stamps, weights, start = _stamps(residual, pixels.mask, sources.loc[chosen], radius, width)
    params, ok, error = _fit_moffat(stamps, weights, start, k)
    fwhm, ellipticity, e1, e2 = _shape(params)
    ok &= (fwhm * np.sqrt(1.0 - ellipticity) >= MIN_FWHM_PIX) & (fwhm < 2.0 * radius) & np.isfinite(error)
    stars = _tightest(fwhm, ok)
    if stars.any():
        stars &= ellipticity <= np.median(ellipticity[stars]) + STAR_ELLIPTICITY_TOLERANCE
    index = np.asarray(chosen)
    sources.loc[index[ok], "fwhm_pix"] = fwhm[ok]
    sources.loc[index[ok], "ellipticity"] = ellipticity[ok]
    sources.loc[index[stars], "fitted"] = True
    if not stars.any():
        return _Psf()
    beta = float(np.median(params[stars, 7]))
    weight = 1.0 / (error[stars] ** 2 + (FWHM_FLOOR * fwhm[stars]) ** 2)
    psf_fwhm = float(np.average(fwhm[stars], weights=weight))
    e1, e2 = float(np.average(e1[stars], weights=weight)), float(np.average(e2[stars], weights=weight))
    psf_e, angle = math.hypot(e1, e2), 0.5 * math.atan2(e2, e1)
    fitted = sources.loc[index[stars]]
    return _Psf(int(stars.sum()), psf_fwhm, psf_e, beta, _noise_area(psf_fwhm, psf_e, angle, beta),
                float(np.median(fitted["sharpness"])), float(np.median(fitted["roundness2"])))


def _width_estimate(residual: np.ndarray, bright: pd.DataFrame, mask: np.ndarray) -> float:
    """A first FWHM, 2 sqrt(A/π) from the area A above half the peak that is connected to the peak,
    median over the brightest sources: it sizes the fitting boxes and starts the fits (the
    finder's fixed kernel says nothing about the PSF)."""
    widths = []
    ny, nx = residual.shape
    r = WIDTH_BOX
    for x, y, peak in bright[["x", "y", "peak"]].itertuples(index=False):
        ix, iy = int(round(x)), int(round(y))
        if r <= ix < nx - r and r <= iy < ny - r and not mask[iy - 2:iy + 3, ix - 2:ix + 3].any():
            labels, _ = label(residual[iy - r:iy + r + 1, ix - r:ix + r + 1] > 0.5 * peak)
            if labels[r, r]:
                widths.append(2.0 * math.sqrt(np.count_nonzero(labels == labels[r, r]) / math.pi))
    return float(np.median(widths)) if widths else FINDER_FWHM_PIX


def _isolated(sources: pd.DataFrame, candidates: pd.Index, radius: int, mask: np.ndarray) -> list[int]:
    """Up to FIT_STARS candidates (brightest first) whose core (3 x 3) is unmasked, whose fitting
    box is at most MASKED_FRACTION masked and holds no neighbour brighter than
    NEIGHBOUR_FLUX_FRACTION of the star."""
    xy = sources[["x", "y"]].to_numpy()
    tree = cKDTree(xy)
    flux = sources["flux"].to_numpy()
    chosen = []
    for i in candidates:
        if len(chosen) == FIT_STARS:
            break
        row = sources.loc[i]
        if row["edge"]:
            continue
        ix, iy = int(round(row["x"])), int(round(row["y"]))
        if mask[iy - 1:iy + 2, ix - 1:ix + 2].any() or \
                mask[iy - radius:iy + radius + 1, ix - radius:ix + radius + 1].mean() > MASKED_FRACTION:
            continue
        near = [j for j in tree.query_ball_point(xy[i], radius + 1, p=np.inf) if j != i]
        if any(flux[j] > NEIGHBOUR_FLUX_FRACTION * row["flux"] for j in near):
            continue
        chosen.append(i)
    return chosen


def _stamps(residual: np.ndarray, mask: np.ndarray, stars: pd.DataFrame, radius: int,
            width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes around the stars, their weights (0 on masked pixels) and the fits' starting
    parameters (x0, y0 relative to the box centre, flux, background, A, B, C, beta)."""
    boxes, weights, start = [], [], []
    q = 2.0 ** (1.0 / 3.0) - 1.0
    a0 = 4.0 * q / max(width, 1.0) ** 2
    for x, y in stars[["x", "y"]].itertuples(index=False):
        ix, iy = int(round(x)), int(round(y))
        cut = (slice(iy - radius, iy + radius + 1), slice(ix - radius, ix + radius + 1))
        weight = (~mask[cut]).astype(float)
        box = residual[cut] * weight
        boxes.append(box)
        weights.append(weight)
        start.append([x - ix, y - iy, max(box.sum(), box.max()), 0.0, a0, a0, 0.0, 3.0])
    return np.array(boxes), np.array(weights), np.array(start)


def _moffat(p: np.ndarray, grid: np.ndarray, m: int, k: int, jacobian: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixel-integrated elliptical Moffat models (S, m*m) of the parameter rows ``p`` and, when
    asked, their derivatives (S, 8, m*m). The profile is
    F (β-1) sqrt(det M) / π (1 + [dx dy] M [dx dy]ᵀ)^-β + b with M = [[A, C/2], [C/2, B]],
    which integrates to F; averaging k x k sub-pixels integrates it over each pixel."""
    s = len(p)
    x0, y0, flux, b, a, bb, c, beta = (p[:, i, None, None] for i in range(8))
    dx = grid[None, None, :] - x0
    dy = grid[None, :, None] - y0
    u = 1.0 + a * dx * dx + bb * dy * dy + c * dx * dy
    log_u = np.log(u)
    det = a * bb - 0.25 * c * c
    core = (beta - 1.0) * np.sqrt(det) / math.pi * np.exp(-beta * log_u)
    model = _pixel_mean(flux * core, s, m, k) + b[:, :, 0]
    if not jacobian:
        return model, None
    g = -beta * flux * core / u
    jac = np.empty((s, 8, m * m))
    for i, part in enumerate((
            -g * (2 * a * dx + c * dy), -g * (2 * bb * dy + c * dx), core, None,
            flux * core * bb / (2 * det) + g * dx * dx, flux * core * a / (2 * det) + g * dy * dy,
            -flux * core * c / (4 * det) + g * dx * dy, flux * core * (1.0 / (beta - 1.0) - log_u))):
        jac[:, i] = 1.0 if part is None else _pixel_mean(part, s, m, k)
    return model, jac


def _pixel_mean(values: np.ndarray, s: int, m: int, k: int) -> np.ndarray:
    """Sub-pixel values (S, m*k, m*k) averaged into pixels, flattened to (S, m*m)."""
    return values.reshape(s, m, k, m, k).mean(axis=(2, 4)).reshape(s, m * m)


def _valid(p: np.ndarray, radius: int) -> np.ndarray:
    """Parameters that describe a PSF: positive flux and definite M, beta in (1.05, 30), the
    centre inside the box."""
    return ((p[:, 2] > 0) & (p[:, 4] > 0) & (p[:, 5] > 0) & (4 * p[:, 4] * p[:, 5] > p[:, 6] ** 2)
            & (p[:, 7] > 1.05) & (p[:, 7] < 30) & (np.abs(p[:, 0]) < radius) & (np.abs(p[:, 1]) < radius))


def _fit_moffat(stamps: np.ndarray, weights: np.ndarray, start: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg–Marquardt fits of all stamps at once: one vectorised model and Jacobian per
    iteration for the stars still converging, instead of one optimiser per star. Returns the
    parameters, which fits are valid and each fitted FWHM's standard error (from the covariance
    matrix scaled by the residual variance, which carries the FWHM–beta degeneracy of
    undersampled stars). Masked pixels have weight 0."""
    s, m, _ = stamps.shape
    radius = (m - 1) // 2
    grid = (np.arange(m)[:, None] - radius + ((np.arange(k) - (k - 1) / 2) / k)[None, :]).ravel()
    data = stamps.reshape(s, m * m)
    w = weights.reshape(s, m * m)
    p = start.copy()
    model, jac = _moffat(p, grid, m, k, jacobian=True)
    jac *= w[:, None, :]
    residual = (data - model) * w
    chi2 = (residual ** 2).sum(axis=1)
    damping = np.full(s, 1e-3)
    active = np.arange(s)
    for _ in range(FIT_ITERATIONS):
        j = jac[active]
        h = j @ j.transpose(0, 2, 1)
        g = (j @ residual[active][..., None])[..., 0]
        damped = h + damping[active, None, None] * (h * np.eye(8)) + 1e-12 * np.eye(8)
        trial = p[active] + np.linalg.solve(damped, g[..., None])[..., 0]
        ok = _valid(trial, radius)
        trial[~ok] = p[active][~ok]
        trial_model, trial_jac = _moffat(trial, grid, m, k, jacobian=True)
        trial_jac *= w[active, None, :]
        trial_residual = (data[active] - trial_model) * w[active]
        trial_chi2 = (trial_residual ** 2).sum(axis=1)
        better = ok & (trial_chi2 < chi2[active])
        gain = np.where(better, (chi2[active] - trial_chi2) / np.maximum(chi2[active], 1e-300), 0.0)
        take = active[better]
        p[take], jac[take] = trial[better], trial_jac[better]
        residual[take], chi2[take] = trial_residual[better], trial_chi2[better]
        damping[active] = np.where(better, damping[active] / 3.0, damping[active] * 4.0)
        done = (better & (gain < FIT_TOLERANCE)) | (damping[active] > 1e8)
        active = active[~done]
        if not active.size:
            break
    ok = _valid(p, radius) & np.isfinite(chi2)
    return p, ok, _fwhm_error(p, jac, chi2 / np.maximum(w.sum(axis=1) - 8, 1), ok)


def _fwhm_error(p: np.ndarray, jac: np.ndarray, variance: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Standard error of the FWHM 2 sqrt(2^(1/β) - 1) det(M)^(-1/4) of each fit, propagated
    through the parameter covariance variance x (JᵀJ)⁻¹."""
    error = np.full(len(p), np.inf)
    if not ok.any():
        return error
    a, b, c, beta = (p[ok, i] for i in (4, 5, 6, 7))
    half = 2.0 ** (1.0 / beta) - 1.0
    det = a * b - 0.25 * c * c
    fwhm = 2.0 * np.sqrt(half) / det ** 0.25
    grad = np.zeros((int(ok.sum()), 8))
    grad[:, 4], grad[:, 5], grad[:, 6] = -fwhm * b / (4 * det), -fwhm * a / (4 * det), fwhm * c / (8 * det)
    grad[:, 7] = -fwhm * (half + 1.0) * math.log(2.0) / (2.0 * half * beta ** 2)
    j = jac[ok]
    covariance = np.linalg.pinv(j @ j.transpose(0, 2, 1)) * variance[ok, None, None]
    error[ok] = np.sqrt(np.maximum(np.einsum("sp,spq,sq->s", grad, covariance, grad), 0.0))
    return error


def _shape(p: np.ndarray) -> tuple[np.ndarray, ...]:
    """FWHM (geometric mean of the axes), ellipticity 1 - b/a and its components e cos 2φ,
    e sin 2φ (φ: major-axis angle) of fitted parameters."""
    a, b, c, beta = p[:, 4], p[:, 5], p[:, 6], p[:, 7]
    with np.errstate(invalid="ignore", divide="ignore"):
        half = 2.0 ** (1.0 / beta) - 1.0
        det = a * b - 0.25 * c * c
        fwhm = 2.0 * np.sqrt(half) / det ** 0.25
        spread = np.sqrt(((a - b) / 2) ** 2 + c * c / 4)
        low, high = (a + b) / 2 - spread, (a + b) / 2 + spread
        ellipticity = 1.0 - np.sqrt(low / high)
        e1 = np.where(spread > 0, ellipticity * (b - a) / (2 * spread), 0.0)
        e2 = np.where(spread > 0, ellipticity * -c / (2 * spread), 0.0)
    return fwhm, ellipticity, e1, e2


def _tightest(fwhm: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """The fits whose widths lie within STAR_WIDTH_TOLERANCE of the densest cluster of widths."""
    if not ok.any():
        return ok
    widths = np.sort(fwhm[ok])
    counts = np.searchsorted(widths, widths * (1 + 2 * STAR_WIDTH_TOLERANCE), side="right") - np.arange(len(widths))
    i = int(np.argmax(counts))
    centre = float(np.median(widths[i:i + counts[i]]))
    return ok & (np.abs(fwhm / centre - 1.0) <= STAR_WIDTH_TOLERANCE)


def _noise_area(fwhm: float, ellipticity: float, angle: float, beta: float) -> float:
    """Noise-equivalent area 1 / Σ p_i² (pixels) of the unit-flux pixel-integrated PSF, averaged
    over a star centred on a pixel and on a pixel corner: the number of pixels whose noise a
    PSF-weighted flux measurement collects."""
    half = 2.0 ** (1.0 / beta) - 1.0
    ratio = 1.0 - ellipticity
    major, minor = fwhm / math.sqrt(ratio), fwhm * math.sqrt(ratio)
    lam1, lam2 = 4 * half / major ** 2, 4 * half / minor ** 2
    cos, sin = math.cos(angle), math.sin(angle)
    a = lam1 * cos ** 2 + lam2 * sin ** 2
    b = lam1 * sin ** 2 + lam2 * cos ** 2
    c = 2 * (lam1 - lam2) * sin * cos
    radius = int(min(max(8, math.ceil(6 * major)), 60))
    m = 2 * radius + 1
    k = 5
    grid = (np.arange(m)[:, None] - radius + ((np.arange(k) - (k - 1) / 2) / k)[None, :]).ravel()
    p = np.array([[0.0, 0.0, 1.0, 0.0, a, b, c, beta], [0.5, 0.5, 1.0, 0.0, a, b, c, beta]])
    model, _ = _moffat(p, grid, m, k, jacobian=False)
    return float(np.mean(1.0 / (model ** 2).sum(axis=1)))


def _classify(sources: pd.DataFrame, psf: _Psf, rms: float) -> None:
    """Mark cosmic rays: a cosmic-ray DQ bit at the peak, a fit narrower than MIN_FWHM_PIX,
    sharper than the fitted stars by SHARPNESS_MARGIN, or, when bright, a roundness2 further than
    ROUNDNESS_MARGIN from the stars' (a track). With fewer than MIN_STARS fitted stars a round PSF
    of the sharpness stars typically have with the finder's kernel is assumed."""
    if not len(sources):
        sources["cosmic_ray"] = False
        return
    trusted = psf.n_stars >= MIN_STARS
    sharp = psf.sharpness if trusted else STAR_SHARPNESS
    round2 = psf.roundness if trusted else 0.0
    narrow = sources["fwhm_pix"] * np.sqrt(1.0 - sources["ellipticity"]) < MIN_FWHM_PIX
    bright = sources["peak"] >= ROUNDNESS_MIN_PEAK_SIGMA * rms
    track = bright & ((sources["roundness2"] - round2).abs() > ROUNDNESS_MARGIN)
    sources["cosmic_ray"] = ~sources["fitted"] & ~sources["saturated"] & (
        sources["dq_cosmic_ray"] | narrow | (sources["sharpness"] > sharp + SHARPNESS_MARGIN) | track)


def _source_table(sources: pd.DataFrame, wcs: WCS | None) -> pd.DataFrame:
    """The detections as SOURCE_SCHEMA columns (identity columns left for the caller)."""
    if not len(sources):
        return _empty_sources()
    table = pd.DataFrame({
        "obs_id": None, "sha256": None, "hdu_index": None, "file_name": None, "path": None,
        "source_id": np.arange(1, len(sources) + 1, dtype=np.int32),
        "x": sources["x"].to_numpy(), "y": sources["y"].to_numpy(), "ra": np.nan, "dec": np.nan,
        "flux": sources["flux"].to_numpy(), "peak": sources["peak"].to_numpy(),
        "fwhm_pix": sources["fwhm_pix"].to_numpy(), "ellipticity": sources["ellipticity"].to_numpy(),
        "sharpness": sources["sharpness"].to_numpy(), "roundness1": sources["roundness1"].to_numpy(),
        "roundness2": sources["roundness2"].to_numpy(),
    })
    names = np.array(["cosmic_ray", "saturated", "edge", "fitted"])
    marks = sources[list(names)].to_numpy(bool)
    table["flags"] = [";".join(names[row]) for row in marks]
    if wcs is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sky = pixel_to_skycoord(table["x"], table["y"], wcs if wcs.naxis == 2 else wcs.celestial,
                                        origin=0, mode="all").icrs
            table["ra"], table["dec"] = sky.ra.deg, sky.dec.deg
        except Exception:  # frames without an ICRS transformation (solar, planetary): no sky positions
            pass
    return table


def _empty_sources() -> pd.DataFrame:
    """A source table without rows (images with no detection or no pixels)."""
    return pd.DataFrame({name: pd.Series(dtype=object) for name in SOURCE_SCHEMA.names})


# --------------------------------------------------------------------------------- WCS, header
def _wcs_check(wcs: WCS | None, shape: tuple[int, int]) -> tuple[float | None, bool, str | None]:
    """(pixel scale in arcsec, footprint finite, problem): the scale at the reference point, and
    whether the centre and corners map to finite sky positions (distortions included)."""
    if wcs is None or not wcs.has_celestial:
        return None, False, "no celestial WCS"
    cel = wcs if wcs.naxis == 2 else wcs.celestial
    ny, nx = shape
    x = np.array([(nx - 1) / 2, -0.5, nx - 0.5, nx - 0.5, -0.5])
    y = np.array([(ny - 1) / 2, -0.5, -0.5, ny - 0.5, ny - 0.5])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ra, dec = cel.all_pix2world(x, y, 0)
            scale = math.sqrt(abs(proj_plane_pixel_area(wcs.celestial))) * 3600.0
    except Exception as exc:  # astropy.wcs raises several types for broken solutions
        return None, False, f"invalid WCS: {type(exc).__name__}: {exc}"
    finite = bool(np.isfinite(ra).all() and np.isfinite(dec).all())
    if not (math.isfinite(scale) and scale > 0):
        return None, finite, "the WCS gives no pixel scale"
    return scale, finite, None if finite else "the WCS maps the image centre or corners off the sky"


# Quality keywords and their nominal values: JWST ENG_QUAL (engineering data quality), HST
# EXPFLAG (exposure interruptions) and FGSLOCK (guiding mode; FINE is fine-lock guiding).
HEADER_FLAGS: dict[str, tuple[str, ...]] = {"ENG_QUAL": ("OK",), "EXPFLAG": ("NORMAL",), "FGSLOCK": ("FINE",)}


def _header_flags(header: Mapping[str, Any] | None) -> str | None:
    """The quality keywords whose values are not nominal, as "KEY=VALUE" joined with '; '."""
    if header is None:
        return None
    bad = [f"{key}={str(header[key]).strip()}" for key, nominal in HEADER_FLAGS.items()
           if key in header and str(header[key]).strip().upper() not in nominal]
    return "; ".join(bad) or None


# ---------------------------------------------------------------------------------- files
def measure_image(path: str | Path, hdu_index: int, *, row: Mapping[str, Any] | None = None) -> Measurement:
    """Open the file once, read the SCI HDU at hdu_index and its matching DQ HDU (same EXTVER,
    EXTNAME 'DQ'), the primary + extension headers, and call measure_array.

    ``row`` is the image's catalogue row (:data:`skyassets.fits.meta.IMAGE_SCHEMA`); when given,
    metrics copy its identity columns and use its pixel_scale and zp_ab. Never raises for bad data:
    an unreadable file, all-NaN data or no valid WCS give a Measurement whose metrics["problem"]
    says why (naming the file) and whose metrics["usable"] is False.
    """
    start = time.perf_counter()
    path = Path(path)
    row = row or {}
    try:
        data, header, dq, wcs = _read(path, hdu_index)
    except _Unreadable as exc:
        measurement = Measurement(dict.fromkeys(_METRIC_COLUMNS), _empty_sources(), None)
        measurement.metrics.update(usable=False, problem=f"{path.name}[{hdu_index}]: {exc}")
    else:
        zp = row.get("zp_ab")
        zp = _header_zp(header) if _missing(zp) else float(zp)
        scale = None if _missing(row.get("pixel_scale")) else float(row["pixel_scale"])
        measurement = measure_array(data, dq=dq, header=header, pixel_scale=scale, zp_ab=zp, wcs=wcs)
        catalogued = row.get("wcs_problem")
        if not _missing(catalogued) and catalogued:  # wcslib reads a zero CD matrix as none: trust the catalogue
            # the catalogue's words replace the measurement's shorter ones for the same problem
            measured = [p for p in (measurement.metrics["problem"] or "").split("; ") if p]
            problems = [p for p in measured if not str(catalogued).startswith(p)] + [str(catalogued)]
            # nor a scale: wcslib's 1-degree pixels of a zero CD matrix would make a star a degree wide
            measurement.metrics.update(usable=False, problem="; ".join(problems), pixel_scale=None,
                                       pixel_scale_ratio=None, fwhm_arcsec=None)
        if measurement.metrics["problem"]:
            measurement.metrics["problem"] = f"{path.name}[{hdu_index}]: {measurement.metrics['problem']}"
    identity = _identity(row, hdu_index, path.name)
    measurement.metrics.update(identity)
    for key in _SOURCE_IDENTITY:
        measurement.sources[key] = identity[key]
    measurement.metrics["seconds"] = time.perf_counter() - start
    return measurement


_SOURCE_IDENTITY = ("obs_id", "sha256", "hdu_index", "file_name", "path")


def _identity(row: Mapping[str, Any], hdu_index: int, file_name: str) -> dict[str, Any]:
    """The metrics' columns that name the image of catalogue ``row`` (``file_name`` when it has none),
    and the digest of what its measurement reads."""
    identity = {"obs_id": row.get("obs_id"), "sha256": row.get("sha256"), "hdu_index": hdu_index,
                "file_name": row.get("file_name") or file_name, "path": row.get("path"),
                "instrument_name": row.get("instrument_name"),
                "filter": row.get("filter"), "obs_collection": row.get("obs_collection"),
                "measured_from": measured_from(row, hdu_index)}
    return {k: None if _missing(v) else v for k, v in identity.items()}


def measured_from(row: Mapping[str, Any], hdu_index: int) -> str | None:
    """A digest of what measuring HDU ``hdu_index`` of catalogue ``row``'s file reads, and of
    :data:`QUALITY_RECIPE`: two images with the same digest measure the same. None without the
    file's SHA-256, as nothing then says two copies hold the same bytes."""
    if _missing(row.get("sha256")) or not row.get("sha256"):
        return None
    read = [QUALITY_RECIPE, int(hdu_index)] + [None if _missing(row.get(k)) else row.get(k) for k in MEASURED_FROM]
    text = json.dumps([v.item() if isinstance(v, np.generic) else v for v in read], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class _Unreadable(Exception):
    """The file or its HDU cannot be read as an image; the message says why."""


def _read(path: Path, hdu_index: int) -> tuple[np.ndarray, fits.Header, np.ndarray | None, WCS | None]:
    """(pixels, merged header, DQ array, WCS) of one image HDU, read in one opening of the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            hdul = fits.open(path, memmap=False)
        except Exception as exc:  # astropy raises many types for broken files; all mean "unreadable"
            raise _Unreadable(f"cannot open as FITS: {type(exc).__name__}: {exc}") from exc
        with hdul:
            try:
                count = len(hdul)
                hdu = hdul[hdu_index] if 0 <= hdu_index < count else None
                if hdu is not None:
                    check_image(hdu.header, f"{path.name}[{hdu_index}]")  # before its pixels are allocated
                data = None if hdu is None else hdu.data
                dq = None if hdu is None else _dq(hdul, hdu)
            except Exception as exc:  # truncated or corrupt data, broken headers
                raise _Unreadable(f"cannot read HDU {hdu_index}: {type(exc).__name__}: {exc}") from exc
            if hdu is None:
                raise _Unreadable(f"no HDU {hdu_index}: the file has {count}")
            if data is None or np.ndim(data) < 2:
                raise _Unreadable(f"HDU {hdu_index} holds no image")
            header = _merged(hdul[0].header, hdu.header if hdu_index else None)
            return data, header, dq, _wcs(hdu.header, hdul)


def _missing(value: Any) -> bool:
    """None, NA or NaN: a missing value in a catalogue row or a metrics frame."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _merged(primary: fits.Header, extension: fits.Header | None) -> fits.Header:
    """The extension's keywords over the primary's (FITS inheritance), for keyword lookups."""
    if extension is None:
        return primary
    merged = primary.copy(strip=True)
    merged.update(card for card in extension.cards if card.keyword not in ("", "COMMENT", "HISTORY"))
    return merged


def _dq(hdul: fits.HDUList, sci: fits.hdu.base.ExtensionHDU | fits.PrimaryHDU) -> np.ndarray | None:
    """The DQ array that goes with ``sci``: EXTNAME 'DQ' with the same EXTVER."""
    if sci.name != "SCI":
        return None
    ver = sci.ver
    for hdu in hdul:
        if hdu.name == "DQ" and hdu.ver == ver:
            check_image(hdu.header, f"DQ,{ver}")
            if hdu.data is not None:
                return hdu.data
    return None


def _wcs(header: fits.Header, hdul: fits.HDUList) -> WCS | None:
    """The image's WCS with its distortions (SIP, lookup tables in other HDUs); None when the
    keywords do not make one."""
    try:
        return WCS(header, fobj=hdul, relax=True)
    except Exception:  # astropy.wcs raises several types for bad keywords
        return None


def _header_zp(header: fits.Header) -> float | None:
    """The AB zero point the catalogue derives from the header (used without a row). Ground
    MAGZPT values are left out, as the catalogue leaves them: per second or per exposure, Vega
    or AB, they differ from survey to survey."""
    keys = HeaderKeys(header, None)
    exptime = keys.number("EFFEXPTM", "XPOSURE", "EXPTIME", "TEXPTIME", "EXPOSURE", "EXP_TIME")
    return zero_point_ab(keys, parse_bunit(keys.text("BUNIT")), exptime)


# ------------------------------------------------------------------------------------ scoring
def score(metrics: pd.DataFrame, reference_depth: Mapping[tuple[str, str], float] | None = None) -> pd.DataFrame:
    """metrics (rows of Measurement.metrics) with SCORE_COLUMNS added. Comparable images are those
    with the same (instrument_name, filter); reference_depth gives the median 5-sigma depth of each
    such group from images scored earlier (the catalogue), else the median of the rows given is used.

    score = 100 x depth x shape x data, each term a fraction (docs/quality.md); gates (unusable,
    too few stars) set it to 0; flag: good at >= GOOD_SCORE with nothing to caution about,
    reject below REJECT_SCORE or on a gate, usable otherwise.
    """
    out = metrics.copy()
    if out.empty:
        for column in SCORE_COLUMNS:
            out[column] = pd.Series(dtype=object if column.startswith("flag") else float)
        return out
    groups = pd.DataFrame({"instrument": out["instrument_name"].map(_key), "filter": out["filter"].map(_key),
                           "depth": pd.to_numeric(out["depth_5sigma_ab"], errors="coerce")})
    groups.loc[~out["usable"].map(_true).to_numpy(bool), "depth"] = np.nan
    medians = groups.dropna(subset=["depth"]).groupby(["instrument", "filter"])["depth"].median().to_dict()
    medians.update({(_key(i), _key(f)): float(v) for (i, f), v in (reference_depth or {}).items() if not _missing(v)})
    rows = [_score_row(r, medians.get((i, f))) for r, i, f in
            zip(out.to_dict("records"), groups["instrument"], groups["filter"], strict=True)]
    for column in SCORE_COLUMNS:
        out[column] = [r[column] for r in rows]
    return out


def _key(value: Any) -> str:
    """A group key: the value as text, "" when missing (pandas drops missing group keys)."""
    return "" if _missing(value) else str(value)


def _true(value: Any) -> bool:
    """A flag from a metrics frame, where missing means false."""
    return not _missing(value) and bool(value)


def _score_row(m: Mapping[str, Any], reference: float | None) -> dict[str, Any]:
    """The score columns of one image; ``reference`` is the median depth of comparable images."""
    def number(name: str) -> float | None:
        """The metric as a float, None when missing."""
        value = m.get(name)
        return None if _missing(value) else float(value)

    depth, e, unusable = number("depth_5sigma_ab"), number("ellipticity"), number("frac_unusable")
    out: dict[str, Any] = {"depth_reference_ab": reference, "effective_time_ratio": None,
                           "score_depth": None, "score_shape": None, "score_data": None}
    reasons: list[str] = []
    cautions: list[str] = []
    usable = _true(m.get("usable"))
    if depth is not None and reference is not None:
        ratio = 10.0 ** (0.8 * (depth - reference))
        out["effective_time_ratio"] = ratio
        out["score_depth"] = 100.0 * min(1.0, ratio)
        if out["score_depth"] < REASON_BELOW:
            reasons.append(f"depth {out['score_depth']:.0f}: "
                           f"{reference - depth:.2f} mag shallower than comparable images")
    elif usable:
        cautions.append(f"depth not scored: no {'zero point' if number('zp_ab') is None else 'PSF'}")
    if e is not None:
        shape = 1.0 - (e - ELLIPTICITY_FREE) / (ELLIPTICITY_ZERO - ELLIPTICITY_FREE)
        out["score_shape"] = 100.0 * min(max(shape, 0.0), 1.0)
        if out["score_shape"] < REASON_BELOW:
            reasons.append(f"shape {out['score_shape']:.0f}: ellipticity {e:.2f}")
    if unusable is not None:
        out["score_data"] = 100.0 * (1.0 - min(max(unusable, 0.0), 1.0))
        if out["score_data"] < REASON_BELOW:
            reasons.append(f"data {out['score_data']:.0f}: {unusable:.1%} of the footprint unusable")
    terms = [out[k] / 100.0 for k in ("score_depth", "score_shape", "score_data") if out[k] is not None]
    total = 100.0 * math.prod(terms)
    gates = []
    if not usable:
        gates.append("unusable" if _missing(m.get("problem")) else str(m["problem"]))
    elif (number("n_stars_fitted") or 0) < MIN_STARS:
        gates.append(f"too few stars to measure the PSF ({int(number('n_stars_fitted') or 0)} < {MIN_STARS})")
    if not _missing(m.get("header_flags")):
        cautions.append(f"header {m['header_flags']}")
    ratio = number("pixel_scale_ratio")
    if ratio is not None and abs(ratio - 1.0) > PIXEL_SCALE_TOLERANCE:
        cautions.append(f"pixel scale {number('pixel_scale'):.4g}\" is {ratio:.2f} x the nominal "
                        f"{number('pixel_scale_nominal'):.4g}\"")
    if gates:
        out.update(score=0.0, flag="reject", flag_reason="; ".join(gates + reasons + cautions))
    elif total < REJECT_SCORE:
        out.update(score=total, flag="reject", flag_reason="; ".join(reasons + cautions))
    elif total >= GOOD_SCORE and not cautions:
        out.update(score=total, flag="good", flag_reason="; ".join(reasons) or None)
    else:
        out.update(score=total, flag="usable", flag_reason="; ".join(reasons + cautions) or None)
    return out


_FRACTION, _POSITIVE, _SCORE = (0.0, 1.0, False, False), (0.0, math.inf, True, True), (0.0, 100.0, False, False)
# column -> (low, high, low excluded, high excluded)
PHYSICAL_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "frac_nan": _FRACTION, "frac_zero": _FRACTION, "frac_saturated": _FRACTION, "frac_dq_flagged": _FRACTION,
    "frac_unusable": _FRACTION, "fwhm_pix": _POSITIVE, "fwhm_arcsec": _POSITIVE, "background_rms": _POSITIVE,
    "ellipticity": (0.0, 1.0, False, True), "score": _SCORE, "score_depth": _SCORE, "score_shape": _SCORE,
    "score_data": _SCORE,
}


def physical_problems(scored: pd.DataFrame) -> list[str]:
    """Metrics outside their physical bounds (a measurement bug, never bad data): fractions
    outside [0, 1], FWHM or noise not positive, ellipticity outside [0, 1), scores outside
    [0, 100]; one message per image and quantity, naming the image."""
    problems = []
    for r in scored.to_dict("records"):
        name = f"{r.get('file_name')}[{r.get('hdu_index')}]"
        for column, (low, high, low_open, high_open) in PHYSICAL_BOUNDS.items():
            value = r.get(column)
            if _missing(value):
                continue
            if value < low or value > high or (low_open and value == low) or (high_open and value == high):
                problems.append(f"{name}: {column} = {value:.6g} outside {'(' if low_open else '['}{low:g}, "
                                f"{high:g}{')' if high_open else ']'}")
    return problems
