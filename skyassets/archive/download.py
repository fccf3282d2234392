"""Resumable, verified, parallel downloads of archive files, from S3 first and MAST HTTP second.

astroquery cannot resume, has no read timeout, only checks sizes and loses a whole batch on one
dropped connection, so skyassets fetches the files itself:

* every file streams into ``<final>.part``; a retry (in this process, or after the process was
  killed) asks for ``bytes=N-`` where N is the size of the ``.part`` and keeps the bytes only from
  a ``206`` starting at N for an object of the same size; a ``200`` restarts the file from zero.
  ``<final>.part.json`` remembers the source, ETag, Last-Modified and size so a resumed range is
  conditional (``If-Range`` / ``IfMatch`` + ``IfUnmodifiedSince``) and a changed object restarts
  instead of being spliced; an object with neither validator is never resumed;
* a large file comes over several ranged connections at once (``DownloadConfig.connections``,
  ranges of ``segment_size``), written in place in a preallocated ``.part``; the ranges done are
  recorded in ``.part.json`` so a retry fetches only the missing ones, and one thread hashes the
  file in order as its complete prefix grows, so the file is verified once without a second read;
* ``Content-MD5`` (of a body) and ``x-amz-checksum-sha256`` (of the object) are checked when a
  server sends them; a compressed body (``Content-Encoding``) is refused, never stored;
* a transfer slower than ``min_speed`` over ``min_speed_window`` is cut and retried, and
  ``deadline`` bounds one file's whole fetch, so a trickling server cannot hold a batch forever;
* a finished file is checked (size, MD5 against a plain ETag, FITS ``CHECKSUM``/``DATASUM``, of the
  decompressed stream for a ``.fits.gz`` or ``.fits.bz2``) before it is renamed into place, and its SHA-256 is
  written beside it as ``<final>.sha256`` (``sha256sum -c`` format); a file that fails a check is
  moved aside as ``<final>.corrupt`` (removed once a later try puts a verified file in place);
* a file in place with its ``.sha256`` is not fetched again if its size and mtime are those recorded
  (in ``.<final>.verified``) when it was verified; otherwise (or with ``verify_existing``) it is
  hashed and checked again;
* names ending in a suffix of these working files are refused, so a product never collides with them;
* one file's failure never stops the others: every request gets a :class:`FileResult`.

This module does not import Dagster; progress goes to a plain callback.
"""

from __future__ import annotations

import bz2
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
import zlib
from base64 import b64decode
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO

import requests
import urllib3
from requests.adapters import HTTPAdapter

from skyassets.fits import limits
from skyassets.fits.header import BLOCK
from skyassets.fits.verify import FitsCheck, StreamingFitsVerifier, verify_fits
from skyassets.lake.names import MAX_FILENAME_LENGTH, InvalidNameError, safe_filename
from skyassets.landing.zone import FITS_SUFFIXES, open_regular

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
STATE_SUFFIX = ".part.json"
SHA256_SUFFIX = ".sha256"
CORRUPT_SUFFIX = ".corrupt"
LOCK_SUFFIX = ".lock"
VERIFIED_SUFFIX = ".verified"
TMP_SUFFIX = ".tmp"
# A product name ending in one of these would collide with another file's working files.
RESERVED_SUFFIXES = (PART_SUFFIX, STATE_SUFFIX, SHA256_SUFFIX, CORRUPT_SUFFIX, LOCK_SUFFIX, VERIFIED_SUFFIX,
                     TMP_SUFFIX)
# The longest name derived from a product's name: ``.<name>.verified.tmp`` / ``<name>.part.json.tmp``.
_DERIVED_EXTRA = max(len(STATE_SUFFIX + TMP_SUFFIX), 1 + len(VERIFIED_SUFFIX + TMP_SUFFIX))

_HASH_CHUNK = 8 << 20
_READ_BACK_BUFFERS = 3  # chunks of _HASH_CHUNK a ranged download reads back ahead of its checks at most
_RANGE_WRITE = 1 << 20  # bytes a range connection gathers before one positioned write
_MAX_WRITE_PIECES = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 16  # buffers per pwritev
# A file's first connection is timed for this long (from its first byte) before the others may open:
# over a fast link a byte count is reached within a scheduling hiccup, which would look like a slow
# link and open connections that only compete for the CPU. One under half the fast speed after the
# short window is plainly capped, and the others open then.
_PROBE_SECONDS = 0.25
_PROBE_SHORT_SECONDS = 0.02
# A connection with nothing left to take splits the run another connection will take longest to
# finish, when a new request's answer would come sooner than half of that run and it is at least
# twice this long: over a link that caps each connection, no connection idles while another one
# finishes a whole range alone (aria2c's "split on idle"), and over a long round trip nothing is
# split that the connection holding it finishes sooner.
_SPLIT_MIN = 256 << 10
# A streamed chunk of at least this many bytes that holds only zeros is left a hole in the copy (the
# file extended past it, not written): a sparse source, or FITS data padded with zeros, stays sparse.
_HOLE_MIN = 64 << 10
_ZEROS = bytes(_HOLE_MIN)
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_PLAIN_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class FileRequest:
    """One file to fetch: its archive name, where it goes, and where it can come from."""

    filename: str
    dest_dir: Path
    http_url: str | None = None
    s3_key: str | None = None
    expected_size: int | None = None
    # A file on this machine (a landing zone): copied through the same resume and checks.
    local_path: Path | None = None

    def __post_init__(self) -> None:
        # Tables read back from Parquet give NaN, not None, for a missing key or URL.
        for name in ("http_url", "s3_key"):
            if not isinstance(getattr(self, name), str | None):
                object.__setattr__(self, name, None)


@dataclass(frozen=True)
class DownloadConfig:
    """Knobs of a batch. ``retries`` counts attempts after the first one, per file."""

    parallel: int = 4
    connect_timeout: float = 10
    read_timeout: float = 60
    retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_after_max: float = 300.0  # the longest Retry-After waited as asked, as archive calls do
    chunk_size: int = 4 << 20
    s3_bucket: str = "stpubdata"
    s3_endpoint: str | None = None
    # Anonymous for MAST's public bucket; signed (the usual AWS credentials) for a private one.
    s3_anonymous: bool = True
    prefer_s3: bool = True
    # Hash and FITS-check a file already in place even if its size and mtime are those recorded.
    verify_existing: bool = False
    progress_interval: float = 2.0
    fsync: bool = False
    # "auto": compare the MD5 with a plain ETag unless the FITS CHECKSUM/DATASUM keywords already
    # cover every HDU (then MD5, slower than a loopback transfer, would only repeat that check);
    # "always": hash MD5 while streaming and compare it whatever the file holds.
    md5: str = "auto"
    # A MAST API token, sent as ``Authorization: token ...`` with HTTP downloads (exclusive-access
    # data); never sent to S3, which holds public data only, and never shown in a repr.
    mast_token: str | None = field(default=None, repr=False)
    # One large file over several ranged connections at once, as real links cap each connection:
    # a file gets min(connections, size // segment_size) connections (one below two segments),
    # each fetching ``segment_size`` ranges in order.
    connections: int = 8
    segment_size: int = 32 << 20
    # The others open only once the first is seen slower than ``fast_stream`` bytes/s (timed from
    # its first byte over 0.25 s at least): a connection faster than that is not capped by the link, and more
    # of them would only compete for the CPU. 0: open them all at once.
    fast_stream: float = 200e6
    # A transfer below ``min_speed`` bytes/s over ``min_speed_window`` seconds is cut (and retried);
    # ``deadline`` (seconds, None: none) bounds one file's whole fetch, retries included.
    min_speed: float = 1024.0
    min_speed_window: float = 30.0
    deadline: float | None = None


@dataclass(frozen=True)
class FileResult:
    """What happened to one request.

    ``fits_checksum`` is "ok", "absent", "bad", "not-fits", or "unchecked" (skipped without
    ``verify_existing``, or failed before the file was complete). ``md5`` is set for a file
    fetched in this run whose plain-MD5 ETag it was checked against (see ``DownloadConfig.md5``).
    ``sha256_checked``: the file's SHA-256 matched the whole object's that the server sent (S3's
    ``ChecksumSHA256``, ``x-amz-checksum-sha256`` over HTTP); False where none came (objects
    stored without one, a multipart object's composite checksum, S3 range reads).
    """

    filename: str
    path: Path | None
    status: str  # "downloaded" | "skipped" | "failed"
    size: int
    sha256: str | None
    md5: str | None
    source: str | None  # "s3" | "http" | "local" | None
    seconds: float
    bytes_per_second: float
    bytes_fetched: int
    attempts: int
    resumed_from: int
    fits_checksum: str
    error: str | None
    sha256_checked: bool = False


