"""HiPS 1.0 tile pyramids of a mosaic (FITS tiles) or a colour composite (PNG tiles), streamed.

The deepest order's tiles are sampled from the image: each tile pixel is a HEALPix cell (nested
index ``tile_index * width**2 + sub``, ``sub`` from :func:`tile_subindex`), its centre is mapped
through the image's WCS and the image is interpolated bilinearly there. Tiles are visited in order
of the first image row they need, and the image is read through a sliding window of rows mapped from
the file only while they are needed, so memory follows the tile size times the image width, not the
image. Each lower order is the 2x2 average of the order below (NaN and transparent pixels left out),
which is what keeps zoomed-out views free of aliasing. Then ``Norder3/Allsky``, ``Moc.fits`` (the
coverage at four orders below the pixels) and ``properties`` (written last).
"""

from __future__ import annotations

import math
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import ICRS, SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales, wcs_to_celestial_frame
from astropy_healpix import HEALPix, nside_to_level, pixel_resolution_to_nside
from PIL import Image

__all__ = [
    "ALLSKY_ORDER", "TILE_WIDTH", "ArrayRows", "FitsRows", "Pyramid", "build_hips", "deepest_order", "read_properties",
    "tile_lonlat", "tile_path", "tile_subindex",
]

TILE_WIDTH = 512
ALLSKY_ORDER = 3
MOC_DEPTH = 4  # the coverage is kept at this many orders below the tiles (cells of 32x32 tile pixels)
WINDOW_CHUNK = 256  # rows read from the file at a time


@dataclass(frozen=True)
class Pyramid:
    """A written HiPS: where it is and what it holds."""

    path: Path
    tile_format: str  # "fits" or "png"
    order: int
    order_min: int
    tiles: int  # at every order
    sky_fraction: float
    properties: dict[str, str] = field(default_factory=dict)


def _spread(value: np.ndarray) -> np.ndarray:
    """The bits of ``value`` moved to the even positions (bit i to bit 2i)."""
    value = value.astype(np.int64)
    out = np.zeros_like(value)
    for bit in range(31):
        out |= ((value >> bit) & 1) << (2 * bit)
    return out


@lru_cache(maxsize=4)
def tile_subindex(width: int = TILE_WIDTH) -> np.ndarray:
    """For each pixel ``[row, col]`` of a tile in FITS orientation (row 0 at the bottom), its HEALPix
    cell's nested index within the tile's cell: the HiPS tile layout (PNG tiles are these rows flipped)."""
    rows, cols = np.mgrid[0:width, 0:width]
    sub = _spread(width - 1 - rows) | (_spread(cols) << 1)
    sub.flags.writeable = False
    return sub


