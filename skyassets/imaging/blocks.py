"""Mosaics larger than one machine's memory, built block by block on a cluster (Dask workers, or
any ``concurrent.futures`` executor).

The output grid is cut into blocks; each block is an ordinary :func:`skyassets.imaging.mosaic.
build_mosaic` of the inputs that reach it, on the slice of the grid it covers, run wherever the
executor sends it, and the blocks are then streamed into one FITS file row band by row band. So a
worker holds at most one block's work (itself bounded by ``block_size``) and one input image; the
process assembling the file holds one band of rows.

The result is the mosaic :func:`build_mosaic` makes of the whole grid, pixel for pixel:

* resampling maps each output pixel from the inputs alone, and a sliced WCS is the same grid;
* outlier rejection looks at neighbouring pixels (``mosaic.HALO`` rows), so blocks are built
  with ``MARGIN`` pixels more on each side and cropped;
* ``n_rejected`` (NREJECT) is the blocks' sum, so values rejected in a margin count in both
  blocks that built it: an upper bound of the one-piece count (the pixels are the same);
* background matching is global: the offsets are solved once, over every overlap, on a coarser
  copy of the grid (``coarse`` times larger pixels, so cheap), and each input is levelled by its
  offset before the blocks see it; blocks themselves match nothing.

Blocks and levelled inputs are files in ``work``, a folder every worker and the caller can reach
(the destination's folder by default: local workers, or a shared volume on a remote cluster).
"""

from __future__ import annotations

import math
import resource
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from skyassets.fits.header import card_text, named_card
from skyassets.fits.limits import DEFAULT_MAX_MOSAIC_PIXELS
from skyassets.imaging.mosaic import (
    PHOTOMETRIC_KEYWORDS,
    SHARED_KEYWORDS,
    MosaicInput,
    MosaicResult,
    build_mosaic,
    described,
    downscale_wcs,
    output_grid,
)
from skyassets.imaging.preview import block_mean, thumbnail_png
from skyassets.imaging.resample import footprint_box

MARGIN = 8  # pixels built beyond each block's edges and cropped: more than the rejection's halo
PREVIEW_SIDE = 256
_PER_INPUT = ("IN", "WT", "FS")


@dataclass(frozen=True)
class Block:
    """Rows y0..y1 and columns x0..x1 of the output grid, built over the margin box (my0..mx1)."""

    y0: int
    y1: int
    x0: int
    x1: int
    my0: int
    my1: int
    mx0: int
    mx1: int


@dataclass(frozen=True)
class BlockResult:
    """A built block: its FITS file (None when no input reaches it), its header, and the peak
    resident memory of the process that built it (bytes)."""

    block: Block
    path: Path | None
    header: fits.Header | None
    n_rejected: int
    peak_rss: int


