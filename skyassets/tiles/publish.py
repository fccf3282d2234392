"""Publishing every target's pyramids to a folder or an S3 prefix: tiles first, indexes last.

Each file goes up with its MD5: S3 checks the body against ``Content-MD5`` and the returned ETag is
compared; a folder's file is written beside its place, read back and compared before it is renamed
in. A file the destination already holds with the same checksum is not sent again, so a publish
that was interrupted resumes where it stopped. Within a pyramid the tiles, ``Allsky`` and
``Moc.fits`` go before ``properties``; the collection's indexes (``hipslist``, ``index.wtml``) go
after every pyramid, so an index never names a pyramid whose files are not all there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from xml.etree import ElementTree

from skyassets.lake.home import Home
from skyassets.lake.names import validate_obs_id
from skyassets.tiles.hips import read_properties
from skyassets.tiles.products import MANIFEST, footprints, target_lock, tile_target, tiles_root

__all__ = [
    "FolderDestination", "PublishError", "PublishReport", "S3Destination", "hipslist", "publish_collection",
    "publish_demo", "wtml",
]

PUBLISHED = "skyassets-targets.json"
"""The targets a publish left at the destination, written after the indexes: the next publish takes
out those no longer in the collection, and nothing else (a folder of anyone else's is never touched)."""
CONTENT_TYPES = {".fits": "application/fits", ".png": "image/png", ".json": "application/json",
                 ".wtml": "application/xml", "": "text/plain"}


class PublishError(RuntimeError):
    """An upload the destination did not store as sent."""


class Destination(Protocol):
    url: str

    def holds(self, key: str, md5: str) -> bool: ...

    def put(self, key: str, data: bytes, md5: str) -> None: ...

    def keys(self, prefix: str) -> list[str]: ...

    def read(self, key: str) -> bytes | None: ...

    def delete(self, keys: list[str]) -> None: ...


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"refusing to publish to the key {key!r}")
    return key


