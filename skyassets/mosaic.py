"""WCS mosaics of calibrated images: one target and filter, many pointings, one FITS file.

Plain Python (no Dagster). Each input is resampled onto the output grid by bilinear interpolation
of ``weight * SCI`` and ``weight`` (normalised convolution, so masked pixels never leak into their
neighbours), one slab of output rows at a time, into files on disk; pairwise background offsets are
then measured in the overlaps and solved for (as reproject's ``match_background`` does), and the
corrected images are co-added slab by slab. Memory is therefore bounded by the slab size and one
input image, whatever the number of inputs or the size of the mosaic.

Flux: images in surface brightness (BUNIT per steradian or per square arcsecond, e.g. JWST MJy/sr)
are conserved by interpolation as they are. Images in counts or count rates per pixel (HST
ELECTRONS, ELECTRONS/S, no BUNIT) are multiplied by the ratio of output to input pixel area, so a
source's summed flux is the same on the mosaic as on the input. Interpolation samples the input at
output pixel centres: with ``downscale`` > 1 this is point sampling, not block averaging.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import pixel_to_pixel, proj_plane_pixel_area
from reproject.mosaicking import find_optimal_celestial_wcs
from scipy.ndimage import map_coordinates

from .preview import _block_mean, thumbnail_png
from .quality import _pixel_masks, _saturation_level

WeightKind = Literal["auto", "err", "wht"]

# Differences sampled per overlap for the background offset: enough for a median good to 1e-3 sigma.
MAX_OVERLAP_SAMPLES = 1_000_000
# Interpolation coordinates this close to a whole pixel are snapped to it, so grids that line up
# exactly (integer offsets) resample exactly and the coverage map has no fractional edges.
SNAP_PIX = 1e-6
PREVIEW_SIDE = 256
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


@dataclass
class _Image:
    """One input's pixels ready to resample: weight * SCI and weight (0 where masked)."""

    source: MosaicInput
    weighted: np.ndarray
    weight: np.ndarray
    wcs: WCS
    weight_kind: str
    flux_scale: float


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
    background: float = 0.0

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


def build_mosaic(
    inputs: Sequence[MosaicInput],
    dest: Path,
    *,
    wcs: WCS | None = None,
    shape: tuple[int, int] | None = None,
    downscale: int = 1,
    match_background: bool = True,
    block_size: tuple[int, int] = (1024, 1024),
) -> MosaicResult:
    """Co-add ``inputs`` (those not flagged "reject") onto one grid and write ``dest``.

    The grid is ``wcs`` and ``shape`` when given, else reproject's ``find_optimal_celestial_wcs``
    over the inputs; ``downscale`` then makes its pixels that many times larger. ``dest`` gets an
    empty primary HDU whose header lists the inputs, then SCI (the weighted mean), CON (how many
    inputs cover each pixel) and WHT (the summed weight). ``block_size`` is a pixel budget
    (rows x columns): work goes in slabs of whole output rows holding at most that many pixels.
    """
    used = [i for i in inputs if (i.flag or "").lower() != "reject"]
    if not used:
        raise ValueError("no inputs left to mosaic (all rejected or none given)")
    dest = Path(dest)
    if wcs is None:
        wcs, shape = _optimal_wcs(used)
    elif shape is None:
        if wcs.array_shape is None:
            raise ValueError("a WCS without pixel_shape needs shape")
        shape = tuple(wcs.array_shape)
    if downscale != 1:
        wcs = downscale_wcs(wcs, downscale)
        shape = (math.ceil(shape[0] / downscale), math.ceil(shape[1] / downscale))
    shape = (int(shape[0]), int(shape[1]))
    wcs = wcs.deepcopy()
    wcs.array_shape = shape
    slab = max(1, block_size[0] * block_size[1])
    out_area = proj_plane_pixel_area(wcs.celestial)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".mosaic-", dir=dest.parent))
    try:
        placed = []
        for k, source in enumerate(used):
            image = _load(source, out_area)
            placed.append(_resample(image, wcs, shape, work / f"in{k}", slab))
            del image
        if match_background:
            _match_backgrounds(placed, work, slab)
        _coadd(placed, shape, work, slab)
        header = _primary_header(placed, wcs, downscale, match_background)
        bunit = _bunit(used[0])
        preview = _write(dest, header, wcs, shape, work, slab, bunit)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return MosaicResult(dest, thumbnail_png(preview, max_side=PREVIEW_SIDE), wcs, shape, len(placed), header)


