"""What one FITS file may cost: bytes decompressed and pixels loaded, refused before they are spent.

A file from outside is bounded by what it is on disk only when it is read as it is. A 2 MB
``.fits.gz`` can inflate to gigabytes, and a header can announce a 200,000-pixel square image that
a sparse file "holds" in a few kilobytes; reading either whole would exhaust the memory of a run.
So a compressed stream is inflated with a cap (:func:`decompressed_size`, :class:`BoundedReader`)
and an image array is sized from its header's NAXISn and BITPIX before anything allocates it
(:func:`check_image`). Both limits are settings, from the environment so that every process of a
run (worker processes included) applies the same:

``SKYASSETS_MAX_IMAGE_PIXELS``
    pixels of one image array (default 2**27, an 11585 x 11585 image: 512 MiB as float32; measuring
    image quality holds about 29 bytes a pixel at its peak, so 4 GB for an image at the limit).
``SKYASSETS_MAX_DECOMPRESSED_BYTES``
    bytes a compressed file (gzip, bzip2) may inflate to (default 2**30).
"""

from __future__ import annotations

import bz2
import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from skyassets.settings import env_number

MAX_IMAGE_PIXELS_ENV = "SKYASSETS_MAX_IMAGE_PIXELS"
MAX_DECOMPRESSED_BYTES_ENV = "SKYASSETS_MAX_DECOMPRESSED_BYTES"
DEFAULT_MAX_IMAGE_PIXELS = 1 << 27
DEFAULT_MAX_DECOMPRESSED_BYTES = 1 << 30
# Pixels of one mosaic's output grid: 65536 x 65536, about 40 GB of SCI, CON and WHT on disk.
DEFAULT_MAX_MOSAIC_PIXELS = 1 << 32
# BITPIX values the FITS standard defines (bits per value; negative for IEEE floats).
VALID_BITPIX = frozenset((8, 16, 32, 64, -32, -64))
# NAXIS is 0 to 999 in the standard.
MAX_NAXIS = 999

GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
_CHUNK = 1 << 20  # compressed bytes read, and decompressed bytes produced, per step


class TooLarge(ValueError):
    """A file or array beyond a limit; the message names it and the limit (and how to raise it)."""


class BadImageHeader(ValueError):
    """Structural keywords (BITPIX, NAXIS, NAXISn) that no valid FITS image has."""