def tile_lonlat(order: int, index: int, sub: np.ndarray, width: int = TILE_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """ICRS longitude and latitude in degrees of the centres of the pixels ``sub`` (see :func:`tile_subindex`)
    of tile ``index`` at ``order``, for tiles ``width`` pixels wide."""
    level = order + int(round(math.log2(width)))
    healpix = HEALPix(nside=2**level, order="nested", frame=ICRS())
    lon, lat = healpix.healpix_to_lonlat(np.int64(index) * width * width + sub)
    return lon.to_value(u.deg), lat.to_value(u.deg)


def tile_path(root: Path, order: int, index: int, extension: str) -> Path:
    """``Norder{order}/Dir{index // 10000 * 10000}/Npix{index}.{extension}`` under ``root``."""
    return root / f"Norder{order}" / f"Dir{index // 10000 * 10000}" / f"Npix{index}.{extension}"


def deepest_order(wcs: WCS, width: int = TILE_WIDTH) -> int:
    """The tile order whose pixels are no coarser than the image's (as reproject chooses it)."""
    scale = float(np.mean(proj_plane_pixel_scales(wcs.celestial))) * u.deg
    return int(nside_to_level(pixel_resolution_to_nside(scale * width)))


class FitsRows:
    """The rows of a 2-D FITS image, memory-mapped from the file a slab at a time and released after."""

    peak_window_rows = 0  # the most rows held at once by the last pyramid built from it

    def __init__(self, path: Path, extension: int | str = 0):
        self.path = Path(path)
        with fits.open(self.path, memmap=False, lazy_load_hdus=True) as hdul:
            try:
                hdu = hdul[extension]
            except (KeyError, IndexError) as exc:
                raise ValueError(f"{self.path}: no extension {extension!r}") from exc
            if isinstance(hdu, fits.CompImageHDU):
                raise ValueError(f"{self.path}[{extension}]: a tile-compressed image cannot be read by rows; "
                                 "decompress it first")
            header = hdu.header
            index = hdul.index_of(extension)
            offset = hdul.fileinfo(index)["datLoc"]
        if header.get("NAXIS") != 2:
            raise ValueError(f"{self.path}[{extension}]: not a 2-D image (NAXIS={header.get('NAXIS')})")
        bitpix = int(header["BITPIX"])
        kinds = {-32: ">f4", -64: ">f8", 8: "u1", 16: ">i2", 32: ">i4", 64: ">i8"}
        if bitpix not in kinds:
            raise ValueError(f"{self.path}[{extension}]: unsupported BITPIX {bitpix}")
        self.header = header
        self.wcs = WCS(header).celestial
        if not self.wcs.has_celestial:
            raise ValueError(f"{self.path}[{extension}]: no celestial WCS")
        self.shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
        self._dtype = np.dtype(kinds[bitpix])
        self._offset = offset
        self._scale = (float(header.get("BSCALE", 1.0)), float(header.get("BZERO", 0.0)))
        self._blank = header.get("BLANK") if bitpix > 0 else None

    def read(self, first: int, last: int) -> np.ndarray:
        """Rows ``first`` to ``last`` (exclusive) as native float32; the mapping is closed before returning."""
        width = self.shape[1]
        mapped = np.memmap(self.path, dtype=self._dtype, mode="r", shape=(last - first, width),
                           offset=self._offset + first * width * self._dtype.itemsize)
        try:
            rows = mapped.astype(np.float32)
            if self._blank is not None:
                rows[np.asarray(mapped) == self._blank] = np.nan
        finally:
            del mapped
        scale, zero = self._scale
        if (scale, zero) != (1.0, 0.0):
            rows = rows * np.float32(scale) + np.float32(zero)
        return rows


class ArrayRows:
    """An image already in memory (a composite's RGB planes, a test's truth), in FITS orientation."""

    peak_window_rows = 0

    def __init__(self, data: np.ndarray, wcs: WCS):
        self.data = data
        self.wcs = wcs.celestial
        self.shape = data.shape[:2]

    def read(self, first: int, last: int) -> np.ndarray:
        return np.asarray(self.data[first:last], dtype=np.float32)


class _Window:
    """Rows ``[start, start + len(rows))`` of the image: grows forward, drops rows behind."""

    def __init__(self, source: FitsRows | ArrayRows):
        self.source, self.start = source, 0
        self.rows = source.read(0, 0)
        self.peak_rows = 0

    def span(self, first: int, last: int) -> np.ndarray:
        """Rows ``first`` to ``last`` (clipped to the image), keeping only what later tiles may still need."""
        first, last = max(first, 0), min(last, self.source.shape[0])
        end = self.start + len(self.rows)
        if first >= end:
            self.rows, self.start, end = self.source.read(first, first), first, first
        elif first - self.start >= max(WINDOW_CHUNK, len(self.rows) // 2):  # drop rows behind in large steps
            self.rows, self.start = self.rows[first - self.start:].copy(), first
        elif first < self.start:  # a tile reaching lower than the one before it: read those rows again
            self.rows, self.start = np.concatenate([self.source.read(first, self.start), self.rows]), first
        if last > end:
            chunks = [self.rows]
            while end < last:
                step = min(max(WINDOW_CHUNK, last - end), self.source.shape[0] - end)
                chunks.append(self.source.read(end, end + step))
                end += step
            self.rows = np.concatenate(chunks)
        self.peak_rows = max(self.peak_rows, len(self.rows))
        return self.rows


def _to_image_pixels(wcs: WCS, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    frame = wcs_to_celestial_frame(wcs)
    if not isinstance(frame, ICRS) and frame.name not in ("fk5",):
        coords = SkyCoord(lon * u.deg, lat * u.deg, frame="icrs").transform_to(frame)
        return wcs.world_to_pixel(coords)
    return wcs.world_to_pixel_values(lon, lat)


def _deep_tiles(wcs: WCS, shape: tuple[int, int], order: int, width: int) -> np.ndarray:
    """The tiles at ``order`` that the image touches: every border pixel, and a grid inside finer than a
    tile (so a tile wholly inside the image is found too)."""
    ny, nx = shape
    healpix = HEALPix(nside=2**order, order="nested", frame=ICRS())
    image_scale = float(np.min(proj_plane_pixel_scales(wcs.celestial))) * 3600
    tile_side = healpix.pixel_resolution.to_value(u.arcsec) / math.sqrt(2) / image_scale  # in image pixels
    step = max(1, int(tile_side / 3))
    xs, ys = np.arange(nx, dtype=float), np.arange(ny, dtype=float)
    border_x = np.concatenate([xs, xs, np.full(ny, -0.5), np.full(ny, nx - 0.5)])
    border_y = np.concatenate([np.full(nx, -0.5), np.full(nx, ny - 0.5), ys, ys])
    gx, gy = np.meshgrid(np.arange(0, nx, step, dtype=float), np.arange(0, ny, step, dtype=float))
    px, py = np.concatenate([border_x, gx.ravel()]), np.concatenate([border_y, gy.ravel()])
    world = wcs.pixel_to_world(px, py).icrs
    return np.unique(healpix.lonlat_to_healpix(world.ra, world.dec))


def _bilinear(rows: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``rows`` interpolated bilinearly at (y, x) (already clipped inside), colour planes last."""
    y0 = np.minimum(np.floor(y).astype(np.int64), rows.shape[0] - 2) if rows.shape[0] > 1 else np.zeros(y.shape, int)
    x0 = np.minimum(np.floor(x).astype(np.int64), rows.shape[1] - 2)
    fy, fx = (y - y0).astype(np.float32), (x - x0).astype(np.float32)
    if rows.shape[0] == 1:
        y0, fy = np.zeros_like(y0), np.zeros_like(fy)
    y1 = np.minimum(y0 + 1, rows.shape[0] - 1)
    if rows.ndim == 3:
        fy, fx = fy[:, None], fx[:, None]
    top = rows[y0, x0] * (1 - fx) + rows[y0, x0 + 1] * fx
    bottom = rows[y1, x0] * (1 - fx) + rows[y1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _sample(window: _Window, x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear values at image pixel positions ``x, y`` (planes last for colour) and where they fall inside."""
    ny, nx = shape
    inside = (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)
    if not inside.any():
        return None, inside
    first = int(math.floor(np.min(y[inside]))) - 1
    last = int(math.ceil(np.max(y[inside]))) + 2
    rows = window.span(first, last)
    ys = np.clip(y - window.start, 0, max(len(rows) - 1, 0))
    xs = np.clip(x, 0, nx - 1)
    return _bilinear(rows, ys, xs), inside


def _blocks_with_data(valid: np.ndarray, block: int) -> np.ndarray:
    n = valid.shape[0] // block
    return valid.reshape(n, block, n, block).any(axis=(1, 3))


def _write_tile(path: Path, data: np.ndarray, tile_format: str, order: int, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if tile_format == "fits":
        hdu = fits.PrimaryHDU(data.astype(np.float32))
        hdu.header["ORDER"], hdu.header["NPIX"] = order, index
        hdu.writeto(path, overwrite=True)
    else:
        Image.fromarray(np.flipud(data), mode="RGBA").save(path, optimize=False, compress_level=6)


def _read_tile(path: Path, tile_format: str) -> np.ndarray:
    if tile_format == "fits":
        return fits.getdata(path).astype(np.float32)
    with Image.open(path) as picture:
        return np.flipud(np.asarray(picture.convert("RGBA")))


def _halve(tile: np.ndarray, tile_format: str) -> np.ndarray:
    """A tile at half resolution: 2x2 mean of valid (non-NaN, non-transparent) pixels."""
    h, w = tile.shape[0] // 2, tile.shape[1] // 2
    if tile_format == "fits":
        blocks = tile.reshape(h, 2, w, 2)
        valid = np.isfinite(blocks)
        count = valid.sum(axis=(1, 3))
        total = np.where(valid, blocks, 0).sum(axis=(1, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / count, np.nan).astype(np.float32)
    blocks = tile.reshape(h, 2, w, 2, 4).astype(np.float32)
    alpha = blocks[..., 3:4]
    weight = alpha.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        rgb = np.where(weight > 0, (blocks[..., :3] * alpha).sum(axis=(1, 3)) / weight, 0)
    return np.concatenate([rgb, weight / 4], axis=-1).round().astype(np.uint8)


def _blank(width: int, tile_format: str) -> np.ndarray:
    if tile_format == "fits":
        return np.full((width, width), np.nan, np.float32)
    return np.zeros((width, width, 4), np.uint8)


def _parent(children: dict[int, np.ndarray], width: int, tile_format: str) -> np.ndarray:
    """The tile made of its four children (sub-cell 0 bottom left, 1 top left, 2 bottom right, 3 top right)."""
    half = width // 2
    out = _blank(width, tile_format)
    places = {0: (slice(half, None), slice(None, half)), 1: (slice(None, half), slice(None, half)),
              2: (slice(half, None), slice(half, None)), 3: (slice(None, half), slice(half, None))}
    for sub, tile in children.items():
        out[places[sub]] = _halve(tile, tile_format)
    return out


def _allsky(root: Path, tiles: list[int], tile_format: str, width: int, side: int) -> None:
    """``Norder3/Allsky``: every order-3 tile shrunk to ``side`` pixels, 27 to a row, tile 0 top left."""
    per_row, count = 27, 12 * 4**ALLSKY_ORDER
    rows = math.ceil(count / per_row)
    if tile_format == "fits":
        sheet = np.full((rows * side, per_row * side), np.nan, np.float32)
    else:
        sheet = np.zeros((rows * side, per_row * side, 4), np.uint8)
    extension = tile_format
    for index in tiles:
        tile = _read_tile(tile_path(root, ALLSKY_ORDER, index, extension), tile_format)
        while tile.shape[0] > side:
            tile = _halve(tile, tile_format)
        r, c = divmod(index, per_row)
        sheet[r * side:(r + 1) * side, c * side:(c + 1) * side] = np.flipud(tile)  # top-down, as in a PNG
    path = root / f"Norder{ALLSKY_ORDER}" / f"Allsky.{extension}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if tile_format == "fits":
        fits.PrimaryHDU(np.flipud(sheet)).writeto(path, overwrite=True)
    else:
        Image.fromarray(sheet, mode="RGBA").save(path)


def _cut(samples: list[np.ndarray]) -> tuple[float, float, float, float] | None:
    values = np.concatenate(samples) if samples else np.empty(0)
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    low, high = np.percentile(values, [0.5, 99.5])
    return float(low), float(high), float(values.min()), float(values.max())


def _knots(width: int, step: int = 16) -> np.ndarray:
    return np.unique(np.append(np.arange(0, width, step), width - 1))


class _TileMapper:
    """Image pixel positions of a tile's pixel centres: exact (HEALPix centres through the WCS) on a grid
    every 16 tile pixels, linear in between; the mapping is smooth within a tile, so the error is far
    below a thousandth of a pixel and the cost a 256th of mapping every pixel."""

    def __init__(self, source: FitsRows | ArrayRows, order: int, width: int):
        self.source, self.order, self.width = source, order, width
        self.knots = _knots(width)
        sub = tile_subindex(width)
        self.grid = sub[np.ix_(self.knots, self.knots)]
        pixels = np.arange(width)
        self.left = np.minimum(np.searchsorted(self.knots, pixels, side="right") - 1, len(self.knots) - 2)
        self.frac = (pixels - self.knots[self.left]) / (self.knots[self.left + 1] - self.knots[self.left])

    def coarse(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        lon, lat = tile_lonlat(self.order, index, self.grid, self.width)
        x, y = _to_image_pixels(self.source.wcs, lon.ravel(), lat.ravel())
        n = len(self.knots)
        return np.asarray(x).reshape(n, n), np.asarray(y).reshape(n, n)

    def full(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.coarse(index)
        k, t = self.left, self.frac
        r0, r1, c0, c1 = k[:, None], k[:, None] + 1, k[None, :], k[None, :] + 1
        tr, tc = t[:, None], t[None, :]

        def spread(g: np.ndarray) -> np.ndarray:
            return ((g[r0, c0] * (1 - tc) + g[r0, c1] * tc) * (1 - tr) + (g[r1, c0] * (1 - tc) + g[r1, c1] * tc) * tr)
        return spread(x).ravel(), spread(y).ravel()


def _iter_deep_tiles(source: FitsRows | ArrayRows, order: int, width: int) -> Iterator[tuple[int, np.ndarray,
                                                                                              np.ndarray]]:
    """(tile index, values, inside) for each deepest-order tile with data, visiting tiles by first row needed."""
    mapper = _TileMapper(source, order, width)
    ny, nx = source.shape
    bounds = []
    for index in _deep_tiles(source.wcs, source.shape, order, width):
        x, y = mapper.coarse(int(index))
        if np.nanmax(x) < -1 or np.nanmin(x) > nx or np.nanmax(y) < -1 or np.nanmin(y) > ny:
            continue
        bounds.append((float(np.nanmin(y)), int(index)))
    window = _Window(source)
    for _, index in sorted(bounds):
        x, y = mapper.full(index)
        values, inside = _sample(window, x, y, source.shape)
        if values is None:
            continue
        yield index, values, inside
    source.peak_window_rows = window.peak_rows


def build_hips(
    source: FitsRows | ArrayRows,
    dest: Path,
    *,
    tile_format: str,
    title: str,
    creator_did: str,
    order: int | None = None,
    width: int = TILE_WIDTH,
    extra_properties: dict[str, str] | None = None,
) -> Pyramid:
    """Write the HiPS of ``source`` into the new folder ``dest`` (which must not exist).

    ``tile_format`` is ``fits`` (values kept, NaN outside) or ``png`` (``source`` holds 0-255 RGB,
    colour planes last; transparent outside). ``order`` defaults to :func:`deepest_order`.
    """
    if tile_format not in ("fits", "png"):
        raise ValueError(f"tile_format must be 'fits' or 'png', not {tile_format!r}")
    if width & (width - 1) or width < 8:
        raise ValueError(f"tile width must be a power of two of at least 8, not {width}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    order = deepest_order(source.wcs, width) if order is None else order
    sub = tile_subindex(width)
    moc_shift = 2 * (int(round(math.log2(width))) - MOC_DEPTH)
    block = width >> MOC_DEPTH  # a MOC cell is an aligned block of block x block tile pixels
    corners = sub[::block, ::block]
    cells: list[np.ndarray] = []
    samples: list[np.ndarray] = []
    level = {}
    for index, values, inside in _iter_deep_tiles(source, order, width):
        if tile_format == "fits":
            data = np.where(inside, values, np.nan).reshape(width, width).astype(np.float32)
            valid = np.isfinite(data)
            samples.append(data[valid][::97].copy())  # a copy: a strided view would keep the tile alive
        else:
            rgb = np.clip(np.nan_to_num(values), 0, 255).reshape(width, width, -1)[..., :3]
            valid = (inside & np.isfinite(values).all(axis=-1)).reshape(width, width)
            data = np.concatenate([np.where(valid[..., None], rgb, 0), (valid * 255)[..., None]], axis=-1)
            data = data.round().astype(np.uint8)
        if not valid.any():
            continue
        _write_tile(tile_path(dest, order, index, tile_format), data, tile_format, order, index)
        level[index] = True
        cells.append((np.int64(index) * width * width + corners[_blocks_with_data(valid, block)]) >> moc_shift)
    if not level:
        shutil.rmtree(dest)
        raise ValueError(f"{title}: the image has no valid pixel to tile")
    total = len(level)
    order_min = min(ALLSKY_ORDER, order)
    indices = sorted(level)
    for current in range(order - 1, order_min - 1, -1):
        parents = sorted({i // 4 for i in indices})
        for parent in parents:
            children = {}
            for s in range(4):
                path = tile_path(dest, current + 1, 4 * parent + s, tile_format)
                if path.exists():
                    children[s] = _read_tile(path, tile_format)
            _write_tile(tile_path(dest, current, parent, tile_format), _parent(children, width, tile_format),
                        tile_format, current, parent)
        indices = parents
        total += len(parents)
    if order >= ALLSKY_ORDER:
        _allsky(dest, indices, tile_format, width, side=64 if tile_format == "png" else 32)
    from mocpy import MOC

    moc_order = order + MOC_DEPTH
    moc = MOC.from_healpix_cells(np.unique(np.concatenate(cells)).astype(np.uint64), np.uint8(moc_order),
                                 np.uint8(moc_order))
    moc.save(str(dest / "Moc.fits"), format="fits", overwrite=True)
    ny, nx = source.shape
    centre = source.wcs.pixel_to_world((nx - 1) / 2, (ny - 1) / 2).icrs
    corner = source.wcs.pixel_to_world(-0.5, -0.5).icrs
    properties = {
        "creator_did": creator_did,
        "obs_title": title,
        "dataproduct_type": "image",
        "hips_version": "1.4",
        "hips_release_date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "hips_status": "public master clonableOnce",
        "hips_builder": "skyassets",
        "hips_frame": "equatorial",
        "hips_order": str(order),
        "hips_order_min": str(order_min),
        "hips_tile_width": str(width),
        "hips_tile_format": tile_format,
        "hips_initial_ra": f"{centre.ra.deg:.8f}",
        "hips_initial_dec": f"{centre.dec.deg:.8f}",
        "hips_initial_fov": f"{2.2 * centre.separation(corner).deg:.6f}",
        "moc_sky_fraction": f"{moc.sky_fraction:.3e}",
        "moc_order": str(moc_order),
        "hips_nb_tiles": str(total),
    }
    if tile_format == "fits":
        properties["hips_pixel_bitpix"] = "-32"
        cut = _cut(samples)
        if cut:
            properties["hips_pixel_cut"] = f"{cut[0]:.6g} {cut[1]:.6g}"
            properties["hips_data_range"] = f"{cut[2]:.6g} {cut[3]:.6g}"
    properties.update(extra_properties or {})
    _write_properties(dest / "properties", properties)
    return Pyramid(path=dest, tile_format=tile_format, order=order, order_min=order_min, tiles=total,
                   sky_fraction=float(moc.sky_fraction), properties=properties)


def _write_properties(path: Path, properties: dict[str, str]) -> None:
    text = "".join(f"{key:<20} = {value}\n" for key, value in properties.items())
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temporary.write_text(text)
    temporary.replace(path)


def read_properties(folder: Path) -> dict[str, str]:
    """A HiPS ``properties`` file as a mapping; a missing or unreadable one is a ValueError naming it."""
    path = Path(folder) / "properties"
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the HiPS properties: {exc}") from exc
    out = {}
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out

