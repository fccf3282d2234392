"""Partition keys of landed files: ``landed-`` and the observation id in their headers, or a safe name.

Every landed key starts with ``LANDED_PREFIX``, which no MAST observation id does, so a landed file
never shares a partition with an archive observation, whatever its header says.

A key is read from as few header bytes as possible, as a sensor computes it for every landed file:
plain uncompressed FITS through :func:`skyassets.fits.header.walk_hdus` (the primary header and,
when the primary holds no data, the first extension's), anything else through astropy; an S3
object's first ``S3_HEADER_BYTES`` only. Both readings give the same key; the tests compare them.
A local file is read through :func:`skyassets.landing.zone.open_regular` (no link is followed), and
whatever goes wrong reading a header gives the name-based key: computing a key never raises.

Plain Python, no Dagster.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from skyassets.fits.header import MAX_HEADER_BYTES, HeaderTooLong, NotPlainFits, walk_hdus
from skyassets.fits.limits import head
from skyassets.lake.names import InvalidNameError, validate_obs_id
from skyassets.landing.zone import FITS_SUFFIXES, LandedFile, open_regular

# Landed partitions' own namespace: MAST observation ids never begin so (see docs/design.md).
LANDED_PREFIX = "landed-"
HEADER_ID_KEYWORDS = ("OBS_ID", "ROOTNAME", "ASN_ID", "OBSID")
# Header values that mean "no id" in HST/JWST products.
_NO_ID_VALUES = {"", "NONE", "N/A", "NA", "UNKNOWN", "NULL"}
STEM_MAX = 64
# Enough for the primary header of any MAST product and, for .fz, the first extension's header.
S3_HEADER_BYTES = 256 << 10
# bzip2 inflates nothing before a whole block (up to 900 kB inflated, about as much compressed at worst).
S3_BZIP2_BYTES = 1 << 20

_STEM_BAD_RE = re.compile(r"[^A-Za-z0-9_.\-]+")


def partition_key(file: LandedFile | str | Path, *, client: Any = None) -> str:
    """The partition key of a landed file; always passes ``validate_obs_id`` and starts with ``LANDED_PREFIX``.

    After the prefix: the observation id from the header (``HEADER_ID_KEYWORDS`` in order, in the primary header or,
    when the primary holds no data as in a tile-compressed ``.fz``, the first extension's header)
    when one is a valid key, else the first one made safe with a short hash of it. Without any,
    the file's stem made safe, ``-`` and 8 hex digits of the
    SHA-256 of its location: a file changed in place keeps its partition, where its new version
    replaces the old, as a file keyed by its header's id does (hashing the bytes of large files
    would also cost more than a sensor tick may take). Files that are not FITS or cannot be read
    get the name-based form. ``client`` (boto3) reads ``s3://`` files.
    """
    location = file.location if isinstance(file, LandedFile) else str(file)
    if location.startswith("s3://"):
        header_id = _s3_header_id(location, client)
    else:
        header_id = _local_header_id(location)
    if header_id is not None:
        return LANDED_PREFIX + header_id
    digest = hashlib.sha256(location.encode("utf-8", "surrogateescape"))
    return validate_obs_id(f"{LANDED_PREFIX}{_safe_stem(location)}-{digest.hexdigest()[:8]}")


def _safe_stem(location: str) -> str:
    """The file name without its FITS suffix, reduced to letters, digits, ``_ - .``."""
    name = location.replace("\\", "/").rsplit("/", 1)[-1]
    lower = name.lower()
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            name = name[: -len(suffix)]
            break
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    stem = _STEM_BAD_RE.sub("_", ascii_name)
    stem = re.sub(r"\.{2,}", ".", stem)[:STEM_MAX]
    stem = stem.strip("_.-")
    return stem or "file"


def _header_id(headers: Sequence[Any]) -> str | None:
    """The first id of ``HEADER_ID_KEYWORDS`` usable as a key as written; else the first text id
    made safe (:func:`_safe_id`), so that files sharing an id no key may hold (``NGC 1365 / r2``,
    as observatories outside MAST write them) still share a partition."""
    unusable = None
    for header in headers:
        for keyword in HEADER_ID_KEYWORDS:
            value = header.get(keyword)
            if value is None or isinstance(value, bool):
                continue
            text = str(value).strip()
            if text.upper() in _NO_ID_VALUES:
                continue
            try:
                return validate_obs_id(LANDED_PREFIX + text)[len(LANDED_PREFIX):]
            except InvalidNameError:
                if unusable is None and isinstance(value, str):
                    unusable = text
    return None if unusable is None else _safe_id(unusable)


def _safe_id(text: str) -> str:
    """An id no key may hold as written, as letters, digits and ``_ - .``, ``-`` and 8 hex digits of
    its SHA-256: two ids that read the same once made safe keep apart."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    safe = re.sub(r"\.{2,}", ".", _STEM_BAD_RE.sub("_", ascii_text))[:STEM_MAX].strip("_.-") or "id"
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{safe}-{digest}"