@dataclass(frozen=True)
class Progress:
    """A progress report for the whole batch; ``message`` is a ready-to-log line."""

    bytes_done: int
    bytes_total: int | None
    bytes_per_second: float
    eta_seconds: float | None
    files_done: int
    files_total: int
    message: str


class _Retry(Exception):
    """This attempt failed in a way another attempt may not; ``wait`` is a server-given delay."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


class _Fatal(Exception):
    """Retrying cannot help (404, size disagreement, disk error)."""


class _Corrupt(Exception):
    """The complete file failed a content check; it is moved aside and fetched again from zero."""


class _S3Unusable(Exception):
    """S3 cannot serve this file now; the file continues over HTTP, or, with S3 its only source, is
    asked for again no sooner than ``wait`` (a busy store's Retry-After)."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


class _Changed(Exception):
    """The answer does not continue the bytes on disk (another object, size or range): restart."""


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _norm_etag(etag: str | None) -> str | None:
    if not etag:
        return None
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"').lower()


def _is_weak(etag: str | None) -> bool:
    return bool(etag) and etag.strip().startswith("W/")


def _zeros(chunk: bytes) -> bool:
    """Whether ``chunk`` holds only zero bytes: compared a block at a time, so that a chunk of data
    costs the comparison of its first block only."""
    step = len(_ZEROS)
    whole = len(chunk) - len(chunk) % step
    return (all(chunk.startswith(_ZEROS, at) for at in range(0, whole, step))
            and chunk.endswith(_ZEROS[: len(chunk) - whole]))


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that readers (and a later run after a kill) see the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def read_sha256_sidecar(path: Path) -> str | None:
    """The hex digest recorded in ``<final>.sha256`` for ``path``, or None if missing or unreadable."""
    try:
        text = path.with_name(path.name + SHA256_SUFFIX).read_text(encoding="utf-8")
    except OSError:
        return None
    digest = text.split(maxsplit=1)[0].lower() if text.strip() else ""
    return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None


def _hash_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    return _hash_file(path, "sha256")


def _plain_md5(etag: str | None) -> bool:
    """Whether an ETag is the MD5 of the object (multipart S3 ETags carry a ``-N`` suffix)."""
    norm = _norm_etag(etag)
    return bool(norm and _PLAIN_MD5_RE.match(norm))


# Compressions of a whole FITS file that are read as they arrive (by the name's last suffix), and how
# each stream starts.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bzip2"}
_MAGIC = {"gzip": b"\x1f\x8b", "bzip2": b"BZh"}
_INFLATE_CHUNK = 16 << 20  # decompressed bytes handed to the FITS check at a time; bounds memory


def compression_of(name: str) -> str | None:
    """"gzip" for ``x.fits.gz``, "bzip2" for ``x.fits.bz2``, None for a file read as it is."""
    lower = name.lower()
    return next((kind for suffix, kind in COMPRESSIONS.items() if lower.endswith(suffix)), None)


class CompressedFitsVerifier:
    """FITS ``CHECKSUM``/``DATASUM`` checks of a gzip- or bzip2-compressed FITS file, fed its
    compressed bytes.

    MAST serves some products as ``.fits.gz`` (GALEX, many HLSPs), SDSS its frames as
    ``.fits.bz2``; their checksums cover the decompressed file, so the stream is inflated as it
    arrives and fed to a :class:`StreamingFitsVerifier`. A broken or cut stream (the codec's own
    CRCs and end marker) is "bad" like a broken FITS file, and so is one that inflates past
    ``max_bytes`` (by default ``SKYASSETS_MAX_DECOMPRESSED_BYTES``, which the catalogue applies
    too): a compression bomb is refused after that many bytes, not inflated whole. A file of
    several streams (``pigz``, ``pbzip2``) is read as one, as gzip, bzip2 and astropy read it.
    """

    def __init__(self, name: str, max_bytes: int | None = None) -> None:
        kind = compression_of(name)
        if kind is None:
            raise ValueError(f"{name}: not named as a compressed file ({', '.join(COMPRESSIONS)})")
        self.name, self.kind = name, kind
        self._fits = StreamingFitsVerifier(name[: name.rfind(".")])
        self._inflate = self._decompressor()
        self._problem: str | None = None
        self._head = b""  # the first bytes, which say whether it is the compression its name says
        self._max_bytes = max_bytes if max_bytes is not None else limits.current().max_decompressed_bytes
        self._inflated = 0

    def _decompressor(self) -> Any:
        return zlib.decompressobj(wbits=31) if self.kind == "gzip" else bz2.BZ2Decompressor()

    def _unread(self) -> bytes:
        """Input the decompressor handed back: the rest of a capped call, or what follows a stream's end."""
        if self._inflate.eof:
            return self._inflate.unused_data
        return self._inflate.unconsumed_tail if self.kind == "gzip" else b""

    def _holding(self) -> bool:
        """Whether bzip2's decompressor holds output from earlier input (it buffers it, zlib does not)."""
        return self.kind == "bzip2" and not self._inflate.eof and not self._inflate.needs_input

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._problem is not None:
            return
        pending = bytes(data)
        if len(self._head) < 3:
            self._head += pending[: 3 - len(self._head)]
        try:
            while pending or self._holding():
                if self._inflate.eof:  # a further stream, or zero padding after the last one
                    if not any(pending):
                        return
                    self._inflate = self._decompressor()
                out = self._inflate.decompress(pending, _INFLATE_CHUNK)
                self._inflated += len(out)
                if self._inflated > self._max_bytes:
                    self._problem = (f"{self.name}: inflates to more than {self._max_bytes} bytes "
                                     f"({limits.MAX_DECOMPRESSED_BYTES_ENV}); not read further")
                    return
                if out:
                    self._fits.update(out)
                pending = self._unread()
        except (zlib.error, OSError, EOFError) as exc:
            self._problem = f"{self.name}: not a readable {self.kind} stream: {exc}"

    def result(self) -> FitsCheck:
        compressed = self._head.startswith(_MAGIC[self.kind])
        if self._problem is not None:
            return FitsCheck("bad" if compressed else "not-fits", problems=[self._problem])
        if compressed and not self._inflate.eof:
            return FitsCheck("bad", problems=[f"{self.name}: {self.kind} stream ends before its end marker "
                                              "(truncated)"])
        return self._fits.result()


def token_header(token: str) -> dict[str, str]:
    """How MAST's download service takes an API token."""
    return {"Authorization": f"token {token}"}


def fits_verifier(name: str) -> StreamingFitsVerifier | CompressedFitsVerifier:
    """The streaming FITS check for a file of this name (inflating a ``.gz`` or ``.bz2`` first)."""
    return CompressedFitsVerifier(name) if compression_of(name) else StreamingFitsVerifier(name)


def verify_file(path: Path, name: str | None = None) -> FitsCheck:
    """:func:`skyassets.fits.verify.verify_fits` for a file on disk, ``.fits.gz`` and ``.fits.bz2`` included."""
    name = name or path.name
    if compression_of(name) is None:
        return verify_fits(path, name)
    verifier = CompressedFitsVerifier(name)
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(_HASH_CHUNK):
            verifier.update(chunk)
    return verifier.result()


class _Digests:
    """The checks of a byte stream that need every byte: SHA-256 (always), MD5 (only when an ETag
    can check it) and FITS ``CHECKSUM``/``DATASUM``, each fed on its own thread.

    hashlib and numpy release the GIL on large buffers, so the checks overlap the network and the
    disk instead of adding to them (MD5 alone runs slower than a loopback transfer), and a complete
    file is never read again to verify it.
    """

    _IN_FLIGHT = 8  # chunks queued per check at most; bounds memory
    # Chunks smaller than this are checked on the calling thread while no thread has been started:
    # a small file is one short chunk, and starting threads for it costs more than the checks.
    _INLINE_BYTES = 1 << 20

    def __init__(self, name: str, md5: bool) -> None:
        self._hashes: list[Any] = [hashlib.sha256()] + ([hashlib.md5()] if md5 else [])
        self._fits = fits_verifier(name)
        self._feeds: list[Callable[[bytes], None]] = [h.update for h in self._hashes] + [self._fits.update]
        self._pools: list[ThreadPoolExecutor] = []
        self._pending: deque[Future[None]] = deque()

    def update(self, data: bytes | memoryview) -> None:
        if not self._pools and len(data) < self._INLINE_BYTES:
            for feed in self._feeds:
                feed(data)
            return
        if not self._pools:
            self._pools = [ThreadPoolExecutor(1, thread_name_prefix="skyassets-check") for _ in self._feeds]
        for feed, pool in zip(self._feeds, self._pools, strict=True):
            self._pending.append(pool.submit(feed, data))
        self.settle(self._IN_FLIGHT)

    def settle(self, updates_left: int) -> None:
        """Wait until the checks have taken all but the last ``updates_left`` updates, so that the
        buffers of the earlier ones may be filled again."""
        while len(self._pending) > updates_left * len(self._feeds):
            self._pending.popleft().result()

    def sha256(self) -> str:
        self.settle(0)
        return self._hashes[0].hexdigest()

    def md5(self) -> str | None:
        self.settle(0)
        return self._hashes[1].hexdigest() if len(self._hashes) > 1 else None

    def fits(self) -> FitsCheck:
        """The FITS verification of the bytes fed so far, taken as the whole file."""
        self.settle(0)
        return self._fits.result()

    def close(self) -> None:
        self.settle(0)
        for pool in self._pools:
            pool.shutdown()
        self._pools = []


class _Tracker:
    """Byte-level progress of a batch, reported through the callback at a bounded rate."""

    def __init__(self, jobs: list[_Job], interval: float, callback: Callable[[Progress], None] | None):
        self._jobs = jobs
        self._interval = interval
        self._callback = callback
        self._lock = threading.Lock()
        self._emit_lock = threading.Lock()
        self._start = time.monotonic()
        self._last = self._start
        self._fetched = 0
        self._files_done = 0
        self._summed_at = float("-inf")
        self._sums: tuple[int, int | None, int] = (0, None, 0)

    def fetched(self, n: int) -> None:
        with self._lock:
            self._fetched += n
            now = time.monotonic()
            due = now - self._last >= self._interval
            if due:
                self._last = now
        if due:
            self.emit(None)

    def file_done(self, message: str) -> None:
        with self._lock:
            self._files_done += 1
        self.emit(message)

    def emit(self, message: str | None) -> None:
        if self._callback is None:
            return
        with self._lock:
            now = time.monotonic()
            done, total, files = self._sums
            if now - self._summed_at >= self._interval or self._files_done >= files:
                # Summed over the jobs at most once per interval, and at the end: a batch of thousands
                # of files would otherwise sum them all again for every file (quadratic).
                jobs = [j for j in self._jobs if j.status != "duplicate"]
                done = sum(j.on_disk for j in jobs)
                sizes = [j.total_size for j in jobs if j.status != "failed"]
                total = None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)
                files = len(jobs)
                self._sums, self._summed_at = (done, total, files), now
            speed = self._fetched / max(now - self._start, 1e-9)
            files_done = self._files_done
        eta = (max(total - done, 0) / speed) if total is not None and speed > 0 else None
        summary = f"{_fmt_bytes(done)}"
        if total is not None:
            summary += f" of {_fmt_bytes(total)} ({100 * done / total if total else 100:.0f}%)"
        summary += f", {_fmt_bytes(speed)}/s"
        if eta is not None:
            summary += f", ETA {eta:.0f} s"
        summary += f", {files_done}/{files} files"
        report = Progress(
            bytes_done=done,
            bytes_total=total,
            bytes_per_second=speed,
            eta_seconds=eta,
            files_done=files_done,
            files_total=files,
            message=f"{message} [{summary}]" if message else summary,
        )
        with self._emit_lock:
            try:
                self._callback(report)
            except Exception:  # a broken progress sink must not fail downloads
                log.exception("progress callback failed")


