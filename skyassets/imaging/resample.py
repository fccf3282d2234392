"""Resampling an image onto another WCS's pixel grid, one slab of output rows at a time.

Plain Python (no Dagster). Mosaics (:mod:`skyassets.imaging.mosaic`) put each input on the output
grid with it, and colour composites (:mod:`skyassets.imaging.composite`) put each channel on their
common grid with it, so a pixel of a composite is resampled exactly as a pixel of a mosaic.

An image is carried as two planes, ``weight * value`` and ``weight`` (0 where masked or NaN). The
output pixel centres of a slab of rows are mapped through both WCS into the input
(``astropy.wcs.utils.pixel_to_pixel``), both planes are interpolated bilinearly there (:func:`bilinear`), and their
ratio is the resampled value (normalised convolution): a masked pixel never leaks into its
neighbours, and the resampled weight says how much good input each output pixel holds. Only one
slab's coordinates and values exist at a time, so memory beyond the input image is bounded by the
slab size, whatever the size of the output grid.

Values are sampled at output pixel centres, not integrated over pixels: a constant surface
brightness stays the same value whatever the two pixel scales. Images in counts per pixel must be
scaled by the ratio of output to input pixel area by the caller, as ``mosaic`` does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from astropy.wcs import WCS
from astropy.wcs.utils import pixel_to_pixel

#: Output pixels per slab when the caller gives no budget: the coordinate arrays and the two
#: interpolated planes of a slab then take a few tens of MB.
SLAB_PIXELS = 1 << 20
#: Interpolation coordinates this close to a whole pixel are snapped to it, so grids that line up
#: exactly (integer offsets) resample exactly and weights have no fractional edges.
SNAP_PIX = 1e-6

#: Exact WCS evaluations every this many output pixels (see :func:`input_pixels`), and the largest
#: error of the interpolated mapping accepted, in input pixels (a thousandth of the astrometric
#: accuracy the mosaics reach).
KNOT_STEP = 16
KNOT_TOLERANCE = 1e-4

#: (y0, y1, x0, x1): rows y0..y1 and columns x0..x1 (ends excluded) of the output grid.
Box = tuple[int, int, int, int]


class Slab(NamedTuple):
    """Output rows y0..y1 of one image's box: resampled value (0 where weight is 0) and weight."""

    y0: int
    y1: int
    value: np.ndarray
    weight: np.ndarray


