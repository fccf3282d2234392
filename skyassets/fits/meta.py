"""Catalogue rows from FITS headers: one row per science image HDU, in IVOA ObsCore terms.

Only headers are read (no pixel data), so a catalogue of many large files costs little more than
their headers: those of plain uncompressed files straight from their bytes, as astropy would read
them, the others through astropy with lazy HDU loading. Columns that ObsCore defines keep its
names and units (degrees, metres, MJD, seconds, kB); the rest (filter, photometric keywords, AB
zero point, provenance, the full header as JSON) are extras the later stages use. A file that is
not readable FITS raises :class:`UnreadableFits`, and :func:`quarantine` moves such a file aside
with a note saying why.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from astropy import units as u
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS
from astropy.wcs.utils import pixel_to_skycoord, proj_plane_pixel_area

from skyassets.fits import bandpasses, limits
from skyassets.fits.header import BLOCK, CARD, FitsHeader, HeaderLookup, HeaderTooLong, NotPlainFits, walk_hdus
from skyassets.lake.quarantine import copy_of
from skyassets.lake.quarantine import notes as quarantine_notes
from skyassets.lake.schemas import IMAGE_SCHEMA
from skyassets.lake.store import to_frame

AB_ZERO_JY = 3631.0

# Compressions astropy reads whole into memory (a zip member) or not at all: refused.
_UNSUPPORTED_MAGIC = (b"\x1f\x9d", b"PK\x03\x04")
# Extensions that accompany a science image and are not catalogued on their own.
_AUXILIARY = {"ERR", "DQ", "WHT", "CTX", "CON", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "AREA",
              "D2IMARR", "WCSDVARR", "HDRTAB", "ASDF", "SAMP", "TIME", "WMAP", "ZODI"}
_NOT_A_FILTER = {"", "OPEN", "NONE", "N/A", "EMPTY", "BLANK", "UNKNOWN"}
# GALEX's BAND keyword: 1 = NUV, 2 = FUV (its files say the band by number, not by name)
GALEX_BANDS = {1.0: "NUV", 2.0: "FUV"}
_CALIB_SUFFIX = {"uncal": 1, "raw": 1, "rate": 2, "rateints": 2, "cal": 2, "calints": 2, "crf": 2,
                 "flt": 2, "flc": 2, "i2d": 3, "drz": 3, "drc": 3, "s2d": 3}


class UnreadableFits(Exception):
    """The file cannot be read as FITS; ``reason`` says why (for the log and the quarantine note)."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: not readable FITS: {reason}")


@dataclass(frozen=True)
class Failure:
    """A file :func:`extract_many` produced no rows for, and why; ``unreadable`` files are not FITS
    (or broken FITS), others failed for another reason (permissions, a bug) and are left in place."""

    path: str
    reason: str
    unreadable: bool = True
    quarantined: str | None = None


