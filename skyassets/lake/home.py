"""Where skyassets keeps its state (``SKYASSETS_HOME``, default ``./.skyassets``), and where its
files, lake and products are stored: the same folder, or an S3-protocol store (``SKYASSETS_STORAGE=
s3://bucket/prefix``) holding the same layout (``files/``, ``lake/``, ``products/``, ``previews/``,
``catalog.duckdb``).

With a store, the local folder keeps what only one machine needs (the Dagster instance, sensor
state, the emulator's cache) and is a bounded working copy of the stored layout: a file is written
locally first (a download, a mosaic), then :meth:`Home.commit` uploads it, verified, and
:meth:`Home.local` brings a stored file back when a step reads it. The working copy is trimmed to
``cache_bytes``, least recently used first, so a machine with a small disk handles a large archive.

Uploads are atomic per object (an object appears whole when its upload completes, never half)
and verified: the store checks a SHA-256 of every part it receives and refuses a corrupted one,
and the object's length and ETag (the MD5 the store computed of what it received) are read back
before the upload counts. Credentials
come from the usual AWS chain (environment, profile, instance role), as for boto3 and dagster-aws.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.fs as pafs

from skyassets.lake.lease import Waiting, file_lock, store_lease
from skyassets.lake.names import safe_filename, validate_obs_id
from skyassets.lake.store import Lake

HOME_ENV = "SKYASSETS_HOME"
STORAGE_ENV = "SKYASSETS_STORAGE"
STORAGE_ENDPOINT_ENV = "SKYASSETS_STORAGE_ENDPOINT"
CACHE_ENV = "SKYASSETS_STORAGE_CACHE_GB"
DEFAULT_CACHE_BYTES = 20 << 30
SHA256_META = "sha256"  # user metadata of an uploaded object: the hex SHA-256 of its content
_CHUNK = 1 << 20
PART_SIZE = 64 << 20  # multipart uploads above this size, in parts of it
STALE_STAGING_SECONDS = 86400.0  # a private folder of Home.replacing this old was left by a killed process


class StorageError(OSError):
    """An object that could not be stored or fetched intact; the message names it and why."""


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or ".skyassets").expanduser().resolve()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def expected_etag(path: Path, part_size: int = PART_SIZE) -> str:
    """The ETag S3 gives ``path`` uploaded in parts of ``part_size`` (one part below it): the MD5
    of the content, or of the parts' MD5s followed by their number. The store computes it from the
    bytes it received, so a match proves they are the file's."""
    parts = []
    with open(path, "rb") as handle:
        while True:
            digest, read = hashlib.md5(usedforsecurity=False), 0
            while read < part_size and (chunk := handle.read(min(_CHUNK, part_size - read))):
                digest.update(chunk)
                read += len(chunk)
            if read == 0 and parts:
                break
            parts.append(digest)
            if read < part_size:
                break
    if path.stat().st_size < part_size:
        return parts[0].hexdigest()
    joined = hashlib.md5(b"".join(p.digest() for p in parts), usedforsecurity=False)
    return f"{joined.hexdigest()}-{len(parts)}"


def _verified(head: dict, etag: str, sha256: str) -> bool:
    """Whether the stored object is the one sent: its ETag (plain or multipart MD5), else, where the
    store encrypts with KMS and the ETag is no MD5, the whole-object SHA-256 it checked on receipt."""
    if head.get("ETag", "").strip('"') == etag:
        return True
    stored = head.get("ChecksumSHA256")
    return stored is not None and stored == base64.b64encode(bytes.fromhex(sha256)).decode()


def _ns(when: Any) -> int:
    """A store's modification time (a datetime, whole seconds) in nanoseconds."""
    return int(when.timestamp()) * 1_000_000_000


def _identity(head: dict) -> tuple[int, int]:
    """(size, mtime_ns) of a stored object, as its working copy records them."""
    return head["ContentLength"], _ns(head["LastModified"])