def row_slabs(y0: int, y1: int, width: int, slab: int) -> Iterator[tuple[int, int]]:
    """Row ranges of at most ``slab`` pixels of ``width`` columns (at least one row) covering y0..y1."""
    step = max(1, slab // max(width, 1))
    for start in range(y0, y1, step):
        yield start, min(start + step, y1)


def footprint_box(in_wcs: WCS, in_shape: tuple[int, int], out_wcs: WCS, out_shape: tuple[int, int]) -> Box | None:
    """The output pixel box the input image's edges map into (one pixel of margin), or None off the grid.

    The edges are sampled, 64 points a side, so a box is found even when a corner is off the sky.
    """
    ny, nx = in_shape
    edge = np.concatenate([np.linspace(-0.5, nx - 0.5, 64), np.full(64, nx - 0.5),
                           np.linspace(nx - 0.5, -0.5, 64), np.full(64, -0.5)])
    side = np.concatenate([np.full(64, -0.5), np.linspace(-0.5, ny - 0.5, 64),
                           np.full(64, ny - 0.5), np.linspace(ny - 0.5, -0.5, 64)])
    x, y = pixel_to_pixel(in_wcs, out_wcs, edge, side)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    x0 = max(int(math.floor(x[ok].min())) - 1, 0)
    x1 = min(int(math.ceil(x[ok].max())) + 2, out_shape[1])
    y0 = max(int(math.floor(y[ok].min())) - 1, 0)
    y1 = min(int(math.ceil(y[ok].max())) + 2, out_shape[0])
    return (y0, y1, x0, x1) if x0 < x1 and y0 < y1 else None


def _snap(c: np.ndarray) -> None:
    """Coordinates within ``SNAP_PIX`` of a whole pixel set to it, in place."""
    whole = np.rint(c)
    near = np.subtract(c, whole)
    np.abs(near, out=near)
    np.copyto(c, whole, where=near < SNAP_PIX)


def input_pixels(out_wcs: WCS, in_wcs: WCS, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Input pixel coordinates (2, rows, cols; y then x, 0-based) of the centres of output pixels
    rows[0]..rows[1] x cols[0]..cols[1]. Centres off the input's sky get -10, outside any image.

    Both WCS are evaluated exactly on a lattice of knots every ``KNOT_STEP`` output pixels (fixed on
    the output grid, so a pixel's coordinates do not depend on the slab it is computed in) and the
    mapping, smooth for any real projection and distortion, is interpolated between them by local
    bicubic (Lagrange) interpolation, which reproduces linear mappings exactly: a few hundred times
    fewer WCS evaluations. The interpolation is checked against the exact mapping between knots;
    the exact mapping is used for every pixel when it errs by more than ``KNOT_TOLERANCE`` pixels
    or a knot is off the sky."""
    found = _interpolated(out_wcs, in_wcs, rows, cols)
    if found is None:
        gx, gy = np.meshgrid(np.arange(*cols, dtype=np.float64), np.arange(*rows, dtype=np.float64))
        found = pixel_to_pixel(out_wcs, in_wcs, gx, gy)
        del gx, gy
    ix, iy = found
    coords = np.empty((2, *np.shape(ix)), np.float64)
    coords[0], coords[1] = iy, ix
    del found, ix, iy
    np.nan_to_num(coords, copy=False, nan=-10.0)
    _snap(coords)
    return coords


def _lagrange(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Knot coordinates on the lattice covering lo..hi (one knot beyond either end, as cubic
    interpolation needs), each position's first knot index i - 1, and its four cubic Lagrange
    weights (knots i - 1 .. i + 2)."""
    k0 = lo // KNOT_STEP - 1
    k1 = (hi - 1) // KNOT_STEP + 2
    knots = np.arange(k0, k1 + 1, dtype=np.float64) * KNOT_STEP
    t = np.arange(lo, hi, dtype=np.float64) / KNOT_STEP - k0
    i = np.floor(t).astype(int)
    f = t - i
    weights = [-f * (f - 1) * (f - 2) / 6, (f + 1) * (f - 1) * (f - 2) / 2, -(f + 1) * f * (f - 2) / 2,
               (f + 1) * f * (f - 1) / 6]
    return knots, i - 1, weights


def _apply(values: np.ndarray, y: tuple[np.ndarray, list[np.ndarray]], x: tuple[np.ndarray, list[np.ndarray]]
           ) -> np.ndarray:
    """Knot values interpolated at the positions whose (first index, weights) are ``y`` and ``x``,
    summed in a fixed order so that a position's result does not depend on the others."""
    (iy, wy), (ix, wx) = y, x
    along_x = values[:, ix] * wx[0][None, :]
    for b in range(1, 4):
        along_x += values[:, ix + b] * wx[b][None, :]
    out = along_x[iy]
    out *= wy[0][:, None]
    for a in range(1, 4):
        term = along_x[iy + a]
        term *= wy[a][:, None]
        out += term
    return out


def _interpolated(out_wcs: WCS, in_wcs: WCS, rows: tuple[int, int],
                  cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The mapping (x, y arrays) interpolated from the lattice, or None when it cannot be trusted."""
    ky, iy, wy = _lagrange(*rows)
    kx, ix, wx = _lagrange(*cols)
    gx, gy = np.meshgrid(kx, ky)
    knots = pixel_to_pixel(out_wcs, in_wcs, gx, gy)
    if not all(np.isfinite(k).all() for k in knots):
        return None
    # Check between knots, where interpolation errs most: a few cell centres inside the block.
    cy = np.arange(rows[0], rows[1], max(1, (rows[1] - rows[0]) // 4)) + KNOT_STEP // 2
    cx = np.arange(cols[0], cols[1], max(1, (cols[1] - cols[0]) // 4)) + KNOT_STEP // 2
    cy, cx = cy[cy < rows[1]] - rows[0], cx[cx < cols[1]] - cols[0]
    if len(cy) and len(cx):
        px, py = np.meshgrid((cx + cols[0]).astype(np.float64), (cy + rows[0]).astype(np.float64))
        exact = pixel_to_pixel(out_wcs, in_wcs, px, py)
        sample_y = (iy[cy], [w[cy] for w in wy])
        sample_x = (ix[cx], [w[cx] for w in wx])
        for k, truth in zip(knots, exact, strict=True):
            if not np.isfinite(truth).all() or np.abs(_apply(k, sample_y, sample_x) - truth).max() > KNOT_TOLERANCE:
                return None
    return _apply(knots[0], (iy, wy), (ix, wx)), _apply(knots[1], (iy, wy), (ix, wx))


def resample_slabs(weighted: np.ndarray, weight: np.ndarray, in_wcs: WCS, out_wcs: WCS, box: Box,
                   slab: int = SLAB_PIXELS) -> Iterator[Slab]:
    """Resample an image given as ``weighted`` (weight * value, 0 where masked) and ``weight`` over
    ``box`` of the output grid, one slab of at most ``slab`` pixels at a time (bilinear, normalised).

    Values are float32 for float32 planes, float64 otherwise. An output pixel is covered when its
    centre falls inside an input pixel of positive weight (:func:`covered`), so coverage ends at the
    edges of the valid input pixels: not half a pixel short of the image border, nor half a pixel
    beyond a masked region. Between the last pixel centre and the border the edge value holds.
    """
    y0, y1, x0, x1 = box
    dtype = np.result_type(weighted.dtype, weight.dtype, np.float32)
    good = weight > 0
    for r0, r1 in row_slabs(y0, y1, x1 - x0, slab):
        coords = input_pixels(out_wcs, in_wcs, (r0, r1), (x0, x1))
        inside = covered(good, coords)
        value, wht = bilinear((weighted, weight), coords, dtype)
        del coords
        wht[~inside | (wht < 0)] = 0.0
        np.divide(value, wht, out=value, where=wht > 0)
        value[wht <= 0] = 0.0
        yield Slab(r0, r1, value, wht)


def bilinear(planes: tuple[np.ndarray, ...], coords: np.ndarray, dtype: np.dtype) -> list[np.ndarray]:
    """Each plane (all of one shape) interpolated bilinearly at ``coords`` (2, ...; y then x), as
    ``scipy.ndimage.map_coordinates(order=1, mode="nearest")`` does: beyond the edges the edge
    values hold.

    The corner indices and fractions are computed once for all planes, and each plane is four
    gathers and three in-place multiply-adds: ``bench/mosaic.py`` spends a third of its time here,
    and this takes a quarter of ``map_coordinates``' time for the two planes of a slab (its spline
    code computes the weights again for every plane and point). Equal corners give their value
    exactly, so a constant image resamples to itself.
    """
    ny, nx = planes[0].shape
    y = np.clip(coords[0], 0, ny - 1)
    x = np.clip(coords[1], 0, nx - 1)
    y0 = y.astype(np.intp)
    x0 = x.astype(np.intp)
    fy = np.subtract(y, y0).astype(dtype, copy=False)
    fx = np.subtract(x, x0).astype(dtype, copy=False)
    del y, x
    i00 = y0 * nx
    i00 += x0
    i01 = i00 + (x0 < nx - 1)
    down = (y0 < ny - 1) * nx
    i10 = i00 + down
    i11 = i01 + down
    del y0, x0, down
    out = []
    for plane in planes:
        flat = np.ascontiguousarray(plane).ravel()
        top = flat.take(i00).astype(dtype, copy=False)
        step = flat.take(i01).astype(dtype, copy=False)
        step -= top
        step *= fx
        top += step
        bottom = flat.take(i10).astype(dtype, copy=False)
        step = flat.take(i11).astype(dtype, copy=False)
        step -= bottom
        step *= fx
        bottom += step
        bottom -= top
        bottom *= fy
        top += bottom
        out.append(top)
    return out


def covered(good: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Whether each input coordinate (2, ...; y then x, 0-based) falls inside a pixel of ``good``:
    pixel (i, j) spans [i - 0.5, i + 0.5) x [j - 0.5, j + 0.5)."""
    iy = np.floor(coords[0] + 0.5)
    ix = np.floor(coords[1] + 0.5)
    ny, nx = good.shape
    inside = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
    out = np.zeros(inside.shape, bool)
    out[inside] = good[iy[inside].astype(np.intp), ix[inside].astype(np.intp)]
    return out


def resample_image(data: np.ndarray, in_wcs: WCS, out_wcs: WCS, out_shape: tuple[int, int],
                   slab: int = SLAB_PIXELS) -> np.ndarray:
    """``data`` resampled onto ``out_wcs``'s grid of ``out_shape`` (NaN where no finite input reaches).

    NaN pixels of ``data`` are masked (weight 0): the output is NaN only where its pixel centre falls
    in a NaN pixel, where plain bilinear interpolation of NaN would also blank a pixel around every hole.
    """
    data = np.asarray(data)
    finite = np.isfinite(data)
    weighted = np.where(finite, data, 0.0)
    out = np.full(out_shape, np.nan, dtype=np.result_type(weighted.dtype, np.float32))
    box = footprint_box(in_wcs, data.shape, out_wcs, out_shape)
    if box is None:
        return out
    for part in resample_slabs(weighted, finite.astype(np.float32), in_wcs, out_wcs, box, slab):
        out[part.y0:part.y1, box[2]:box[3]] = np.where(part.weight > 0, part.value, np.nan)
    return out
