"""WCS mosaics of calibrated images: one target and filter, many pointings, one FITS file.

Plain Python (no Dagster). Each input is resampled onto the output grid by bilinear interpolation
of ``weight * SCI`` and ``weight`` (normalised convolution, so masked pixels never leak into their
neighbours), one slab of output rows at a time, into files on disk (:mod:`skyassets.imaging.resample`,
which also puts composites' channels on their common grid); pairwise background offsets are
then measured in the overlaps and solved for (as reproject's ``match_background`` does), and the
corrected images are co-added slab by slab, leaving out values that stand out from the other inputs
at the same pixel (cosmic rays and satellite trails the DQ array does not flag, see
:func:`_reject`). Memory is therefore bounded by the slab size and one input image, whatever the
number of inputs or the size of the mosaic: slabs get fewer rows as more inputs overlap.

Flux: images in surface brightness (BUNIT per steradian or per square arcsecond, e.g. JWST MJy/sr)
are conserved by interpolation as they are. Images in counts or count rates per pixel (HST
ELECTRONS, ELECTRONS/S, no BUNIT) are multiplied by the ratio of output to input pixel area, so a
source's summed flux is the same on the mosaic as on the input. Interpolation samples the input at
output pixel centres: with ``downscale`` > 1 this is point sampling, not block averaging. Inputs
in different units are converted through their photometric keywords (:func:`_units`), and each is
weighted by its inverse variance per output pixel in output units, whatever its BUNIT and pixel
size (:func:`_load`); weights in erg/s/cm2/A are counted in (1e-20 erg/s/cm2/A)^-2
(:func:`weight_unit`), so they stay within float32. An exposure given twice (FLT and FLC, one file
in two products, a combined product beside its own exposures) is co-added once
(:func:`one_per_exposure`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_area, proj_plane_pixel_scales
from scipy.ndimage import label, maximum_filter, minimum_filter

from skyassets.fits.dq import dq_kind_of, pixel_masks, saturation_level
from skyassets.fits.header import card_text, named_card
from skyassets.fits.limits import DEFAULT_MAX_MOSAIC_PIXELS, TooLarge, check_image
from skyassets.imaging.preview import block_mean, thumbnail_png
from skyassets.imaging.resample import footprint_box, resample_slabs, row_slabs

WeightKind = Literal["auto", "err", "wht"]

# Differences sampled per overlap for the background offset: enough for a median good to 1e-3 sigma.
MAX_OVERLAP_SAMPLES = 1_000_000
PREVIEW_SIDE = 256
# Part of every mosaic's PROVHASH: raised when a change alters what a mosaic of the same inputs and
# settings holds, so that mosaics made before are made again.
MOSAIC_RECIPE = 2
# Outlier rejection against the median where at least this many inputs cover a pixel; where two do,
# a median cannot tell which one is wrong, and the brighter is the outlier when it stands above the
# fainter (cosmic rays only add light: AstroDrizzle's "minmed").
REJECT_MIN_INPUTS = 3
# On top of k sigma a value may differ from the median by this multiple of the median's local
# contrast (its largest step to a 4-neighbour): resampled stars differ between exposures through
# sub-pixel phase and slightly different PSFs by a fraction of that contrast, cosmic rays on a
# smooth median by far more. AstroDrizzle's driz_cr_scale (1.2) plays the same part.
CONTRAST_SCALE = 1.2
# An input whose pixels are this little larger than the output's (rounding of pixel scales) is
# treated as sampled at the output's resolution.
RATIO_SLACK = 0.05
# Values (inputs x rows x columns) in one slab's stack of resampled inputs: 2 Mi values, about
# 60 MB with their weights and the rejection's temporaries, whatever the number of inputs. The
# stack is a mosaic's peak; twice this was above drizzle's whole process (bench/mosaic.py).
STACK_BUDGET = 1 << 21
# Rows read beyond a slab so that the contrast and the growth of rejections by one pixel see the
# same neighbours as they would on the whole mosaic.
HALO = 2
# Slabs resampled and co-added at once, each on its share of the pixel budget: numpy's gathers and
# arithmetic release the GIL, so the threads use that many cores in the memory of one slab.
THREADS = max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
_SURFACE_BRIGHTNESS = ("/SR", "SR-1", "ARCSEC", "/PIX", "PIXEL-1")


@dataclass(frozen=True)
class MosaicInput:
    """One image HDU to put in a mosaic.

    ``weight``: "err" weighs the image by its inverse variance from the ERR extension, "wht" by
    the WHT extension (HST drizzled products), "auto" by whichever the file has (uniform when
    neither), None uniformly. ``flag`` is the quality stage's verdict; "reject" leaves the image out.
    """

    path: Path
    hdu_index: int = 1
    weight: WeightKind | None = "auto"
    flag: str | None = None


@dataclass
class MosaicResult:
    """The mosaic FITS file written, its PNG preview and output grid."""

    path: Path
    preview_png: bytes
    wcs: WCS
    shape: tuple[int, int]
    n_inputs: int
    header: fits.Header = field(repr=False)
    n_rejected: int = 0
    choices: list[str] = field(default_factory=list)  # inputs left out as copies of another's exposure


@dataclass
class _Image:
    """One input's pixels ready to resample: weight * SCI and weight (0 where masked)."""

    source: MosaicInput
    weighted: np.ndarray
    weight: np.ndarray
    wcs: WCS
    weight_kind: str
    flux_scale: float
    noise: float
    pixel_ratio: float
    inverse_variance: float


@dataclass
class _Placed:
    """Where one resampled input lies on the output grid and the files holding it."""

    name: str
    y0: int
    y1: int
    x0: int
    x1: int
    weight_kind: str
    flux_scale: float
    noise: float
    pixel_ratio: float
    inverse_variance: float
    background: float = 0.0
    matched: bool = False  # the background offset was solved from an overlap

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def downscale_wcs(wcs: WCS, factor: int) -> WCS:
    """The WCS of the same sky with pixels ``factor`` times larger.

    Pixel edges line up: input pixels 1..f (FITS, 1-based) make output pixel 1, so a FITS pixel
    coordinate p becomes (p - 0.5) / f + 0.5, and CRPIX follows the same rule; CDELT grows by f.
    """
    if factor < 1:
        raise ValueError(f"downscale factor must be >= 1, got {factor}")
    out = wcs.deepcopy()
    out.wcs.crpix = (np.asarray(wcs.wcs.crpix) - 0.5) / factor + 0.5
    if out.wcs.has_cd():
        out.wcs.cd = np.asarray(wcs.wcs.cd) * factor
    else:
        out.wcs.cdelt = np.asarray(wcs.wcs.cdelt) * factor
    if wcs.pixel_shape is not None:
        out.pixel_shape = tuple(math.ceil(n / factor) for n in wcs.pixel_shape)
    out.wcs.set()
    return out