def _relative(relative: str | os.PathLike[str]) -> str:
    """A relative path inside the layout, as the manifest records it; never leaves the home."""
    text = PurePosixPath(os.fspath(relative).replace(os.sep, "/"))
    if text.is_absolute() or not text.parts or any(p in ("..", ".", "") for p in text.parts):
        raise ValueError(f"{relative!s}: not a relative path inside the skyassets home")
    return str(text)


@dataclass(frozen=True)
class Home:
    """The folder layout: FITS files, the Parquet lake, quarantine, products, the emulator's cache.

    ``storage`` (``s3://bucket/prefix``) stores files, lake and products there instead of under
    ``root``; ``endpoint`` is the URL of an S3-protocol server other than AWS (MinIO, Ceph, moto).
    """

    root: Path
    storage: str | None = None
    endpoint: str | None = None
    cache_bytes: int = DEFAULT_CACHE_BYTES
    _clients: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.storage is not None and not self.storage.startswith("s3://"):
            raise ValueError(f"{STORAGE_ENV} must look like s3://bucket/prefix, not {self.storage!r}")
        if self.storage is not None and not self.storage[5:].partition("/")[0]:
            raise ValueError(f"{STORAGE_ENV}={self.storage!r} names no bucket")

    def __reduce__(self) -> tuple:
        # Sent to other processes (Dask workers) without its clients, which cannot be pickled.
        return (Home, (self.root, self.storage, self.endpoint, self.cache_bytes))

    @classmethod
    def from_env(cls, root: Path | None = None) -> Home:
        """The home that ``SKYASSETS_HOME``, ``SKYASSETS_STORAGE`` and their companions describe."""
        env = os.environ
        cache = env.get(CACHE_ENV)
        return cls(
            root if root is not None else default_home(),
            storage=env.get(STORAGE_ENV) or None,
            endpoint=env.get(STORAGE_ENDPOINT_ENV) or None,
            cache_bytes=int(float(cache) * (1 << 30)) if cache else DEFAULT_CACHE_BYTES,
        )

    # ------------------------------------------------------------------------------ the layout
    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def lake(self) -> Path:
        """The lake's local folder (unused with a store: see :attr:`tables`)."""
        return self.root / "lake"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def previews(self) -> Path:
        """PNG thumbnails of measured images, ``previews/<obs_id>/<file>.<hdu>.png``."""
        return self.root / "previews"

    def target_dir(self, target: str) -> Path:
        """``products/<target>``: a target's mosaics and composites."""
        return self.root / "products" / validate_obs_id(target)

    @property
    def search(self) -> Path:
        """The catalog's text search index (``skyassets.catalog.find``), beside the lake."""
        return self.root / "search"

    @property
    def dagster(self) -> Path:
        return self.root / "dagster"

    def observation_dir(self, collection: str, obs_id: str) -> Path:
        """``files/<collection>/<obs_id>``, from validated names only."""
        return self.files / safe_filename(collection) / validate_obs_id(obs_id)

    def stored_at(self, collection: str, obs_id: str, filename: str) -> str:
        """Where a file of the observation is stored, relative to the home: what the catalog's
        ``path`` columns hold, for a copy made or still to be made."""
        return (self.observation_dir(collection, obs_id) / safe_filename(filename)).relative_to(self.root).as_posix()

    @property
    def tables(self) -> Lake:
        """The Parquet tables: every read and write of the lake goes through it, local or stored."""
        if self.storage is None:
            return Lake(self.lake)
        return Lake(self.url("lake"), filesystem=self.filesystem, put=self._put_lake)

    def _put_lake(self, relative: str, data: bytes) -> None:
        self.put_bytes(f"lake/{relative}", data)

    # ------------------------------------------------------------------------------- the store
    @property
    def remote(self) -> bool:
        return self.storage is not None

    def _bucket_key(self, relative: str) -> tuple[str, str]:
        bucket, _, prefix = self.storage[5:].partition("/")  # type: ignore[index]
        prefix = prefix.strip("/")
        return bucket, f"{prefix}/{relative}" if prefix else relative

    def url(self, relative: str | os.PathLike[str]) -> str:
        """Where ``relative`` is stored: a URL with a store, else a local path."""
        relative = _relative(relative)
        if self.storage is None:
            return str(self.root / relative)
        bucket, key = self._bucket_key(relative)
        return f"s3://{bucket}/{key}"

    @cached_property
    def filesystem(self) -> pafs.FileSystem:
        """The ``pyarrow.fs`` filesystem of the store (local without one): the lake's reads and listings."""
        if self.storage is None:
            return pafs.LocalFileSystem()
        options: dict[str, Any] = {}
        if self.endpoint:
            scheme, _, host = self.endpoint.partition("://")
            options.update(endpoint_override=host.rstrip("/"), scheme=scheme)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return pafs.S3FileSystem(region=region or "us-east-1", **options)

    def client(self) -> Any:
        """A boto3 S3 client for the store (one per process: clients do not cross a fork)."""
        pid = os.getpid()
        if pid not in self._clients:
            import boto3
            from botocore.config import Config

            self._clients[pid] = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint,
                config=Config(retries={"max_attempts": 5, "mode": "standard"}),
            )
        return self._clients[pid]

    def exists(self, relative: str | os.PathLike[str]) -> bool:
        """Whether ``relative`` is stored (a file of the home, without a store)."""
        if self.storage is None:
            return (self.root / _relative(relative)).is_file()
        return self._head(_relative(relative)) is not None

    def missing(self, relatives: Iterable[str]) -> set[str]:
        """Those of ``relatives`` (files of ``files/``) that are not stored: one listing of the
        store for all of them, or a look at each local file."""
        wanted = {_relative(r) for r in relatives}
        if self.storage is None:
            return {r for r in wanted if not (self.root / r).is_file()}
        stored = {f"files/{name}" for name in self.stored_files("files")} if wanted else set()
        return wanted - stored

    def _head(self, relative: str) -> dict[str, Any] | None:
        """The stored object's HEAD answer, None when there is none."""
        bucket, key = self._bucket_key(relative)
        try:
            return self.client().head_object(Bucket=bucket, Key=key)
        except self.client().exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(f"{self.url(relative)}: cannot look up: {error}") from error

    @contextmanager
    def lock(self, name: str, wait: float, on_wait: Waiting | None = None) -> Iterator[None]:
        """Hold the home's lock ``name`` for the block, waiting at most ``wait`` seconds for it
        (:class:`~skyassets.lake.lease.LockBusy` after that): a file lock ``.<name>.lock`` in the
        local folder, and with a store also the lease ``.<name>.lock`` beside the stored layout, so
        that every machine sharing the store takes its turn. ``on_wait`` hears who holds it, once,
        when it is not free at once."""
        started = time.monotonic()
        heard: list[str] = []

        def once(held: str) -> None:  # one word for both stages: to its caller it is one wait
            if on_wait is not None and not heard:
                heard.append(held)
                on_wait(held)

        with file_lock(self.root / f".{name}.lock", wait, once):
            if self.storage is None:
                yield
                return
            bucket, key = self._bucket_key(f".{name}.lock")
            left = max(0.0, wait - (time.monotonic() - started))
            with store_lease(self.client(), bucket, key, left, on_wait=once):
                yield

    @contextmanager
    def replacing(self, relative: str | os.PathLike[str], *, first: Callable[[], object] | None = None
                  ) -> Iterator[Path]:
        """A private folder in which to write files that replace those of the folder ``relative``
        together (a target's mosaics, one per band): when the block ends without an error each is
        moved into place and stored; after an error none is, and the folder keeps its old set. A
        reader never finds some bands remade and others not, nor a file half written by a run
        making the same products at the same time. ``first`` runs before anything is moved (when
        anything is): it removes what describes the old set (the table's rows), so that a stop
        between the moves and the new description leaves none rather than a wrong one. With a
        store each upload is atomic, and the uploads follow the moves. A private folder left by
        a process killed outright is removed by a later one, once it is a day old."""
        relative = _relative(relative)
        folder = self.root / relative
        folder.mkdir(parents=True, exist_ok=True)
        for left in folder.glob(".replacing-*"):
            try:
                if left.is_dir() and time.time() - left.stat().st_mtime > STALE_STAGING_SECONDS:
                    shutil.rmtree(left, ignore_errors=True)
            except OSError:  # removed meanwhile by another run
                continue
        staging = Path(tempfile.mkdtemp(prefix=".replacing-", dir=folder))
        try:
            yield staging
            names = sorted(p.name for p in staging.iterdir() if p.is_file())
            if names and first is not None:
                first()
            for name in names:
                os.replace(staging / name, folder / name)
            for name in names:
                self.commit(f"{relative}/{name}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def remove_folder(self, relative: str | os.PathLike[str]) -> int:
        """Delete the folder ``relative`` of the home: its working copy and, with a store, every
        object under its prefix (a retired target's products); returns the objects deleted."""
        relative = _relative(relative)
        shutil.rmtree(self.root / relative, ignore_errors=True)
        if self.storage is None:
            return 0
        bucket, prefix = self._bucket_key(relative)
        keys = [obj["Key"] for page in self.client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix + "/") for obj in page.get("Contents", [])]
        self._delete_objects(bucket, keys)
        return len(keys)

    def remove_files(self, relatives: Iterable[str | os.PathLike[str]]) -> None:
        """Delete files of the home (a landed file's copy that left its partition): their working
        copies and, with a store, their objects; a file already gone is no error."""
        paths = [_relative(r) for r in relatives]
        for relative in paths:
            (self.root / relative).unlink(missing_ok=True)
        for folder in sorted({(self.root / r).parent for r in paths}, key=lambda f: len(f.parts), reverse=True):
            # an observation's folder its last file left goes too; ``files`` itself stays
            while folder.is_relative_to(self.files) and folder != self.files:
                try:
                    folder.rmdir()
                except OSError:  # not empty (or already gone): the folders above it stay too
                    break
                folder = folder.parent
        if self.storage is None or not paths:
            return
        bucket = self._bucket_key(paths[0])[0]
        self._delete_objects(bucket, [self._bucket_key(relative)[1] for relative in paths])

    def _delete_objects(self, bucket: str, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # the most one request deletes
            answer = self.client().delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StorageError(f"s3://{bucket}/{first.get('Key')}: not deleted: {first.get('Message')}")

    def put_bytes(self, relative: str | os.PathLike[str], data: bytes) -> str:
        """Store ``data`` at ``relative`` in one verified request (the store checks its SHA-256); its URL.

        Without a store the file is written under a temporary name and renamed into place."""
        relative = _relative(relative)
        if self.storage is None:
            target = self.root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name[:64]}.{uuid.uuid4().hex}.tmp")  # fits any name
            try:
                tmp.write_bytes(data)
                tmp.replace(target)
            finally:
                tmp.unlink(missing_ok=True)
            return str(target)
        digest = hashlib.sha256(data).digest()
        bucket, key = self._bucket_key(relative)
        answer = self.client().put_object(
            Bucket=bucket, Key=key, Body=data, ChecksumSHA256=base64.b64encode(digest).decode(),
            Metadata={SHA256_META: digest.hex()},
        )
        if not _verified(answer, hashlib.md5(data, usedforsecurity=False).hexdigest(), digest.hex()):
            raise StorageError(f"{self.url(relative)}: the store's ETag {answer.get('ETag')} is not the data's")
        return self.url(relative)

    def commit(self, relative: str | os.PathLike[str], sha256: str | None = None, *, stamped: bool = False) -> str:
        """Store the local file ``root/relative`` (just written there) and return where it is stored.

        Without a store the file is already in place. With one it is uploaded, each part checked by
        the store, and its length and digest read back; ``sha256`` (its known digest) saves hashing
        it again. The local copy stays in the working copy, until :meth:`trim`; ``stamped`` gives it
        the stored object's time, so :meth:`fresh_copy` takes it as current."""
        relative = _relative(relative)
        local = self.root / relative
        if self.storage is None:
            if not local.is_file():
                raise StorageError(f"{local}: no such file to store")
            return str(local)
        from boto3.s3.transfer import TransferConfig

        size = local.stat().st_size
        digest = sha256 or sha256_file(local)
        etag = expected_etag(local)
        bucket, key = self._bucket_key(relative)
        try:
            self.client().upload_file(
                str(local), bucket, key,
                ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {SHA256_META: digest}},
                Config=TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE),
            )
            head = self.client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except Exception as error:  # botocore's errors share no base class with OSError
            raise StorageError(f"{local}: upload to {self.url(relative)} failed: {error}") from error
        if head["ContentLength"] != size or not _verified(head, etag, digest):
            raise StorageError(
                f"{self.url(relative)}: stored {head['ContentLength']} bytes with ETag {head.get('ETag')}, "
                f"not the {size} bytes of {local} (ETag {etag})"
            )
        if stamped:  # the working copy of what is stored, as fresh_copy recognises it
            os.utime(local, ns=(time.time_ns(), _ns(head["LastModified"])))
        return self.url(relative)

    def copy_in(self, source: str, relative: str | os.PathLike[str], sha256: str | None = None) -> bool:
        """Store ``relative`` by having the store copy the object ``source`` (``s3://bucket/key`` on
        the same service) into place, object to object, instead of uploading the working copy
        ``root/relative`` that was fetched from it and verified. The copy counts once its length
        and ETag (or SHA-256) read back as the working copy's. False, with nothing left half done,
        when the store will not copy (another service, no read access to the source) or copied
        something else; the caller then uploads with :meth:`commit`."""
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        relative = _relative(relative)
        local = self.root / relative
        if self.storage is None or not source.startswith("s3://") or not local.is_file():
            return False
        source_bucket, _, source_key = source[5:].partition("/")
        digest = sha256 or sha256_file(local)
        bucket, key = self._bucket_key(relative)
        try:
            self.client().copy(
                {"Bucket": source_bucket, "Key": source_key}, bucket, key,
                ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {SHA256_META: digest},
                           "MetadataDirective": "REPLACE"},
                Config=TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE),
            )
            head = self.client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except (BotoCoreError, ClientError):
            return False
        if head["ContentLength"] != local.stat().st_size or not _verified(head, expected_etag(local), digest):
            self.client().delete_object(Bucket=bucket, Key=key)
            return False
        return True

    def local(self, relative: str | os.PathLike[str], sha256: str | None = None) -> Path:
        """A local file holding ``relative``: the file itself without a store, else the working copy,
        fetched from the store when missing and checked against ``sha256`` (or the digest recorded
        with the object)."""
        relative = _relative(relative)
        local = self.root / relative
        if self.storage is None:
            return local
        sha256 = sha256 if isinstance(sha256, str) and sha256 else None  # a catalogue's NaN or empty
        if local.is_file():
            os.utime(local)  # recently used: trimmed last
            return local
        self._fetch(relative, local, sha256)
        return local

    def _fetch(self, relative: str, local: Path, sha256: str | None) -> dict:
        """Download ``relative`` to ``local`` (renamed into place once checked); the object's head."""
        bucket, key = self._bucket_key(relative)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name[:64]}.{uuid.uuid4().hex}.part")  # fits any name
        try:
            try:
                head = self.client().head_object(Bucket=bucket, Key=key)
                self.client().download_file(bucket, key, str(tmp))
            except Exception as error:
                raise StorageError(f"{self.url(relative)}: cannot fetch: {error}") from error
            want = sha256 or head.get("Metadata", {}).get(SHA256_META)
            got = sha256_file(tmp)
            if tmp.stat().st_size != head["ContentLength"] or (want is not None and got != want):
                raise StorageError(f"{self.url(relative)}: fetched copy has SHA-256 {got}, expected {want}")
            tmp.replace(local)
        finally:
            tmp.unlink(missing_ok=True)
        return head

    def holds_catalogue(self) -> bool:
        """Whether the home holds a lake or a published catalogue: a command that reads the catalogue
        of an empty home (the wrong folder, a mistyped store prefix) says so rather than read nothing."""
        if self.storage is None:
            return self.lake.is_dir() or (self.root / "catalog.duckdb").exists()
        if self.exists("catalog.duckdb"):
            return True
        bucket, prefix = self._bucket_key("lake")
        try:
            return bool(self.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/", MaxKeys=1).get("KeyCount"))
        except self.client().exceptions.ClientError as error:
            raise StorageError(f"{self.url('lake')}: cannot list: {error}") from error

    def stored_files(self, relative: str | os.PathLike[str]) -> dict[str, tuple[int, int, int]]:
        """Every object under the folder ``relative`` of the store, by its path inside that folder:
        (mtime_ns, size, tag), the tag a number drawn from the ETag, so a rewrite within the second
        the modification time counts in is still seen. Needs a store."""
        if self.storage is None:
            raise ValueError("stored_files needs a home on a store")
        bucket, prefix = self._bucket_key(_relative(relative))
        found: dict[str, tuple[int, int, int]] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            for obj in page.get("Contents", []):
                tag = hashlib.blake2b(obj.get("ETag", "").encode(), digest_size=7).digest()
                found[obj["Key"][len(prefix) + 1:]] = (
                    _ns(obj["LastModified"]), obj["Size"], int.from_bytes(tag, "big"))
        return found

    def get_bytes(self, relative: str | os.PathLike[str]) -> tuple[bytes, int] | None:
        """A stored object's content and mtime_ns, read in one request (so whole, old or new, while
        it is replaced) and checked against the SHA-256 recorded with it; None when there is none."""
        bucket, key = self._bucket_key(_relative(relative))
        try:
            answer = self.client().get_object(Bucket=bucket, Key=key)
            data = answer["Body"].read()
        except self.client().exceptions.NoSuchKey:
            return None
        except Exception as error:
            raise StorageError(f"{self.url(relative)}: cannot fetch: {error}") from error
        want = answer.get("Metadata", {}).get(SHA256_META)
        if want is not None and hashlib.sha256(data).hexdigest() != want:
            raise StorageError(f"{self.url(relative)}: fetched content is not the SHA-256 {want} it was stored with")
        return data, _ns(answer["LastModified"])

    def fresh_copy(self, relative: str | os.PathLike[str]) -> Path | None:
        """A local copy of ``relative`` as it is stored now (the catalog another machine
        published): fetched again when the stored object's length or time differs from the working
        copy's, renamed into place so open readers keep the old one. None when nothing is stored;
        without a store, the file when it exists."""
        relative = _relative(relative)
        local = self.root / relative
        if self.storage is None:
            return local if local.is_file() else None
        head = self._head(relative)
        if head is None:
            return None
        if not (local.is_file() and (local.stat().st_size, local.stat().st_mtime_ns) == _identity(head)):
            head = self._fetch(relative, local, None)
            os.utime(local, ns=(time.time_ns(), _identity(head)[1]))
        return local

    def trim(self) -> int:
        """Remove working copies of stored files, least recently used first, until ``files/`` and
        ``products/`` take at most ``cache_bytes``; returns the bytes freed. No-op without a store."""
        if self.storage is None:
            return 0
        entries = []
        for folder in (self.files, self.root / "products"):
            if folder.is_dir():
                for path in folder.rglob("*"):
                    hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)  # a run's own
                    if path.is_file() and not hidden and not path.name.endswith(".sha256"):
                        st = path.stat()
                        entries.append((st.st_mtime_ns, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, path in sorted(entries, key=lambda e: e[0]):
            if total - freed <= self.cache_bytes:
                break
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".sha256").unlink(missing_ok=True)
            freed += size
        return freed