# ------------------------------------------------------------------------------------ inputs
def _open(path: Path) -> fits.HDUList:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fits.open(path, memmap=False)


def _extension(hdul: fits.HDUList, sci: fits.hdu.base._BaseHDU, name: str) -> np.ndarray | None:
    """The ``name`` extension that goes with ``sci`` (same EXTVER), as a 2-D array."""
    for hdu in hdul:
        if hdu.name == name and hdu.ver == sci.ver and hdu.data is not None:
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


def _bunit(source: MosaicInput) -> str | None:
    with _open(source.path) as hdul:
        value = _header(hdul, source.hdu_index).get("BUNIT")
    return str(value) if value else None


def _surface_brightness(bunit: str | None) -> bool:
    unit = (bunit or "").upper().replace(" ", "")
    return any(token in unit for token in _SURFACE_BRIGHTNESS)


def _load(source: MosaicInput, out_area: float) -> _Image:
    """Read one input and turn its ERR/WHT, DQ and saturation into a weight map.

    ERR gives one inverse variance per image (the median over good pixels), not per pixel: a
    per-pixel ERR holds the sources' own Poisson noise, and weighting by it would favour whichever
    image saw a star fainter, biasing star fluxes low (the JWST pipeline's 'ivm' weighting avoids
    it the same way, with read and sky noise only). WHT maps are used per pixel. DQ bad, saturated
    and cosmic-ray bits (``quality.DQ_BITS``) and non-finite pixels get weight 0.
    """
    with _open(source.path) as hdul:
        hdu = hdul[source.hdu_index]
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
    telescope = str(header.get("TELESCOP", "")).strip().lower()
    kind = telescope if telescope in ("jwst", "hst") else None
    dq_array = None if dq is None else np.asarray(dq).astype(np.int64)
    pixels = _pixel_masks(sci, dq_array, kind if dq_array is not None else None,
                          _saturation_level(None, header))
    bad = pixels.mask if pixels.cosmic_ray is None else pixels.mask | pixels.cosmic_ray
    bad |= ~np.isfinite(sci)
    if err is not None:
        variance = np.asarray(err, dtype=np.float64) ** 2
        good = ~bad & np.isfinite(variance) & (variance > 0)
        bad |= ~good
        weight = np.where(bad, 0.0, 1.0 / float(np.median(variance[good])) if good.any() else 0.0)
        weight_kind = "err"
    elif wht is not None:
        weight = np.nan_to_num(np.asarray(wht, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        weight = np.where(bad | (weight < 0), 0.0, weight)
        weight_kind = "wht"
    else:
        weight = np.where(bad, 0.0, 1.0)
        weight_kind = "uniform"
    flux_scale = 1.0
    if not _surface_brightness(header.get("BUNIT")):
        flux_scale = out_area / proj_plane_pixel_area(wcs)
    weight = weight.astype(np.float32)
    weighted = np.where(weight > 0, sci * np.float32(flux_scale), 0.0).astype(np.float32) * weight
    return _Image(source, weighted, weight, wcs, weight_kind, flux_scale)


def _optimal_wcs(inputs: Sequence[MosaicInput]) -> tuple[WCS, tuple[int, int]]:
    """reproject's optimal celestial WCS over the inputs' footprints (headers only, no pixels)."""
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
def _rows(y0: int, y1: int, width: int, slab: int) -> Iterator[tuple[int, int]]:
    """Row ranges of at most ``slab`` pixels (at least one row) covering y0..y1."""
    step = max(1, slab // max(width, 1))
    for start in range(y0, y1, step):
        yield start, min(start + step, y1)


def _file(path: Path, dtype: type, width: int, y0: int, y1: int, mode: str) -> np.memmap:
    """Rows y0..y1 of a row-major file ``width`` wide, mapped on their own: unmapping it (del)
    gives the pages back, so resident memory stays one slab."""
    itemsize = np.dtype(dtype).itemsize
    return np.memmap(path, dtype=dtype, mode=mode, offset=y0 * width * itemsize, shape=(y1 - y0, width))


def _blank(path: Path, dtype: type, n: int) -> None:
    with open(path, "wb") as f:
        f.truncate(n * np.dtype(dtype).itemsize)


def _bounds(image: _Image, wcs: WCS, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The output pixel box (y0, y1, x0, x1) the input's edges map into, or None off the grid."""
    ny, nx = image.weight.shape
    edge = np.concatenate([np.linspace(-0.5, nx - 0.5, 64), np.full(64, nx - 0.5),
                           np.linspace(nx - 0.5, -0.5, 64), np.full(64, -0.5)])
    side = np.concatenate([np.full(64, -0.5), np.linspace(-0.5, ny - 0.5, 64),
                           np.full(64, ny - 0.5), np.linspace(ny - 0.5, -0.5, 64)])
    x, y = pixel_to_pixel(image.wcs, wcs, edge, side)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    x0 = max(int(math.floor(x[ok].min())) - 1, 0)
    x1 = min(int(math.ceil(x[ok].max())) + 2, shape[1])
    y0 = max(int(math.floor(y[ok].min())) - 1, 0)
    y1 = min(int(math.ceil(y[ok].max())) + 2, shape[0])
    return (y0, y1, x0, x1) if x0 < x1 and y0 < y1 else None


def _snap(c: np.ndarray) -> np.ndarray:
    whole = np.rint(c)
    return np.where(np.abs(c - whole) < SNAP_PIX, whole, c)


def _resample(image: _Image, wcs: WCS, shape: tuple[int, int], stem: Path, slab: int) -> _Placed:
    """Resample one input over its box of the output grid into ``stem``.val / ``stem``.wht files."""
    name = f"{Path(image.source.path).name}[{image.source.hdu_index}]"
    box = _bounds(image, wcs, shape)
    if box is None:
        return _Placed(name, 0, 0, 0, 0, image.weight_kind, image.flux_scale)
    placed = _Placed(name, *box, image.weight_kind, image.flux_scale)
    n = (placed.y1 - placed.y0) * placed.width
    _blank(stem.with_suffix(".val"), np.float32, n)
    _blank(stem.with_suffix(".wht"), np.float32, n)
    xs = np.arange(placed.x0, placed.x1, dtype=np.float64)
    for r0, r1 in _rows(placed.y0, placed.y1, placed.width, slab):
        gx, gy = np.meshgrid(xs, np.arange(r0, r1, dtype=np.float64))
        ix, iy = pixel_to_pixel(wcs, image.wcs, gx, gy)
        del gx, gy
        coords = np.stack([_snap(np.nan_to_num(iy, nan=-10.0)), _snap(np.nan_to_num(ix, nan=-10.0))])
        del ix, iy
        weight = map_coordinates(image.weight, coords, order=1, mode="constant", cval=0.0,
                                 prefilter=False, output=np.float32)
        value = map_coordinates(image.weighted, coords, order=1, mode="constant", cval=0.0,
                                prefilter=False, output=np.float32)
        del coords
        np.divide(value, weight, out=value, where=weight > 0)
        value[weight <= 0] = 0.0
        weight[weight < 0] = 0.0
        rows = slice(r0 - placed.y0, r1 - placed.y0)
        out = _file(stem.with_suffix(".val"), np.float32, placed.width, rows.start, rows.stop, "r+")
        out[:] = value
        del out
        out = _file(stem.with_suffix(".wht"), np.float32, placed.width, rows.start, rows.stop, "r+")
        out[:] = weight
        del out
    return placed


# ------------------------------------------------------------------------ background matching
def _overlap_offset(a: _Placed, b: _Placed, sa: Path, sb: Path, slab: int) -> tuple[float, int] | None:
    """Median of (a - b) where both cover the sky, and how many pixels that is."""
    y0, y1 = max(a.y0, b.y0), min(a.y1, b.y1)
    x0, x1 = max(a.x0, b.x0), min(a.x1, b.x1)
    if y0 >= y1 or x0 >= x1:
        return None
    stride = max(1, math.ceil((y1 - y0) * (x1 - x0) / MAX_OVERLAP_SAMPLES))
    diffs = []
    count = 0
    for r0, r1 in _rows(y0, y1, max(a.width, b.width), slab):
        parts = []
        for p, stem in ((a, sa), (b, sb)):
            rows = (r0 - p.y0, r1 - p.y0)
            cols = slice(x0 - p.x0, x1 - p.x0)
            val = _file(stem.with_suffix(".val"), np.float32, p.width, *rows, "r")
            wht = _file(stem.with_suffix(".wht"), np.float32, p.width, *rows, "r")
            parts.append((np.array(val[:, cols]), np.array(wht[:, cols])))
            del val, wht
        (va, wa), (vb, wb) = parts
        both = (wa > 0) & (wb > 0)
        count += int(np.count_nonzero(both))
        diffs.append((va[both] - vb[both])[::stride])
    if not count:
        return None
    return float(np.median(np.concatenate(diffs))), count


def _match_backgrounds(placed: list[_Placed], work: Path, slab: int) -> None:
    """Solve for one additive offset per input that best levels all overlaps (least squares,
    offsets summing to zero, as reproject's ``match_background``); stored on each input."""
    n = len(placed)
    rows, rhs, weights = [], [], []
    for i in range(n):
        for j in range(i + 1, n):
            found = _overlap_offset(placed[i], placed[j], work / f"in{i}", work / f"in{j}", slab)
            if found is None:
                continue
            row = np.zeros(n)
            row[i], row[j] = 1.0, -1.0
            rows.append(row)
            rhs.append(found[0])
            weights.append(math.sqrt(found[1]))
    if not rows:
        return
    scale = float(np.mean(weights))
    a = np.vstack([np.array(rows) * np.array(weights)[:, None], np.full((1, n), scale)])
    b = np.concatenate([np.array(rhs) * np.array(weights), [0.0]])
    corrections = np.linalg.lstsq(a, b, rcond=None)[0]
    for p, c in zip(placed, corrections):
        p.background = float(c)


# ------------------------------------------------------------------------------ co-adding
def _coadd(placed: list[_Placed], shape: tuple[int, int], work: Path, slab: int) -> None:
    """Sum weight * (value - background), weight and coverage of every input into work files."""
    ny, nx = shape
    for name, dtype in (("sum", np.float64), ("wht", np.float64), ("con", np.int32)):
        _blank(work / f"mosaic.{name}", dtype, ny * nx)
    for k, p in enumerate(placed):
        if p.y0 >= p.y1:
            continue
        stem = work / f"in{k}"
        for r0, r1 in _rows(p.y0, p.y1, nx, slab):
            rows = (r0 - p.y0, r1 - p.y0)
            val = np.array(_file(stem.with_suffix(".val"), np.float32, p.width, *rows, "r"))
            wht = np.array(_file(stem.with_suffix(".wht"), np.float32, p.width, *rows, "r"))
            cols = slice(p.x0, p.x1)
            total = _file(work / "mosaic.sum", np.float64, nx, r0, r1, "r+")
            total[:, cols] += wht * (val.astype(np.float64) - p.background)
            del total
            weight = _file(work / "mosaic.wht", np.float64, nx, r0, r1, "r+")
            weight[:, cols] += wht
            del weight
            con = _file(work / "mosaic.con", np.int32, nx, r0, r1, "r+")
            con[:, cols] += wht > 0
            del con
        (stem.with_suffix(".val")).unlink()
        (stem.with_suffix(".wht")).unlink()


# ------------------------------------------------------------------------------------ output
def _primary_header(placed: list[_Placed], wcs: WCS, downscale: int, match_background: bool) -> fits.Header:
    header = fits.Header()
    header["NINPUTS"] = (len(placed), "images co-added")
    header["DOWNSCAL"] = (downscale, "output pixel size / optimal pixel size")
    header["BKGMATCH"] = (match_background, "background offsets matched in overlaps")
    header["RESAMPLE"] = ("bilinear", "interpolation of weight*SCI and weight")
    for k, p in enumerate(placed, start=1):
        header[f"IN{k:04d}"] = (p.name, "input file[hdu]")
        header[f"WT{k:04d}"] = (p.weight_kind, "weighting of input")
        header[f"BG{k:04d}"] = (p.background, "background offset subtracted")
        header[f"FS{k:04d}"] = (p.flux_scale, "pixel-area flux scale applied")
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
                weight = np.array(_file(work / "mosaic.wht", np.float64, nx, r0, r1, "r"))
                if name == "SCI":
                    total = np.array(_file(work / "mosaic.sum", np.float64, nx, r0, r1, "r"))
                    with np.errstate(invalid="ignore", divide="ignore"):
                        data = np.where(weight > 0, total / weight, np.nan).astype(np.float32)
                    small_rows.append(_block_mean(data, factor))
                elif name == "CON":
                    data = np.array(_file(work / "mosaic.con", np.int32, nx, r0, r1, "r"))
                else:
                    data = weight.astype(np.float32)
                stream.write(np.ascontiguousarray(data))
            stream.close()
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return np.vstack(small_rows)