def provenance(inputs: Iterable[tuple[str, int, str]], settings: Mapping[str, object]) -> str:
    """A digest of what a mosaic is made of, each input's (path, HDU, content digest) and the
    settings, which its primary header keeps (PROVHASH): a mosaic whose inputs and settings have not
    changed since it was made need not be made again."""
    made_of = {"recipe": MOSAIC_RECIPE, "inputs": sorted([str(p), int(h), str(d)] for p, h, d in inputs),
               "settings": settings}
    return hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode()).hexdigest()


def made_of(path: Path) -> str | None:
    """The PROVHASH a mosaic file was made with; None for a file without one or that cannot be read."""
    try:
        value = fits.getval(path, "PROVHASH", ext=0)
    except (OSError, KeyError):
        return None
    return value if isinstance(value, str) else None


def build_mosaic(
    inputs: Sequence[MosaicInput],
    dest: Path,
    *,
    wcs: WCS | None = None,
    shape: tuple[int, int] | None = None,
    downscale: int = 1,
    match_background: bool = True,
    reject_sigma: float | None = 5.0,
    block_size: tuple[int, int] = (1024, 1024),
    max_pixels: int = DEFAULT_MAX_MOSAIC_PIXELS,
    made_from: str | None = None,
) -> MosaicResult:
    """Co-add ``inputs`` (those not flagged "reject") onto one grid and write ``dest``.

    The grid is ``wcs`` and ``shape`` when given, else reproject's ``find_optimal_celestial_wcs``
    over the inputs; ``downscale`` then makes its pixels that many times larger. A grid of more
    than ``max_pixels`` is refused (``TooLarge``, a ValueError) before anything is written.
    ``dest`` gets an empty primary HDU whose header lists the inputs, then SCI (the weighted mean),
    CON (how many inputs cover each pixel) and WHT (the summed weight, times WHTSCALE in BUNIT^-2:
    see :func:`weight_unit`). An input with no overlap to level its background against keeps offset
    0 and its BG card says it was not matched. ``reject_sigma`` is the k of the
    per-pixel outlier rejection between inputs (:func:`_reject`), None to keep every value; values
    left out count neither in SCI, CON nor WHT, and their number is ``n_rejected`` (header NREJECT).
    ``block_size`` is a pixel budget (rows x columns): work goes in slabs of whole output rows
    holding at most that many pixels, and fewer where many inputs overlap (``STACK_BUDGET``).
    ``made_from`` (a :func:`provenance`) goes into the primary header as PROVHASH.
    """
    used = [i for i in inputs if (i.flag or "").lower() != "reject"]
    if not used:
        raise ValueError("no inputs left to mosaic (all rejected or none given)")
    read = [_read_header(i) for i in used]
    used, headers, choices = one_per_exposure(used, [h for h, _ in read], [m for _, m in read])
    bunit, units = _units(used, headers)
    reference = weight_unit(bunit)
    dest = Path(dest)
    wcs, shape = output_grid(used, wcs, shape, downscale, max_pixels)
    slab = max(1, block_size[0] * block_size[1])
    out_area = proj_plane_pixel_area(wcs.celestial)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".mosaic-", dir=dest.parent))
    try:
        placed = []
        for k, (source, unit) in enumerate(zip(used, units, strict=True)):
            image = _load(source, out_area, unit, reference)
            placed.append(_resample(image, wcs, shape, work / f"in{k}", slab))
            del image
        if match_background:
            _match_backgrounds(placed, work, slab)
        rejected = _coadd(placed, shape, work, slab, reject_sigma)
        header = _primary_header(placed, wcs, downscale, match_background, reject_sigma, rejected, choices, reference)
        header.update(described(headers, bunit))
        if made_from is not None:
            header["PROVHASH"] = made_from
        preview = _write(dest, header, wcs, shape, work, slab, bunit)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return MosaicResult(dest, thumbnail_png(preview, max_side=PREVIEW_SIDE), wcs, shape, len(placed), header,
                        rejected, choices)


# ------------------------------------------------------------------------------------ inputs
def _open(path: Path) -> fits.HDUList:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fits.open(path, memmap=False)


def _extension(hdul: fits.HDUList, sci: fits.hdu.base._BaseHDU, name: str) -> np.ndarray | None:
    """The ``name`` extension that goes with ``sci`` (same EXTVER), as a 2-D array."""
    for hdu in hdul:
        if hdu.name == name and hdu.ver == sci.ver:
            check_image(hdu.header, f"{name},{sci.ver}")  # before its pixels are allocated
            if hdu.data is not None:
                return _plane(hdu.data)
    return None


def _plane(data: np.ndarray) -> np.ndarray:
    while data.ndim > 2:
        data = data[0]
    return data


def _header(hdul: fits.HDUList, index: int) -> fits.Header:
    """The HDU's keywords over the primary's, for TELESCOP, BUNIT and saturation lookups."""
    header = hdul[0].header.copy(strip=True)
    if index:
        header.update(c for c in hdul[index].header.cards if c.keyword not in ("", "COMMENT", "HISTORY"))
    return header


def _surface_brightness(bunit: str | None) -> bool:
    unit = (bunit or "").upper().replace(" ", "")
    return any(token in unit for token in _SURFACE_BRIGHTNESS)


@dataclass(frozen=True)
class _Unit:
    """How one input's values become output values: times ``scale`` into the mosaic's BUNIT, and
    times output / input pixel area when they are per pixel (counts, count rates)."""

    scale: float
    per_pixel: bool