@dataclass(frozen=True)
class Limits:
    """The limits in force: see the module's docstring."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES


def current() -> Limits:
    """The limits from the environment, with their defaults; read each time (a test or a run may set them)."""
    return Limits(
        env_number(MAX_IMAGE_PIXELS_ENV, DEFAULT_MAX_IMAGE_PIXELS, minimum=1),
        env_number(MAX_DECOMPRESSED_BYTES_ENV, DEFAULT_MAX_DECOMPRESSED_BYTES, minimum=1),
    )


# ------------------------------------------------------------------------------------ images
def image_shape(header: Mapping[str, Any] | Any) -> tuple[int, ...]:
    """NAXIS1, NAXIS2, ... of an HDU's header, checked: ``BadImageHeader`` for a BITPIX outside
    :data:`VALID_BITPIX`, a NAXIS outside 0..999 or an axis length that is not a whole number >= 0."""
    bitpix = header.get("BITPIX")
    if type(bitpix) is not int or bitpix not in VALID_BITPIX:
        raise BadImageHeader(f"BITPIX = {bitpix!r} is not one of {sorted(VALID_BITPIX)}")
    naxis = header.get("NAXIS")
    if type(naxis) is not int or not 0 <= naxis <= MAX_NAXIS:
        raise BadImageHeader(f"NAXIS = {naxis!r} is not a whole number from 0 to {MAX_NAXIS}")
    shape = []
    for n in range(1, naxis + 1):
        length = header.get(f"NAXIS{n}")
        if type(length) is not int or length < 0:
            raise BadImageHeader(f"NAXIS{n} = {length!r} is not a whole number >= 0")
        shape.append(length)
    return tuple(shape)


def check_image(header: Mapping[str, Any] | Any, where: str, limits: Limits | None = None) -> int:
    """The pixel count of the image an HDU's header announces, or ``TooLarge`` / ``BadImageHeader``
    (naming ``where``, e.g. ``file.fits[1]``) before any array of it is allocated. Call it with the
    header (astropy's or a :class:`~skyassets.fits.header.FitsHeader`) before touching ``hdu.data``."""
    limits = limits or current()
    try:
        shape = image_shape(header)
    except BadImageHeader as exc:
        raise BadImageHeader(f"{where}: {exc}") from None
    pixels = math.prod(shape) if shape else 0
    if pixels > limits.max_image_pixels:
        axes = " x ".join(map(str, shape))
        raise TooLarge(
            f"{where}: image of {axes} = {pixels} pixels is over the limit of {limits.max_image_pixels} "
            f"({MAX_IMAGE_PIXELS_ENV}); not loaded"
        )
    return pixels


# ------------------------------------------------------------------------------- decompression
def compression(head: bytes) -> str | None:
    """"gzip" or "bzip2" from a file's first bytes, None for anything else."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(BZIP2_MAGIC):
        return "bzip2"
    return None


def _decompressor(kind: str) -> Any:
    return zlib.decompressobj(wbits=31) if kind == "gzip" else bz2.BZ2Decompressor()


class BrokenStream(ValueError):
    """A compressed stream that cannot be inflated: corrupt, or cut before its end marker."""


class BoundedReader:
    """A compressed file read as its decompressed bytes, forward only, never past ``limit`` of them.

    Reading or seeking beyond ``limit`` decompressed bytes raises :class:`TooLarge`, a corrupt or
    cut stream :class:`BrokenStream`; memory stays at a chunk whatever the stream holds. A gzip
    file of several members is read as one, and zero padding after the last member is ignored, as
    gzip and astropy read them. ``seek`` goes forward by inflating and dropping the bytes between
    (enough for walking HDUs header by header).
    """

    def __init__(self, raw: BinaryIO, kind: str, name: str, limit: int):
        self._raw = raw
        self._kind = kind
        self._name = name
        self._limit = limit
        self._inflate = _decompressor(kind)
        self._pending = b""  # compressed input not yet given to the decompressor
        self._buffer = bytearray()  # decompressed, not yet read
        self._position = 0  # decompressed bytes handed out or skipped
        self._eof = False

    def tell(self) -> int:
        return self._position

    def _too_large(self) -> TooLarge:
        return TooLarge(
            f"{self._name}: {self._kind} stream inflates to more than {self._limit} bytes "
            f"({MAX_DECOMPRESSED_BYTES_ENV}); not read further"
        )

    def _input(self) -> bytes:
        data, self._pending = self._pending, b""
        return data or self._raw.read(_CHUNK)

    def _step(self) -> None:
        """Inflate at most one chunk more into the buffer, or mark the end of the stream."""
        inflate = self._inflate
        if inflate.eof:
            rest = inflate.unused_data + self._input()
            while rest and not rest.strip(b"\0"):
                rest = self._raw.read(_CHUNK)
            if not rest:
                self._eof = True
                return
            self._inflate = inflate = _decompressor(self._kind)
            self._pending = rest
        try:
            if self._kind == "gzip":
                data = self._input()
                if not data:
                    raise BrokenStream(f"{self._name}: gzip stream ends before its end marker (truncated)")
                self._buffer += inflate.decompress(data, _CHUNK)
                self._pending = b"" if inflate.eof else inflate.unconsumed_tail  # at the end: in unused_data
            else:
                data = self._input() if inflate.needs_input else b""
                if not data and inflate.needs_input:
                    raise BrokenStream(f"{self._name}: bzip2 stream ends before its end marker (truncated)")
                self._buffer += inflate.decompress(data, max_length=_CHUNK)
        except (zlib.error, OSError, EOFError) as exc:
            raise BrokenStream(f"{self._name}: not a readable {self._kind} stream: {exc}") from exc

    def read(self, size: int) -> bytes:
        """Up to ``size`` decompressed bytes; fewer only at the end of the stream."""
        while len(self._buffer) < size and not self._eof:
            if self._position + len(self._buffer) > self._limit:
                raise self._too_large()
            self._step()
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._position += len(out)
        if self._position > self._limit:
            raise self._too_large()
        return out

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Forward only: inflate and drop the bytes up to ``offset``."""
        if whence == os.SEEK_CUR:
            offset += self._position
        elif whence != os.SEEK_SET:
            raise OSError("a compressed stream seeks from its start or the current position only")
        if offset < self._position:
            raise OSError(f"{self._name}: cannot seek back in a compressed stream")
        while self._position < offset:
            if self._position > self._limit:
                raise self._too_large()
            if not self._buffer:
                if self._eof:
                    break
                self._step()
                continue
            dropped = min(offset - self._position, len(self._buffer))
            del self._buffer[:dropped]
            self._position += dropped
        if self._position > self._limit:
            raise self._too_large()
        return self._position


def decompressed_size(f: BinaryIO, kind: str, name: str, limit: int | None = None,
                      digest: Any | None = None) -> int:
    """Bytes the compressed stream ``f`` (at its start) inflates to, inflating it once in bounded
    memory; :class:`TooLarge` as soon as it passes ``limit`` (default: the setting),
    :class:`BrokenStream` for a corrupt or cut stream. ``digest`` (a hashlib object) is fed the
    inflated bytes on the way."""
    limit = current().max_decompressed_bytes if limit is None else limit
    if kind == "gzip":
        # The last member's size modulo 2**32 ends a gzip file: never more than the whole stream,
        # so beyond the limit it refuses a bomb without inflating it.
        start = f.tell()
        f.seek(-4, os.SEEK_END)
        last = int.from_bytes(f.read(4), "little")
        f.seek(start)
        if last > limit:
            raise TooLarge(f"{name}: gzip stream says it inflates to {last} bytes, more than {limit} "
                           f"({MAX_DECOMPRESSED_BYTES_ENV}), or it is cut short; not read")
    reader = BoundedReader(f, kind, name, limit)
    if digest is None:
        return reader.seek(limit + 1)
    while chunk := reader.read(_CHUNK):
        digest.update(chunk)
    return reader.tell()


def head(f: BinaryIO, size: int) -> bytes:
    """The first ``size`` bytes of the file ``f`` (from its current position), inflated first when
    it is gzip or bzip2: what a header reader needs, in bounded time and memory whatever the file
    holds. A corrupt or cut stream gives the bytes inflated before the damage."""
    magic = f.read(min(size, 4))
    kind = compression(magic)
    if kind is None:
        return magic + f.read(size - len(magic))
    reader = BoundedReader(_Prefixed(magic, f), kind, "", size)
    parts: list[bytes] = []
    try:
        while (got := sum(map(len, parts))) < size and (part := reader.read(min(_CHUNK, size - got))):
            parts.append(part)
    except BrokenStream:
        pass
    return b"".join(parts)


class _Prefixed:
    """Bytes already read, then the rest of a file."""

    def __init__(self, first: bytes, rest: BinaryIO):
        self._first = first
        self._rest = rest

    def read(self, size: int) -> bytes:
        if self._first:
            out, self._first = self._first[:size], self._first[size:]
            return out
        return self._rest.read(size)