class _Body:
    """A response being streamed: where it starts, the object's size and validators, its chunks,
    and the digests the server sent: ``content_md5`` of this body, ``sha256`` of the whole object."""

    def __init__(self, start: int, total: int | None, etag: str | None, chunks: Iterator[bytes],
                 close: Callable[[], None], *, last_modified: str | None = None, ranged: bool = False,
                 length: int | None = None, content_md5: str | None = None, sha256: str | None = None):
        self.start = start
        self.total = total
        self.etag = etag
        self.chunks = chunks
        self.close = close
        self.last_modified = last_modified
        self.ranged = ranged
        self.length = length
        self.content_md5 = content_md5
        self.sha256 = sha256


def _b64_hex(value: str | None) -> str | None:
    """A base64 digest header (``Content-MD5``, ``x-amz-checksum-sha256``) as hex; None if absent,
    composite (multipart ``...-N``) or unreadable."""
    if not value or "-" in value:
        return None
    try:
        return b64decode(value.strip(), validate=True).hex()
    except ValueError:
        return None


class _Pace:
    """Cuts a transfer that trickles: below ``min_speed`` over a window, or past the file's deadline."""

    def __init__(self, job: _Job, config: DownloadConfig):
        self._job = job
        self._config = config
        self._mark = time.monotonic()
        self._bytes = 0
        self._seen = 0

    def check(self, n: int) -> None:
        self._seen += n
        now = time.monotonic()
        cfg = self._config
        if self._job.deadline_at is not None and now > self._job.deadline_at:
            raise _Fatal(f"not complete after the deadline of {cfg.deadline:g} s")
        if cfg.min_speed > 0 and now - self._mark >= cfg.min_speed_window:
            rate = (self._seen - self._bytes) / (now - self._mark)
            if rate < cfg.min_speed:
                raise _Retry(f"transfer too slow: {rate:.0f} B/s over {now - self._mark:.1f} s "
                             f"(minimum {cfg.min_speed:.0f} B/s)")
            self._mark, self._bytes = now, self._seen


class _Job:
    """One file's state across attempts: paths, hashes of the ``.part`` prefix, counters."""

    def __init__(self, index: int, request: FileRequest, stream_md5: bool = True):
        self.index = index
        self.request = request
        self.stream_md5 = stream_md5
        self.name: str = request.filename
        self.final: Path | None = None
        self.status = "pending"
        self.total_size: int | None = request.expected_size
        self.on_disk = 0
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.validators_from: str | None = None  # the source whose answer gave etag/last_modified
        self.expected_sha256: str | None = None  # x-amz-checksum-sha256 of the object, when sent
        self.deadline_at: float | None = None
        self.ranges_refused = False
        self.source: str | None = None
        self.s3_failed = False
        self.attempts = 0
        self.bytes_fetched = 0
        self.resumed_from = 0
        self.digests = _Digests(self.name, md5=False)
        self.hashed = 0
        self.fits = "unchecked"
        self.md5: str | None = None

    @property
    def part(self) -> Path:
        assert self.final is not None
        return self.final.with_name(self.final.name + PART_SUFFIX)

    @property
    def state_file(self) -> Path:
        assert self.final is not None
        return self.final.with_name(self.final.name + STATE_SUFFIX)

    @property
    def sha_file(self) -> Path:
        assert self.final is not None
        return self.final.with_name(self.final.name + SHA256_SUFFIX)

    def reset(self) -> None:
        """Forget the ``.part``: restart this file from byte zero."""
        _unlink(self.part)
        _unlink(self.state_file)
        self.restart_digests(md5=False)
        self.hashed = 0
        self.on_disk = 0
        self.etag = None
        self.last_modified = None
        self.validators_from = None
        self.expected_sha256 = None
        self.total_size = self.request.expected_size

    def resumable(self, source: str) -> bool:
        """Whether a range of the object can be asked for conditionally: a strong ETag, or a
        Last-Modified from this same source (another source dates its copy differently)."""
        return bool((self.etag and not _is_weak(self.etag))
                    or (self.last_modified and self.validators_from == source))

    def take_validators(self, body: _Body, source: str) -> str | None:
        """Adopt the validators of ``body`` if none are held; else the reason they disagree, if they do."""
        if self.etag is None and self.last_modified is None:
            self.etag, self.last_modified, self.validators_from = body.etag, body.last_modified, source
            return None
        if self.etag and body.etag and _norm_etag(self.etag) != _norm_etag(body.etag):
            return f"object changed (ETag {body.etag} instead of {self.etag})"
        if (self.validators_from == source and self.last_modified and body.last_modified
                and self.last_modified != body.last_modified):
            return f"object changed (Last-Modified {body.last_modified} instead of {self.last_modified})"
        return None

    def load_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict):
            return None
        self.etag = state.get("etag") if isinstance(state.get("etag"), str) else None
        self.last_modified = state.get("last_modified") if isinstance(state.get("last_modified"), str) else None
        self.validators_from = state.get("validators_from") if isinstance(state.get("validators_from"), str) else None
        self.expected_sha256 = state.get("sha256") if isinstance(state.get("sha256"), str) else None
        if isinstance(state.get("size"), int):
            self.total_size = state["size"]
        return state

    def restart_digests(self, md5: bool) -> None:
        """Start the streamed checks over, for a stream that begins at byte zero of the ``.part``."""
        self.digests.close()
        self.digests = _Digests(self.name, md5=md5)

    def resume_offset(self) -> int:
        """Bytes of the ``.part`` to keep, hashing them first if this process has not yet.

        A ``.part`` without a readable state file cannot be matched to an object, so it is dropped.
        """
        try:
            size = self.part.stat().st_size
        except FileNotFoundError:
            self.reset()
            return 0
        state = self.load_state()
        if state is not None and isinstance(state.get("done"), list):
            # Left by a download over several connections: keep its complete prefix only.
            size = _prefix(_spans_from(state["done"]))
            os.truncate(self.part, size)
            self.hashed = min(self.hashed, size)
        if self.hashed != size:
            if state is None:
                self.reset()
                return 0
            if self.total_size is not None and size > self.total_size:
                self.reset()
                return 0
            self.restart_digests(md5=self.stream_md5 and _plain_md5(self.etag))
            with self.part.open("rb", buffering=0) as f:
                while chunk := f.read(_HASH_CHUNK):
                    self.digests.update(chunk)
            self.hashed = size
        self.on_disk = size
        return size

    def save_state(self, source: str, done: list[list[int]] | None = None) -> None:
        """Record what a later attempt needs to resume; ``done``: the byte ranges complete so far."""
        payload: dict[str, Any] = {
            "source": source,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "validators_from": self.validators_from,
            "sha256": self.expected_sha256,
            "size": self.total_size,
            "http_url": self.request.http_url,
            "s3_key": self.request.s3_key,
        }
        if done is not None:
            payload["done"] = done
        _write_atomic(self.state_file, json.dumps(payload))