def _number(header: fits.Header, key: str) -> float | None:
    value = header.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def _calibrated(header: fits.Header) -> tuple[str, float, bool] | None:
    """(physical BUNIT, factor, per pixel) that the header's photometric keywords turn its values
    into: JWST DN/s times PHOTMJSR is MJy/sr; HST counts per second times PHOTFLAM (counts divided
    by the exposure time first) is erg/s/cm2/A per pixel. None when there is no such conversion."""
    unit = str(header.get("BUNIT") or "").upper().replace(" ", "")
    if unit == "MJY/SR":
        return "MJy/sr", 1.0, False
    photmjsr, photflam = _number(header, "PHOTMJSR"), _number(header, "PHOTFLAM")
    exptime = _number(header, "EXPTIME") or _number(header, "TEXPTIME")
    if unit in ("DN/S", "DN/SEC") and photmjsr:
        return "MJy/sr", photmjsr, False
    if unit in ("ELECTRONS/S", "ELECTRONS/SEC", "COUNTS/S", "E-/S") and photflam:
        return "erg/s/cm2/A", photflam, True
    if unit in ("ELECTRONS", "COUNTS", "E-") and photflam and exptime:
        return "erg/s/cm2/A", photflam / exptime, True
    return None


def _units(sources: Sequence[MosaicInput], headers: Sequence[fits.Header]) -> tuple[str | None, list[_Unit]]:
    """The mosaic's BUNIT and each input's conversion into it. Inputs that share a BUNIT are
    co-added in it; inputs in different units (JWST DN/s beside MJy/sr, HST electrons beside
    electrons/s, ACS beside WFC3) are all converted to the physical unit their photometric keywords
    give, and an input without such keywords, or in another family of units, is an error."""
    bunits = [str(h.get("BUNIT") or "").strip() or None for h in headers]
    if len({(b or "").upper().replace(" ", "") for b in bunits}) <= 1:
        return bunits[0], [_Unit(1.0, not _surface_brightness(b)) for b in bunits]
    calibrated = [_calibrated(h) for h in headers]
    for source, bunit, found in zip(sources, bunits, calibrated, strict=True):
        if found is None:
            raise ValueError(f"{source.path}[{source.hdu_index}]: BUNIT {bunit!r} differs from the other inputs' "
                             "and its header has no photometric keywords (PHOTMJSR, PHOTFLAM) to convert it")
    families = {c[0] for c in calibrated if c is not None}
    if len(families) > 1:
        raise ValueError(f"inputs in units that do not convert into each other: {', '.join(sorted(families))} "
                         f"({', '.join(f'{s.path.name}: {b}' for s, b in zip(sources, bunits, strict=True))})")
    return families.pop(), [_Unit(c[1], c[2]) for c in calibrated if c is not None]


def weight_unit(bunit: str | None) -> float:
    """The unit weights are counted in, as a multiple of the mosaic's BUNIT: 1e-20 for f_lambda in
    erg (HST's PHOTFLAM unit, which counts beside count rates are converted into), else 1.

    An inverse variance in erg/s/cm2/A overflows float32: a count there is about 1e-20, so a
    weight is about 1e40 and its product with a value infinite: NaN in every overlap and so in the
    background offsets. Weights per (1e-20 erg/s/cm2/A)^-2 have the magnitudes of the inputs' own
    units; only their ratios enter the mean, and the header's WHTSCALE turns WHT back into
    BUNIT^-2. It depends on BUNIT alone, so mosaics built block by block agree on it."""
    return 1e-20 if str(bunit or "").upper().replace(" ", "").startswith("ERG") else 1.0