def _headers(hdul: Any) -> list[Any]:
    """The primary header, and the first extension's when the primary holds no data."""
    primary = hdul[0].header
    if primary.get("NAXIS", 0) != 0:
        return [primary]
    try:
        return [primary, hdul[1].header]
    except (IndexError, OSError, ValueError):
        return [primary]


def _astropy_header_id(source: str | BinaryIO) -> str | None:
    """The header id as astropy reads the file: any FITS astropy opens, compressed ones too."""
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(source, lazy_load_hdus=True, memmap=False) as hdul:
                return _header_id(_headers(hdul))
    except Exception:  # astropy raises many kinds for files that are not FITS; the key falls back
        return None


def _plain_header_id(f: BinaryIO, size: int) -> str | None:
    """``_astropy_header_id`` for plain uncompressed FITS, reading only the headers it needs.

    Raises ``NotPlainFits`` for anything else: the caller then asks astropy.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's notes on the odd cards it is given
        hdus = walk_hdus(f, size)
        primary = next(hdus, None)
        if primary is None:
            raise NotPlainFits("empty file")
        if primary.shape:
            return _header_id([primary.header])
        extension = next(hdus, None)
        if extension is None:
            return _header_id([primary.header])
        if extension.kind != "IMAGE":
            raise NotPlainFits("first extension is not an image")  # astropy may build a table HDU otherwise
        return _header_id([primary.header, extension.header])


def _local_header_id(path: str) -> str | None:
    """The header id of a local file: its headers read directly, astropy when they are not plain.

    ``None`` for a link, a file that is gone or not regular: the copy step refuses it with the reason.
    """
    try:
        fd = open_regular(path)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            return _plain_header_id(f, os.fstat(fd).st_size)
        except HeaderTooLong:  # astropy would read the whole file looking for the END card
            return None
        except Exception:  # NotPlainFits, or bytes the direct reading trips on: astropy decides
            f.seek(0)
            # on the first headers' bytes only, inflated if compressed: astropy would read junk
            # without an END card, or a whole gzip stream, to the end
            first = head(f, 2 * MAX_HEADER_BYTES)
            try:
                return _plain_header_id(io.BytesIO(first), len(first))
            except HeaderTooLong:
                return None
            except Exception:
                return _astropy_header_id(io.BytesIO(first))


def _s3_header_id(location: str, client: Any) -> str | None:
    """Header id from the first ``S3_HEADER_BYTES`` of the object (``S3_BZIP2_BYTES`` of a ``.bz2``)."""
    if client is None:
        raise ValueError(f"partition_key of {location} needs an S3 client")
    bucket, _, key = location[len("s3://"):].partition("/")
    size = S3_BZIP2_BYTES if key.lower().endswith(".bz2") else S3_HEADER_BYTES
    try:
        raw = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{size - 1}")["Body"].read()
    except Exception:  # missing or unreadable object: the catalogue step reports it
        return None
    first = head(io.BytesIO(raw), 4 * S3_HEADER_BYTES)  # inflated when gzip or bzip2, up to the cut
    try:
        return _plain_header_id(io.BytesIO(first), len(first))
    except Exception:  # not FITS, or a header longer than the bytes read, or odd
        return _astropy_header_id(io.BytesIO(first))