def reset_peak_rss() -> None:
    """Start this process's peak resident memory afresh, where Linux allows it.

    A worker started by fork and exec inherits its parent's high-water mark (getrusage keeps it
    across exec), so without a reset a block would report the memory of whatever started the cluster.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss() -> int:
    """This process's peak resident memory in bytes since :func:`reset_peak_rss` (Linux VmHWM),
    else since it started (getrusage: Linux reports KiB, macOS bytes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def grid_blocks(shape: tuple[int, int], block: tuple[int, int], margin: int = MARGIN) -> list[Block]:
    """The blocks of ``block`` rows x columns covering ``shape``, each with ``margin`` pixels around it."""
    ny, nx = shape
    by, bx = max(1, block[0]), max(1, block[1])
    return [
        Block(y0, min(y0 + by, ny), x0, min(x0 + bx, nx),
              max(0, y0 - margin), min(ny, y0 + by + margin), max(0, x0 - margin), min(nx, x0 + bx + margin))
        for y0 in range(0, ny, by) for x0 in range(0, nx, bx)
    ]


def _frame(source: MosaicInput) -> tuple[WCS, tuple[int, int]]:
    """An input's celestial WCS and image shape, from its header only."""
    with fits.open(source.path, memmap=True) as hdul:
        hdu = hdul[source.hdu_index]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(hdu.header, fobj=hdul, relax=True).celestial
        return wcs, tuple(int(n) for n in hdu.shape[-2:])


def _offsets(inputs: list[MosaicInput], wcs: WCS, shape: tuple[int, int], coarse: int, work: Path) -> list[float]:
    """Each input's background offset in its own units, solved over all overlaps on a coarse grid."""
    small = (math.ceil(shape[0] / coarse), math.ceil(shape[1] / coarse))
    result = build_mosaic(inputs, work / "coarse.fits", wcs=downscale_wcs(wcs, coarse), shape=small,
                          match_background=True, reject_sigma=None)
    header = result.header
    return [float(header[f"BG{k:04d}"]) / float(header[f"FS{k:04d}"]) for k in range(1, len(inputs) + 1)]


def _levelled(source: MosaicInput, offset: float, dest: Path) -> MosaicInput:
    """A copy of the input with ``offset`` subtracted from its SCI (the other extensions as they are)."""
    with fits.open(source.path) as hdul:
        hdu = hdul[source.hdu_index]
        hdu.data = (np.asarray(hdu.data, dtype=np.float32) - np.float32(offset))
        hdul.writeto(dest, overwrite=True, output_verify="silentfix")
    return replace(source, path=dest)


def _build_block(inputs: list[MosaicInput], block: Block, wcs: WCS, dest: Path,
                 reject_sigma: float | None, block_size: tuple[int, int]) -> BlockResult:
    reset_peak_rss()
    shape = (block.my1 - block.my0, block.mx1 - block.mx0)
    sub = wcs.slice((slice(block.my0, block.my1), slice(block.mx0, block.mx1)))
    reaching = [s for s in inputs if footprint_box(*_frame(s), sub, shape) is not None]
    if not reaching:
        return BlockResult(block, None, None, 0, peak_rss())
    result = build_mosaic(reaching, dest, wcs=sub, shape=shape, match_background=False,
                          reject_sigma=reject_sigma, block_size=block_size)
    return BlockResult(block, dest, result.header, int(result.header.get("NREJECT", 0)), peak_rss())


def _name(source: MosaicInput) -> str:
    return f"{Path(source.path).name}[{source.hdu_index}]"


def _primary(blocks: list[BlockResult], used: list[MosaicInput], levelled: list[MosaicInput], offsets: list[float],
             wcs: WCS, downscale: int, match_background: bool, rejected: int) -> fits.Header:
    """The mosaic's primary header: the first block's settings, every input, the global grid."""
    original = {card_text(_name(b)): _name(a) for a, b in zip(used, levelled, strict=True)}
    names = [_name(s) for s in used]
    first = next(b.header for b in blocks if b.header is not None)
    per_input: dict[str, dict[str, object]] = {}
    for b in blocks:
        if b.header is None:
            continue
        for k in range(1, int(b.header["NINPUTS"]) + 1):
            name = original[str(b.header[f"IN{k:04d}"])]
            per_input.setdefault(name, {p: b.header[f"{p}{k:04d}"] for p in _PER_INPUT})
    agreed = described([b.header for b in blocks if b.header is not None], None)
    header = fits.Header()
    for card in first.cards:
        if card.keyword in (*SHARED_KEYWORDS, *PHOTOMETRIC_KEYWORDS, "MJD-BEG", "MJD-END"):
            continue  # the first block's inputs' only: what every block's agree on, below
        if card.keyword[:2] not in ("IN", "WT", "BG", "FS") or not card.keyword[2:].isdigit():
            header.append(card)
    header.update(agreed)
    header["NINPUTS"] = len(names)
    header["DOWNSCAL"] = downscale
    header["BKGMATCH"] = (match_background, "background offsets matched over the whole grid")
    header["NREJECT"] = (rejected, "values rejected, block margins counted twice")
    header["NBLOCKS"] = (len(blocks), "blocks built separately and joined")
    header["BLKPEAK"] = (round(max(b.peak_rss for b in blocks) / 1e6, 1), "[MB] peak memory of a block builder")
    for k, (name, offset) in enumerate(zip(names, offsets, strict=True), start=1):
        known = per_input.get(name, {})
        header[f"IN{k:04d}"] = named_card(name, "input file[hdu]")
        header[f"WT{k:04d}"] = (known.get("WT", "none"), "weighting of input")
        header[f"BG{k:04d}"] = (offset * float(known.get("FS", 1.0)), "background offset subtracted")
        header[f"FS{k:04d}"] = (known.get("FS", 1.0), "pixel-area flux scale applied")
    header.update(wcs.to_header(relax=True))
    return header


def _assemble(dest: Path, primary: fits.Header, blocks: list[BlockResult], wcs: WCS, shape: tuple[int, int]) -> None:
    """Stream SCI, CON and WHT into ``dest`` one band of blocks at a time, cropping their margins."""
    ny, nx = shape
    bands = sorted({(b.block.y0, b.block.y1) for b in blocks})
    template = {name: fits.getheader(next(b.path for b in blocks if b.path), name) for name in ("SCI", "CON", "WHT")}
    tmp = dest.with_name(dest.name + ".part")
    try:
        fits.PrimaryHDU(header=primary).writeto(tmp, overwrite=True)
        for name, dtype, blank in (("SCI", np.float32, np.nan), ("CON", np.int32, 0), ("WHT", np.float32, 0)):
            header = template[name].copy()
            header["NAXIS1"], header["NAXIS2"] = nx, ny
            header.update(wcs.to_header(relax=True))
            stream = fits.StreamingHDU(str(tmp), header)
            for y0, y1 in bands:
                band = np.full((y1 - y0, nx), blank, dtype=dtype)
                for b in (b for b in blocks if b.block.y0 == y0 and b.path is not None):
                    k = b.block
                    with fits.open(b.path, memmap=True) as hdul:
                        band[:, k.x0:k.x1] = hdul[name].data[k.y0 - k.my0:k.y1 - k.my0, k.x0 - k.mx0:k.x1 - k.mx0]
                stream.write(band)
            stream.close()
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _preview(dest: Path, shape: tuple[int, int]) -> bytes:
    factor = max(1, math.ceil(max(shape) / PREVIEW_SIDE))
    rows = []
    with fits.open(dest, memmap=True) as hdul:
        sci = hdul["SCI"].data
        step = factor * max(1, (1 << 22) // (shape[1] * factor))
        for r0 in range(0, shape[0], step):
            rows.append(block_mean(np.array(sci[r0:r0 + step]), factor))
    return thumbnail_png(np.vstack(rows), max_side=PREVIEW_SIDE)


def build_mosaic_blocks(
    inputs: Sequence[MosaicInput],
    dest: Path,
    executor: Executor,
    *,
    wcs: WCS | None = None,
    shape: tuple[int, int] | None = None,
    downscale: int = 1,
    match_background: bool = True,
    reject_sigma: float | None = 5.0,
    block: tuple[int, int] = (2048, 2048),
    block_size: tuple[int, int] = (1024, 1024),
    coarse: int = 8,
    work: Path | None = None,
    max_pixels: int = DEFAULT_MAX_MOSAIC_PIXELS,
    made_from: str | None = None,
) -> MosaicResult:
    """:func:`build_mosaic` of ``inputs`` into ``dest``, ``block`` output pixels (rows x columns)
    at a time through ``executor``. ``coarse`` is the pixel factor of the grid background offsets
    are solved on. The primary header adds NBLOCKS and BLKPEAK, the largest peak memory (MB) of the
    processes that built blocks."""
    used = [i for i in inputs if (i.flag or "").lower() != "reject"]
    if not used:
        raise ValueError("no inputs left to mosaic (all rejected or none given)")
    dest = Path(dest)
    wcs, shape = output_grid(used, wcs, shape, downscale, max_pixels)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".mosaic-blocks-", dir=work or dest.parent))
    try:
        offsets = [0.0] * len(used)
        levelled = used
        if match_background and len(used) > 1:
            offsets = executor.submit(_offsets, used, wcs, shape, coarse, work).result()
            futures = [executor.submit(_levelled, s, o, work / f"in{k}.fits")
                       for k, (s, o) in enumerate(zip(used, offsets, strict=True))]
            levelled = [f.result() for f in futures]
        tiles = grid_blocks(shape, block)
        futures = [executor.submit(_build_block, levelled, t, wcs, work / f"block{i}.fits", reject_sigma, block_size)
                   for i, t in enumerate(tiles)]
        built = [f.result() for f in futures]
        if all(b.path is None for b in built):
            raise ValueError(f"{dest}: no input reaches the output grid")
        rejected = sum(b.n_rejected for b in built)
        primary = _primary(built, used, levelled, offsets, wcs, downscale, match_background, rejected)
        if made_from is not None:
            primary["PROVHASH"] = made_from
        _assemble(dest, primary, built, wcs, shape)
        preview = _preview(dest, shape)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return MosaicResult(dest, preview, wcs, shape, len(used), primary, rejected)