def _load(source: MosaicInput, out_area: float, unit: _Unit, reference: float = 1.0) -> _Image:
    """Read one input and turn its ERR/WHT, DQ and saturation into a weight map, in output units.

    ERR gives one inverse variance per image (from its median over good pixels), not per pixel: a
    per-pixel ERR holds the sources' own Poisson noise, and weighting by it would favour whichever
    image saw a star fainter, biasing star fluxes low (the JWST pipeline's 'ivm' weighting avoids
    it the same way, with read and sky noise only). WHT maps are used per pixel. DQ bits that make
    a value unusable (:data:`skyassets.fits.dq.DQ_BITS`, per instrument), saturated and cosmic-ray
    pixels and non-finite pixels get weight 0.

    Weights are per unit of output flux and sky area, so they do not depend on BUNIT or pixel size:
    the ERR median is first converted into output units (``unit``: calibration and pixel-area
    scale), then to the noise of the mean over one output pixel, sigma^2 x (input pixel area /
    output pixel area), as white noise averages; WHT (an inverse variance) scales the same way.
    Uniform weighting (neither ERR nor WHT) stays 1. The noise rejection scales by is that ERR
    median in output units, else measured from the pixels (:func:`_noise`). Weights are per
    (``reference`` x output unit)^-2 (:func:`weight_unit`), and a pixel whose weight or weighted
    value is not finite in float32 gets weight 0.
    """
    with _open(source.path) as hdul:
        hdu = hdul[source.hdu_index]
        check_image(hdu.header, f"{source.path.name}[{source.hdu_index}]")  # before its pixels are allocated
        if hdu.data is None or hdu.data.ndim < 2:
            raise ValueError(f"{source.path}[{source.hdu_index}] holds no image")
        header = _header(hdul, source.hdu_index)
        sci = np.asarray(_plane(hdu.data), dtype=np.float32)
        dq = _extension(hdul, hdu, "DQ")
        err = _extension(hdul, hdu, "ERR") if source.weight in ("auto", "err") else None
        wht = _extension(hdul, hdu, "WHT") if source.weight in ("auto", "wht") else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(hdu.header, fobj=hdul, relax=True).celestial
    if source.weight == "err" and err is None:
        raise ValueError(f"{source.path}[{source.hdu_index}] has no ERR extension")
    if source.weight == "wht" and wht is None:
        raise ValueError(f"{source.path}[{source.hdu_index}] has no WHT extension")
    kind = dq_kind_of(header)
    dq_array = None if dq is None else np.asarray(dq).astype(np.int64)
    pixels = pixel_masks(sci, dq_array, kind if dq_array is not None else None,
                         saturation_level(None, header))
    bad = pixels.mask if pixels.cosmic_ray is None else pixels.mask | pixels.cosmic_ray
    bad |= ~np.isfinite(sci)
    in_area = proj_plane_pixel_area(wcs)
    area_ratio = in_area / out_area  # input pixel area in output pixels
    flux_scale = unit.scale * (1.0 / area_ratio if unit.per_pixel else 1.0)
    weight_scale = flux_scale / reference  # output units per input unit, in units of the reference
    if err is not None:
        err = np.asarray(err, dtype=np.float32)
        good = ~bad & np.isfinite(err) & (err > 0)
        bad |= ~good
        noise = float(np.median(err[good])) if good.any() else 0.0
        variance = (noise * weight_scale) ** 2 * area_ratio
        weight = np.where(bad, 0.0, 1.0 / variance if variance > 0 else 0.0)
        weight_kind = "err"
    else:
        noise = _noise(sci, bad)
        if wht is not None:
            weight = np.nan_to_num(np.asarray(wht, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            weight = np.where(bad | (weight < 0), 0.0, weight / (weight_scale**2 * area_ratio))
            weight_kind = "wht"
        else:
            weight = np.where(bad, 0.0, 1.0)
            weight_kind = "uniform"
    with np.errstate(over="ignore", invalid="ignore"):
        weight = weight.astype(np.float32)
        weighted = np.where(weight > 0, sci * np.float32(flux_scale), 0.0).astype(np.float32) * weight
    broken = ~(np.isfinite(weight) & np.isfinite(weighted))
    if broken.any():  # beyond float32: no value to resample, and NaN would spread into the overlaps
        weight[broken] = 0.0
        weighted[broken] = 0.0
    typical = float(np.median(weight[weight > 0])) if weight_kind != "uniform" and (weight > 0).any() else 1.0
    return _Image(source, weighted, weight, wcs, weight_kind, flux_scale, noise * flux_scale,
                  math.sqrt(area_ratio), typical)


def _noise(sci: np.ndarray, bad: np.ndarray) -> float:
    """Per-pixel noise of an image without ERR, from the pixels: the MAD of differences between
    horizontally adjacent good pixels over sqrt(2). Differences cancel sky gradients and extended
    light, and the few pixels of stars and cosmic rays do not move a median. In resampled inputs
    (drizzled products) neighbours share noise and this comes out low, so rejection only gets
    stricter there, where earlier combination has already removed most cosmic rays."""
    step = max(1, sci.shape[0] // 512)  # a sample of rows is plenty for a median
    rows, ok = sci[::step], ~bad[::step]
    diff = (rows[:, 1:] - rows[:, :-1])[ok[:, 1:] & ok[:, :-1]]
    if not diff.size:
        return 0.0
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / math.sqrt(2.0))


def _read_header(source: MosaicInput) -> tuple[fits.Header, frozenset[str]]:
    """The input's merged header and the exposures a combined product (JWST i2d, HST drz/drc) was
    made from, from its HDRTAB extension (one row per input exposure; empty for an exposure)."""
    with _open(source.path) as hdul:
        if not 0 <= source.hdu_index < len(hdul):
            raise ValueError(f"{source.path}: no HDU {source.hdu_index}, the file has {len(hdul)}")
        header = _header(hdul, source.hdu_index)
        members = set()
        if "HDRTAB" in hdul:
            table = hdul["HDRTAB"].data
            names = {n.upper(): n for n in (table.columns.names if table is not None else [])}
            for column in ("FILENAME", "ROOTNAME"):
                if column in names:
                    members |= {exposure_name(str(v)) for v in table[names[column]]}
    return header, frozenset(m for m in members if m)


# File-name suffixes of calibrated images, most calibrated first: a combined product (JWST i2d,
# HST drizzled with and without CTE correction), a JWST exposure after outlier flagging (crf), HST
# CTE-corrected (flc) before plain (flt), JWST cal before its count rate (rate: same exposure, not
# flux-calibrated), then WFPC2's calibrated science (c0m, and c0f in waiver FITS) before its data
# quality files (c1m, c1f), which hold flags, not light.
SUFFIX_RANK = ("i2d", "drc", "drz", "crf", "flc", "flt", "cal", "rate", "c0m", "c0f", "c1m", "c1f")
DATA_QUALITY_SUFFIXES = frozenset({"c1m", "c1f"})
_SUFFIX = re.compile(r"^(?P<stem>.+?)_(?P<suffix>[a-z0-9]+?)(?:\.fits(?:\.gz|\.bz2)?)?$", re.IGNORECASE)


def exposure_name(file_name: str) -> str:
    """The exposure a file holds, from its name: ``j8pu01abq_flc.fits`` and ``j8pu01abq_flt.fits``
    are both ``j8pu01abq``, ``jw02733001001_02101_00001_nrcb1_cal.fits`` is
    ``jw02733001001_02101_00001_nrcb1``. A name without a known suffix is its own exposure."""
    name = Path(file_name.strip()).name
    match = _SUFFIX.match(name)
    if match and match["suffix"].lower() in SUFFIX_RANK:
        return match["stem"].lower()
    return name.lower()


def is_data_quality(file_name: str) -> bool:
    """Whether a file holds an exposure's data-quality flags rather than its image (WFPC2 c1m, c1f)."""
    match = _SUFFIX.match(Path(file_name.strip()).name)
    return bool(match) and match["suffix"].lower() in DATA_QUALITY_SUFFIXES


def calibration_rank(file_name: str) -> int:
    """How calibrated a file is from its suffix: higher is more (``SUFFIX_RANK``), 0 when unknown."""
    match = _SUFFIX.match(Path(file_name.strip()).name)
    suffix = match["suffix"].lower() if match else ""
    return len(SUFFIX_RANK) - SUFFIX_RANK.index(suffix) if suffix in SUFFIX_RANK else 0


def one_per_exposure(sources: Sequence[MosaicInput], headers: Sequence[fits.Header],
                     members: Sequence[frozenset[str]]) -> tuple[list[MosaicInput], list[fits.Header], list[str]]:
    """The inputs with each exposure once, and a line per input left out saying why.

    Two inputs are one exposure when their exposure names (:func:`exposure_name`, or the header's
    ROOTNAME) and their detector, chip and extension version agree: an HST FLT and FLC, a JWST cal
    held in two products. The most calibrated is kept (``SUFFIX_RANK``; the first given on a tie).
    An exposure that a combined product given too was made from (``members``, from its HDRTAB) is
    left out for it: its light is already in the combined image.
    """
    keys, names = [], []
    for source, header in zip(sources, headers, strict=True):
        name = str(header.get("ROOTNAME") or "").strip().lower() or exposure_name(source.path.name)
        if not header.get("ROOTNAME") and not calibration_rank(source.path.name):
            name = str(Path(source.path).resolve())  # a name of no known convention: only itself
        names.append(name)
        detector = str(header.get("DETECTOR") or "").strip().upper()
        keys.append((name, detector, str(header.get("CCDCHIP", "")), str(header.get("EXTVER", 1))))
    combined = {m: f"{s.path.name}[{s.hdu_index}]" for s, found in zip(sources, members, strict=True) for m in found}
    best: dict[tuple[str, str, str, str], int] = {}
    choices = []
    for i, source in enumerate(sources):
        label = f"{source.path.name}[{source.hdu_index}]"
        if names[i] in combined and not members[i]:
            choices.append(f"{label} left out: its exposure is in {combined[names[i]]}")
            continue
        j = best.get(keys[i])
        if j is None:
            best[keys[i]] = i
            continue
        keep, drop = (i, j) if calibration_rank(source.path.name) > calibration_rank(sources[j].path.name) else (j, i)
        best[keys[i]] = keep
        choices.append(f"{sources[drop].path.name}[{sources[drop].hdu_index}] left out: same exposure as "
                       f"{sources[keep].path.name}[{sources[keep].hdu_index}], which is as or more calibrated")
    kept = sorted(best.values())
    return [sources[i] for i in kept], [headers[i] for i in kept], choices


def output_grid(
    inputs: Sequence[MosaicInput], wcs: WCS | None = None, shape: tuple[int, int] | None = None, downscale: int = 1,
    max_pixels: int = DEFAULT_MAX_MOSAIC_PIXELS,
) -> tuple[WCS, tuple[int, int]]:
    """The grid a mosaic of ``inputs`` is made on: ``wcs`` (with ``shape``, or its own pixel shape),
    else the optimal one over the inputs' footprints; coarser by ``downscale``. ``TooLarge`` for a
    grid of more than ``max_pixels``, before anything is written: images of fields far apart under
    one target would otherwise fill the disk, or pass the largest file it takes."""
    if wcs is None:
        wcs, shape = _optimal_wcs(inputs)
    elif shape is None:
        if wcs.array_shape is None:
            raise ValueError("a WCS without pixel_shape needs shape")
        shape = tuple(wcs.array_shape)
    if downscale != 1:
        wcs = downscale_wcs(wcs, downscale)
        shape = (math.ceil(shape[0] / downscale), math.ceil(shape[1] / downscale))
    shape = (int(shape[0]), int(shape[1]))
    if shape[0] * shape[1] > max_pixels:
        height, width = (n * scale for n, scale in zip(shape, proj_plane_pixel_scales(wcs.celestial)[::-1],
                                                        strict=True))
        raise TooLarge(
            f"a grid of {shape[1]} x {shape[0]} = {shape[0] * shape[1]} pixels, {width:.3g} x {height:.3g} deg of sky, "
            f"is over the limit of {max_pixels} (mosaics.max_pixels): are images of fields far apart under one "
            "target (an observation id shared across fields)? A coarser mosaics.downscale also makes it smaller"
        )
    wcs = wcs.deepcopy()
    wcs.array_shape = shape
    return wcs, shape


def _optimal_wcs(inputs: Sequence[MosaicInput]) -> tuple[WCS, tuple[int, int]]:
    """reproject's optimal celestial WCS over the inputs' footprints (headers only, no pixels).
    Imported here: reproject.mosaicking brings dask, tens of MB a mosaic on a given grid never needs."""
    from reproject.mosaicking import find_optimal_celestial_wcs

    frames = []
    for source in inputs:
        with _open(source.path) as hdul:
            hdu = hdul[source.hdu_index]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                w = WCS(hdu.header, fobj=hdul, relax=True).celestial
            shape = tuple(int(n) for n in hdu.shape[-2:])
        frames.append((np.broadcast_to(np.float32(0), shape), w))
    wcs, shape = find_optimal_celestial_wcs(frames)
    return wcs, (int(shape[0]), int(shape[1]))


# ------------------------------------------------------------------------------- resampling
def _file(path: Path, dtype: type, width: int, y0: int, y1: int, mode: str) -> np.memmap:
    """Rows y0..y1 of a row-major file ``width`` wide, mapped on their own: unmapping it (del)
    gives the pages back, so resident memory stays one slab."""
    itemsize = np.dtype(dtype).itemsize
    return np.memmap(path, dtype=dtype, mode=mode, offset=y0 * width * itemsize, shape=(y1 - y0, width))


def _blank(path: Path, dtype: type, n: int) -> None:
    with open(path, "wb") as f:
        f.truncate(n * np.dtype(dtype).itemsize)


def _resample(image: _Image, wcs: WCS, shape: tuple[int, int], stem: Path, slab: int) -> _Placed:
    """Resample one input over its box of the output grid (``resample.resample_slabs``, the same
    path composites' channels take) into ``stem``.val / ``stem``.wht files, slab by slab."""
    name = f"{Path(image.source.path).name}[{image.source.hdu_index}]"
    box = footprint_box(image.wcs, image.weight.shape, wcs, shape)
    facts = (image.weight_kind, image.flux_scale, image.noise, image.pixel_ratio, image.inverse_variance)
    if box is None:
        return _Placed(name, 0, 0, 0, 0, *facts)
    placed = _Placed(name, *box, *facts)
    n = (placed.y1 - placed.y0) * placed.width
    _blank(stem.with_suffix(".val"), np.float32, n)
    _blank(stem.with_suffix(".wht"), np.float32, n)
    # Half the pixel budget, shared by the threads: a pixel takes about 100 bytes of coordinates,
    # corner indices, fractions and planes while its slab is resampled, so slabs of the whole budget
    # made the process's peak once the stack's was halved (bench/mosaic.py).
    share = max(1, slab // (2 * THREADS))

    def place_rows(span: tuple[int, int]) -> None:
        # A WCS is not safe to transform with from two threads at once (astropy's wrappers of wcslib
        # keep state in it); each slab transforms with copies of its own, as reproject's threads do.
        mine, grid = image.wcs.deepcopy(), wcs.deepcopy()
        for part in resample_slabs(image.weighted, image.weight, mine, grid, (*span, box[2], box[3]), share):
            rows = (part.y0 - placed.y0, part.y1 - placed.y0)
            for suffix, data in ((".val", part.value), (".wht", part.weight)):
                out = _file(stem.with_suffix(suffix), np.float32, placed.width, *rows, "r+")
                out[:] = data
                del out

    _in_threads(place_rows, row_slabs(box[0], box[1], placed.width, share))
    return placed


def _in_threads(work: Callable[[tuple[int, int]], object], spans: Iterable[tuple[int, int]]) -> list:
    """``work`` on each span of output rows, ``THREADS`` at a time; its results in order."""
    if THREADS == 1:
        return [work(span) for span in spans]
    with ThreadPoolExecutor(THREADS, thread_name_prefix="skyassets-mosaic") as pool:
        return list(pool.map(work, spans))


# ------------------------------------------------------------------------ background matching
def _overlap_offset(a: _Placed, b: _Placed, sa: Path, sb: Path, slab: int) -> tuple[float, int] | None:
    """Median of (a - b) where both cover the sky with finite values, and how many pixels that is."""
    y0, y1 = max(a.y0, b.y0), min(a.y1, b.y1)
    x0, x1 = max(a.x0, b.x0), min(a.x1, b.x1)
    if y0 >= y1 or x0 >= x1:
        return None
    stride = max(1, math.ceil((y1 - y0) * (x1 - x0) / MAX_OVERLAP_SAMPLES))
    diffs = []
    count = 0
    for r0, r1 in row_slabs(y0, y1, max(a.width, b.width), slab):
        parts = []
        for p, stem in ((a, sa), (b, sb)):
            rows = (r0 - p.y0, r1 - p.y0)
            cols = slice(x0 - p.x0, x1 - p.x0)
            val = _file(stem.with_suffix(".val"), np.float32, p.width, *rows, "r")
            wht = _file(stem.with_suffix(".wht"), np.float32, p.width, *rows, "r")
            parts.append((np.array(val[:, cols]), np.array(wht[:, cols])))
            del val, wht
        (va, wa), (vb, wb) = parts
        both = (wa > 0) & (wb > 0) & np.isfinite(va) & np.isfinite(vb)
        count += int(np.count_nonzero(both))
        diffs.append((va[both] - vb[both])[::stride])
    if not count:
        return None
    return float(np.median(np.concatenate(diffs))), count


def _match_backgrounds(placed: list[_Placed], work: Path, slab: int) -> None:
    """Solve for one additive offset per input that best levels all overlaps (least squares,
    offsets summing to zero, as reproject's ``match_background``); stored on each input.

    Only inputs with an overlap of finite values take part: an input without one has nothing to
    be levelled against and keeps offset 0, ``matched`` False (the header says so), as does every
    input should the solution not come out finite."""
    n = len(placed)
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            found = _overlap_offset(placed[i], placed[j], work / f"in{i}", work / f"in{j}", slab)
            if found is not None and math.isfinite(found[0]):
                pairs.append((i, j, found[0], math.sqrt(found[1])))
    members = sorted({k for i, j, _, _ in pairs for k in (i, j)})
    if not members:
        return
    column = {k: c for c, k in enumerate(members)}
    a = np.zeros((len(pairs) + 1, len(members)))
    b = np.zeros(len(pairs) + 1)
    for row, (i, j, offset, weight) in enumerate(pairs):
        a[row, column[i]], a[row, column[j]], b[row] = weight, -weight, offset * weight
    a[-1] = np.mean([w for _, _, _, w in pairs])
    corrections = np.linalg.lstsq(a, b, rcond=None)[0]
    if not np.isfinite(corrections).all():
        return
    for k, c in zip(members, corrections, strict=True):
        placed[k].background, placed[k].matched = float(c), True


# ------------------------------------------------------------------------------ co-adding
def _coadd(placed: list[_Placed], shape: tuple[int, int], work: Path, slab: int,
           reject_sigma: float | None) -> int:
    """Write the mosaic's SCI (weighted mean of value - background), CON and WHT into work files,
    one slab of output rows at a time over a stack of the inputs covering it; returns how many
    input values outlier rejection left out."""
    ny, nx = shape
    for name, dtype in (("sci", np.float32), ("con", np.int32), ("wht", np.float32)):
        _blank(work / f"mosaic.{name}", dtype, ny * nx)
    starts = np.zeros(ny + 1, np.int64)
    for p in placed:
        starts[p.y0] += 1
        starts[p.y1] -= 1
    depth = max(1, int(np.cumsum(starts).max()))  # most inputs sharing one row
    step = max(1, min(slab, STACK_BUDGET // depth) // THREADS // nx)
    # Rows beyond the slab: the contrast window of the coarsest input and the growth by one pixel.
    coarsest = max(math.ceil(p.pixel_ratio - RATIO_SLACK) for p in placed) if placed else 1
    halo = max(HALO, coarsest + 1) if reject_sigma is not None else 0

    def coadd_rows(span: tuple[int, int]) -> int:
        r0, r1 = span
        rejected = 0
        h0, h1 = max(r0 - halo, 0), min(r1 + halo, ny)
        members = [(k, p) for k, p in enumerate(placed) if p.y0 < h1 and p.y1 > h0]
        sci = np.full((r1 - r0, nx), np.nan, np.float32)
        con = np.zeros((r1 - r0, nx), np.int32)
        wht = np.zeros((r1 - r0, nx), np.float32)
        if members:
            c0, c1 = min(p.x0 for _, p in members), max(p.x1 for _, p in members)
            value = np.zeros((len(members), h1 - h0, c1 - c0), np.float32)
            weight = np.zeros_like(value)
            for j, (k, p) in enumerate(members):
                a0, a1 = max(h0, p.y0), min(h1, p.y1)
                at = (slice(a0 - h0, a1 - h0), slice(p.x0 - c0, p.x1 - c0))
                rows = (a0 - p.y0, a1 - p.y0)
                stem = work / f"in{k}"
                value[j][at] = _file(stem.with_suffix(".val"), np.float32, p.width, *rows, "r")
                value[j][at] -= np.float32(p.background)
                weight[j][at] = _file(stem.with_suffix(".wht"), np.float32, p.width, *rows, "r")
            core = slice(r0 - h0, r1 - h0)
            if reject_sigma is not None and len(members) >= 2:
                noise = np.array([p.noise for _, p in members], np.float32)
                ratio = np.array([p.pixel_ratio for _, p in members], np.float32)
                out = _reject(value, weight, noise, ratio, reject_sigma)
                rejected += int(np.count_nonzero(out[:, core]))
                weight[out] = 0.0
            total = np.zeros((r1 - r0, c1 - c0))
            summed = np.zeros((r1 - r0, c1 - c0))
            for j in range(len(members)):
                w = weight[j, core]
                total += w * value[j, core].astype(np.float64)
                summed += w
                con[:, c0:c1] += w > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                sci[:, c0:c1] = np.where(summed > 0, total / summed, np.nan)
            wht[:, c0:c1] = summed
        for name, dtype, data in (("sci", np.float32, sci), ("con", np.int32, con), ("wht", np.float32, wht)):
            out_file = _file(work / f"mosaic.{name}", dtype, nx, r0, r1, "r+")
            out_file[:] = data
            del out_file
        return rejected

    rejected = sum(_in_threads(coadd_rows, ((r0, min(r0 + step, ny)) for r0 in range(0, ny, step))))
    for k in range(len(placed)):
        for suffix in (".val", ".wht"):
            (work / f"in{k}").with_suffix(suffix).unlink(missing_ok=True)
    return rejected


def _reject(value: np.ndarray, weight: np.ndarray, noise: np.ndarray, ratio: np.ndarray, k: float) -> np.ndarray:
    """Which values of a stack (inputs x rows x columns) are outliers between exposures.

    Where at least ``REJECT_MIN_INPUTS`` inputs cover a pixel, a value is an outlier when it
    differs from their median by more than ``k`` times its input's noise plus ``CONTRAST_SCALE``
    times the median's local contrast (the AstroDrizzle / JWST outlier_detection criterion). Where
    two inputs cover it, the reference is the fainter value instead of the median, and only the
    brighter can be an outlier, standing above it by that much with the noise of both (``k``
    sqrt(2) times its own): cosmic rays only add light, and half the field of a two-exposure
    mosaic kept them all before. The
    noise is each input's sky and read noise, not a MAD across the stack: three to five values
    give no usable spread of their own, and a star's Poisson noise and resampling differences are
    covered by the contrast term, which is large exactly where the median is not smooth. The
    pixels around an outlier in the same input are left out with it (AstroDrizzle's driz_cr_grow
    of 1), so the wings bilinear interpolation spreads a cosmic ray into go too.

    Resolution is not an outlier: where an input with pixels ``ratio`` times the output's (ratio >
    1, an undersampled image beside sharper ones) covers a pixel, the contrast is the median's
    largest difference to any pixel within that input's pixel size (a window of 2 ceil(ratio) + 1),
    since such an input's value is a blur of the sky over that distance: a star core seen sharply
    in some inputs and broadly in another differs by about that much, a cosmic ray by far more.
    The price: within that distance of a bright star's core an outlier as large as the core's
    contrast is kept. Such an input's outliers grow by its pixel size, which interpolation spreads
    them over.
    """
    covered = weight > 0
    count = covered.sum(axis=0)
    deep = count >= REJECT_MIN_INPUTS
    pair = count == 2
    judged = deep | pair
    if not judged.any():
        return np.zeros(value.shape, bool)
    median = np.full(deep.shape, np.nan, np.float32)  # the reference: the median, or the fainter of two
    if deep.any():
        stack = np.where(covered[:, deep], value[:, deep], np.nan)
        stack.sort(axis=0)  # NaN (not covered) last
        n = count[deep][None]
        median[deep] = 0.5 * (np.take_along_axis(stack, (n - 1) // 2, 0)[0] + np.take_along_axis(stack, n // 2, 0)[0])
        del stack
    if pair.any():
        median[pair] = np.where(covered[:, pair], value[:, pair], np.inf).min(axis=0)
    contrast = np.zeros(deep.shape, np.float32)
    reach = np.ceil(np.where(covered, ratio[:, None, None], 0.0).max(axis=0) - RATIO_SLACK).astype(int)
    for half in np.unique(reach[judged & (reach > 1)]):
        upper = maximum_filter(np.where(judged, median, -np.inf), size=2 * half + 1)
        lower = minimum_filter(np.where(judged, median, np.inf), size=2 * half + 1)
        at = judged & (reach == half)
        contrast[at] = np.maximum(upper[at] - median[at], median[at] - lower[at])
    for axis in (0, 1):
        step = np.abs(np.diff(median, axis=axis))  # NaN next to a pixel without a median: ignored
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        np.fmax(contrast[tuple(lo)], step, out=contrast[tuple(lo)])
        np.fmax(contrast[tuple(hi)], step, out=contrast[tuple(hi)])
    tolerance = CONTRAST_SCALE * contrast
    out = np.zeros(value.shape, bool)
    pair_k = np.float32(k * math.sqrt(2.0))
    for j in range(len(value)):
        with np.errstate(invalid="ignore"):  # NaN reference where one input alone: never an outlier
            diff = value[j] - median
            out[j] = np.where(pair, diff > tolerance + pair_k * noise[j],
                              np.abs(diff) > tolerance + np.float32(k) * noise[j]) & covered[j]
    if out.any():
        out = grown(out, 1)
        for j, r in enumerate(ratio):  # an undersampled input's outlier spreads over its own pixel size
            grow = math.ceil(r - RATIO_SLACK)
            if grow > 1 and out[j].any():
                out[j] = grown(out[j], grow - 1)
        out &= covered & judged
    return out


def grown(mask: np.ndarray, half: int) -> np.ndarray:
    """``mask`` dilated over its last two axes by a square of side 2 half + 1 (nothing beyond the
    edges): ``binary_dilation``'s result, by shifting and OR-ing whole rows and columns, which on
    these sparse masks takes a fraction of its time."""
    out = mask.copy()
    for axis in (mask.ndim - 2, mask.ndim - 1):
        source = out.copy()
        n = out.shape[axis]
        for shift in range(1, min(half, n - 1) + 1):
            later = [slice(None)] * out.ndim
            earlier = [slice(None)] * out.ndim
            later[axis], earlier[axis] = slice(shift, None), slice(None, n - shift)
            out[tuple(later)] |= source[tuple(earlier)]
            out[tuple(earlier)] |= source[tuple(later)]
    return out


def large_parts(mask: np.ndarray, smallest: int, *, diagonal: bool = False) -> np.ndarray:
    """The connected parts of a 2-D ``mask`` of at least ``smallest`` pixels (8-connected with
    ``diagonal``, else 4-connected): the segments that :func:`grown` then widens."""
    marks, _ = label(mask, structure=np.ones((3, 3), bool) if diagonal else None)
    large = np.bincount(marks.ravel()) >= smallest
    large[0] = False
    return large[marks]


# ------------------------------------------------------------------------------------ output
def header_card(value: object, comment: str) -> tuple[object, str]:
    """A header card's (value, comment). FITS has no NaN or infinity: such a number is written
    as an undefined value (read back as None) and its comment says what it was, so no value can
    stop the mosaic from being written."""
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None, f"{comment} ({value}: not finite)"
    return value, comment


# What the inputs were, said by the mosaic when they all say the same: a file that stands alone.
# FILTER1 and FILTER2 (ACS, WFPC2's FILTNAM1 and FILTNAM2): HST's cameras with two filter wheels say the band there.
SHARED_KEYWORDS = ("TELESCOP", "INSTRUME", "FILTER", "FILTER1", "FILTER2", "FILTNAM1", "FILTNAM2", "PUPIL",
                   "TARGNAME", "PROGRAM", "PROPOSID")
# Photometric keywords that still hold when no input changed its unit (a converted mosaic's BUNIT says it).
PHOTOMETRIC_KEYWORDS = ("PHOTMJSR", "PHOTUJA2", "PHOTFLAM", "PHOTPLAM", "PHOTFNU", "PHOTZPT", "EXPTIME")


def described(headers: list[fits.Header], bunit: str | None) -> fits.Header:
    """The keywords every input agrees on (telescope, instrument, filter, target, program, and with
    its unit unchanged the photometric ones and the exposure time each input had), and the time span
    the inputs cover (MJD-BEG, MJD-END from theirs, or from HST's EXPSTART and EXPEND). Mosaics built
    in blocks say what their blocks' headers, so described, agree on (``bunit`` None: no unit there)."""
    out = fits.Header()
    same_unit = all(str(h.get("BUNIT") or "").strip() == (bunit or "") for h in headers)
    for key in SHARED_KEYWORDS + (PHOTOMETRIC_KEYWORDS if same_unit else ()):
        values = {h.get(key) for h in headers}
        if len(values) == 1 and (value := values.pop()) is not None and not isinstance(value, fits.card.Undefined):
            comment = next((h.comments[key] for h in headers if key in h), "")
            out[key] = header_card(value, "[s] exposure time of each input" if key == "EXPTIME" else comment)
    # JWST writes MJD-BEG and MJD-END, HST EXPSTART and EXPEND
    starts = [float(t) for h in headers if isinstance(t := h.get("MJD-BEG", h.get("EXPSTART")), int | float)]
    ends = [float(t) for h in headers if isinstance(t := h.get("MJD-END", h.get("EXPEND")), int | float)]
    if len(starts) == len(headers):
        out["MJD-BEG"] = (min(starts), "[d] start of the earliest input exposure")
    if len(ends) == len(headers):
        out["MJD-END"] = (max(ends), "[d] end of the latest input exposure")
    return out


def _primary_header(placed: list[_Placed], wcs: WCS, downscale: int, match_background: bool,
                    reject_sigma: float | None, rejected: int, choices: list[str],
                    reference: float = 1.0) -> fits.Header:
    header = fits.Header()
    header["NINPUTS"] = (len(placed), "images co-added")
    header["DOWNSCAL"] = (downscale, "output pixel size / optimal pixel size")
    header["BKGMATCH"] = (match_background, "background offsets matched in overlaps")
    header["REJECT"] = (reject_sigma is not None, "outliers between inputs rejected per pixel")
    if reject_sigma is not None:
        header["REJSIGMA"] = header_card(reject_sigma, "rejection threshold in sigma of input noise")
    header["NREJECT"] = (rejected, "input values rejected as outliers")
    header["RESAMPLE"] = ("bilinear", "interpolation of weight*SCI and weight")
    header["WHTSCALE"] = (10.0 ** (-2 * round(math.log10(reference))), "WHT and IV x this: weight in BUNIT**-2")
    for k, p in enumerate(placed, start=1):
        background = "background offset subtracted"
        if match_background and not p.matched:
            background = "not matched: no usable overlap"
        header[f"IN{k:04d}"] = named_card(p.name, "input file[hdu]")
        header[f"WT{k:04d}"] = (p.weight_kind, "weighting of input")
        header[f"BG{k:04d}"] = header_card(p.background, background)
        header[f"FS{k:04d}"] = header_card(p.flux_scale, "unit and pixel-area flux scale applied")
        header[f"IV{k:04d}"] = header_card(p.inverse_variance, "weight per output pixel (median)")
    header["NDUPEXP"] = (len(choices), "inputs left out as copies of an exposure")
    for line in choices:
        header.add_history(card_text(line))
    header.update(wcs.to_header(relax=True))
    return header


def _extension_header(name: str, bitpix: int, wcs: WCS, shape: tuple[int, int], bunit: str | None) -> fits.Header:
    header = fits.Header()
    header["XTENSION"] = "IMAGE"
    header["BITPIX"] = bitpix
    header["NAXIS"] = 2
    header["NAXIS1"] = shape[1]
    header["NAXIS2"] = shape[0]
    header["PCOUNT"] = 0
    header["GCOUNT"] = 1
    header["EXTNAME"] = name
    header.update(wcs.to_header(relax=True))
    if bunit:
        header["BUNIT"] = bunit
    return header


def _write(dest: Path, primary: fits.Header, wcs: WCS, shape: tuple[int, int], work: Path, slab: int,
           bunit: str | None) -> np.ndarray:
    """Stream SCI, CON and WHT into ``dest`` slab by slab; returns the block-averaged SCI the
    preview is drawn from (the full mosaic is never held in memory)."""
    ny, nx = shape
    factor = max(1, math.ceil(max(shape) / PREVIEW_SIDE))
    step = max(factor, (max(1, slab // nx) // factor) * factor)
    small_rows = []
    tmp = dest.with_name(dest.name + ".part")
    try:
        fits.PrimaryHDU(header=primary).writeto(tmp, overwrite=True)
        for name, bitpix in (("SCI", -32), ("CON", 32), ("WHT", -32)):
            header = _extension_header(name, bitpix, wcs, shape, bunit if name == "SCI" else None)
            stream = fits.StreamingHDU(str(tmp), header)
            for r0 in range(0, ny, step):
                r1 = min(r0 + step, ny)
                dtype = np.int32 if name == "CON" else np.float32
                data = np.array(_file(work / f"mosaic.{name.lower()}", dtype, nx, r0, r1, "r"))
                if name == "SCI":
                    small_rows.append(block_mean(data, factor))
                stream.write(data)
            stream.close()
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return np.vstack(small_rows)