def _spans_from(done: Any) -> dict[int, int]:
    """``[[start, end], ...]`` from a state file as start -> end, dropping malformed entries."""
    spans: dict[int, int] = {}
    for item in done if isinstance(done, list) else []:
        if (isinstance(item, list) and len(item) == 2 and all(isinstance(x, int) for x in item)
                and 0 <= item[0] < item[1]):
            spans[item[0]] = max(spans.get(item[0], 0), item[1])
    return spans


def _merged(spans: dict[int, int]) -> list[list[int]]:
    out: list[list[int]] = []
    for start in sorted(spans):
        end = spans[start]
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def _prefix(spans: dict[int, int]) -> int:
    """Where the complete prefix of the file ends."""
    frontier = 0
    for start in sorted(spans):
        if start > frontier:
            break
        frontier = max(frontier, spans[start])
    return frontier


def _missing(spans: dict[int, int], total: int, piece: int) -> list[tuple[int, int]]:
    """The byte ranges ``[start, end)`` not yet on disk, cut into pieces of at most ``piece`` bytes."""
    out: list[tuple[int, int]] = []
    pos = 0
    for start, end in [*_merged(spans), [total, total]]:
        while pos < min(start, total):
            stop = min(start, total, pos + piece)
            out.append((pos, stop))
            pos = stop
        pos = max(pos, end)
    return out


@dataclass
class _Claim:
    """One ranged request under way: it writes up to ``end`` (lowered when another connection
    splits it) and has received the bytes from ``start`` to ``held`` since ``first`` (the
    monotonic time of its first bytes)."""

    start: int
    end: int
    held: int
    first: float | None = None

    def seconds_left(self, now: float) -> float:
        """How long the rest takes at the rate so far (0 before any bytes: not yet known, not split)."""
        got = self.held - self.start
        if self.first is None or got <= 0 or now <= self.first:
            return 0.0
        return (self.end - self.held) * (now - self.first) / got


