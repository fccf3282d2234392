"""Colour composites from images of one target taken through several filters.

The pieces, in the order a composite is made:

* ``suggest_recipes`` proposes which filters to combine (a ranked table the user reads in the
  catalog and can override with ``apply_overrides``);
* ``reproject_channels`` puts every filter's image on one WCS, so a pixel is the same sky everywhere,
  with the resampler mosaics use (:mod:`skyassets.imaging.resample`);
* ``channel_colours`` gives each filter a hue from blue (shortest pivot wavelength) to red
  (longest), for any number of filters, balanced so that a grey source stays grey;
* ``compose`` mixes them into a picture. By default as the archives' press images are made: each
  channel's sky subtracted, the channels balanced so the field's stars are white on average
  (``balance_channels``), and the Lupton et al. (2004) asinh of the joint intensity, softened at the
  noise and scaled down by a common factor where too bright, so blank sky is neutral grey, faint
  structure shows and bright cores keep their colour (``lupton_rgb``); or channel by channel,
  each stretched to [0, 1] on its own (``stretch``) and blended ("screen");
* ``write_composite`` writes an 8-bit PNG and a 16-bit TIFF (or a FITS cube) with AVM tags carrying
  the WCS, so that sky viewers (WorldWide Telescope, Aladin) place the picture on the sky, and
  the PNG a digest of what it was made of (``provenance``, read back by ``made_of``), so that a
  composite whose mosaics and settings did not change is kept rather than made again.

Arrays are in FITS orientation throughout (row 0 at the bottom, as ``WCS`` counts pixels); only the
written PNG and TIFF are flipped, because image formats put row 0 at the top. AVM defines its WCS
for the displayed picture with pixel (1, 1) at its bottom-left corner, which is the FITS WCS of the
unflipped array, so the tags are written from that WCS unchanged.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.visualization import (
    AsinhStretch,
    AsymmetricPercentileInterval,
    HistEqStretch,
    LinearStretch,
    LogStretch,
    PowerStretch,
    SqrtStretch,
    ZScaleInterval,
)
from astropy.wcs import WCS
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pyavm import AVM
from reproject.mosaicking import find_optimal_celestial_wcs
from scipy.ndimage import (
    binary_dilation,
    binary_fill_holes,
    distance_transform_edt,
    find_objects,
    gaussian_filter,
    label,
    maximum_filter,
)

from skyassets.fits import bandpasses
from skyassets.imaging.mosaic import large_parts
from skyassets.imaging.resample import resample_image

#: Hue (degrees) of the shortest and of the longest wavelength: blue and red.
BLUE_HUE = 240.0
RED_HUE = 0.0

#: Fractional bandwidth (FWHM / pivot) at or below which a filter counts as narrow-band,
#: and at or above which as broad-band (JWST "N" filters are ~1 %, "M" ~5-10 %, "W" ~20-25 %).
NARROW_WIDTH = 0.03
BROAD_WIDTH = 0.15

#: Order in which kinds of recipe are ranked: the first is what most users want to see first.
KIND_ORDER = ("classic", "cross-instrument", "all", "narrow-band", "broad-band", "two-colour")

STRETCHES = ("linear", "sqrt", "log", "asinh", "power", "histeq", "zscale")
METHODS = ("lupton", "screen")

RECIPE_COLUMNS = ["recipe", "kind", "rank", "filters", "instruments", "pivots_um", "reason"]

#: Part of every composite's PROVHASH: raised when a change alters the picture a composite of the
#: same mosaics and settings makes (colours, balance, stretch, the files written), so that
#: composites made before are made again.
COMPOSITE_RECIPE = 1


# ----------------------------------------------------------------------------------- recipes
def pivot_um(instrument: str | None, filters: str) -> float | None:
    """Pivot wavelength (micron) of a MAST ``filters`` value such as "F090W" or "F435W;CLEAR2L"."""
    bp = _element(instrument, filters)[1]
    return bp.pivot * 1e6 if bp is not None else None


def _element(instrument: str | None, filters: str) -> tuple[str, bandpasses.Bandpass | None]:
    """The element of ``filters`` that sets the passband, and its bandpass.

    Elements the bandpass table does not know (clear positions, polarisers) are skipped; with
    several known elements the first one decides. With none, the whole value comes back, its ';'
    made '+' so that it stays one item of a ';'-joined list.
    """
    for name in re.split(r"[;,]", filters or ""):
        bp = bandpasses.lookup(instrument, name.strip())
        if bp is not None:
            return name.strip(), bp
    return re.sub(r"\s*;\s*", "+", (filters or "").strip()), None


def _width(name: str, bp: bandpasses.Bandpass | None) -> float | None:
    """Fractional bandwidth, from the table or else from the HST/JWST naming (N, M, W, LP)."""
    if bp is not None:
        return (bp.em_max - bp.em_min) / bp.pivot
    upper = name.upper()
    return 0.01 if upper.endswith("N") else 0.07 if upper.endswith("M") else (
        0.25 if upper.endswith(("W", "LP")) else None)


def _family(instrument: str) -> str:
    """The camera a filter belongs to: "NIRCAM/IMAGE" and "NIRCAM" are one, "ACS/WFC" another."""
    return (instrument or "").upper().split("/")[0]


def suggest_recipes(filters: pd.DataFrame) -> pd.DataFrame:
    """Ranked composite recipes from the filters a target has, one row per recipe.

    ``filters`` has ``instrument_name`` and ``filter`` (and ``pivot_um``, else it is looked up in the
    bandpass table; filters with no known wavelength cannot be ordered and are left out). With a
    ``target_name`` column recipes are suggested per target and the column is kept. ``filters``,
    ``instruments`` (the camera: "NIRCAM", "ACS") and ``pivots_um`` in the result are ';'-joined in
    wavelength order, shortest first, which is the blue-to-red order ``channel_colours`` assigns.
    Ranked first: the classic shortest/middle/longest 3-colour of each camera (widest span first),
    then cross-instrument, all filters, narrow-band, broad-band and two-colour recipes.
    """
    columns = (["target_name"] if "target_name" in filters else []) + RECIPE_COLUMNS
    if filters.empty:
        return pd.DataFrame(columns=columns)
    if "target_name" in filters:
        parts = [_recipes_one(group).assign(target_name=target)
                 for target, group in filters.groupby("target_name", sort=True)]
        return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)
    return _recipes_one(filters)[columns]


def _recipes_one(filters: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in filters.itertuples(index=False):
        inst = str(r.instrument_name)
        name, bp = _element(inst, str(r.filter))
        pivot = getattr(r, "pivot_um", None)
        if pivot is None or pd.isna(pivot):
            pivot = bp.pivot * 1e6 if bp is not None else None
        if pivot is None:
            continue
        rows.append({"instrument": _family(inst), "filter": name, "pivot": float(pivot),
                     "width": _width(name, bp)})
    table = pd.DataFrame(rows, columns=["instrument", "filter", "pivot", "width"])
    table = table.drop_duplicates(["instrument", "filter"]).sort_values(["pivot", "instrument"])
    table = table.reset_index(drop=True)
    recipes: list[dict[str, Any]] = []
    families = list(dict.fromkeys(table["instrument"]))
    for family in families:
        sub = table[table["instrument"] == family]
        prefix = family.lower() or "filters"
        recipes += _classic(sub, f"{prefix}-classic", "classic", f"{family} filters")
        if len(sub) > 3:
            recipes.append(_recipe(sub, f"{prefix}-all", "all",
                                   f"all {len(sub)} {family} filters, each its own hue"))
        narrow = sub[sub["width"].fillna(1.0) <= NARROW_WIDTH]
        if 2 <= len(narrow) < len(sub):
            recipes.append(_recipe(narrow, f"{prefix}-narrow", "narrow-band",
                                   f"{len(narrow)} narrow-band {family} filters (emission lines)"))
        broad = sub[sub["width"].fillna(0.0) >= BROAD_WIDTH]
        if 2 <= len(broad) < len(sub):
            recipes.append(_recipe(broad, f"{prefix}-broad", "broad-band",
                                   f"{len(broad)} broad-band {family} filters (continuum)"))
    if len(families) > 1:
        recipes += _classic(table, "cross-instrument", "cross-instrument",
                            f"filters of {' and '.join(families)}")
        if len(table) > 3:
            recipes.append(_recipe(table, "cross-instrument-all", "cross-instrument",
                                   f"all {len(table)} filters of {' and '.join(families)}"))
    out = pd.DataFrame(recipes, columns=[*(c for c in RECIPE_COLUMNS if c != "rank"), "_kind", "_n", "_span"])
    out = out.drop_duplicates(["filters", "instruments"], keep="first")
    out = out.sort_values(["_kind", "_n", "_span"], ascending=[True, True, False], kind="stable")
    out["rank"] = np.arange(1, len(out) + 1)
    return out[RECIPE_COLUMNS].reset_index(drop=True)


def _classic(sub: pd.DataFrame, name: str, kind: str, what: str) -> list[dict[str, Any]]:
    """The shortest, middle and longest of ``sub``; two filters make a two-colour recipe.

    Narrow-band filters are passed over when three others exist: in a broad-band picture a line
    filter tints only the nebulae. The middle one is the nearest to the middle in log wavelength,
    so that green sits between blue and red as the eye expects.
    """
    pool = sub[sub["width"].fillna(1.0) > NARROW_WIDTH]
    pool = pool if len(pool) >= 3 else sub
    if len(pool) >= 3:
        logs = np.log(pool["pivot"].to_numpy())
        middle = 1 + int(np.argmin(np.abs(logs[1:-1] - (logs[0] + logs[-1]) / 2)))
        pick = pool.iloc[[0, middle, len(pool) - 1]]
        return [_recipe(pick, name, kind, f"shortest, middle and longest of {len(sub)} {what}")]
    if len(sub) == 2:
        kind = "two-colour" if kind == "classic" else kind
        return [_recipe(sub, name.replace("classic", "two-colour"), kind,
                        f"the 2 {what}: the shorter azure, the longer orange (green their mean)")]
    return []


def _recipe(sub: pd.DataFrame, name: str, kind: str, reason: str) -> dict[str, Any]:
    lo, hi = sub["pivot"].min(), sub["pivot"].max()
    return {
        "recipe": name, "kind": kind,
        "filters": ";".join(sub["filter"]), "instruments": ";".join(sub["instrument"]),
        "pivots_um": ";".join(f"{p:.4g}" for p in sub["pivot"]),
        "reason": f"{reason}, {lo:.3g}-{hi:.3g} um",
        "_kind": KIND_ORDER.index(kind), "_n": len(sub), "_span": hi / lo,
    }


def apply_overrides(recipes: pd.DataFrame, overrides: Mapping[str, str | None]) -> pd.DataFrame:
    """``recipes`` with the user's configuration applied: recipe name -> ';'-joined filters.

    A name already suggested gets the user's filters, a new name is added, and None removes the
    recipe. User recipes rank first (kind "user"), in the order given, their filters put in
    wavelength order where the suggestions know the pivots. A table with ``target_name`` gets the
    overrides for every target.
    """
    if "target_name" in recipes:
        parts = [apply_overrides(group.drop(columns="target_name"), overrides).assign(target_name=target)
                 for target, group in recipes.groupby("target_name", sort=True)]
        return pd.concat(parts, ignore_index=True)[["target_name", *RECIPE_COLUMNS]]
    kept = recipes[~recipes["recipe"].isin(list(overrides))]
    known: dict[str, tuple[str, str]] = {}
    for r in recipes.itertuples(index=False):
        for f, i, p in zip(r.filters.split(";"), r.instruments.split(";"), r.pivots_um.split(";"), strict=True):
            known[f.upper()] = (i, p)
    user = []
    for name, value in overrides.items():
        if value is None:
            continue
        names = sorted((f.strip() for f in value.split(";") if f.strip()),
                       key=lambda f: float(known[f.upper()][1]) if f.upper() in known else math.inf)
        found = [known.get(f.upper(), ("", "")) for f in names]
        user.append({"recipe": name, "kind": "user", "filters": ";".join(names),
                     "instruments": ";".join(i for i, _ in found), "pivots_um": ";".join(p for _, p in found),
                     "reason": "from configuration"})
    merged = pd.concat([pd.DataFrame(user, columns=RECIPE_COLUMNS), kept], ignore_index=True)
    merged["rank"] = np.arange(1, len(merged) + 1)
    return merged[RECIPE_COLUMNS]


# ------------------------------------------------------------------------------------ colour
def hues(n: int) -> list[float]:
    """``n`` hues in degrees, evenly spaced from blue (240) to red (0), shortest wavelength first."""
    if n < 1:
        return []
    if n == 1:
        return [BLUE_HUE]
    return [BLUE_HUE + (RED_HUE - BLUE_HUE) * i / (n - 1) for i in range(n)]


def channel_colours(pivots: Sequence[float]) -> np.ndarray:
    """RGB weights (N, 3) for channels with these pivot wavelengths, in the order given.

    The channel with the shortest pivot is blue, the longest red, the rest spread over the hues in
    between by wavelength rank. Each of R, G, B sums to 1 over the channels, so a source equally
    bright in every filter comes out grey and no colour plane saturates before the others. A single
    channel is grey; two are blue and red, each with half the green.
    """
    n = len(pivots)
    if n == 0:
        return np.zeros((0, 3))
    if n == 1:
        return np.ones((1, 3))
    if n == 2:  # blue and red alone have no green: each lends half of it, so grey stays grey
        rgb = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]])
        return rgb if pivots[0] <= pivots[1] else rgb[::-1].copy()
    order = np.argsort(np.asarray(pivots, dtype=float), kind="stable")
    hue_of = np.empty(n)
    hue_of[order] = hues(n)
    rgb = np.array([colorsys.hsv_to_rgb(h / 360.0, 1.0, 1.0) for h in hue_of])
    return rgb / rgb.sum(axis=0, keepdims=True)


# ----------------------------------------------------------------------------------- stretch
def interval_limits(array: np.ndarray, interval: str = "percentile", low: float = 0.5,
                    high: float = 99.8) -> tuple[float, float]:
    """(vmin, vmax) of the finite pixels: percentiles, or IRAF's zscale (robust to bright stars)."""
    values = np.asarray(array, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 0.0
    if interval == "percentile":
        vmin, vmax = AsymmetricPercentileInterval(low, high).get_limits(values)
    elif interval == "zscale":
        vmin, vmax = ZScaleInterval().get_limits(values)
    else:
        raise ValueError(f"unknown interval {interval!r}: use 'percentile' or 'zscale'")
    return float(vmin), float(vmax)


def stretch(array: np.ndarray, kind: str = "asinh", *, interval: str = "percentile",
            low: float = 0.5, high: float = 99.8, **params: float) -> np.ndarray:
    """``array`` mapped to [0, 1]: clipped to a robust interval, then stretched.

    ``kind`` is one of ``STRETCHES``; "zscale" is a linear stretch between the zscale limits.
    ``params`` go to the astropy stretch (``a`` of asinh, log and power). Non-finite pixels become 0,
    and so does an image with no spread, which has nothing to show.
    """
    if kind not in STRETCHES:
        raise ValueError(f"unknown stretch {kind!r}: use one of {', '.join(STRETCHES)}")
    data = np.asarray(array, dtype=float)
    finite = np.isfinite(data)
    vmin, vmax = interval_limits(data, "zscale" if kind == "zscale" else interval, low, high)
    if not vmax > vmin:
        return np.zeros(data.shape)
    scaled = np.clip((np.where(finite, data, vmin) - vmin) / (vmax - vmin), 0.0, 1.0)
    if kind == "histeq":
        function = HistEqStretch(scaled[finite], **params)
    elif kind == "power":
        function = PowerStretch(params.pop("a", 2.0), **params)
    else:
        function = {"linear": LinearStretch, "zscale": LinearStretch, "sqrt": SqrtStretch,
                    "log": LogStretch, "asinh": AsinhStretch}[kind](**params)
    return np.where(finite, np.clip(function(scaled, clip=True), 0.0, 1.0), 0.0)


# ----------------------------------------------------------------------------------- compose
StretchSpec = str | Mapping[str, Any]

#: Lupton composites. The black point sits SKY_SIGMAS noise sigmas of the joint intensity under the
#: sky, the same for every colour, so blank sky is a dark neutral grey whose noise shows instead of
#: being clipped to black; the asinh is linear up to SOFTENING_SIGMAS sigmas (faint structure keeps
#: its contrast) and logarithmic above; white is the WHITE_PERCENTILE of the pixels' brightest
#: colour, and brighter pixels are scaled down with all their colours together, so cores keep their hue.
SKY_SIGMAS = 2.0
SOFTENING_SIGMAS = 3.0
WHITE_PERCENTILE = 99.95
WHITE_MIN_SIGMAS = 30.0
SKY_FADE_SIGMAS = 5.0  # the sky's grey correction fades over this many sigmas of intensity
SKY_BLANK_WIDTH = 6.0  # pixels: the smoothing that finds faint nebulosity, which is not blank sky
SKY_BLANK_SIGMAS = 1.5  # smoothed intensity this many of its noise sigmas above the sky's peak is nebulosity
SOURCE_SIGMAS = 3.0  # a smoothed pixel this many of the smoothed image's noise sigmas above the sky is a source's
SKY_BOX = 24  # pixels: the boxes whose faintest medians give the sky under broad light
SKY_MIN_BOXES = 10
#: White balance on stars: compact, isolated sources on blank sky, measured in a square aperture of
#: BALANCE_HALF pixels each side of the peak (enough for the widest of the NIRCam PSFs on the
#: short-wavelength grid) against the median of its border; each must have BALANCE_MIN_SNR in
#: every channel, and BALANCE_MIN_STARS of them are needed, else the channels' bright pixels decide.
# A saturated core's colour: each channel's flux fitted to its own pixels within this many FWHM of
# the masked core, kept where every channel's flux is this many sigmas.
CORE_FIT_FWHM = 2.0
# Holes of at least this many pixels are masked cores whose filled values, blurred, reach around them;
# a bad pixel or a small cluster of them is filled from its neighbours' level and changes nothing.
CORE_MIN_PIXELS = 9
CORE_MAX_STARS = 10
CORE_FIT_SIGMAS = 5.0
# pixels over which a star's fitted colour gives way to the colour around its patch, so that the
# patch has no edge of its own
CORE_FEATHER = 3.0
PSF_BIN = 0.5  # pixels: the rings of the stars' radial profiles
BALANCE_HALF = 12
BALANCE_MIN_SNR = 10.0
BALANCE_MIN_STARS = 3
BALANCE_BORDER_SIGMAS = 3.0  # the aperture border's median within this many noise sigmas of the sky
BALANCE_CONCENTRATION = 0.45  # flux within 4 px of the peak over the aperture's, in the summed channels


@dataclass(frozen=True)
class Balance:
    """How a Lupton composite was balanced: each channel's sky level and noise (input units), the
    factor it was multiplied by after its sky was subtracted, what set the factors ("stars",
    "sources" or "bright pixels"), how many stars or sources did, and their FWHM in each channel
    (pixels; empty when none were measured)."""

    sky: tuple[float, ...]
    noise: tuple[float, ...]
    scale: tuple[float, ...]
    method: str
    n_stars: int
    fwhm: tuple[float, ...] = ()
    # each channel's radial profile: (2, rings) of radius and unit-flux level
    psf: tuple[np.ndarray, ...] = field(default=(), compare=False, repr=False)


def compose(
    channels: Sequence[np.ndarray],
    colours: np.ndarray,
    *,
    method: str = "lupton",
    stretch: StretchSpec | Sequence[StretchSpec] = "asinh",
    high: float = 99.8,
    balance: Balance | None = None,
) -> np.ndarray:
    """A float RGB image (H, W, 3) in [0, 1] from N channels on one pixel grid.

    "lupton" (the default; Lupton et al. 2004, as the archives' press images are made) subtracts
    each channel's sky, balances the channels on the field's stars so that their median colour is
    white (``balance_channels``; or the given ``balance``), mixes them into R, G, B and applies one
    asinh to the joint intensity with its softening set from the noise (``lupton_rgb``): a neutral
    sky, white stars, faint structure visible and bright cores unclipped in their own hue.
    "screen" stretches each channel on its own (``stretch``: a kind, or a dict of ``stretch()``
    keywords with a "kind" key, or one of those per channel; ``high`` its upper percentile), tints
    it with its colour and blends them as light adds on a screen, 1 - prod(1 - c).
    """
    if len(channels) == 0:
        raise ValueError("need at least one channel")
    colours = np.asarray(colours, dtype=float).reshape(len(channels), 3)
    shape = np.shape(channels[0])
    if any(np.shape(c) != shape for c in channels):
        raise ValueError("channels differ in shape: reproject them onto one WCS first")
    if method == "screen":
        specs = list(stretch) if isinstance(stretch, (list, tuple)) else [stretch] * len(channels)
        if len(specs) != len(channels):
            raise ValueError(f"{len(specs)} stretches for {len(channels)} channels")
        dark = np.ones((*shape, 3))
        for data, colour, spec in zip(channels, colours, specs, strict=True):
            options = {"kind": spec} if isinstance(spec, str) else {"high": high, **spec}
            level = np.where(np.isfinite(data), _stretch_spec(data, options), np.nan)
            dark *= 1.0 - np.nan_to_num(fill_holes(level))[..., None] * colour
        return 1.0 - dark
    if method == "lupton":
        return lupton_rgb(channels, colours, balance or balance_channels(channels, high=high))[0]
    raise ValueError(f"unknown method {method!r}: use 'lupton' or 'screen'")


def sky_and_noise(data: np.ndarray) -> tuple[float, float]:
    """The sky level and noise of an image.

    The noise is the sigma-clipped spread of the pixels away from sources, which are found as what
    stands ``SOURCE_SIGMAS`` above the first estimate once smoothed over a few pixels (faint
    nebulosity and star wings too, which would otherwise tint the sky), grown by 3 pixels; the
    threshold is measured on the smoothed image, whose noise resampling has correlated. The sky is
    the level of the faintest of those pixels taken in boxes (``_lowest_plateau``): light only adds
    to the sky, and in a cluster or a nebula the clipped median of what is left is the broad light's
    (SMACS 0723's intracluster light fills all but 4 % of its field).
    """
    values = np.asarray(data, dtype=float)
    finite = np.isfinite(values)
    if not finite.any():
        return 0.0, 0.0
    _, median, std = sigma_clipped_stats(values[finite][:: max(1, int(finite.sum()) // 1_000_000)],
                                         sigma=3.0, maxiters=10)
    if not std > 0 or values.ndim != 2:
        return float(median), float(std)
    keep = finite & _blank(np.where(finite, values - median, 0.0), finite)
    if keep.sum() < 100:
        return float(median), float(std)
    _, median, std = sigma_clipped_stats(values[keep][:: max(1, int(keep.sum()) // 1_000_000)],
                                         sigma=3.0, maxiters=10)
    return _lowest_plateau(values, keep, float(median)), float(std)


def _blank(values: np.ndarray, finite: np.ndarray, width: float = 2.0) -> np.ndarray:
    """Pixels away from sources: not within 3 pixels of what stands ``SOURCE_SIGMAS`` of the
    smoothed image's own noise above zero once smoothed by a Gaussian of ``width`` pixels."""
    smooth = gaussian_filter(values, width)
    inside = smooth[finite]
    _, centre, spread = sigma_clipped_stats(inside[:: max(1, inside.size // 250_000)], sigma=3.0, maxiters=10)
    return ~binary_dilation(smooth > centre + SOURCE_SIGMAS * spread, iterations=3)


def _lowest_plateau(values: np.ndarray, keep: np.ndarray, median: float) -> float:
    """The sky under broad faint light: the median of the ``keep`` pixels in boxes of ``SKY_BOX``
    pixels, the level of the faintest boxes and those within 3 errors of it. A box median's error
    is measured, not assumed (resampling correlates the noise): half the difference of the medians
    of its two halves, interleaved in 4 x 4 blocks so that a gradient cancels. Over a flat sky this
    is the clipped median; with fewer than ``SKY_MIN_BOXES`` boxes half kept, ``median`` stays."""
    b, ny, nx = SKY_BOX, values.shape[0] // SKY_BOX, values.shape[1] // SKY_BOX
    if ny * nx < SKY_MIN_BOXES:
        return median
    boxes = values[: ny * b, : nx * b].reshape(ny, b, nx, b).swapaxes(1, 2).reshape(ny * nx, b, b)
    kept = keep[: ny * b, : nx * b].reshape(ny, b, nx, b).swapaxes(1, 2).reshape(ny * nx, b, b)
    full = kept.mean(axis=(1, 2)) >= 0.5
    if full.sum() < SKY_MIN_BOXES:
        return median
    boxes = np.where(kept[full], boxes[full], np.nan)
    checker = (np.add.outer(np.arange(b) // 4, np.arange(b) // 4) % 2).astype(bool)
    level = _row_medians(boxes.reshape(len(boxes), -1))
    halves = _row_medians(boxes[:, checker]) - _row_medians(boxes[:, ~checker])
    error = 0.5 * float(np.nanmedian(np.abs(halves))) * 1.4826
    if not error > 0:
        return median
    sky = float(np.median(level[level <= np.sort(level)[SKY_MIN_BOXES // 2] + 6.0 * error]))
    for _ in range(5):
        sky = float(np.median(level[np.abs(level - sky) < 3.0 * error]))
    return sky


def balance_channels(channels: Sequence[np.ndarray], *, high: float = 99.8) -> Balance:
    """Sky, noise and white-balance factor of each channel.

    Sky and noise are measured where every channel has data (the picture's coloured part). The
    factors make the median colour of the field's stars white: a star's colour is its
    sky-subtracted flux in each channel in a square aperture (``BALANCE_HALF``), for compact
    sources whose aperture border is blank sky in every channel (so nebulae, galaxies and their
    knots do not count) with ``BALANCE_MIN_SNR`` in every channel and no masked pixel. With fewer
    than ``BALANCE_MIN_STARS`` such stars, the compact sources wherever they sit ("sources", the
    field's median source colour); with fewer of those, each channel is scaled to its ``high``
    percentile above the sky, the colour of the field's brightest pixels. The same stars give each
    channel's FWHM and PSF (their median radial profile of unit flux), which saturated cores are
    coloured by.
    """
    data = [np.asarray(c, dtype=float) for c in channels]
    common = np.all([np.isfinite(d) for d in data], axis=0)  # the sky the picture shows in colour
    stats = [sky_and_noise(np.where(common, d, np.nan) if common.sum() >= 100 else d) for d in data]
    sky = np.array([s for s, _ in stats])
    noise = np.array([n if n > 0 else 1.0 for _, n in stats])
    fluxes, widths, profiles = _star_fluxes(data, sky, noise, BALANCE_BORDER_SIGMAS)
    method = "stars"
    if len(fluxes) < BALANCE_MIN_STARS:  # a field full of nebulosity: its compact sources, wherever they sit
        fluxes, widths, profiles = _star_fluxes(data, sky, noise, math.inf)
        method = "sources"
    if len(fluxes) >= BALANCE_MIN_STARS:
        colour = np.median(fluxes / fluxes.mean(axis=1, keepdims=True), axis=0)
        scale = 1.0 / colour
    else:
        tops = []
        for d, s in zip(data, sky, strict=True):
            finite = d[np.isfinite(d)]
            top = float(np.percentile(finite, high)) - s if finite.size else 0.0
            tops.append(top if top > 0 else 1.0)
        scale, method = 1.0 / np.array(tops), "bright pixels"
    scale = scale / np.exp(np.mean(np.log(scale * noise)))  # unit geometric-mean noise after scaling
    stars = method != "bright pixels"
    return Balance(tuple(map(float, sky)), tuple(map(float, noise)), tuple(map(float, scale)), method,
                   len(fluxes) if stars else 0, tuple(map(float, np.median(widths, axis=0))) if stars else (),
                   _psf_profiles(profiles) if stars else ())


def _star_fluxes(data: list[np.ndarray], sky: np.ndarray, noise: np.ndarray,
                 border_sigmas: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_stars, n_channels) aperture fluxes of the compact sources whose aperture border is within
    ``border_sigmas`` of blank sky in every channel, their FWHM in each channel (2 sqrt(A / pi),
    A the area above half the peak) and their radial profiles of unit flux about the core's
    centroid (n_stars, 1 + n_channels, rings of ``PSF_BIN`` px out to ``BALANCE_HALF``; the
    rings' mean radii first)."""
    h = BALANCE_HALF
    norm = np.stack([(d - s) / n for d, s, n in zip(data, sky, noise, strict=True)])
    masked = ~np.isfinite(norm).all(axis=0)
    summed = np.where(masked, 0.0, norm.sum(axis=0))
    smooth = gaussian_filter(summed, 1.0)
    peaks = (smooth == maximum_filter(smooth, size=2 * h + 1)) & (smooth > 5.0 * BALANCE_MIN_SNR)
    rows, cols = np.nonzero(peaks)
    ring = np.ones((2 * h + 1, 2 * h + 1), dtype=bool)
    ring[2:-2, 2:-2] = False
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    core = yy**2 + xx**2 <= 16
    area = float((2 * h + 1) ** 2)
    out, widths, profiles = [], [], []
    bins = int(h / PSF_BIN)
    for r, c in zip(rows, cols, strict=True):
        if r < h or c < h or r >= summed.shape[0] - h or c >= summed.shape[1] - h:
            continue
        box = norm[:, r - h:r + h + 1, c - h:c + h + 1]
        if masked[r - h:r + h + 1, c - h:c + h + 1].any():
            continue
        border = np.median(box[:, ring], axis=1)
        if np.any(np.abs(border) > border_sigmas):  # on a nebula, a galaxy or a neighbour's wing
            continue
        flux = (box - border[:, None, None]).sum(axis=(1, 2))
        if np.any(flux < BALANCE_MIN_SNR * math.sqrt(area)):
            continue
        stamp = (box - border[:, None, None]).sum(axis=0)
        if stamp[core].sum() < BALANCE_CONCENTRATION * stamp.sum():
            continue
        out.append(flux * noise)
        half_max = box - border[:, None, None] > 0.5 * (box[:, h, h] - border)[:, None, None]
        widths.append(2.0 * np.sqrt(half_max.sum(axis=(1, 2)) / np.pi))
        light = np.clip(stamp, 0.0, None) * (yy**2 + xx**2 <= 4)  # the centroid of the core, sub-pixel
        total = light.sum()
        cy, cx = ((light * yy).sum() / total, (light * xx).sum() / total) if total > 0 else (0.0, 0.0)
        radius = np.hypot(yy - cy, xx - cx).ravel()
        ring_of = np.floor(radius / PSF_BIN).astype(int)
        count = np.bincount(ring_of, minlength=bins)[:bins]
        with np.errstate(invalid="ignore", divide="ignore"):
            profiles.append([np.bincount(ring_of, radius, minlength=bins)[:bins] / count]
                            + [np.bincount(ring_of, (b - e).ravel(), minlength=bins)[:bins] / count / f
                               for b, e, f in zip(box, border, flux, strict=True)])
    n = len(data)
    return (np.array(out).reshape(-1, n), np.array(widths).reshape(-1, n),
            np.array(profiles, dtype=float).reshape(-1, n + 1, bins))


def _psf_profiles(profiles: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each channel's median radial profile over the stars, as (2, rings) rows of mean radius
    and unit-flux level, from ``_star_fluxes``' profiles (the mean radii first); rings no pixel
    centre fell in are left out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a ring empty for every star
        median = np.nanmedian(profiles, axis=0)
    known = np.all(np.isfinite(median), axis=0)
    return tuple(np.stack([median[0, known], level[known]]) for level in median[1:])


def lupton_rgb(channels: Sequence[np.ndarray], colours: np.ndarray, balance: Balance,
               ) -> tuple[np.ndarray, dict[str, float]]:
    """The balanced Lupton et al. (2004) picture and what it did.

    Each channel becomes (data - sky) x scale and the channels are mixed into R, G, B by
    ``colours``; a pedestal of ``SKY_SIGMAS`` noise sigmas of the joint intensity I = (R + G + B) / 3
    is added to all three, so blank sky is grey. A pixel's brightness is asinh(I / b) / W, b being
    ``SOFTENING_SIGMAS`` sigmas, and its colour the ratios R : G : B of the channels blurred to the
    widest PSF the stars show (``balance.fwhm``), so a star has one colour from core to wing
    although its filters' PSFs differ, while the brightness keeps the sharpest detail. W puts the
    ``WHITE_PERCENTILE`` of the pixels' brightest colour at 1; a pixel whose brightest colour would
    exceed 1 is divided by it, its hue kept. Pixels where a channel has no data are black (holes
    inside the footprint, masked star cores, take their edge's value). Returns the picture and its
    figures: sigma, softening, white point and the fraction of pixels scaled down.
    """
    colours = np.asarray(colours, dtype=float).reshape(len(channels), 3)
    shape = np.shape(channels[0])
    planes = np.zeros((3, *shape))
    matched = np.zeros((3, *shape))
    footprint = np.ones(shape, dtype=bool)
    widest = max(balance.fwhm, default=0.0)
    levels, real = [], []
    for data, sky, scale in zip(channels, balance.sky, balance.scale, strict=True):
        values = np.asarray(data, dtype=float)
        filled = fill_holes(values)
        footprint &= np.isfinite(filled)
        real.append(np.isfinite(values))
        levels.append((filled - sky) * scale)
    unclean = np.zeros(shape, dtype=bool)  # pixels whose matched colour a filled value reaches
    cored = np.zeros(shape, dtype=bool)  # the masked cores among them
    for k, (level, colour) in enumerate(zip(levels, colours, strict=True)):
        level = np.nan_to_num(level)
        planes += level[None] * colour[:, None, None]
        match = max(widest**2 - balance.fwhm[k] ** 2, 0.0) / 2.3548**2 if balance.fwhm else 0.0
        blur = math.sqrt(match) if match > 0.1 else 0.0
        matched += (gaussian_filter(level, blur, truncate=4.0) if blur else level)[None] * colour[:, None, None]
        filled_in = ~real[k] & np.isfinite(levels[k])
        unclean |= filled_in
        if filled_in.any():  # a masked core's reach: the 4 sigma of gaussian_filter's kernel, round, as a star is
            cores = large_parts(filled_in, CORE_MIN_PIXELS)
            cored |= cores
            if cores.any() and blur:
                unclean |= _grown_round(cores, 4.0 * blur + 0.5)
    intensity = planes.mean(axis=0)
    inside = intensity[footprint]
    sigma = sky_and_noise(np.where(footprint, intensity, np.nan))[1] if inside.size else 1.0
    sigma = sigma if sigma > 0 else 1.0
    pedestal, soft = SKY_SIGMAS * sigma, SOFTENING_SIGMAS * sigma
    lifted = intensity + pedestal
    hue = matched + pedestal
    with np.errstate(invalid="ignore", divide="ignore"):
        hue = np.where(hue.mean(axis=0) > 0, np.clip(hue, 0.0, None) / hue.mean(axis=0), 1.0)
        luminance = np.where(lifted > 0, np.arcsinh(lifted / soft), 0.0)
    hue = _neutral_sky(hue, luminance, intensity, footprint, sigma)
    noise = [n * abs(c) for n, c in zip(balance.noise, balance.scale, strict=True)]
    hue = _core_colour(hue, levels, real, footprint & unclean, cored, colours, balance, noise)
    rgb = hue * luminance[None]
    peak = rgb.max(axis=0)
    white = max(float(np.percentile(peak[footprint], WHITE_PERCENTILE)) if inside.size else 0.0,
                math.asinh(WHITE_MIN_SIGMAS / SOFTENING_SIGMAS))
    rgb /= white
    peak /= white
    over = peak > 1.0
    rgb[:, over] /= peak[over]
    rgb[:, ~footprint] = 0.0
    figures = {"sigma": sigma, "softening": soft, "white": white,
               "clipped_fraction": float(over[footprint].mean()) if footprint.any() else 0.0}
    return np.moveaxis(rgb, 0, -1), figures


def _grown_round(mask: np.ndarray, radius: float) -> np.ndarray:
    """``mask`` grown by a disk of ``radius`` pixels, window by window around its parts, so that a
    picture of a hundred million pixels with a few masked cores costs what the cores' windows do."""
    out = mask.copy()
    reach = int(math.ceil(radius))
    yy, xx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    disk = np.hypot(yy, xx) <= radius
    height, width = mask.shape
    marks, _ = label(mask)
    for box in find_objects(marks):
        rs = slice(max(box[0].start - reach, 0), min(box[0].stop + reach, height))
        cs = slice(max(box[1].start - reach, 0), min(box[1].stop + reach, width))
        out[rs, cs] |= binary_dilation(mask[rs, cs], structure=disk)
    return out


def _row_medians(rows: np.ndarray) -> np.ndarray:
    """The median of each row's finite values (NaN where none): a sort, which sends NaN last, at a
    third of ``nanmedian``'s time over thousands of boxes."""
    ordered = np.sort(rows, axis=1)
    count = np.isfinite(rows).sum(axis=1)
    low, high = np.maximum(count - 1, 0) // 2, np.maximum(count, 1) // 2
    index = np.arange(len(rows))
    return np.where(count > 0, 0.5 * (ordered[index, low] + ordered[index, high]), np.nan)


def _core_colour(hue: np.ndarray, levels: Sequence[np.ndarray], real: Sequence[np.ndarray], unclean: np.ndarray,
                 cored: np.ndarray, colours: np.ndarray, balance: Balance, noise: Sequence[float]) -> np.ndarray:
    """``hue`` (3, H, W) with each patch of ``unclean`` pixels (a channel's value filled in there,
    or within reach of the blur that matched its PSF to the widest) drawn in the colours of the
    stars whose cores (``cored``) were masked there, each channel's fluxes fitted to its own data.

    A bright star saturates each filter over a core the wider the wider its PSF. Filled from the
    hole's edge, a channel stays at the edge's level while the sharper ones climb to their peaks
    (cores in the colour of the sharpest filter), and blurred to the widest PSF, the sharp channels'
    missing cores dim them all around (rings in the colour of the widest filter). Instead, each
    channel's own pixels within ``CORE_FIT_FWHM`` of its FWHM around its masked cores (around the
    stars, where it has none) are fitted with its PSF as the field's stars show it
    (``balance.psf``) at every masked star and a constant (a galaxy or nebula behind them): the
    amplitudes are the stars' fluxes in that channel, mixed by ``colours`` their colours, and each
    pixel of the patch takes its nearest star's. The stars sit at the centres of the channels'
    masked cores, the smallest first: two stars whose cores merge in the widest filter are two
    cores in the sharper ones. A star whose fit finds no significant positive flux in a channel,
    a patch without a masked core or with more than ``CORE_MAX_STARS`` of them, and a field without
    a measured PSF keep the colour of the nearest clean pixel."""
    if not unclean.any():
        return hue
    out = hue.copy()
    if not unclean.all():
        _, (rows, cols) = distance_transform_edt(unclean, return_indices=True)
        out[:, unclean] = hue[:, rows[unclean], cols[unclean]]
    if len(balance.psf) != len(levels) or not (cored & unclean).any():
        return out
    labels, _ = label(unclean)
    height, width = unclean.shape
    h = BALANCE_HALF
    for index, box in enumerate(find_objects(labels), start=1):
        if not (cored[box] & (labels[box] == index)).any():  # bad pixels only: nothing to fit
            continue
        rs = slice(max(box[0].start - h, 0), min(box[0].stop + h, height))
        cs = slice(max(box[1].start - h, 0), min(box[1].stop + h, width))
        patch = labels[rs, cs] == index
        holes = [patch & ~ok[rs, cs] for ok in real]
        stars = _masked_stars(holes)
        if not stars or len(stars) > CORE_MAX_STARS:  # a crowd no fit would separate
            continue
        yy, xx = np.mgrid[: patch.shape[0], : patch.shape[1]]
        closest = np.full(patch.shape, np.inf)
        nearest = np.zeros(patch.shape, dtype=int)
        for n, (y, x) in enumerate(stars):
            d = np.hypot(yy - y, xx - x)
            nearest[d < closest] = n
            np.minimum(closest, d, out=closest)
        profiled = closest < h - PSF_BIN  # where the stars' profiles are known
        fluxes = np.full((len(stars), len(levels)), np.nan)
        for k, (level, ok, model, width_k, sigma_k) in enumerate(
                zip(levels, real, balance.psf, balance.fwhm, noise, strict=True)):
            if holes[k].any():  # its own pixels around its masked cores, the edge's pixel left out
                near = distance_transform_edt(~holes[k])
                use = ok[rs, cs] & (near > 1.5) & (near <= CORE_FIT_FWHM * width_k + 1.5)
            else:  # not masked here: its own cores are data
                use = ok[rs, cs] & (closest <= CORE_FIT_FWHM * width_k)
            use &= profiled & np.isfinite(level[rs, cs])
            design = np.stack([np.interp(np.hypot(yy[use] - y, xx[use] - x), *model, right=0.0) for y, x in stars]
                              + [np.ones(int(use.sum()))], axis=1)
            if use.sum() <= design.shape[1]:
                continue
            amplitude = np.linalg.lstsq(design, level[rs, cs][use], rcond=None)[0][:-1]
            significance = amplitude * np.sqrt((design[:, :-1] ** 2).sum(axis=0)) / sigma_k
            fluxes[:, k] = np.where(significance > CORE_FIT_SIGMAS, amplitude, np.nan)
        # full strength inside, fading over CORE_FEATHER pixels to the colour around the patch
        weight = np.clip(distance_transform_edt(patch) / CORE_FEATHER, 0.0, 1.0)
        for n, flux in enumerate(fluxes):
            light = flux @ colours
            if np.all(np.isfinite(light)) and light.mean() > 0:
                pixels = patch & (nearest == n)
                around = out[:, rs, cs][:, pixels]
                out[:, rs, cs][:, pixels] = around + weight[pixels] * ((light / light.mean())[:, None] - around)
    return out


def _masked_stars(holes: Sequence[np.ndarray]) -> list[tuple[float, float]]:
    """The centres (row, column) of the stars whose cores the channels' ``holes`` mask: the centre
    of each masked core (of at least ``CORE_MIN_PIXELS``), the smallest first, unless it holds the
    centre of a smaller one."""
    cores = []
    for hole in holes:
        marks, _ = label(hole)
        for n, box in enumerate(find_objects(marks), start=1):
            rr, cc = np.nonzero(marks[box] == n)
            if rr.size >= CORE_MIN_PIXELS:
                cores.append((rr.size, float(rr.mean()) + box[0].start, float(cc.mean()) + box[1].start, marks, n))
    stars: list[tuple[float, float]] = []
    for _, y, x, marks, n in sorted(cores, key=lambda c: c[0]):
        if not any(marks[int(round(sy)), int(round(sx))] == n for sy, sx in stars):
            stars.append((y, x))
    return stars


def _neutral_sky(hue: np.ndarray, luminance: np.ndarray, intensity: np.ndarray, footprint: np.ndarray,
                 sigma: float) -> np.ndarray:
    """``hue`` (3, H, W) with blank sky made grey. On blank sky the colour ratios are ratios of noise
    around the pedestal, and the channel with the most noise (the one not blurred to the widest
    PSF) comes out a few per cent brighter: a tint of 10-25 % of the dark sky level. Each colour is
    scaled so that the medians of hue x luminance (the picture before its white point) over blank
    sky are equal, at full strength on the sky and fading as exp(-I / (``SKY_FADE_SIGMAS`` sigma))
    above it, so stars and nebulae keep the balance's colours.

    Blank sky is told from faint nebulosity on the intensity smoothed by ``SKY_BLANK_WIDTH``
    pixels: the sky is the peak of its histogram, its noise the spread below the peak (nebulosity
    only adds light), and what stands ``SKY_BLANK_SIGMAS`` times that above the peak, grown by 3
    pixels, is not sky.
    A field that nebulosity fills at well under a sigma per pixel still has its own colour there."""
    smooth = gaussian_filter(np.where(footprint, intensity, 0.0), SKY_BLANK_WIDTH)[footprint]
    if smooth.size < 1000:
        return hue
    low, high = np.percentile(smooth, [0.5, 60.0])  # the sky's peak lies low: nebulosity and stars add light
    counts, edges = np.histogram(smooth, bins=200, range=(low, high))
    peak = float(edges[np.argmax(gaussian_filter(counts.astype(float), 2.0))] + (edges[1] - edges[0]) / 2)
    below = smooth[smooth < peak] - peak
    if below.size < 100:
        return hue
    noise = float(np.sqrt(np.mean(below**2)))
    smoothed = np.zeros(footprint.shape)
    smoothed[footprint] = smooth
    nebulous = binary_dilation(smoothed > peak + SKY_BLANK_SIGMAS * noise, iterations=3)
    sky = footprint & ~nebulous & (np.abs(intensity - peak) < SKY_SIGMAS * sigma)
    if sky.sum() < 100:
        return hue
    median = np.median(hue[:, sky] * luminance[sky], axis=1)
    if not np.all(median > 0):
        return hue
    gain = median.mean() / median
    strength = np.exp(-np.clip(intensity - peak, 0.0, None) / (SKY_FADE_SIGMAS * sigma))
    return hue * (1.0 + (gain[:, None, None] - 1.0) * strength[None])


def fill_holes(data: np.ndarray) -> np.ndarray:
    """``data`` with every NaN region that data surround on all sides (a saturated star's masked
    core, a cluster of bad pixels) filled with the nearest valid value; NaN beyond the footprint stays.

    A mosaic keeps such pixels NaN, as it should, but in a picture they would show as black holes
    in the brightest stars. The nearest value is the edge of the hole: for a saturated core, its
    brightest unsaturated ring, so the star shows bright and with its own colour. ``compose`` fills
    each channel after its interval is found, so filled pixels do not move the interval.
    """
    values = np.asarray(data, dtype=float)
    finite = np.isfinite(values)
    holes = binary_fill_holes(finite) & ~finite
    if not holes.any():
        return values
    _, (rows, cols) = distance_transform_edt(~finite, return_indices=True)
    filled = values.copy()
    filled[holes] = values[rows[holes], cols[holes]]
    return filled


def _stretch_spec(data: np.ndarray, options: dict[str, Any]) -> np.ndarray:
    """``stretch()`` by keywords, reachable inside ``compose`` whose argument hides the name."""
    kind = options.pop("kind", "asinh")
    return stretch(data, kind, **options)


# --------------------------------------------------------------------------------- reproject
def reproject_channels(
    images: Sequence[tuple[np.ndarray, WCS | fits.Header]],
    wcs: WCS | None = None,
    shape: tuple[int, int] | None = None,
) -> tuple[list[np.ndarray], WCS, tuple[int, int]]:
    """Every image resampled onto one celestial WCS (NaN where an image does not cover).

    Without ``wcs``, the one ``reproject.mosaicking.find_optimal_celestial_wcs`` picks: north up,
    the finest input pixel scale, cut to the sky every image covers (a picture shows colour only
    there; a long-wave mosaic that covers four short-wave detectors' sky left 85 % of it black).
    Resampling is the mosaics' own
    (``resample.resample_image``): bilinear, enough for a picture and far cheaper than
    flux-conserving resampling, slab by slab, and with NaN pixels (a mosaic's masked star cores)
    masked rather than spread to their neighbours, so the holes ``fill_holes`` fills are no larger.
    """
    inputs = [(np.asarray(data, dtype=float), w if isinstance(w, WCS) else WCS(w)) for data, w in images]
    chosen = wcs is not None
    if not chosen:
        wcs, shape = find_optimal_celestial_wcs([(d, w.celestial) for d, w in inputs])
    elif shape is None:
        if wcs.pixel_shape is None:
            raise ValueError("give the shape of the target WCS")
        shape = (wcs.pixel_shape[1], wcs.pixel_shape[0])
    shape = (int(shape[0]), int(shape[1]))
    channels = [resample_image(data, w.celestial, wcs, shape) for data, w in inputs]
    if chosen:  # a grid one asked for: as it is
        return channels, wcs, shape
    covered = np.logical_and.reduce([np.isfinite(c) for c in channels])
    if not covered.any():  # images with no sky in common: nothing to cut to
        return channels, wcs, shape
    rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    cut = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    wcs = wcs.slice(cut)
    shape = (cut[0].stop - cut[0].start, cut[1].stop - cut[1].start)
    wcs.pixel_shape = (shape[1], shape[0])
    return [np.ascontiguousarray(c[cut]) for c in channels], wcs, shape


# ------------------------------------------------------------------------------------- write
def avm_for(wcs: WCS, shape: tuple[int, int], meta: Mapping[str, Any] | None = None) -> AVM:
    """AVM tags for a picture of ``shape`` (rows, cols) whose FITS-orientation WCS is ``wcs``.

    ``meta`` maps AVM tag names to values, e.g. ``{"Title": ..., "Spectral.Bandpass": [...],
    "Spectral.CentralWavelength": [nm, ...], "Spectral.ColorAssignment": [...]}``. The AVM tags
    hold a linear projection only; the full FITS WCS (SIP distortion included) also goes into
    Spatial.FITSheader for readers that use it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "using CDMatrix" for a WCS that Scale/Rotation cannot hold
        avm = AVM.from_wcs(wcs.celestial, shape=shape)
    avm.Spatial.ReferenceDimension = [int(shape[1]), int(shape[0])]
    header = wcs.celestial.to_header(relax=True)
    header["NAXIS1"], header["NAXIS2"] = int(shape[1]), int(shape[0])
    avm.Spatial.FITSheader = header.tostring()
    if avm.Spatial.Equinox is None or not np.isfinite(float(avm.Spatial.Equinox)):
        avm.Spatial.Equinox = "J2000"  # ICRS has none; readers assume J2000 and warn when it is absent
    if avm.Spatial.Scale is not None:
        # AVM readers force Scale to (-, +); pyavm may write (+, -) with the rotation 180 degrees off,
        # and a mirrored WCS has no (-, +) form at all, so that one goes in the CD matrix.
        (sx, sy), rotation = avm.Spatial.Scale, float(avm.Spatial.Rotation or 0.0)
        if sx > 0 and sy < 0:
            avm.Spatial.Scale, avm.Spatial.Rotation = [-sx, -sy], (rotation + 180.0) % 360.0
        elif (sx > 0) == (sy > 0):
            cd = wcs.celestial.wcs.get_cdelt()[:, None] * wcs.celestial.wcs.get_pc()
            avm.Spatial.Scale, avm.Spatial.Rotation = None, None
            avm.Spatial.CDMatrix = [float(v) for v in cd.ravel()]
    for name, value in (meta or {}).items():
        target = avm
        *groups, tag = name.split(".")
        for group in groups:
            target = getattr(target, group)
        setattr(target, tag, value)
    return avm


def spectral_meta(filters: Sequence[str], pivots_um: Sequence[float], colours: np.ndarray,
                  instruments: Sequence[str] | None = None) -> dict[str, Any]:
    """AVM Spectral tags describing the channels: filter, central wavelength and colour given."""
    names = [_colour_name(c) for c in np.asarray(colours, dtype=float)]
    meta: dict[str, Any] = {
        "Spectral.Bandpass": list(filters),
        "Spectral.CentralWavelength": [round(p * 1000.0, 3) for p in pivots_um],
        "Spectral.ColorAssignment": names,
    }
    if instruments is not None:
        meta["Instrument"] = list(instruments)
    return meta


#: AVM's controlled vocabulary for Spectral.ColorAssignment, by hue in degrees.
_AVM_COLOURS = ((0.0, "Red"), (30.0, "Orange"), (60.0, "Yellow"), (120.0, "Green"), (180.0, "Cyan"),
                (240.0, "Blue"), (300.0, "Magenta"), (360.0, "Red"))


def _colour_name(rgb: np.ndarray) -> str:
    h, s, _ = colorsys.rgb_to_hsv(*(rgb / max(float(rgb.max()), 1e-12)))
    if s < 0.2:
        return "Grayscale"
    return min(_AVM_COLOURS, key=lambda item: abs(item[0] - h * 360.0))[1]


def write_composite(
    rgb: np.ndarray,
    wcs: WCS,
    dest_stem: str | Path,
    *,
    meta: Mapping[str, Any] | None = None,
    cube: str = "tiff",
    made_from: str | None = None,
) -> dict[str, Path]:
    """Write ``rgb`` (H, W, 3 floats in [0, 1], FITS orientation) as ``<stem>.png`` and a cube.

    The PNG is 8-bit and the TIFF 16-bit, both flipped so row 0 is the top, both carrying AVM tags
    (an XMP packet) for ``wcs``. ``cube="fits"`` writes ``<stem>.fits`` instead of the TIFF: a
    float32 (3, H, W) cube in FITS orientation with the WCS in its header. ``made_from`` (a
    :func:`provenance`) goes into the PNG as a PROVHASH text chunk. Returns the paths by kind.
    """
    if cube not in ("tiff", "fits"):
        raise ValueError(f"unknown cube format {cube!r}: use 'tiff' or 'fits'")
    data = np.clip(np.nan_to_num(np.asarray(rgb, dtype=float), nan=0.0), 0.0, 1.0)
    if data.ndim != 3 or data.shape[2] != 3:
        raise ValueError(f"need an (H, W, 3) image, got shape {data.shape}")
    stem = Path(dest_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    avm = avm_for(wcs, data.shape[:2], meta)
    top_down = np.flipud(data)
    png = stem.with_name(stem.name + ".png")
    text = PngInfo()
    if made_from is not None:
        text.add_text("PROVHASH", made_from)
    Image.fromarray(np.rint(top_down * 255).astype(np.uint8), mode="RGB").save(png, pnginfo=text)
    avm.embed(str(png), str(png))
    out = {"png": png}
    if cube == "tiff":
        out["tiff"] = stem.with_name(stem.name + ".tif")
        xmp = avm.to_xmp()
        tifffile.imwrite(out["tiff"], np.rint(top_down * 65535).astype(np.uint16), photometric="rgb",
                         extratags=[(700, 1, len(xmp), xmp, True)], metadata=None)
    else:
        out["fits"] = stem.with_name(stem.name + ".fits")
        header = wcs.celestial.to_header(relax=True)
        for key, value in (("PLANE1", "red"), ("PLANE2", "green"), ("PLANE3", "blue")):
            header[key] = (value, "colour of this plane of the cube")
        cube_data = np.moveaxis(data, 2, 0).astype(np.float32)
        fits.PrimaryHDU(cube_data, header=header).writeto(out["fits"], overwrite=True)
    return out


def provenance(mosaics: Iterable[tuple[str, str]], settings: Mapping[str, object]) -> str:
    """A digest of what a composite is made of: each channel's mosaic (path, PROVHASH), in the order
    of the channels, and the settings (filters, pivots, method, stretch), which its PNG keeps
    (PROVHASH): a composite whose mosaics and settings have not changed since it was made need
    not be made again."""
    made_of = {"recipe": COMPOSITE_RECIPE, "mosaics": [[str(p), str(d)] for p, d in mosaics], "settings": settings}
    return hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode()).hexdigest()


def made_of(path: str | Path) -> str | None:
    """The PROVHASH a composite's PNG was made with; None for a PNG without one or that cannot be
    read. The text chunk precedes the pixels, so only the file's first chunks are read."""
    try:
        with Image.open(path) as picture:
            value = picture.info.get("PROVHASH")
    except OSError:
        return None
    return value if isinstance(value, str) else None


def read_avm_wcs(path: str | Path, *, full_header: bool = False) -> WCS:
    """The WCS in the AVM tags of a PNG, JPEG or TIFF, for the picture flipped so row 0 is the bottom.

    By default from the AVM Spatial tags, as other AVM readers see it; ``full_header`` reads the
    embedded FITS header instead, which keeps SIP distortion.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyavm's notes on assumed defaults
        return AVM.from_image(str(path)).to_wcs(use_full_header=full_header)


def picture_figures(rgb: np.ndarray, sky: np.ndarray, stars: Sequence[tuple[int, int]], *,
                    half: int = 6, footprint: np.ndarray | None = None) -> dict[str, float]:
    """How a picture (H, W, 3 in [0, 1]) measures against what press images get right.

    ``sky_r``, ``sky_g``, ``sky_b``: the channels' medians over the blank-sky mask ``sky``, and
    ``sky_spread``, (max - min) / mean of the three (0 for a neutral sky); ``star_rg`` and
    ``star_bg``: the median over ``stars`` ((row, col) pixels) of R/G and B/G of their light in a
    square aperture of ``half`` pixels each side above its border's median (1, 1 for white stars);
    ``clipped``: the fraction of pixels (in ``footprint``, else everywhere) with a colour at 1.
    """
    picture = np.asarray(rgb, dtype=float)
    medians = np.median(picture[np.asarray(sky, dtype=bool)], axis=0)
    ratios = []
    rows, cols = picture.shape[:2]
    for r, c in stars:
        if half <= r < rows - half and half <= c < cols - half:
            box = picture[r - half:r + half + 1, c - half:c + half + 1]
            border = np.concatenate([box[0], box[-1], box[1:-1, 0], box[1:-1, -1]])
            light = (box - np.median(border, axis=0)).sum(axis=(0, 1))
            if light[1] > 0:
                ratios.append((light[0] / light[1], light[2] / light[1]))
    star = np.median(np.array(ratios), axis=0) if ratios else np.array([np.nan, np.nan])
    inside = np.ones(picture.shape[:2], dtype=bool) if footprint is None else np.asarray(footprint, dtype=bool)
    return {
        "sky_r": float(medians[0]), "sky_g": float(medians[1]), "sky_b": float(medians[2]),
        "sky_spread": float((medians.max() - medians.min()) / max(float(medians.mean()), 1e-12)),
        "star_rg": float(star[0]), "star_bg": float(star[1]), "n_stars": len(ratios),
        "clipped": float((picture[inside] >= 1.0 - 1e-9).any(axis=1).mean()) if inside.any() else 0.0,
    }