# ------------------------------------------------------------------------------------ schema
# IMAGE_SCHEMA, the catalogue row with units, is declared with the lake's other tables.
COLUMNS: tuple[str, ...] = tuple(IMAGE_SCHEMA.names)


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def to_table(rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> pa.Table:
    """Rows (or a frame of them) as a table with :data:`IMAGE_SCHEMA`, so Parquet keeps the units.

    NaN and NA become nulls, as pandas writes missing strings and integers as NaN.
    """
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows
    return pa.Table.from_pylist(
        [{c: None if _missing(v := r.get(c)) else v for c in COLUMNS} for r in records],
        schema=IMAGE_SCHEMA)


# ------------------------------------------------------------------------------ reading HDUs
@dataclass
class _Hdu:
    index: int
    name: str
    ver: int
    header: FitsHeader


def _read_headers(path: Path) -> tuple[FitsHeader, list[_Hdu], str | None]:
    """The primary header and every image HDU, checking that the file holds the data they announce;
    and for a compressed file, the SHA-256 of the FITS file it holds.

    Everything that can go wrong with a broken file happens here, so only here do errors mean
    "unreadable"; errors later are bugs and propagate as they are. Plain uncompressed files are
    read directly, others with astropy.
    """
    try:
        size = path.stat().st_size
        f = open(path, "rb")
    except OSError as exc:
        raise UnreadableFits(path, f"cannot read: {exc.strerror or exc}") from exc
    with f:
        try:
            head = f.read(CARD)
        except OSError as exc:
            raise UnreadableFits(path, f"cannot read: {exc.strerror or exc}") from exc
        if size == 0:
            raise UnreadableFits(path, "empty file (0 bytes)")
        kind = limits.compression(head)
        if kind is not None:
            return _read_compressed(path, f, kind)
        if head.startswith(_UNSUPPORTED_MAGIC):
            raise UnreadableFits(path, "a zip or Unix-compress archive, not FITS (unpack it first)")
        if not head.startswith(b"SIMPLE  ="):
            raise UnreadableFits(path, f"not FITS: starts with {head[:20]!r}")
        if head[10:].split(b"/")[0].strip() != b"T":
            raise UnreadableFits(path, "not standard FITS (SIMPLE is not T)")
        try:
            return (*_read_plain_hdus(path, f, size), None)
        except HeaderTooLong as exc:  # astropy would read the whole file as the header
            raise UnreadableFits(path, str(exc)) from exc
        except (NotPlainFits, OSError):
            pass
        return (*_read_astropy_hdus(path, f, size, False), None)


def _read_compressed(path: Path, f: io.BufferedReader, kind: str) -> tuple[FitsHeader, list[_Hdu], str]:
    """``_read_headers`` of a gzip or bzip2 file: inflated once to learn its size and hash (the
    image's identity, whichever way its file is compressed), refused beyond
    ``SKYASSETS_MAX_DECOMPRESSED_BYTES``; then its headers walked in the inflated stream as in a
    plain file, astropy reading only files whose headers are not plain (each has an END card in its
    first ``MAX_HEADER_BYTES`` by then, so astropy never reads a stream whole as a header)."""
    digest = hashlib.sha256()
    try:
        f.seek(0)
        inflated = limits.decompressed_size(f, kind, path.name, digest=digest)
        f.seek(0)
        stream = limits.BoundedReader(f, kind, path.name, inflated)
        if not stream.read(CARD).startswith(b"SIMPLE  ="):
            raise UnreadableFits(path, f"{kind} stream that does not hold FITS")
    except (limits.TooLarge, limits.BrokenStream) as exc:
        raise UnreadableFits(path, str(exc)) from exc
    f.seek(0)
    try:
        return (*_read_plain_hdus(path, limits.BoundedReader(f, kind, path.name, inflated), inflated),
                digest.hexdigest())
    except (HeaderTooLong, limits.TooLarge, limits.BrokenStream) as exc:
        raise UnreadableFits(path, str(exc)) from exc
    except (NotPlainFits, OSError):
        pass
    return (*_read_astropy_hdus(path, f, inflated, True), digest.hexdigest())


def _read_astropy_hdus(path: Path, f: io.BufferedReader, size: int, compressed: bool
                       ) -> tuple[FitsHeader, list[_Hdu]]:
    """``_read_headers`` with astropy; ``f`` (the same file) gives the headers' bytes unless it is
    ``compressed``; ``size`` is the file's, or its stream's once inflated."""
    hdus: list[_Hdu] = []
    try:
        with fits.open(path, lazy_load_hdus=True, memmap=True) as hdul:
            primary = hdul[0].header
            for i, hdu in enumerate(hdul):
                info = hdu.fileinfo()
                end = info["datLoc"] + info["datSpan"]
                if end - (BLOCK - 1) > size:
                    raise UnreadableFits(path, _truncated(i, end, size))
                if hdu.header.get("BITPIX") not in limits.VALID_BITPIX:
                    raise UnreadableFits(path, f"HDU {i}: BITPIX = {hdu.header.get('BITPIX')!r} is not one of "
                                               f"{sorted(limits.VALID_BITPIX)}")
                if isinstance(hdu, fits.GroupsHDU) or not isinstance(
                        hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                    continue
                raw = None
                if not compressed and not isinstance(hdu, fits.CompImageHDU):
                    f.seek(info["hdrLoc"])
                    raw = f.read(info["datLoc"] - info["hdrLoc"])
                hdus.append(_Hdu(i, hdu.name, int(hdu.ver), FitsHeader.opened(hdu.header, raw)))
    except (UnreadableFits, ImportError):  # ImportError: a decompressor missing here, not a bad file
        raise
    except Exception as exc:  # astropy raises many kinds for broken files
        raise UnreadableFits(path, f"{type(exc).__name__}: {exc}") from exc
    if hdus and hdus[0].index == 0:
        return hdus[0].header, hdus
    return FitsHeader(None, primary), hdus


def _truncated(index: int, end: int, size: int) -> str:
    return (f"HDU {index} claims data up to byte {end} but the file has {size} bytes "
            "(truncated, or absurd NAXISn)")


def _read_plain_hdus(path: Path, f: io.BufferedReader, size: int) -> tuple[FitsHeader, list[_Hdu]]:
    """``_read_headers`` of a file whose headers are all plain: each read from its bytes as
    astropy would read it (``walk_hdus``), and the same ``UnreadableFits`` for data the file does
    not hold. Raises ``NotPlainFits`` where astropy might read the file otherwise, and where it
    changes a header: a primary header without EXTEND = T before extensions (astropy sets it).
    """
    headers: list[FitsHeader] = []
    hdus: list[_Hdu] = []
    for hdu in walk_hdus(f, size, read_all=True):
        if hdu.end - (BLOCK - 1) > size:
            raise UnreadableFits(path, _truncated(hdu.index, hdu.end, size))
        header = hdu.header
        headers.append(header)
        if hdu.kind in ("PRIMARY", "IMAGE"):
            ver = header.lookup.get("EXTVER", 1)
            if type(ver) is not int:
                raise NotPlainFits(f"EXTVER = {ver!r}")
            name = str(header.lookup.get("EXTNAME", "PRIMARY" if hdu.index == 0 else ""))
            hdus.append(_Hdu(hdu.index, name, ver, header))
    if len(headers) > 1 and headers[0].get("EXTEND") is not True:
        raise NotPlainFits("extensions after a primary header without EXTEND = T")
    return headers[0], hdus


def _shape(h: HeaderLookup) -> list[int]:
    """Axis lengths, NAXIS1 first; for headers whose data were stripped (every NAXISn <= 1) the
    original size kept in NPIXn, ONAXISn or SIZAXISn/BINAXISn."""
    naxis = int(h.get("NAXIS", 0))
    shape = [int(h.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
    if all(n <= 1 for n in shape):
        for keys in (("NPIX1", "NPIX2"), ("ONAXIS1", "ONAXIS2"), ("SIZAXIS1", "SIZAXIS2")):
            if all(isinstance(h.get(k), (int, float)) and h[k] > 1 for k in keys):
                binning = [int(h.get(f"BINAXIS{i}", 1) or 1) for i in (1, 2)]
                return [int(h[k]) // (binning[i] if k.startswith("SIZ") else 1)
                        for i, k in enumerate(keys)]
    return shape


def _selected(hdus: list[_Hdu]) -> list[tuple[_Hdu, list[int]]]:
    """The image HDUs worth a row: the SCI extensions when the file has any, else every image
    HDU that is not auxiliary (error, quality, weight, distortion arrays)."""
    with_shape = [(h, _shape(h.header.lookup)) for h in hdus]
    images = [(h, s) for h, s in with_shape if len(s) >= 2 and s[0] > 0 and s[1] > 0]
    sci = [(h, s) for h, s in images if h.name == "SCI"]
    return sci or [(h, s) for h, s in images if h.name not in _AUXILIARY]


# ----------------------------------------------------------------------------- keywords
class HeaderKeys:
    """Keyword lookup in the HDU's header, then the primary header (FITS INHERIT convention).

    Public so that other modules reading headers (quality's zero point for an image without a
    catalogue row) skip blank and undefined values exactly as the catalogue does.
    """

    def __init__(self, header: HeaderLookup, primary: HeaderLookup | None):
        self.headers = [header] + ([primary] if primary is not None else [])

    def get(self, *keys: str) -> Any:
        """The first meaningful value (not blank, not undefined) of ``keys``, in order."""
        for key in keys:
            for h in self.headers:
                v = h.get(key)
                if isinstance(v, str):
                    v = v.strip()
                if v is not None and v != "" and not isinstance(v, fits.card.Undefined):
                    return v
        return None

    def number(self, *keys: str) -> float | None:
        for key in keys:
            v = self.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                return float(v)
        return None

    def text(self, *keys: str) -> str | None:
        v = self.get(*keys)
        return None if v is None else str(v)


@lru_cache(maxsize=1024)  # the chips of a file share their dates; astropy's Time is slow to parse
def _mjd_from_date(date: str | None, time: str | None) -> float | None:
    """MJD of a FITS date (ISO, with or without time; or the pre-2000 dd/mm/yy form)."""
    if not date:
        return None
    old = re.fullmatch(r"(\d\d)/(\d\d)/(\d\d)", date)
    if old:
        date = f"19{old[3]}-{old[2]}-{old[1]}"
    if "T" not in date and time and re.fullmatch(r"\d\d?:\d\d(:\d\d(\.\d*)?)?", time):
        date = f"{date}T{time}"
    try:
        return float(Time(date, scale="utc").mjd)
    except ValueError:
        return None


def _times(k: HeaderKeys, exptime: float | None) -> tuple[float | None, float | None]:
    t_min = k.number("MJD-OBS", "MJD-BEG", "EXPSTART")
    if t_min is None:
        t_min = _mjd_from_date(k.text("DATE-BEG"), None) or _mjd_from_date(
            k.text("DATE-OBS"), k.text("TIME-OBS", "UT", "UTSTART", "UT-START"))
    t_max = k.number("MJD-END", "EXPEND") or _mjd_from_date(k.text("DATE-END"), None)
    if t_max is None and t_min is not None and exptime:
        t_max = t_min + exptime / 86400.0
    return t_min, t_max


def _is_filter(name: str) -> bool:
    return not (name.upper() in _NOT_A_FILTER or name.upper().startswith("CLEAR"))


def _filters(k: HeaderKeys, instrument: str | None) -> tuple[list[str], str | None]:
    """Optical elements in the beam (clear positions and wheel numbers left out) and the pupil.

    The pupil joins the list when it holds a filter (NIRISS short-wavelength filters, NIRCam
    narrow bands in front of a wide one).
    """
    names: list[str] = []
    for key in ("FILTER", "FILTER1", "FILTER2", "FILTER3", "FILTNAM1", "FILTNAM2", "FILTNAME"):
        v = k.get(key)
        if isinstance(v, str) and _is_filter(v) and v not in names:
            names.append(v)
    band = k.number("BAND")
    if not names and (instrument or "").upper() == "GALEX" and band in GALEX_BANDS:  # GALEX numbers its band
        names.append(GALEX_BANDS[band])
    pupil = k.text("PUPIL")
    if pupil and _is_filter(pupil) and bandpasses.lookup(instrument, pupil) and pupil not in names:
        names.append(pupil)
    return names, pupil


_UNIT_WORDS = {"electrons": "electron", "counts": "count", "jy": "Jy", "mjy": "MJy", "dn": "DN",
               "sec": "s", "beam": "beam", "sr": "sr", "s": "s", "adu": "adu", "ujy": "uJy"}


@lru_cache(maxsize=1024)  # parsing a unit costs up to a millisecond, and files share a few
def parse_bunit(bunit: str | None) -> u.UnitBase | None:
    """BUNIT as an astropy unit, accepting the upper-case plural forms HST writes. Public so that
    every module reads the same BUNIT as the same unit."""
    if not bunit:
        return None
    unit = u.Unit(bunit, parse_strict="silent")
    if isinstance(unit, u.UnrecognizedUnit):
        parts = [_UNIT_WORDS.get(p.strip().lower()) for p in bunit.split("/")]
        if not all(parts):
            return None
        unit = u.Unit("/".join(parts), parse_strict="silent")  # type: ignore[arg-type]
    return None if isinstance(unit, u.UnrecognizedUnit) else unit


_COUNTS = (u.electron, u.count, u.DN, u.adu)


@lru_cache(maxsize=1024)
def _is_counts(unit: u.UnitBase | None, per_second: bool) -> bool:
    if unit is None:
        return False
    return any(unit.is_equivalent(c / u.s if per_second else c) for c in _COUNTS)


@lru_cache(maxsize=1024)
def _o_ucd(unit: u.UnitBase | None) -> str | None:
    if unit is None:
        return None
    if unit.is_equivalent(u.Jy / u.sr) or unit.is_equivalent(u.Jy / u.beam):
        return "phot.flux.density.sb"
    if unit.is_equivalent(u.Jy) or unit.is_equivalent(u.erg / u.s / u.cm**2 / u.AA):
        return "phot.flux.density"
    if _is_counts(unit, per_second=True) or _is_counts(unit, per_second=False):
        return "phot.count"
    return None


def zero_point_ab(k: HeaderKeys, unit: u.UnitBase | None, exptime: float | None) -> float | None:
    """AB zero point for summed pixel values: JWST surface brightness (MJy/sr, or DN/s with
    PHOTMJSR) times the pixel area; HST PHOTFLAM at PHOTPLAM, per second or per exposure. Public
    so that quality's depths use the very zero point the catalogue records."""
    pixar_sr, photmjsr = k.number("PIXAR_SR"), k.number("PHOTMJSR")
    photflam, photplam = k.number("PHOTFLAM"), k.number("PHOTPLAM")
    if unit is not None and pixar_sr:
        if unit.is_equivalent(u.MJy / u.sr):
            return -2.5 * math.log10(unit.to(u.MJy / u.sr) * 1e6 * pixar_sr / AB_ZERO_JY)
        if photmjsr and _is_counts(unit, per_second=True):
            return -2.5 * math.log10(photmjsr * 1e6 * pixar_sr / AB_ZERO_JY)
    if photflam and photplam and photflam > 0 and photplam > 0:
        zp = -2.5 * math.log10(photflam) - 5.0 * math.log10(photplam) - 2.408
        if _is_counts(unit, per_second=True):
            return zp
        if _is_counts(unit, per_second=False) and exptime:
            return zp + 2.5 * math.log10(exptime)
    return None


def _calib_level(k: HeaderKeys, file_name: str) -> int | None:
    """The header's level, else the one the file's name gives (``_drz``, ``_cal``, ...), else the one
    the name the pipeline gave it gives (FILENAME): a drz landed under a name of its owner's choosing
    is still a combined product, which gives way to its own visit's exposures in a mosaic."""
    level = k.number("CALIBLEV", "CAL_LEVEL")
    if level is not None:
        return int(level)
    for name in (file_name, Path(k.text("FILENAME") or "").name):
        stem = name.split(".")[0]
        if "_" in stem and (found := _CALIB_SUFFIX.get(stem.rsplit("_", 1)[-1].lower())) is not None:
            return found
    return None


# ------------------------------------------------------------------------------- spatial
def _parse_region(text: str) -> tuple[str, list[tuple[float, float]], float | None] | None:
    """(region as ICRS STC-S, vertices, circle radius or None) of a header's S_REGION when it is
    one or more POLYGONs or a CIRCLE in ICRS/FK5/J2000 (the same to well under an arcsecond);
    several polygons (one per chip) are kept and merged for the centre and size. None otherwise."""
    words = text.split()
    if not words or words[0].upper() not in ("POLYGON", "CIRCLE"):
        return None
    shape = words[0].upper()
    pieces: list[list[str]] = []
    for w in words:
        if w.upper() == shape:
            pieces.append([])
        elif w.upper() not in ("ICRS", "FK5", "J2000"):
            pieces[-1].append(w)
    try:
        numbers = [[float(w) for w in piece] for piece in pieces]
    except ValueError:
        return None
    if not all(math.isfinite(x) for n in numbers for x in n):
        return None  # NaN or inf: no position at all
    decs = [n[1] for n in numbers if len(n) > 1] if shape == "CIRCLE" else [d for n in numbers for d in n[1::2]]
    if not all(-90.0 <= d <= 90.0 for d in decs):
        return None
    if shape == "CIRCLE":
        if len(numbers) != 1 or len(numbers[0]) != 3:
            return None
        ra, dec, r = numbers[0]
        if not 0.0 < r <= 180.0:
            return None
        return f"CIRCLE ICRS {ra:.7f} {dec:.7f} {r:.7f}", [(ra, dec)], r
    if any(len(n) < 6 or len(n) % 2 for n in numbers):
        return None
    vertices = [(a, d) for n in numbers for a, d in zip(n[::2], n[1::2], strict=True)]
    return " ".join("POLYGON ICRS " + " ".join(piece) for piece in pieces), vertices, None


def _centre_and_fov(ra: np.ndarray, dec: np.ndarray) -> tuple[float, float, float]:
    """Centre (mean of the unit vectors) and largest vertex-to-vertex separation, in degrees."""
    a, d = np.radians(ra), np.radians(dec)
    xyz = np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])
    x, y, z = xyz.mean(axis=1)
    chord = np.linalg.norm(xyz[:, :, None] - xyz[:, None, :], axis=0).max()
    fov = math.degrees(2.0 * math.asin(min(chord / 2.0, 1.0)))
    return math.degrees(math.atan2(y, x)) % 360.0, math.degrees(math.atan2(z, math.hypot(x, y))), fov


def _linear_pixel_scale(h: HeaderLookup) -> float | None:
    """Pixel scale (arcsec) from the linear WCS keywords alone, when no WCS object is built."""
    if "CD1_1" in h:
        det = h.get("CD1_1", 0.0) * h.get("CD2_2", 0.0) - h.get("CD1_2", 0.0) * h.get("CD2_1", 0.0)
    elif "CDELT1" in h and "CDELT2" in h:
        pc = h.get("PC1_1", 1.0) * h.get("PC2_2", 1.0) - h.get("PC1_2", 0.0) * h.get("PC2_1", 0.0)
        det = h["CDELT1"] * h["CDELT2"] * pc
    elif isinstance(h.get("PIXAR_A2"), (int, float)):
        return math.sqrt(h["PIXAR_A2"])
    else:
        return None
    return math.sqrt(abs(det)) * 3600.0 if det else None


_LOOKUP_KEYS = re.compile(r"(CPDIS|CPERR|D2IMDIS|D2IMERR|D2IMEXT|DP|DQ)\d")


def _without_lookup_distortion(h: fits.Header) -> fits.Header:
    """The header without lookup-table distortions: they live in other HDUs' pixel data, which a
    catalogue does not read, and move positions by well under a pixel."""
    if not any(k in h for k in ("CPDIS1", "CPDIS2", "D2IMDIS1", "D2IMDIS2")):
        return h
    return fits.Header([c for c in h.cards if not _LOOKUP_KEYS.match(c.keyword)])


_LONGITUDES = ("RA--", "GLON", "ELON", "SLON", "HLON")
_LATITUDES = ("DEC-", "GLAT", "ELAT", "SLAT", "HLAT")
# A 2x2 matrix whose determinant is this small next to its largest element squared maps a pixel
# onto a line: a pixel 10^9 times longer than it is wide is no sky projection.
_SINGULAR = 1e-9


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _celestial_axes(h: HeaderLookup) -> tuple[int, int] | None:
    """The (longitude, latitude) axis numbers (1-based) from the CTYPEn keywords, or None."""
    found: dict[str, int] = {}
    for n in range(1, 10):
        ctype = h.get(f"CTYPE{n}")
        if isinstance(ctype, str):
            kind = ctype.strip().upper()[:4]
            if kind in _LONGITUDES or kind in _LATITUDES:
                found.setdefault("lng" if kind in _LONGITUDES else "lat", n)
    return (found["lng"], found["lat"]) if len(found) == 2 else None


def _matrix_problem(matrix: np.ndarray, name: str) -> str | None:
    """Why a 2x2 pixel-to-sky matrix cannot place pixels on the sky, or None."""
    if not np.isfinite(matrix).all():
        return f"{name} has values that are not finite"
    with np.errstate(over="ignore", invalid="ignore"):
        det = float(np.linalg.det(matrix))
    largest = float(np.abs(matrix).max())
    if largest == 0.0 or not abs(det) > _SINGULAR * largest * largest:
        return f"{name} is singular (determinant {det:.3g}): pixels have no sky position"
    return None


def wcs_keyword_problem(h: HeaderLookup, axes: tuple[int, int]) -> str | None:
    """Why the linear WCS keywords of the celestial ``axes`` cannot place pixels on the sky, or None.

    wcslib takes 0 (CRVAL, CRPIX, CDi_j) or 1 (CDELT, PCi_i) in place of a keyword it cannot read,
    and a CD matrix of zeros as absent: a NaN CRVAL put an image at RA 0, a zero CD matrix gave
    one-degree pixels. So every such keyword that is given must be a finite number, the CD
    matrix (or CDELT times PC) must not be singular, and the pixels and the image must fit on the sky."""
    for key in [f"CRVAL{n}" for n in axes] + [f"CRPIX{n}" for n in axes]:
        if key in h and _finite(h.get(key)) is None:
            return f"{key} = {h.get(key)!r} is not a finite number"
    pairs = [(i, j) for i in axes for j in axes]
    keys = [f"CD{i}_{j}" for i, j in pairs]
    if any(k in h for k in keys):
        name = "CD matrix"
        values = [h.get(k) if k in h else 0.0 for k in keys]
    else:
        name = "PC matrix with CDELT"
        pc = [h.get(f"PC{i}_{j}") if f"PC{i}_{j}" in h else float(i == j) for i, j in pairs]
        cdelt = [h.get(f"CDELT{n}") if f"CDELT{n}" in h else 1.0 for n in axes]
        keys, values = [f"CDELT{n}" for n in axes] + keys, cdelt + pc
    for key, value in zip(keys, values, strict=True):
        if _finite(value) is None:
            return f"{key} = {value!r} is not a finite number"
    if name == "CD matrix":
        matrix = np.array(values, dtype=float).reshape(2, 2)
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is judged just below
            matrix = np.diag(values[:2]) @ np.array(values[2:], dtype=float).reshape(2, 2)
    return _size_problem(h, axes, matrix, name) or _matrix_problem(matrix, name)


def _degrees(unit: Any) -> float | None:
    """Degrees per unit of a CUNITn value (degrees when absent), or None if it is not an angle."""
    if unit is None or (isinstance(unit, str) and not unit.strip()):
        return 1.0
    return _unit_degrees(str(unit).strip())


@lru_cache(maxsize=64)
def _unit_degrees(unit: str) -> float | None:
    try:
        return float(u.Unit(unit, format="fits").to(u.deg))
    except (ValueError, TypeError, u.UnitsError):
        return None


def _size_problem(h: HeaderLookup, axes: tuple[int, int], matrix: np.ndarray, name: str) -> str | None:
    """Why the pixels, or CRPIX, put the image beyond the sky, or None: finite but absurd values
    (a CDELT of 1e300, a CRPIX of -1e300) would otherwise project to a made-up position."""
    scales = [_degrees(h.get(f"CUNIT{n}")) for n in axes]
    if None in scales:
        return None  # not an angle wcslib would take either; left to it
    with np.errstate(over="ignore", invalid="ignore"):
        matrix = np.diag(scales) @ matrix
    largest = float(np.abs(matrix).max())
    if not largest <= 180.0:
        return f"{name} makes pixels {largest:.3g} degrees wide: larger than the sky"
    crpix = [_finite(h.get(f"CRPIX{n}")) or 0.0 for n in axes]  # found finite, if given, before
    sizes = [_finite(h.get(f"NAXIS{n}")) or 1.0 for n in axes]
    corners = np.array([[x, y] for x in (1.0, sizes[0]) for y in (1.0, sizes[1])]) - np.array(crpix)
    with np.errstate(over="ignore", invalid="ignore"):
        reach = float(np.abs(corners @ matrix.T).max())
    if not reach <= 360.0:
        return (f"CRPIX{axes[0]}/CRPIX{axes[1]} = {crpix[0]:.6g}/{crpix[1]:.6g} put the image "
                f"{reach:.3g} degrees from its reference point")
    return None


def _spatial(header: FitsHeader, shape: list[int]) -> dict[str, Any]:
    """s_ra, s_dec, s_fov, s_region, s_xel1/2, pixel_scale and wcs_problem of one image HDU.

    A header whose celestial WCS keywords cannot be right (:func:`wcs_keyword_problem`) gets its
    ``wcs_problem`` and no position at all, not even from S_REGION: the archive computes S_REGION
    from those keywords, and a wrong position is worse than none."""
    h = header.lookup
    out: dict[str, Any] = {"s_xel1": shape[0], "s_xel2": shape[1], "wcs_problem": None}
    extra = [n for n in shape[2:] if n > 1]
    out["dataproduct_type"] = "cube" if extra else "image"
    axes = _celestial_axes(h)
    problem = wcs_keyword_problem(h, axes) if axes else None
    if problem:
        out["wcs_problem"] = f"unusable WCS: {problem}"
        return out
    region = h.get("S_REGION")  # this HDU's own: a primary S_REGION may cover every chip
    parsed = _parse_region(region) if isinstance(region, str) else None
    if parsed is not None:
        text, vertices, radius = parsed
        ra, dec = np.array([v[0] for v in vertices]), np.array([v[1] for v in vertices])
        if radius is not None:
            out.update(s_ra=float(ra[0]), s_dec=float(dec[0]), s_fov=2.0 * radius)
        else:
            out["s_ra"], out["s_dec"], out["s_fov"] = _centre_and_fov(ra, dec)
        out["s_region"] = text
        out["pixel_scale"] = _linear_pixel_scale(h)
        return out
    try:
        w = WCS(_without_lookup_distortion(header.astropy), relax=True)
    except Exception as exc:  # astropy.wcs raises several types for bad keywords
        out["wcs_problem"] = f"invalid WCS: {type(exc).__name__}: {exc}"
        return out
    if not w.has_celestial:
        ctypes = ", ".join(t for t in w.wcs.ctype if t) or "none"
        out["wcs_problem"] = f"no celestial WCS (CTYPE: {ctypes})"
        return out
    cel = w.celestial
    lng, lat = w.wcs.lng, w.wcs.lat
    problem = wcs_keyword_problem(h, (lng + 1, lat + 1)) or _matrix_problem(cel.pixel_scale_matrix, "WCS matrix")
    if problem is None and not np.isfinite(cel.wcs.crval).all():
        problem = "CRVAL is not finite"
    if problem:
        out["wcs_problem"] = f"unusable WCS: {problem}"
        return out
    nx = shape[lng] if lng < len(shape) else shape[0]
    ny = shape[lat] if lat < len(shape) else shape[1]
    out["s_xel1"], out["s_xel2"] = nx, ny
    out["dataproduct_type"] = "cube" if any(
        n > 1 for i, n in enumerate(shape) if i not in (lng, lat)) else "image"
    x = np.array([(nx - 1) / 2.0, -0.5, nx - 0.5, nx - 0.5, -0.5])
    y = np.array([(ny - 1) / 2.0, -0.5, -0.5, ny - 0.5, ny - 0.5])
    try:
        sky = pixel_to_skycoord(x, y, cel, origin=0, mode="all").icrs
        scale = math.sqrt(proj_plane_pixel_area(cel)) * 3600.0
    except Exception as exc:  # e.g. solar or planetary frames that have no ICRS transformation
        ctypes = ", ".join(cel.wcs.ctype)
        out["wcs_problem"] = f"no transformation to ICRS (CTYPE: {ctypes}): {exc}"
        return out
    ra, dec = sky.ra.deg, sky.dec.deg
    out["pixel_scale"] = scale if math.isfinite(scale) and scale > 0 else None
    if not (math.isfinite(ra[0]) and math.isfinite(dec[0])):
        out["wcs_problem"] = "the WCS gives no sky position at the image centre"
        return out
    out["s_ra"], out["s_dec"] = float(ra[0]), float(dec[0])
    if not (np.isfinite(ra[1:]).all() and np.isfinite(dec[1:]).all()):
        out["wcs_problem"] = "image corners are off the sky: no footprint"
        return out
    out["s_fov"] = _centre_and_fov(ra[1:], dec[1:])[2]
    out["s_region"] = "POLYGON ICRS " + " ".join(f"{a:.7f} {d:.7f}" for a, d in zip(ra[1:], dec[1:], strict=True))
    return out


# -------------------------------------------------------------------------------- extract
def extract(path: str | os.PathLike[str], *, sha256: str | None = None,
            access_url: str | None = None, obs_id: str | None = None,
            size: int | None = None, stored_path: str | None = None,
            obs_collection: str | None = None, calib_level: int | None = None) -> list[dict[str, Any]]:
    """Catalogue rows (one per science image HDU) of one FITS file, from its headers only.

    ``sha256``, ``access_url``, ``obs_id`` and ``size`` come from the caller when it knows them
    (the downloader does); ``obs_id`` otherwise comes from OBS_ID/ROOTNAME or the file name.
    ``obs_collection`` and ``calib_level`` are the archive's own for its products (an HLA mosaic's
    header says HST; a GALEX header no level), else they come from the headers.
    ``fits_sha256`` is ``sha256`` for an uncompressed file, the hash of the inflated stream for a
    compressed one: the same image as ``.fits`` and ``.fits.gz`` is the same image.
    ``stored_path`` is the ``path`` recorded (default: ``path`` itself).
    Raises :class:`UnreadableFits` when the file is not readable FITS.
    """
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's fix-up notes about real-world headers
        primary, hdus, inflated_sha256 = _read_headers(path)
        file_size = size if size is not None else path.stat().st_size
        rows = [_row(path, hdu, shape, primary, sha256=sha256, access_url=access_url,
                     obs_id=obs_id, size=file_size, collection=obs_collection) for hdu, shape in _selected(hdus)]
    for row in rows:
        row["path"] = stored_path or str(path)
        row["fits_sha256"] = inflated_sha256 or sha256
        if calib_level is not None:
            row["calib_level"] = int(calib_level)
    return rows


def _row(path: Path, hdu: _Hdu, shape: list[int], primary: FitsHeader, *,
         sha256: str | None, access_url: str | None, obs_id: str | None,
         size: int, collection: str | None) -> dict[str, Any]:
    parent = primary.lookup if hdu.index > 0 else None
    k = HeaderKeys(hdu.header.lookup, parent)
    telescope = k.text("TELESCOP")
    telescope = telescope.upper() if telescope else None
    instrument = k.text("INSTRUME")
    detector = k.text("DETECTOR")
    instrument_name = instrument.upper() if instrument else None
    if instrument_name and telescope == "HST" and detector:
        instrument_name = f"{instrument_name}/{detector.upper()}"
    elif instrument_name and telescope == "JWST" and str(k.get("EXP_TYPE") or "").endswith("_IMAGE"):
        instrument_name = f"{instrument_name}/IMAGE"
    names, pupil = _filters(k, instrument_name)
    em = bandpasses.effective_range(instrument_name, names)
    exptime = k.number("EFFEXPTM", "XPOSURE", "EXPTIME", "TEXPTIME", "EXPOSURE", "EXP_TIME")
    t_min, t_max = _times(k, exptime)
    bunit = k.text("BUNIT")
    unit = parse_bunit(bunit)
    stem = path.name.split(".")[0]
    obs_id = obs_id or k.text("OBS_ID") or (k.text("ROOTNAME") or "").lower() or stem
    collection = collection or telescope
    proposal = k.get("PROGRAM", "PROPOSID", "PROPOSAL", "PROP_ID", "PROGID")
    if isinstance(proposal, str) and proposal.isdigit():
        proposal = str(int(proposal))
    ccdchip = k.number("CCDCHIP")
    row: dict[str, Any] = {
        "calib_level": _calib_level(k, path.name),
        "obs_collection": collection,
        "obs_id": obs_id,
        "obs_publisher_did": (f"ivo://archive.stsci.edu/{collection.lower()}?{obs_id}"
                              if collection in ("JWST", "HST") else None),
        "access_url": access_url,
        "access_format": "image/fits",
        "access_estsize": math.ceil(size / 1024),
        "target_name": k.text("TARGNAME", "TARGPROP", "OBJECT"),
        "s_resolution": None,
        "t_min": t_min,
        "t_max": t_max,
        "t_exptime": exptime,
        "em_min": em[0] if em else None,
        "em_max": em[1] if em else None,
        "facility_name": telescope,
        "instrument_name": instrument_name,
        "o_ucd": _o_ucd(unit),
        "proposal_id": None if proposal is None else str(proposal),
        "filter": ";".join(names) or None,
        "pupil": pupil,
        "detector": detector,
        "ccdchip": None if ccdchip is None else int(ccdchip),
        "observation": k.text("OBSERVTN"),
        "visit": k.text("VISIT"),
        "visit_id": k.text("VISIT_ID"),
        "asn_id": k.text("ASN_ID", "ASNTABLE"),
        "bunit": bunit,
        **{key.lower(): k.number(key) for key in (
            "PHOTMJSR", "PHOTUJA2", "PIXAR_SR", "PIXAR_A2", "PHOTFLAM", "PHOTFNU", "PHOTPLAM",
            "PHOTBW", "PHOTZPT", "MAGZPT")},
        "zp_ab": zero_point_ab(k, unit, exptime),
        "sha256": sha256,
        "size": size,
        "file_name": path.name,
        "hdu_index": hdu.index,
        "hdu_name": hdu.name,
        "hdu_ver": hdu.ver,
        "header_json": json.dumps({
            "primary": primary.json,
            "extension": hdu.header.json if parent is not None else None,
        }),
    }
    row.update(_spatial(hdu.header, shape))
    return {c: row.get(c) for c in COLUMNS}


# ------------------------------------------------------------------------------ quarantine
def quarantine(path: str | os.PathLike[str], quarantine_dir: str | os.PathLike[str],
               reason: str, *, landed_location: str | None = None, landed_signature: str | None = None) -> Path:
    """Move ``path`` into ``quarantine_dir`` (never over another file) with ``<name>.json`` beside
    it saying what it was and why it was moved (and, for a copy of a landed file, where it was
    landed and which version of it: its signature); returns the new path."""
    path = Path(path)
    qdir = Path(quarantine_dir)
    qdir.mkdir(parents=True, exist_ok=True)
    size = path.stat().st_size
    stem, dot, ext = path.name.partition(".")
    n = 0
    while True:
        name = path.name if n == 0 else f"{stem}-{n}{dot}{ext}"
        target = qdir / name
        sidecar = qdir / f"{name}.json"
        if not sidecar.exists():
            try:
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # claim the name
                break
            except FileExistsError:
                pass
        n += 1
    shutil.move(str(path), str(target))
    note = {"file": target.name, "reason": reason,
            "moved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "original_path": str(path.absolute()), "size": size}
    if landed_location is not None:
        note["landed_location"] = landed_location
    if landed_signature is not None:
        note["landed_signature"] = landed_signature
    sidecar.write_text(json.dumps(note, indent=1) + "\n")
    return target


def quarantined_versions(quarantine_dir: str | os.PathLike[str]) -> dict[str, tuple[str, str]]:
    """Each landed file's quarantined version, from the notes: landed location -> (its signature,
    the reason without the location), the newest note's where a file was quarantined twice."""
    versions: dict[str, tuple[str, str]] = {}
    for _, note in quarantine_notes(quarantine_dir):
        location, signature = note.get("landed_location"), note.get("landed_signature")
        if isinstance(location, str) and isinstance(signature, str):
            versions[location] = (signature, str(note.get("reason", "")).removeprefix(f"{location}: "))
    return versions


def release_quarantined(quarantine_dir: str | os.PathLike[str], taken: Mapping[str, str]) -> list[Path]:
    """Delete the quarantined copies (and notes) of landed files since taken in another version.

    ``taken`` maps a landed location to the signature of the version just copied and verified. A
    note of that location with another signature speaks of a version its owner has replaced, and
    keeping it would show a repaired file as still broken; a note of the same version stays.
    Returns the copies deleted.
    """
    released = []
    for sidecar, note in quarantine_notes(quarantine_dir):
        location = note.get("landed_location")
        if isinstance(location, str) and location in taken and note.get("landed_signature") != taken[location]:
            copy_of(sidecar).unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            released.append(copy_of(sidecar))
    return released


# ---------------------------------------------------------------------------- many files
_Item = tuple[str, dict[str, Any]]


def _normalise(source: str | os.PathLike[str] | Mapping[str, Any]) -> _Item:
    if isinstance(source, Mapping):
        kwargs = {k: v for k, v in source.items() if k != "path"}
        return str(source["path"]), kwargs
    return str(source), {}


def _extract_chunk(items: list[_Item]) -> list[tuple[list[dict[str, Any]], Failure | None]]:
    """Extract each file of a chunk; a failure is recorded and the next file goes on."""
    out: list[tuple[list[dict[str, Any]], Failure | None]] = []
    for path, kwargs in items:
        try:
            out.append((extract(path, **kwargs), None))
        except UnreadableFits as exc:
            out.append(([], Failure(path, exc.reason)))
        except Exception as exc:
            out.append(([], Failure(path, f"{type(exc).__name__}: {exc}", unreadable=False)))
    return out


def extract_many(paths: Iterable[str | os.PathLike[str] | Mapping[str, Any]],
                 processes: int | None = None,
                 quarantine_dir: str | os.PathLike[str] | None = None,
                 ) -> tuple[pd.DataFrame, list[Failure]]:
    """Rows of many files, extracted in ``processes`` worker processes (default: one per CPU;
    1 runs inline). Each source is a path or a mapping ``{"path": ..., "sha256": ..., ...}``
    with :func:`extract`'s keyword arguments. Unreadable files are moved into
    ``quarantine_dir`` when one is given."""
    items = [_normalise(p) for p in paths]
    workers = max(1, min(processes or os.cpu_count() or 1, len(items)))
    if workers == 1:
        results = _extract_chunk(items)
    else:
        size = max(1, math.ceil(len(items) / (workers * 4)))
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        # forkserver: safe in a multi-threaded parent (Dagster); preloading keeps workers cheap.
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = [r for chunk in pool.map(_extract_chunk, chunks) for r in chunk]
    rows = [row for file_rows, _ in results for row in file_rows]
    failures = []
    for _, failure in results:
        if failure is None:
            continue
        if quarantine_dir is not None and failure.unreadable and os.path.exists(failure.path):
            moved = quarantine(failure.path, quarantine_dir, failure.reason)
            failure = Failure(failure.path, failure.reason, True, str(moved))
        failures.append(failure)
    return to_frame(to_table(rows)), failures