def _tapered(pieces: list[tuple[int, int]], connections: int, parts: int = 4,
             smallest: int = 256 << 10) -> list[tuple[int, int]]:
    """``pieces`` with the last ``connections`` of them cut in ``parts`` (none below ``smallest``
    bytes): over a capped link the connections then finish together, instead of all but one idling
    while the last whole segment comes in."""
    if connections < 2:
        return pieces
    out = pieces[:-connections]
    for start, end in pieces[-connections:]:
        step = max(smallest, -(-(end - start) // parts))
        out += [(a, min(a + step, end)) for a in range(start, end, step)]
    return out


class _Downloader:
    """Runs a batch: shared HTTP session and S3 client, progress, per-file attempt loop."""

    def __init__(self, config: DownloadConfig, tracker: _Tracker):
        self.config = config
        self.tracker = tracker
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self._pool_size(config), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # Compressed transfer would break byte offsets and sizes.
        self.session.headers["Accept-Encoding"] = "identity"
        self._s3: Any = None
        self._s3_lock = threading.Lock()
        self._s3_down: str | None = None  # why the endpoint is unreachable, once seen
        self._token_refused = False  # a 401 to the MAST token: no file of the batch is asked with it again

    @staticmethod
    def _pool_size(config: DownloadConfig) -> int:
        return max(config.parallel, 1) * max(config.connections, 1)

    # ----- sources -------------------------------------------------------------------------

    def _s3_client(self) -> Any:
        with self._s3_lock:
            if self._s3 is None:
                import boto3
                from botocore import UNSIGNED
                from botocore.config import Config

                cfg = self.config
                signing = {"signature_version": UNSIGNED} if cfg.s3_anonymous else {}
                self._s3 = boto3.session.Session().client(
                    "s3",
                    region_name="us-east-1",
                    endpoint_url=cfg.s3_endpoint,
                    config=Config(
                        **signing,
                        connect_timeout=cfg.connect_timeout,
                        read_timeout=cfg.read_timeout,
                        retries={"total_max_attempts": 1, "mode": "standard"},
                        max_pool_connections=self._pool_size(cfg),
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                    ),
                )
            return self._s3

    def _s3_location(self, key: str) -> tuple[str, str]:
        if key.startswith("s3://"):
            bucket, _, key = key[5:].partition("/")
            return bucket, key
        return self.config.s3_bucket, key.lstrip("/")

    def _open_s3(self, job: _Job, offset: int, end: int | None = None) -> _Body:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
        )

        assert job.request.s3_key is not None
        bucket, key = self._s3_location(job.request.s3_key)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "ChecksumMode": "ENABLED"}
        if offset or end is not None:
            kwargs["Range"] = f"bytes={offset}-{'' if end is None else end - 1}"
            if job.etag and not _is_weak(job.etag):
                kwargs["IfMatch"] = job.etag
            if job.last_modified and job.validators_from == "s3":
                with contextlib.suppress(TypeError, ValueError):  # a date we cannot read is not sent
                    kwargs["IfUnmodifiedSince"] = parsedate_to_datetime(job.last_modified)
        try:
            resp = self._s3_client().get_object(**kwargs)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "412") or status == 412:
                raise _Changed(f"S3 object s3://{bucket}/{key} changed since the .part began; restarting") from exc
            if code in ("InvalidRange", "416") or status == 416:
                raise _Changed(f"S3 refused range bytes={offset}- of s3://{bucket}/{key}; restarting") from exc
            message = f"S3 s3://{bucket}/{key}: {code or status} {err.get('Message', '')}".strip()
            if job.request.http_url is None and (code in ("NoSuchKey", "NoSuchBucket") or status == 404):
                raise _Fatal(message) from exc  # nothing to fall back to, and asking again will not help
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            raise _S3Unusable(message, retry_after_seconds(headers.get("retry-after"))) from exc
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            self._s3_down = str(exc)
            raise _S3Unusable(f"S3 endpoint unreachable: {exc}") from exc
        except (BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _S3Unusable(f"S3 s3://{bucket}/{key}: {exc}") from exc

        total: int | None = None
        start = 0
        stream = resp["Body"]
        if cr := resp.get("ContentRange"):
            m = _CONTENT_RANGE_RE.match(cr)
            if not m:
                stream.close()
                raise _S3Unusable(f"S3 sent an unreadable Content-Range {cr!r}")
            start = int(m.group(1))
            total = int(m.group(3)) if m.group(3) != "*" else None
        elif "ContentLength" in resp:
            total = int(resp["ContentLength"])
        size = self.config.chunk_size

        def chunks() -> Iterator[bytes]:
            try:
                while chunk := stream.read(size):
                    yield chunk
            except (BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
                raise _S3Unusable(f"S3 s3://{bucket}/{key} failed mid-file: {exc}") from exc

        modified = resp.get("LastModified")
        return _Body(start, total, resp.get("ETag"), chunks(), stream.close,
                     last_modified=formatdate(modified.timestamp(), usegmt=True) if modified else None,
                     ranged=bool(resp.get("ContentRange")), length=resp.get("ContentLength"),
                     sha256=_b64_hex(resp.get("ChecksumSHA256")))

    def _open_local(self, job: _Job, offset: int, end: int | None = None) -> _Body:
        """A local file as a body; size and mtime stand in for an ETag, so a change restarts the copy."""
        path = job.request.local_path
        assert path is not None
        try:  # no link followed, a regular file only, and the bytes copied from this one descriptor
            handle = os.fdopen(open_regular(path), "rb", buffering=0)
            stat = os.fstat(handle.fileno())
        except OSError as exc:
            raise _Fatal(f"cannot read {path}: {exc.strerror}") from exc
        if offset == 0 and job.name.lower().endswith(FITS_SUFFIXES):
            self._refuse_unless_fits(job, handle)
        size = self.config.chunk_size
        handle.seek(min(offset, stat.st_size))

        def chunks() -> Iterator[bytes]:
            while chunk := handle.read(size):
                yield chunk

        version = f"{stat.st_size}-{stat.st_mtime_ns}"
        return _Body(min(offset, stat.st_size), stat.st_size, version, chunks(), handle.close)

    @staticmethod
    def _refuse_unless_fits(job: _Job, handle: BinaryIO) -> None:
        """A local file named as FITS that does not start as FITS (or a compressed stream) is refused
        before its copy: its first block goes to the ``.part`` (kept with the reason, as any refused
        copy is) and no more, so a sparse or huge non-FITS file never fills the disk with its copy."""
        head = os.pread(handle.fileno(), BLOCK, 0)
        if head.startswith(b"SIMPLE  =") or limits.compression(head):
            return
        handle.close()
        job.part.write_bytes(head)
        if not head:
            raise _Corrupt("empty file (0 bytes)")
        raise _Corrupt(f"not FITS: starts with {head[:20]!r}; not copied past its first {len(head)} bytes")

    def _open_http(self, job: _Job, offset: int, end: int | None = None) -> _Body:
        url = job.request.http_url
        assert url is not None
        headers: dict[str, str] = {}
        if self.config.mast_token and not self._token_refused:
            headers.update(token_header(self.config.mast_token))
        if offset or end is not None:
            headers["Range"] = f"bytes={offset}-{'' if end is None else end - 1}"
            if job.etag and not _is_weak(job.etag):
                headers["If-Range"] = job.etag
            elif job.last_modified and job.validators_from == "http":
                headers["If-Range"] = job.last_modified
        timeout = (self.config.connect_timeout, self.config.read_timeout)
        try:
            resp = self.session.get(url, headers=headers, stream=True, timeout=timeout)
            if resp.status_code == 401 and "Authorization" in headers:
                # a token MAST no longer takes (expired) must not cost a public file: asked again without
                # it, and the batch's other files are asked without it (a token refused once is refused)
                resp.close()
                if not self._token_refused:
                    log.warning("the MAST token was refused (HTTP 401 for %s): the batch's files are asked "
                                "without it", job.name)
                self._token_refused = True
                headers.pop("Authorization")
                resp = self.session.get(url, headers=headers, stream=True, timeout=timeout)
        except requests.RequestException as exc:
            raise _Retry(f"HTTP request failed: {exc}") from exc
        status = resp.status_code
        if status not in (200, 206):
            resp.close()
            if status == 416:
                raise _Changed(f"server refused range bytes={offset}- ({status}); restarting")
            if status in _RETRYABLE_HTTP:
                raise _Retry(f"HTTP {status} from {url}", retry_after_seconds(resp.headers.get("Retry-After")))
            raise _Fatal(f"HTTP {status} from {url}")
        encoding = resp.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            resp.close()
            raise _Fatal(f"server sent the body with Content-Encoding {encoding!r} although identity was asked; "
                         "refusing to store compressed bytes under this name")
        total: int | None = None
        start = 0
        if status == 206:
            cr = resp.headers.get("Content-Range", "")
            m = _CONTENT_RANGE_RE.match(cr)
            if not m:
                resp.close()
                raise _Changed(f"206 with unreadable Content-Range {cr!r}; restarting")
            start = int(m.group(1))
            total = int(m.group(3)) if m.group(3) != "*" else None
        elif (length := resp.headers.get("Content-Length")) is not None:
            total = int(length)
        raw = resp.raw
        size = self.config.chunk_size

        def chunks() -> Iterator[bytes]:
            # read1 hands over what has arrived, so bytes received before a failure reach the .part.
            try:
                while chunk := raw.read1(size, decode_content=False):
                    yield chunk
            except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
                raise _Retry(f"HTTP transfer failed: {exc}") from exc

        length_header = resp.headers.get("Content-Length")
        return _Body(start, total, resp.headers.get("ETag"), chunks(), resp.close,
                     last_modified=resp.headers.get("Last-Modified"), ranged=status == 206,
                     length=int(length_header) if length_header and length_header.isdigit() else None,
                     content_md5=_b64_hex(resp.headers.get("Content-MD5")),
                     sha256=_b64_hex(resp.headers.get("x-amz-checksum-sha256")))

    # ----- one attempt -----------------------------------------------------------------------

    def _connections(self, job: _Job, source: str) -> int:
        """How many ranged connections this file gets: by its size and ``connections``."""
        cfg = self.config
        if source == "local" or job.total_size is None or job.ranges_refused or cfg.segment_size <= 0:
            return 1
        return max(1, min(cfg.connections, job.total_size // cfg.segment_size))

    def _fetch(self, job: _Job, source: str) -> None:
        """Bring ``job.part`` to the full object, resuming from whatever it already holds."""
        try:
            if self._connections(job, source) > 1:
                self._fetch_ranges(job, source)
            else:
                self._fetch_stream(job, source)
        except _Changed as exc:
            job.reset()
            raise _Retry(str(exc)) from exc

    def _accept(self, job: _Job, body: _Body, source: str) -> None:
        """Checks every answer passes before a byte of it is kept; raises :class:`_Changed` to restart."""
        if job.total_size is not None and body.total is not None and body.total != job.total_size:
            expected = job.request.expected_size
            if expected is not None and body.total != expected:
                if source == "local":  # a landed file written to after it was taken
                    raise _Fatal(f"the file changed while it was being copied ({body.total} bytes now, {expected} "
                                 "when it was taken); it is taken again once it stops changing")
                raise _Fatal(f"server reports {body.total} bytes but the product list says {expected}")
            if body.ranged:
                raise _Changed(f"a range answer reports {body.total} bytes but the object had {job.total_size}; "
                               "restarting rather than splicing")
        if body.ranged or body.start:
            if reason := job.take_validators(body, source):
                raise _Changed(f"{reason} between ranges; restarting")
        else:
            job.etag, job.last_modified, job.validators_from = body.etag, body.last_modified, source
        if body.sha256 is not None:
            if job.expected_sha256 is not None and job.expected_sha256 != body.sha256:
                raise _Changed("x-amz-checksum-sha256 changed between answers; restarting")
            job.expected_sha256 = body.sha256

    def _body_md5(self, body: _Body, md5: Any, got: int) -> None:
        """Check a complete body against the ``Content-MD5`` its server sent."""
        if body.content_md5 is None or md5 is None or (body.length is not None and got != body.length):
            return
        if md5.hexdigest() != body.content_md5:
            raise _Corrupt(f"Content-MD5 mismatch: bytes {body.start}-{body.start + got - 1} hash to "
                           f"{md5.hexdigest()}, the server sent {body.content_md5}")

    def _fetch_stream(self, job: _Job, source: str) -> None:
        """One connection: append to the ``.part`` from where it ends."""
        offset = job.resume_offset()
        if offset and job.total_size is not None and offset == job.total_size:
            return  # complete before a restart; only the checks remain
        if offset and not job.resumable(source):
            job.reset()  # neither ETag nor Last-Modified: nothing proves the rest is the same object
            offset = 0
        job.resumed_from = offset
        opener = {"local": self._open_local, "s3": self._open_s3, "http": self._open_http}[source]
        body = opener(job, offset)
        try:
            if body.start != offset:
                if body.start != 0:
                    raise _Changed(f"asked for bytes={offset}- but got a range from {body.start}; restarting")
                job.reset()  # a 200 (or a changed object under If-Range): the body starts at zero
                job.resumed_from = 0
            self._accept(job, body, source)
            if job.hashed == 0:
                job.restart_digests(md5=job.stream_md5 and _plain_md5(job.etag))
            job.total_size = body.total if body.total is not None else job.total_size
            job.source = source
            job.save_state(source)
            pace = _Pace(job, self.config)
            md5 = hashlib.md5() if body.content_md5 else None
            got = 0
            # Chunks of chunk_size or more pass the buffer straight to the file in one write.
            with job.part.open("ab", buffering=self.config.chunk_size) as f:
                pieces: list[bytes] = []
                pending = 0

                def flush() -> None:
                    nonlocal pending
                    chunk = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                    pieces.clear()
                    pending = 0
                    n = len(chunk)
                    if n >= _HOLE_MIN and _zeros(chunk):
                        f.flush()  # appended at the end the hole makes
                        os.ftruncate(f.fileno(), os.fstat(f.fileno()).st_size + n)
                    else:
                        f.write(chunk)
                    job.digests.update(chunk)
                    job.hashed += n
                    job.on_disk += n
                    job.bytes_fetched += n
                    self.tracker.fetched(n)

                try:
                    for piece in body.chunks:
                        pieces.append(piece)
                        pending += len(piece)
                        got += len(piece)
                        if md5 is not None:
                            md5.update(piece)
                        if pending >= self.config.chunk_size:
                            flush()
                        pace.check(len(piece))
                finally:
                    if pieces:  # keep what arrived before a failure: the next attempt resumes after it
                        flush()
                if self.config.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            self._body_md5(body, md5, got)
        finally:
            body.close()
        if job.total_size is not None and job.hashed != job.total_size:
            raise _Retry(f"connection ended at byte {job.hashed} of {job.total_size}")

    def _fetch_ranges(self, job: _Job, source: str) -> None:
        """Several connections at once, each fetching ranges in order into a preallocated ``.part``.

        The checks need the bytes in order: a chunk that extends the checked prefix is fed to them
        from memory as it is written (all of them while one connection is open), and a thread reads
        back from the file only what landed ahead of a gap."""
        assert job.total_size is not None
        total = job.total_size
        state = job.load_state() if job.part.exists() else None
        spans: dict[int, int] = {}
        if state is not None and state.get("size") == total and job.resumable(source):
            spans = _spans_from(state["done"]) if "done" in state else {0: min(job.part.stat().st_size, total)}
        else:
            job.reset()
            job.total_size = total
        if job.hashed > _prefix(spans):  # the .part is not the one hashed so far
            job.restart_digests(md5=False)
            job.hashed = 0
        job.resumed_from = sum(b - a for a, b in _merged(spans))
        job.on_disk = job.resumed_from
        job.source = source
        connections = self._connections(job, source)
        queue = deque(_tapered(_missing(spans, total, self.config.segment_size), connections))
        lock = threading.Condition()
        save_lock = threading.Lock()
        failures: list[BaseException] = []
        active: list[_Claim] = []  # the requests under way: what each holds, for splitting
        answer_seconds = [0.0]  # the longest wait seen from a request to its first bytes
        finished = threading.Event()
        widen = threading.Event()
        wake = threading.Event()  # the waiting connections' cue: widened, nothing left to take, or a failure
        reading_back = False  # the hasher owns job.hashed while it reads the file back
        fast = self.config.fast_stream
        if fast <= 0:
            widen.set()
            wake.set()
        opener = {"s3": self._open_s3, "http": self._open_http}[source]
        if job.hashed == 0:  # MD5 only when asked for: the ETag is not known before the first answer
            job.restart_digests(md5=job.stream_md5 and (job.etag is None or _plain_md5(job.etag)))

        fd = os.open(job.part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != total:
                os.ftruncate(fd, total)
            if job.etag or job.last_modified:
                job.save_state(source, _merged(spans))

            def save() -> None:
                with lock:
                    done = _merged(spans)
                with save_lock:
                    job.save_state(source, done)

            def fetch_piece(start: int, end: int) -> None:
                # Until the link is seen to cap a connection, one request asks for the whole run of
                # queued pieces that follows, and claims each piece as its bytes arrive: one request
                # per file on a fast link instead of one per segment. A piece another connection took
                # ends the request there.
                claim = _Claim(start, end, start)
                with lock:
                    reach = end
                    if not widen.is_set():
                        for a, b in queue:
                            if a != reach:
                                break
                            reach = b
                    active.append(claim)
                asked = time.monotonic()
                try:
                    body = opener(job, start, reach)
                except BaseException:
                    with lock:
                        active.remove(claim)
                    raise
                try:
                    with lock:
                        if not body.ranged or body.start != start:
                            job.ranges_refused = True
                            raise _Retry(f"asked for bytes={start}-{end - 1} but got an answer from {body.start} "
                                         "without a range; continuing over one connection")
                        self._accept(job, body, source)
                    pace = _Pace(job, self.config)
                    md5 = hashlib.md5() if body.content_md5 else None
                    pos = start
                    pieces: list[bytes] = []
                    pending = 0

                    def flush() -> None:
                        nonlocal pos, pending, stop
                        gathered = pending
                        chunks, chunk = pieces[:], b""
                        pieces.clear()
                        pending = 0
                        while (chunks or chunk) and not stop:
                            with lock:  # bytes past what it holds (another connection may have split it) are dropped
                                room = claim.end - pos
                                in_order = not reading_back and job.hashed == pos
                            if room <= 0:
                                break
                            if not chunk and gathered <= room and not in_order and len(chunks) <= _MAX_WRITE_PIECES:
                                # the usual case: the pieces as they came in one positioned write, not joined
                                part, size = None, gathered
                                written = os.pwritev(fd, chunks, pos)
                                chunks = []
                            else:
                                if not chunk:
                                    chunk = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                                    chunks = []
                                part, chunk = chunk[:room], chunk[room:]
                                size = len(part)
                                written = os.pwrite(fd, part, pos)
                            if written != size:
                                raise OSError(f"{job.part}: wrote {written} of {size} bytes at byte {pos}")
                            gathered -= size
                            extended = False
                            with lock:
                                if part is not None and not reading_back and job.hashed == pos:
                                    job.digests.update(part)  # in order: check it from memory
                                    job.hashed += size
                                pos += size
                                spans[start] = pos
                                job.on_disk += size
                                job.bytes_fetched += size
                                if pos == claim.end < reach:  # the next piece, if no other connection took it
                                    if queue and queue[0][0] == pos:
                                        claim.end = queue.popleft()[1]
                                        if not queue:
                                            wake.set()
                                        extended = True
                                    else:
                                        stop = True
                                lock.notify_all()
                            self.tracker.fetched(size)
                            if extended:
                                save()

                    stop = False
                    first: float | None = None  # when the first bytes arrived, for timing the link
                    try:
                        for data in body.chunks:
                            if first is None:
                                first = claim.first = time.monotonic()
                                with lock:
                                    answer_seconds[0] = max(answer_seconds[0], first - asked)
                            elif not widen.is_set():
                                elapsed = time.monotonic() - first
                                got = pos + pending - start
                                if (elapsed >= _PROBE_SECONDS and got < fast * elapsed) or (
                                        elapsed >= _PROBE_SHORT_SECONDS and got < fast / 2 * elapsed):
                                    widen.set()  # the link caps this connection: open the others
                                    wake.set()
                            pieces.append(data)
                            pending += len(data)
                            claim.held = pos + pending
                            if md5 is not None:
                                md5.update(data)
                            if pending >= _RANGE_WRITE:
                                flush()
                            pace.check(len(data))
                            if failures or stop:
                                break
                    finally:
                        if pieces:
                            flush()
                    self._body_md5(body, md5, pos - start)
                finally:
                    body.close()
                    with lock:
                        active.remove(claim)
                if pos < claim.end:
                    raise _Retry(f"connection ended at byte {pos} of range {start}-{claim.end - 1}")
                save()

            def split() -> tuple[int, int] | None:
                """The second half of the run a request will take longest to finish, taken from it
                (called under the lock, with nothing left in the queue), or None when a new request
                would not finish it sooner."""
                now = time.monotonic()
                victim = max(active, key=lambda c: c.seconds_left(now), default=None)
                if (victim is None or victim.end - victim.held < 2 * _SPLIT_MIN
                        or victim.seconds_left(now) < 2 * answer_seconds[0]):
                    return None
                middle = victim.held + (victim.end - victim.held) // 2
                taken = (middle, victim.end)
                victim.end = middle
                return taken

            def worker(index: int) -> None:
                if index:  # the others wait until one is seen to be capped, and end if nothing is left
                    wake.wait()
                    if not widen.is_set():
                        return
                while not failures:
                    with lock:
                        if queue:
                            start, end = queue.popleft()
                            if not queue:
                                wake.set()
                        elif (taken := split()) is not None:
                            start, end = taken
                        else:
                            return
                    try:
                        fetch_piece(start, end)
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                        with lock:
                            failures.append(exc)
                            lock.notify_all()
                        wake.set()
                        return

            def hasher() -> None:
                nonlocal reading_back
                buffers, turn = [bytearray() for _ in range(_READ_BACK_BUFFERS)], 0
                try:
                    while True:
                        with lock:
                            reading_back = False
                            while _prefix(spans) <= job.hashed and not finished.is_set() and not failures:
                                lock.wait(0.5)
                            limit = _prefix(spans)
                            if failures or limit <= job.hashed:
                                return
                            reading_back = True
                        while job.hashed < limit:
                            # Read into buffers used in turn, which the checks have let go of (a new
                            # 8 MiB buffer per read costs the kernel a fresh page for every 4 kB).
                            turn = (turn + 1) % len(buffers)
                            if len(buffers[turn]) == 0:
                                buffers[turn] = bytearray(_HASH_CHUNK)
                            job.digests.settle(len(buffers) - 1)
                            view = memoryview(buffers[turn])[:min(_HASH_CHUNK, limit - job.hashed)]
                            got = os.preadv(fd, [view], job.hashed)
                            if not got:
                                raise OSError(f"{job.part} is shorter than its ranges say")
                            job.digests.update(view[:got])
                            job.hashed += got
                except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                    with lock:
                        failures.append(exc)
                        lock.notify_all()
                    wake.set()

            threads = [threading.Thread(target=worker, args=(i,), name=f"skyassets-range-{i}", daemon=True)
                       for i in range(min(connections, max(len(queue), 1)))]
            checker = threading.Thread(target=hasher, name="skyassets-range-hash", daemon=True)
            for t in [*threads, checker]:
                t.start()
            for t in threads:
                t.join()
            with lock:
                finished.set()
                lock.notify_all()
            checker.join()
            save()
            if self.config.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if failures:
            first = next((f for f in failures if isinstance(f, _Changed | _Fatal | _Corrupt)), failures[0])
            raise first
        if job.hashed != total:
            raise _Retry(f"ranges ended with {job.hashed} of {total} bytes in order")

    def _check_and_place(self, job: _Job) -> str:
        """Verify the complete ``.part`` and rename it into place; return the FITS status."""
        assert job.final is not None
        size = job.part.stat().st_size
        if size != job.hashed:
            job.reset()
            raise _Retry(f".part changed on disk under the download ({size} bytes, {job.hashed} hashed)")
        expected = job.request.expected_size
        if expected is not None and size != expected:
            raise _Corrupt(f"size is {size} bytes, expected {expected}")
        check = job.digests.fits()
        job.fits = check.status
        if check.status == "bad":  # a sum that does not match, or a structure that does not hold
            summed = "CHECKSUM" in check.message or "DATASUM" in check.message
            raise _Corrupt(f"{'FITS checksum mismatch' if summed else 'not a valid FITS file'}: {check.message}")
        if check.status == "not-fits" and job.request.local_path is not None and compression_of(job.name):
            # a landed file is taken for being FITS: a compressed one is known to be only once inflated
            # (a plain one that does not start as FITS was refused at its first block)
            raise _Corrupt(f"not a valid FITS file: {check.message or 'its inflated bytes do not start as FITS'}")
        etag = _norm_etag(job.etag)
        if _plain_md5(etag):
            md5 = job.digests.md5()
            # The FITS sums cover every byte of a plain file, but not a compressed stream's own framing.
            covered = check.status == "ok" and check.checked == check.hdus and compression_of(job.name) is None
            if md5 is None and not covered:
                md5 = _hash_file(job.part, "md5")
            job.md5 = md5
            if md5 is not None and etag != md5:
                raise _Corrupt(f"MD5 {md5} does not match the ETag {etag}")
        sha256 = job.digests.sha256()
        if job.expected_sha256 is not None and sha256 != job.expected_sha256:
            raise _Corrupt(f"SHA-256 {sha256} does not match the x-amz-checksum-sha256 the server sent "
                           f"({job.expected_sha256})")
        os.replace(job.part, job.final)
        _write_atomic(job.sha_file, f"{sha256}  {job.name}\n")
        _record_verified(job.final, sha256, check.status, job.source)
        _unlink(job.state_file)
        return check.status

    # ----- one file --------------------------------------------------------------------------

    def _result(self, job: _Job, status: str, started: float, *, error: str | None = None,
                size: int = 0, sha256: str | None = None, md5: str | None = None,
                fits: str = "unchecked", sha256_checked: bool = False, source: str | None = None) -> FileResult:
        """The file's outcome; ``source`` says where a file found verified once came from."""
        seconds = time.monotonic() - started
        job.status = status
        return FileResult(
            filename=job.name,
            path=job.final if status != "failed" else None,
            status=status,
            size=size,
            sha256=sha256,
            md5=md5,
            source=job.source if status == "downloaded" else source,
            seconds=seconds,
            bytes_per_second=job.bytes_fetched / seconds if seconds > 0 else 0.0,
            bytes_fetched=job.bytes_fetched,
            attempts=job.attempts,
            resumed_from=job.resumed_from,
            fits_checksum=fits,
            error=error,
            sha256_checked=sha256_checked,
        )

    def _existing(self, job: _Job, started: float) -> FileResult | None:
        """A skipped result if the file is already in place and verified, else None."""
        assert job.final is not None
        recorded = read_sha256_sidecar(job.final)
        if recorded is None or not job.final.is_file():
            return None
        size = job.final.stat().st_size
        if job.request.expected_size is not None and size != job.request.expected_size:
            return None
        record = _verified_record(job.final)
        source = record.get("source") if isinstance(record.get("source"), str) else None
        fits = record.get("fits_checksum") if isinstance(record.get("fits_checksum"), str) else "unchecked"
        if self.config.verify_existing or not _verified_unchanged(job.final, recorded, record):
            digest = sha256_file(job.final)
            fits = verify_file(job.final).status
            if digest != recorded or fits == "bad":
                os.replace(job.final, job.final.with_name(job.final.name + CORRUPT_SUFFIX))
                _unlink(job.sha_file)
                log.warning("%s no longer matches its checksums; moved aside and fetching again", job.name)
                return None
            _record_verified(job.final, digest, fits, source)
        job.total_size = job.on_disk = size
        return self._result(job, "skipped", started, size=size, sha256=recorded, fits=fits, source=source)

    def _backoff(self, attempt: int, wait: float | None) -> float:
        cfg = self.config
        delay = min(cfg.backoff_max, cfg.backoff_base * 2 ** (attempt - 1))
        delay = random.uniform(delay / 2, delay)
        if wait is not None:
            # The server's Retry-After, honoured up to retry_after_max (asking sooner only earns
            # another refusal), with a little jitter so files refused together do not return together;
            # the jitter too stays within retry_after_max.
            delay = max(delay, min(wait * random.uniform(1.0, 1.1), cfg.retry_after_max))
        return delay

    def run_job(self, job: _Job) -> FileResult:
        started = time.monotonic()
        try:
            with _file_lock(job):
                return self._run_job(job, started)
        except Exception as exc:  # one file's surprise must not sink the batch
            log.exception("download of %s failed unexpectedly", job.name)
            result = self._result(job, "failed", started, error=f"{job.name}: {type(exc).__name__}: {exc}")
        finally:
            job.digests.close()
        self.tracker.file_done(f"failed {job.name}: {result.error}")
        return result

    def _run_job(self, job: _Job, started: float) -> FileResult:
        req = job.request
        if req.http_url is None and req.s3_key is None and req.local_path is None:
            result = self._result(job, "failed", started, error=f"{job.name}: no S3 key, HTTP URL or local path")
            self.tracker.file_done(f"failed {job.name}: {result.error}")
            return result
        if (skipped := self._existing(job, started)) is not None:
            self.tracker.file_done(f"skipped {job.name} (already in place and verified)")
            return skipped
        job.final.parent.mkdir(parents=True, exist_ok=True)
        cfg = self.config
        job.deadline_at = started + cfg.deadline if cfg.deadline is not None else None
        errors: list[str] = []
        self.tracker.emit(f"start {job.name}" + (f" ({_fmt_bytes(job.total_size)})" if job.total_size else ""))
        for attempt in range(1, cfg.retries + 2):
            job.attempts = attempt
            use_s3 = (
                req.s3_key is not None
                and not job.s3_failed
                and (cfg.prefer_s3 or req.http_url is None)
                and (self._s3_down is None or req.http_url is None)
            )
            source = "local" if req.local_path is not None else "s3" if use_s3 else "http"
            wait: float | None = None
            try:
                try:
                    self._fetch(job, source)
                except _S3Unusable as exc:
                    if req.http_url is None:
                        raise
                    errors.append(str(exc))
                    job.s3_failed = True  # this file goes on over HTTP, in the same attempt
                    log.warning("%s: %s; continuing over HTTP", job.name, exc)
                    self._fetch(job, "http")
                fits = self._check_and_place(job)
            except _S3Unusable as exc:
                errors.append(str(exc))
                wait = exc.wait
            except _Corrupt as exc:
                corrupt = job.final.with_name(job.final.name + CORRUPT_SUFFIX)
                if job.part.exists():
                    os.replace(job.part, corrupt)
                job.reset()
                if source == "local":  # its caller quarantines the copy, and says where it went
                    errors.append(str(exc))
                    break  # a local file reads the same every time: no point retrying
                errors.append(f"{exc} (bytes moved to {corrupt.name})")
            except _Retry as exc:
                errors.append(str(exc))
                wait = exc.wait
            except _Fatal as exc:
                errors.append(str(exc))
                break
            except OSError as exc:  # local disk trouble: retrying would only repeat it
                errors.append(f"local file error: {exc}")
                break
            else:
                # bytes an earlier try moved aside are of no use beside the verified file: they would
                # only double its space
                job.final.with_name(job.final.name + CORRUPT_SUFFIX).unlink(missing_ok=True)
                size = job.final.stat().st_size
                result = self._result(
                    job, "downloaded", started, size=size, sha256=job.digests.sha256(),
                    md5=job.md5, fits=fits, sha256_checked=job.expected_sha256 is not None,
                )
                self.tracker.file_done(
                    f"downloaded {job.name} from {job.source}: {_fmt_bytes(size)} in {result.seconds:.1f} s"
                )
                return result
            if attempt <= cfg.retries:
                delay = self._backoff(attempt, wait)
                if job.deadline_at is not None and time.monotonic() + delay > job.deadline_at:
                    errors.append(f"{errors[-1]}; no time left for a retry before the deadline of {cfg.deadline:g} s")
                    break
                self.tracker.emit(f"retry {job.name} in {delay:.1f} s after: {errors[-1]}")
                time.sleep(delay)
        reason = errors[-1] if errors else "no attempt made"
        more = f" (after {job.attempts} attempts)" if job.attempts > 1 else ""
        result = self._result(job, "failed", started, error=f"{job.name}: {reason}{more}",
                              size=job.on_disk, fits=job.fits)
        self.tracker.file_done(f"failed {result.error}")
        return result

    def close(self) -> None:
        self.session.close()


def adopt_verified(final: Path, sha256: str) -> None:
    """Record ``final``, put in place by other means and checked against ``sha256`` (a copy fetched
    back from the home's store), as a file this downloader verified, so it is skipped, not fetched."""
    _write_atomic(final.with_name(final.name + SHA256_SUFFIX), f"{sha256}  {final.name}\n")
    _record_verified(final, sha256)


def _verified_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{VERIFIED_SUFFIX}")


def _record_verified(final: Path, sha256: str, fits: str | None = None, source: str | None = None) -> None:
    """Remember the size and mtime ``final`` had when its SHA-256 was checked, and how it came and
    what its FITS sums said, for a run that finds it verified with no manifest of the one that
    fetched it (that run failed, or was killed, after this file)."""
    stat = final.stat()
    record = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    record.update({k: v for k, v in (("fits_checksum", fits), ("source", source)) if v is not None})
    _write_atomic(_verified_path(final), json.dumps(record))


def _verified_record(final: Path) -> dict[str, Any]:
    """What ``_record_verified`` remembered of ``final`` (empty if nothing readable)."""
    try:
        record = json.loads(_verified_path(final).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _verified_unchanged(final: Path, sha256: str, record: dict[str, Any]) -> bool:
    """Whether ``final`` still has the size and mtime it had when verified with this digest."""
    try:
        stat = final.stat()
    except OSError:
        return False
    return (record.get("sha256") == sha256 and record.get("size") == stat.st_size
            and record.get("mtime_ns") == stat.st_mtime_ns)


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header as seconds: a number, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


@contextlib.contextmanager
def _file_lock(job: _Job) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside the file, so two processes never write one ``.part`` at once.

    The second waits; it then finds the file verified in place and skips it. The lock file is left
    behind on purpose: removing it would let a third process lock a different inode.
    """
    assert job.final is not None
    job.final.parent.mkdir(parents=True, exist_ok=True)
    with open(job.final.with_name(f".{job.final.name}{LOCK_SUFFIX}"), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _resolve_destination(job: _Job) -> None:
    """Validate the name and pin ``job.final`` inside the destination folder (else raise)."""
    name = safe_filename(job.request.filename)
    if name.lower().endswith(RESERVED_SUFFIXES):
        raise InvalidNameError(f"file name {name!r} ends in a suffix skyassets names its working files with "
                               f"({', '.join(RESERVED_SUFFIXES)}); it would collide with them")
    if len(name.encode("utf-8")) + _DERIVED_EXTRA > MAX_FILENAME_LENGTH:
        raise InvalidNameError(f"file name {name[:40]!r}... leaves no room for its working files' names "
                               f"(at most {MAX_FILENAME_LENGTH - _DERIVED_EXTRA} bytes)")
    dest = Path(job.request.dest_dir).resolve()
    final = dest / name
    if final.resolve().parent != dest:
        raise InvalidNameError(f"file name {name!r} resolves outside {dest}")
    job.name = name
    job.final = final


def download_files(
    requests: Sequence[FileRequest],
    config: DownloadConfig = DownloadConfig(),
    *,
    on_progress: Callable[[Progress], None] | None = None,
) -> list[FileResult]:
    """Fetch every request into its folder; return one result per request, in order.

    Per-file problems (bad names, network, checksums) end up in that file's result and never raise.
    Requests that resolve to the same destination file are fetched once and share the result.
    """
    if config.md5 not in ("auto", "always"):
        raise ValueError(f"DownloadConfig.md5 is 'auto' or 'always', not {config.md5!r}")
    jobs = [_Job(i, r, stream_md5=config.md5 == "always") for i, r in enumerate(requests)]
    downloader = _Downloader(config, _Tracker(jobs, config.progress_interval, on_progress))
    results: list[FileResult | None] = [None] * len(jobs)
    first_for: dict[Path, int] = {}
    to_run: list[_Job] = []
    duplicates: list[tuple[int, int]] = []
    for job in jobs:
        try:
            _resolve_destination(job)
        except InvalidNameError as exc:
            job.status = "failed"
            results[job.index] = FileResult(
                filename=job.request.filename, path=None, status="failed", size=0, sha256=None,
                md5=None, source=None, seconds=0.0, bytes_per_second=0.0, bytes_fetched=0,
                attempts=0, resumed_from=0, fits_checksum="unchecked", error=f"refused file name: {exc}",
            )
            downloader.tracker.file_done(f"failed {job.request.filename!r}: refused file name: {exc}")
            continue
        assert job.final is not None
        if job.final in first_for:
            duplicates.append((job.index, first_for[job.final]))
            job.status = "duplicate"
            continue
        first_for[job.final] = job.index
        to_run.append(job)
    try:
        with ThreadPoolExecutor(max_workers=max(config.parallel, 1), thread_name_prefix="skyassets-dl") as pool:
            remote = [(job, pool.submit(downloader.run_job, job)) for job in to_run if job.request.local_path is None]
            # Local copies are bound by checksumming, not by waiting: side by side they only contend
            # for the interpreter, so they run one at a time here while the network transfers go on.
            for job in to_run:
                if job.request.local_path is not None:
                    results[job.index] = downloader.run_job(job)
            for job, future in remote:
                results[job.index] = future.result()
    finally:
        downloader.close()
    for index, original in duplicates:
        source = results[original]
        assert source is not None
        results[index] = replace(source, filename=jobs[index].name)
        jobs[index].status = source.status
    return [r for r in results if r is not None]
