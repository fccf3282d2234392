"""Colour composites from images of one target taken through several filters.

The pieces, in the order a composite is made:

* ``suggest_recipes`` proposes which filters to combine (a ranked table the user reads in the
  catalog and can override with ``apply_overrides``);
* ``reproject_channels`` puts every filter's image on one WCS, so a pixel is the same sky everywhere,
  with the resampler mosaics use (:mod:`skyassets.imaging.resample`);
* ``channel_colours`` gives each filter a hue from blue (shortest pivot wavelength) to red
  (longest), for any number of filters, balanced so that a grey source stays grey;
* ``stretch`` maps each channel to [0, 1]; ``compose`` mixes them, either channel by channel
  ("screen") or with the Lupton et al. (2004) asinh of the joint intensity, which keeps the colour
  of bright sources instead of saturating them to white;
* ``write_composite`` writes an 8-bit PNG and a 16-bit TIFF (or a FITS cube) with AVM tags carrying
  the WCS, so that sky viewers (WorldWide Telescope, Aladin) place the picture on the sky.

Arrays are in FITS orientation throughout (row 0 at the bottom, as ``WCS`` counts pixels); only the
written PNG and TIFF are flipped, because image formats put row 0 at the top. AVM defines its WCS
for the displayed picture with pixel (1, 1) at its bottom-left corner, which is the FITS WCS of the
unflipped array, so the tags are written from that WCS unchanged.
"""

from __future__ import annotations

import colorsys
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile
from astropy.io import fits
from astropy.visualization import (
    AsinhStretch,
    AsymmetricPercentileInterval,
    HistEqStretch,
    LinearStretch,
    LogStretch,
    PowerStretch,
    SqrtStretch,
    ZScaleInterval,
    make_lupton_rgb,
)
from astropy.wcs import WCS
from PIL import Image
from pyavm import AVM
from reproject.mosaicking import find_optimal_celestial_wcs
from scipy.ndimage import binary_fill_holes, distance_transform_edt

from skyassets.fits import bandpasses
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
METHODS = ("screen", "lupton")

RECIPE_COLUMNS = ["recipe", "kind", "rank", "filters", "instruments", "pivots_um", "reason"]


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
                        f"the 2 {what}: blue and red, green from their mean")]
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


def compose(
    channels: Sequence[np.ndarray],
    colours: np.ndarray,
    *,
    method: str = "screen",
    stretch: StretchSpec | Sequence[StretchSpec] = "asinh",
    Q: float = 8.0,
    stretch_lupton: float = 0.5,
    high: float = 99.8,
) -> np.ndarray:
    """A float RGB image (H, W, 3) in [0, 1] from N channels on one pixel grid.

    "screen" stretches each channel on its own (``stretch``: a kind, or a dict of ``stretch()``
    keywords with a "kind" key, or one of those per channel), tints it with its colour and blends
    them as light adds on a screen, 1 - prod(1 - c), so overlapping channels brighten without
    clipping. "lupton" (Lupton et al. 2004) subtracts each channel's median sky, scales it to its
    ``high`` percentile, mixes the channels into R, G, B and applies one asinh to their joint
    intensity, so hues are kept in bright cores; ``Q`` is the softening and ``stretch_lupton`` the
    linear range, in units of a channel's ``high`` percentile.
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
            options = {"kind": spec} if isinstance(spec, str) else dict(spec)
            level = np.where(np.isfinite(data), _stretch_spec(data, options), np.nan)
            dark *= 1.0 - np.nan_to_num(fill_holes(level))[..., None] * colour
        return 1.0 - dark
    if method == "lupton":
        planes = np.zeros((3, *shape))
        for data, colour in zip(channels, colours, strict=True):
            planes += np.nan_to_num(fill_holes(_normalise(data, high)))[None] * colour[:, None, None]
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 where the joint intensity is 0
            rgb = make_lupton_rgb(*planes, minimum=0.0, stretch=stretch_lupton, Q=Q,
                                  output_dtype=np.float64)
        return np.clip(np.nan_to_num(np.asarray(rgb, dtype=float), nan=0.0), 0.0, 1.0)
    raise ValueError(f"unknown method {method!r}: use 'screen' or 'lupton'")


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


def _normalise(data: np.ndarray, high: float) -> np.ndarray:
    """Sky-subtracted ``data`` in units of its ``high`` percentile above the sky (NaN stays NaN)."""
    values = np.asarray(data, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape)
    sky = float(np.median(finite))
    top = float(np.percentile(finite, high)) - sky
    scale = top if top > 0 else 1.0
    return np.where(np.isfinite(values), (values - sky) / scale, np.nan)


# --------------------------------------------------------------------------------- reproject
def reproject_channels(
    images: Sequence[tuple[np.ndarray, WCS | fits.Header]],
    wcs: WCS | None = None,
    shape: tuple[int, int] | None = None,
) -> tuple[list[np.ndarray], WCS, tuple[int, int]]:
    """Every image resampled onto one celestial WCS (NaN where an image does not cover).

    Without ``wcs``, the one ``reproject.mosaicking.find_optimal_celestial_wcs`` picks: north up,
    the finest input pixel scale, covering all the inputs. Resampling is the mosaics' own
    (``resample.resample_image``): bilinear, enough for a picture and far cheaper than
    flux-conserving resampling, slab by slab, and with NaN pixels (a mosaic's masked star cores)
    masked rather than spread to their neighbours, so the holes ``fill_holes`` fills are no larger.
    """
    inputs = [(np.asarray(data, dtype=float), w if isinstance(w, WCS) else WCS(w)) for data, w in images]
    if wcs is None:
        wcs, shape = find_optimal_celestial_wcs([(d, w.celestial) for d, w in inputs])
    elif shape is None:
        if wcs.pixel_shape is None:
            raise ValueError("give the shape of the target WCS")
        shape = (wcs.pixel_shape[1], wcs.pixel_shape[0])
    shape = (int(shape[0]), int(shape[1]))
    return [resample_image(data, w.celestial, wcs, shape) for data, w in inputs], wcs, shape


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
) -> dict[str, Path]:
    """Write ``rgb`` (H, W, 3 floats in [0, 1], FITS orientation) as ``<stem>.png`` and a cube.

    The PNG is 8-bit and the TIFF 16-bit, both flipped so row 0 is the top, both carrying AVM tags
    (an XMP packet) for ``wcs``. ``cube="fits"`` writes ``<stem>.fits`` instead of the TIFF: a
    float32 (3, H, W) cube in FITS orientation with the WCS in its header. Returns the paths by kind.
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
    Image.fromarray(np.rint(top_down * 255).astype(np.uint8), mode="RGB").save(png)
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


def read_avm_wcs(path: str | Path, *, full_header: bool = False) -> WCS:
    """The WCS in the AVM tags of a PNG, JPEG or TIFF, for the picture flipped so row 0 is the bottom.

    By default from the AVM Spatial tags, as other AVM readers see it; ``full_header`` reads the
    embedded FITS header instead, which keeps SIP distortion.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyavm's notes on assumed defaults
        return AVM.from_image(str(path)).to_wcs(use_full_header=full_header)