class FolderDestination:
    """A local folder (a web server's document root, or what ``skyassets sky`` serves)."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()

    def holds(self, key: str, md5: str) -> bool:
        path = self.root / _safe_key(key)
        try:
            return _md5(path.read_bytes()) == md5
        except OSError:
            return False

    def put(self, key: str, data: bytes, md5: str) -> None:
        path = self.root / _safe_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            part.write_bytes(data)
            if _md5(part.read_bytes()) != md5:
                raise PublishError(f"{path}: the written file does not match its checksum")
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)

    def keys(self, prefix: str) -> list[str]:
        """The keys of the files under ``prefix`` (the folder never follows a link out of itself)."""
        top = self.root / _safe_key(prefix)
        if top.is_symlink() or not top.is_dir():
            return []
        return [p.relative_to(self.root).as_posix() for p in top.rglob("*")
                if p.is_file() and not p.is_symlink() and not p.name.endswith(".part")]

    def read(self, key: str) -> bytes | None:
        path = self.root / _safe_key(key)
        try:
            return None if path.is_symlink() else path.read_bytes()
        except OSError:
            return None

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            (self.root / _safe_key(key)).unlink(missing_ok=True)
        for folder in sorted({(self.root / k).parent for k in keys}, key=lambda f: len(f.parts), reverse=True):
            while folder != self.root and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent


class S3Destination:
    """``s3://bucket/prefix`` through a boto3 client (dagster-aws's ``S3Resource`` gives one)."""

    def __init__(self, client: Any, bucket: str, prefix: str = ""):
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._etags: dict[str, str] | None = None

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{_safe_key(key)}" if self.prefix else _safe_key(key)

    def _listing(self) -> dict[str, str]:
        """Every object under the prefix with its ETag, listed once per publish."""
        if self._etags is None:
            etags = {}
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else ""):
                for item in page.get("Contents", []):
                    etags[item["Key"]] = item["ETag"].strip('"')
            self._etags = etags
        return self._etags

    def holds(self, key: str, md5: str) -> bool:
        return self._listing().get(self._key(key)) == md5

    def put(self, key: str, data: bytes, md5: str) -> None:
        name = self._key(key)
        answer = self.client.put_object(
            Bucket=self.bucket, Key=name, Body=data, ContentMD5=base64.b64encode(bytes.fromhex(md5)).decode(),
            ContentType=CONTENT_TYPES.get(Path(key).suffix, "application/octet-stream"),
        )
        if answer.get("ETag", "").strip('"') != md5:
            raise PublishError(f"s3://{self.bucket}/{name}: stored with ETag {answer.get('ETag')}, sent MD5 {md5}")

    def keys(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` that name a file (not a folder marker such as ``a/``, nor a key
        with an empty or dot part, which no file of a pyramid has)."""
        start = self._key(prefix) + "/"
        cut = len(self.prefix) + 1 if self.prefix else 0
        return [k[cut:] for k in self._listing()
                if k.startswith(start) and not {"", ".", ".."} & set(k[cut:].split("/"))]

    def read(self, key: str) -> bytes | None:
        if self._key(key) not in self._listing():
            return None
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:  # deleted since the listing
            return None

    def delete(self, keys: list[str]) -> None:
        names = [self._key(k) for k in keys]
        for start in range(0, len(names), 1000):  # the most one request may delete
            batch = names[start:start + 1000]
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch],
                                                                             "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise PublishError(f"s3://{self.bucket}/{first.get('Key')}: not deleted ({first.get('Message')})")


@dataclass
class PublishReport:
    destination: str
    targets: list[str] = field(default_factory=list)
    pyramids: int = 0
    uploaded: int = 0
    skipped: int = 0  # already there with the same checksum
    bytes_uploaded: int = 0
    removed: int = 0  # files of earlier pyramids and of retired targets, deleted after the indexes
    retired: list[str] = field(default_factory=list)  # targets taken out of the destination
    indexes: list[str] = field(default_factory=list)


def _pyramid_files(folder: Path) -> list[Path]:
    """A pyramid's files in upload order: tiles by order, then Allsky and the MOC, ``properties`` last."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != "properties"]
    files.sort(key=lambda p: (p.name in ("Allsky.fits", "Allsky.png", "Moc.fits"), p.relative_to(folder).parts))
    return [*files, folder / "properties"]


def _current(home: Home) -> list[str]:
    """Every tiled target, the newest tiled first."""
    root = tiles_root(home)
    found = []
    if root.exists():
        for link in sorted(root.iterdir()):
            if link.name.startswith(".") or not (link / MANIFEST).exists():
                continue
            validate_obs_id(link.name)
            found.append((json.loads((link / MANIFEST).read_text()).get("made", ""), link.name))
    return [target for _, target in sorted(found, reverse=True)]


def publish_collection(
    home: Home,
    destination: Destination,
    *,
    public_url: str = "",
    targets: Iterable[str] | None = None,
    threads: int = 8,
    after_upload: Callable[[str], None] | None = None,
) -> PublishReport:
    """Publish the current pyramids of every tiled target (or of ``targets``) to ``destination``.

    A target an earlier publish left at the destination (listed in its ``PUBLISHED`` record) that
    is no longer tiled, or not in ``targets`` when given (merged into another, retired), is taken
    out once the indexes no longer name it.

    ``public_url`` is where readers will find the destination (written into the indexes); empty
    writes paths relative to the collection's root. ``after_upload(key)`` is called after each
    verified upload.
    """
    wanted = set(targets) if targets is not None else None
    collection = [target for target in _current(home) if wanted is None or target in wanted]
    report = PublishReport(destination=destination.url)
    base = public_url.rstrip("/") + "/" if public_url else ""

    lock = threading.Lock()

    sent: set[str] = set()

    def send(key: str, data: bytes) -> None:
        with lock:
            sent.add(key)
        md5 = _md5(data)
        if destination.holds(key, md5):
            with lock:
                report.skipped += 1
            return
        destination.put(key, data, md5)
        with lock:
            report.uploaded += 1
            report.bytes_uploaded += len(data)
        if after_upload is not None:
            after_upload(key)

    def send_file(prefix: str, root: Path, path: Path) -> None:
        send(f"{prefix}/{path.relative_to(root).as_posix()}", path.read_bytes())

    records = []
    pool = ThreadPoolExecutor(max_workers=max(1, threads))
    try:
        for target in collection:
            with target_lock(home, target):  # its version is read while no other process replaces it
                link = tiles_root(home) / target
                folder, manifest = link.resolve(), json.loads((link / MANIFEST).read_text())
                for pyramid in manifest["pyramids"]:
                    source = folder / pyramid["name"]
                    files = _pyramid_files(source)
                    # tiles in parallel, then (after every tile is verified) properties alone
                    list(pool.map(partial(send_file, f"{target}/{pyramid['name']}", source), files[:-1]))
                    send(f"{target}/{pyramid['name']}/properties", files[-1].read_bytes())
                    properties = read_properties(source)
                    records.append({**properties, "hips_service_url": f"{base}{target}/{pyramid['name']}",
                                    "skyassets_target": target, "skyassets_kind": pyramid["kind"]})
                    report.pyramids += 1
            send(f"{target}/footprints.json", json.dumps(footprints(home, target)).encode())
            report.targets.append(target)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # an interrupted publish sends nothing more
    send("hipslist", hipslist(records).encode())
    send("index.wtml", wtml(records).encode())
    report.indexes = ["hipslist", "index.wtml"]
    # Only now that the indexes point at the new pyramids: what a re-tile left behind under each
    # published target (deeper orders, pyramids of products no longer made) goes.
    stale = [key for target in report.targets for key in destination.keys(target) if key not in sent]
    kept = set(collection)
    before = _published_before(destination)
    report.retired = sorted(before - kept - set(report.targets))
    stale += [key for target in report.retired for key in destination.keys(target)]
    destination.delete(stale)
    report.removed = len(stale)
    send(PUBLISHED, json.dumps(sorted(set(report.targets))).encode())
    return report


def _published_before(destination: Destination) -> set[str]:
    """The targets the last publish recorded at ``destination``; none when it holds no record (one
    published before the record existed keeps its folders: nothing unrecorded is deleted)."""
    try:
        recorded = json.loads(destination.read(PUBLISHED) or b"[]")
    except ValueError:
        return set()
    return {t for t in recorded if isinstance(t, str) and t not in ("", ".", "..") and "/" not in t}


def hipslist(records: list[dict]) -> str:
    """A HiPS list (IVOA HiPS 1.0 section 5): one properties record per pyramid, newest first."""
    ordered = sorted(records, key=lambda r: r.get("hips_release_date", ""), reverse=True)
    blocks = ["".join(f"{k:<20} = {v}\n" for k, v in r.items()) for r in ordered]
    return "# skyassets HiPS list\n\n" + "\n".join(blocks)


def wtml(records: list[dict]) -> str:
    """A WorldWide Telescope folder of every pyramid (as HEALPix image sets), newest first."""
    folder = ElementTree.Element("Folder", Name="skyassets", Group="Explorer", Searchable="True", Type="Sky")
    for record in sorted(records, key=lambda r: r.get("hips_release_date", ""), reverse=True):
        ra, dec = float(record["hips_initial_ra"]), float(record["hips_initial_dec"])
        fov = float(record.get("hips_initial_fov", 1.0))
        place = ElementTree.SubElement(
            folder, "Place", Name=record["obs_title"], DataSetType="Sky", RA=f"{ra / 15:.8f}", Dec=f"{dec:.8f}",
            ZoomLevel=f"{fov * 6:.6f}", Constellation="", Classification="Unidentified",
        )
        image = ElementTree.SubElement(ElementTree.SubElement(place, "ForegroundImageSet"), "ImageSet")
        image.attrib.update({
            "Generic": "False", "DataSetType": "Sky", "BandPass": "Visible", "Name": record["obs_title"],
            "Url": f"{record['hips_service_url']}/Norder{{0}}/Dir{{1}}/Npix{{2}}",
            "BaseTileLevel": "0", "TileLevels": record["hips_order"], "BaseDegreesPerTile": "180",
            "FileType": f".{record['hips_tile_format']}", "BottomsUp": "False", "Projection": "Healpix",
            "QuadTreeMap": "", "CenterX": "0", "CenterY": "0", "OffsetX": "0", "OffsetY": "0", "Rotation": "0",
            "Sparse": "True", "ElevationModel": "False", "StockSet": "False", "WidthFactor": "1",
        })
        ElementTree.SubElement(image, "Credits").text = "skyassets"
        ElementTree.SubElement(image, "Description").text = record.get("creator_did", "")
    ElementTree.indent(folder)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(folder, encoding="unicode") + "\n"


def publish_demo(home: Home) -> tuple[PublishReport, str]:
    """Tile every target that has products (unchanged ones are kept) and publish them all to
    ``<home>/published``, as ``sky_tiles`` and ``publish`` would; the report, and the command that
    opens the collection in the sky viewer."""
    for target in home.tables.partitions("mosaics"):
        tile_target(home, target)
    report = publish_collection(home, FolderDestination(home.root / "published"))
    first = f" {report.targets[0]}" if report.targets else ""
    return report, f"SKYASSETS_HOME={home.root} skyassets sky{first}"
