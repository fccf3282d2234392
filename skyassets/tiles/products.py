"""A target's tile pyramids: a HiPS per mosaic (FITS tiles) and per composite (PNG tiles), replaced atomically.

``<home>/tiles/<target>`` is a symbolic link to ``<home>/tiles/.versions/<target>/<version>``, which
holds one folder per pyramid and ``pyramids.json`` (what was tiled, from which files, when). A new
version is written beside the old one and the link is swapped in one ``rename``: a reader sees the
old pyramids or the new ones, never a mix. The version is a digest of the products' paths, sizes and
modification times (and of how tiles are made), so a target whose products did not change is not
tiled again. One process at a time tiles a target or publishes its pyramids (:func:`target_lock`):
a command line and the daemon's automation may both take it, and one must not remove the version
the other is writing or reading.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image

from skyassets.lake.home import Home
from skyassets.lake.lease import file_lock
from skyassets.lake.names import validate_obs_id
from skyassets.tiles.hips import TILE_WIDTH, ArrayRows, FitsRows, build_hips

__all__ = [
    "MANIFEST", "TargetTiles", "footprints", "products_digest", "remove_target", "target_lock", "target_manifest",
    "tile_target", "tiles_root",
]

MANIFEST = "pyramids.json"
TILING_VERSION = "hips-1"  # changes when tiles are made differently, so every target is tiled again
TILE_WAIT = 3600.0  # seconds to wait for another process tiling or publishing the same target


def tiles_root(home: Home) -> Path:
    """``<home>/tiles``: one link per target to its current pyramids."""
    return home.root / "tiles"


@dataclass(frozen=True)
class TargetTiles:
    target: str
    path: Path  # the target's link
    digest: str
    changed: bool  # False: the products were the same and nothing was tiled
    pyramids: list[dict]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_").lower()


def _products(home: Home, target: str) -> list[dict]:
    """What a target's pyramids are made from: its mosaics, then its composites, as catalogued."""
    lake = home.tables
    found = []

    def version(row: dict) -> str:
        return hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:16]

    for row in lake.read("mosaics", target, missing_ok=True).to_dict("records"):
        found.append({"kind": "mosaic", "name": f"mosaic_{_slug(row['instrument_name'])}_{_slug(row['filter'])}",
                      "title": f"{target} {row['instrument_name']} {row['filter']}", "source": row["path"],
                      "instrument": row["instrument_name"], "filters": row["filter"], "row": version(row)})
    for row in lake.read("composites", target, missing_ok=True).to_dict("records"):
        found.append({"kind": "composite", "name": f"composite_{_slug(row['recipe'])}",
                      "title": f"{target} {row['recipe']} ({row['filters'].replace(';', ', ')})", "source": row["png"],
                      "filters": row["filters"], "recipe": row["recipe"], "wcs_header": row["wcs_header"],
                      "row": version(row)})
    return found


def products_digest(home: Home, products: list[dict], width: int = TILE_WIDTH) -> str:
    """A digest of the product files (path, size, modification time; with a store, their catalog rows)
    and of how they are tiled."""
    digest = hashlib.sha256(f"{TILING_VERSION}:{width}".encode())
    for product in products:
        if home.remote:  # the working copy's times change as it is used: the catalog row tells instead
            version = product["row"]
        else:
            stat = (home.root / product["source"]).stat()
            version = f"{stat.st_size}:{stat.st_mtime_ns}"
        digest.update(f"|{product['name']}:{product['source']}:{version}".encode())
    return digest.hexdigest()[:20]


def target_manifest(home: Home, target: str) -> dict | None:
    """The manifest of a target's current pyramids, or None if it has none."""
    path = tiles_root(home) / validate_obs_id(target) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable tile manifest: {exc}") from exc


def _composite_rows(home: Home, product: dict) -> ArrayRows:
    """A composite PNG as 0-255 RGB planes in FITS orientation, with the WCS the catalog recorded."""
    path = home.local(product["source"])
    try:
        with Image.open(path) as picture:
            rgb = np.flipud(np.asarray(picture.convert("RGB")))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the composite: {exc}") from exc
    wcs = WCS(fits.Header.fromstring(product["wcs_header"]))
    return ArrayRows(rgb, wcs)


@contextmanager
def target_lock(home: Home, target: str) -> Iterator[None]:
    """Hold ``target``'s tiles for the block: the processes of this machine (whose tiles they are)
    tile a target or read its pyramids one at a time."""
    with file_lock(tiles_root(home) / ".versions" / f".{validate_obs_id(target)}.lock", TILE_WAIT):
        yield


def _whole(link: Path, manifest: dict) -> bool:
    """Every pyramid a manifest lists is there, to its ``properties`` (written last)."""
    return all((link / pyramid["name"] / "properties").is_file() for pyramid in manifest.get("pyramids", []))


def tile_target(home: Home, target: str, *, width: int = TILE_WIDTH, force: bool = False) -> TargetTiles:
    """Tile every product of ``target`` unless the current pyramids were made from the same files
    and are whole; another process tiling it is waited for, and its pyramids taken if they are these."""
    target = validate_obs_id(target)
    with target_lock(home, target):
        return _tile(home, target, width, force)


def _tile(home: Home, target: str, width: int, force: bool) -> TargetTiles:
    products = _products(home, target)
    digest = products_digest(home, products, width)
    link = tiles_root(home) / target
    current = target_manifest(home, target)
    if current and current.get("digest") == digest and not force and _whole(link, current):
        return TargetTiles(target, link, digest, False, current["pyramids"])
    versions = tiles_root(home) / ".versions" / target
    version = versions / f"{digest}-{uuid.uuid4().hex[:8]}"
    version.mkdir(parents=True)
    try:
        pyramids = []
        for product in products:
            if product["kind"] == "mosaic":
                source = FitsRows(home.local(product["source"]), "SCI")
                fmt = "fits"
            else:
                source = _composite_rows(home, product)
                fmt = "png"
            made = build_hips(source, version / product["name"], tile_format=fmt, title=product["title"],
                              creator_did=f"ivo://skyassets/P/{target}/{product['name']}", width=width)
            entry = {k: v for k, v in product.items() if k not in ("wcs_header", "row")}
            pyramids.append({**entry, "tile_format": fmt, "order": made.order, "order_min": made.order_min,
                             "tiles": made.tiles, "sky_fraction": made.sky_fraction,
                             "ra": float(made.properties["hips_initial_ra"]),
                             "dec": float(made.properties["hips_initial_dec"]),
                             "fov": float(made.properties["hips_initial_fov"]),
                             "released": made.properties["hips_release_date"]})
        manifest = {"target": target, "digest": digest, "made": datetime.now(UTC).isoformat(timespec="seconds"),
                    "pyramids": pyramids}
        (version / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _swap(link, version)
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    for old in versions.iterdir():
        if old != version:
            shutil.rmtree(old, ignore_errors=True)
    return TargetTiles(target, link, digest, True, pyramids)


def _swap(link: Path, version: Path) -> None:
    """Point ``link`` at ``version`` in one rename (a new link beside it replaces the old one)."""
    if link.exists() and not link.is_symlink():
        raise ValueError(f"{link} is not a link made by skyassets; move it away to tile this target")
    fresh = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}")
    os.symlink(os.path.relpath(version, link.parent), fresh)
    os.replace(fresh, link)


def remove_target(home: Home, target: str) -> None:
    """Forget a target's pyramids (a retired target)."""
    target = validate_obs_id(target)
    (tiles_root(home) / target).unlink(missing_ok=True)
    shutil.rmtree(tiles_root(home) / ".versions" / target, ignore_errors=True)


def _polygon(region: str) -> list[list[float]] | None:
    """The vertices of an ObsCore ``s_region`` ``POLYGON [frame] ra dec ...`` in degrees."""
    words = str(region or "").replace(",", " ").split()
    if not words or words[0].upper() != "POLYGON":
        return None
    numbers = []
    for word in words[1:]:
        try:
            numbers.append(float(word))
        except ValueError:
            continue  # the frame name
    if len(numbers) < 6 or len(numbers) % 2:
        return None
    return [numbers[i:i + 2] for i in range(0, len(numbers), 2)]


FOOTPRINT_COLUMNS = ["obs_id", "file_name", "hdu_index", "instrument_name", "filter", "t_exptime", "score", "flag"]


def footprints(home: Home, target: str) -> list[dict]:
    """The catalogued images of ``target`` (its ``target_images``) with their sky polygons, for viewers."""
    lake = home.tables
    images = lake.read("target_images", validate_obs_id(target), missing_ok=True)
    out = []
    for obs_id, group in images.groupby("obs_id"):
        meta = lake.read("image_metadata", str(obs_id), columns=["file_name", "hdu_index", "s_region", "s_ra",
                                                                    "s_dec", "t_min", "obs_collection"],
                         missing_ok=True)
        regions = {(r["file_name"], int(r["hdu_index"])): r for r in meta.to_dict("records")}
        for row in group.to_dict("records"):
            found = regions.get((row["file_name"], int(row["hdu_index"])))
            polygon = _polygon(found["s_region"]) if found else None
            if polygon is None:
                continue
            entry = {c: _plain(row.get(c)) for c in FOOTPRINT_COLUMNS}
            entry.update({"s_ra": _plain(found["s_ra"]), "s_dec": _plain(found["s_dec"]),
                          "t_min": _plain(found["t_min"]), "polygon": polygon})
            out.append(entry)
    return out


def _plain(value: object) -> object:
    """A JSON-ready value: numpy scalars as Python ones, NaN as None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
