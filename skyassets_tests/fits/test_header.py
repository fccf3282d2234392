"""The FITS header layer: headers read from their bytes as astropy reads them, the HDU walk, the
bound on header reads, and the one definition of the FITS block and card sizes."""

from __future__ import annotations

import io
import json
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skyassets.fits.header import (
    BLOCK,
    CARD,
    MAX_HEADER_BYTES,
    FitsHeader,
    HeaderTooLong,
    NotPlainFits,
    header_dict,
    read_header_blocks,
    walk_hdus,
)

PACKAGE = Path(__file__).resolve().parents[2] / "skyassets"
pytestmark = pytest.mark.filterwarnings("ignore:The following header keyword is invalid")


def _header(cards: list[str]) -> bytes:
    """Header blocks of the card images given, as written (no checks, so odd cards stay odd)."""
    assert all(len(c) <= CARD for c in cards)
    raw = b"".join(c.ljust(CARD).encode("latin-1") for c in cards) + b"END".ljust(CARD)
    return raw + b" " * (-len(raw) % BLOCK)


VALUES = ["'text'", "'a''b'", "'x/y'", "'it''s / x'", "'ok' / c", "'  lead'", "''", "'AXIS.1: 3'", "'abc&'",
          "12", "-5", "+007", "1.5", "1E5", "1.5D-3", "-.5", "5.", "T", "F", "", "/ comment", "-0.0", "1E999"]
KEYS = ["FILTER", "EXPTIME", "CD1_1", "S_REGION", "DATE-OBS", "NAXIS1", "DP1", "EXTEND"]
KINDS = ["{k:<8}= {v}"] * 12 + ["COMMENT {v}", "HISTORY {v}", "        {v}", "CONTINUE  {v}",
                                "HIERARCH {k} = {v}", "{kl:<8}= {v}", "{k:<8}  {v}", "{k}= {v}"]


def _random_headers(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return [_header([rng.choice(KINDS).format(k=(k := rng.choice(KEYS)), kl=k.lower(), v=rng.choice(VALUES))[:80]
                     for _ in range(rng.randint(0, 25))]) for _ in range(count)]


def _same(got: object, want: object) -> bool:
    return type(got) is type(want) and (got == want or got != got)


def test_header_bytes_read_as_astropy_reads_them():
    """Seeded random headers: the JSON dict, the card count and every keyword lookup are the same
    as astropy's, or the header is left to astropy."""
    read = 0
    for raw in _random_headers(3, 400):
        try:
            parsed = FitsHeader(raw)
            parsed.read_all()
        except NotPlainFits:
            continue
        read += 1
        header = fits.Header.fromstring(raw)
        assert parsed.count == len(header)
        assert json.dumps(parsed.json) == json.dumps(header_dict(header))
        for key in {fits.Card.normalize_keyword(c.keyword) for c in header.cards if c.keyword} | set(KEYS):
            if key not in ("COMMENT", "HISTORY"):
                want, got = header.get(key), parsed.lookup.get(key)
                assert _same(got, want), key
                assert (key in header) == (key in parsed.lookup) or "." in key or len(key) > 8, key
    assert read > 100


def test_keywords_looked_up_from_their_cards_alone_are_astropy_s():
    """``get``, ``in`` and ``integer`` on a header not read in full give what astropy gives, for
    every keyword of seeded random headers, or leave the header to astropy."""
    looked_up = 0
    for raw in _random_headers(5, 300):
        try:
            FitsHeader(raw)
        except NotPlainFits:
            continue
        header = fits.Header.fromstring(raw)
        for key in {fits.Card.normalize_keyword(c.keyword) for c in header.cards if c.keyword} | set(KEYS):
            if key in ("COMMENT", "HISTORY") or "." in key or len(key) > 8:
                continue
            fresh = FitsHeader(raw)
            try:
                assert _same(fresh.get(key), header.get(key)), key
                assert (key in FitsHeader(raw)) == (key in header), key
            except NotPlainFits:
                continue
            looked_up += 1
            want = header.get(key)
            if type(want) is int and want >= 0:
                try:
                    value = FitsHeader(raw).integer(key)
                except NotPlainFits:
                    continue  # repeated with another value, or read in astropy's own way
                last = [c.value for c in header.cards if c.keyword == key][-1]  # what astropy sizes HDUs from
                assert value == want == last, key
    assert looked_up > 500


def test_a_header_astropy_opened_is_read_from_its_bytes_when_they_agree():
    raw = _header(["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    0",
                   "EXTEND  =                    T", "FILTER  = 'F200W'", "HIERARCH ESO DET = 1"])
    opened = FitsHeader.opened(fits.Header.fromstring(raw), raw)
    assert opened.plain and opened.get("FILTER") == "F200W" and opened.json["ESO DET"] == 1
    without_bytes = FitsHeader.opened(fits.Header.fromstring(raw))
    assert not without_bytes.plain and without_bytes.get("FILTER") == "F200W"
    assert without_bytes.json == opened.json
    changed = fits.Header.fromstring(raw)
    changed["NEW"] = 1  # astropy's header is no longer the bytes
    assert not FitsHeader.opened(changed, raw).plain


def _hdul() -> fits.HDUList:
    primary = fits.PrimaryHDU(header=fits.Header([("OBS_ID", "walk")]))
    sci = fits.ImageHDU(np.zeros((7, 5), "f4"), name="SCI")
    cube = fits.ImageHDU(np.zeros((2, 3, 4), "i2"), name="CUBE")
    table = fits.BinTableHDU.from_columns([fits.Column("x", "D", array=np.arange(3.0))], name="TAB")
    empty = fits.ImageHDU(name="EMPTY")
    return fits.HDUList([primary, sci, cube, table, empty])


def test_walk_finds_the_hdus_astropy_finds():
    buffer = io.BytesIO()
    _hdul().writeto(buffer)
    data = buffer.getvalue()
    hdus = list(walk_hdus(io.BytesIO(data), len(data)))
    with fits.open(io.BytesIO(data)) as hdul:
        assert len(hdus) == len(hdul)
        for hdu, theirs in zip(hdus, hdul, strict=True):
            info = theirs.fileinfo()
            assert (hdu.offset, hdu.data_offset, hdu.end) == (
                info["hdrLoc"], info["datLoc"], info["datLoc"] + info["datSpan"])
            assert hdu.shape == tuple(theirs.header.get(f"NAXIS{n}") for n in range(1, theirs.header["NAXIS"] + 1))
            assert hdu.header.get("EXTNAME") == theirs.header.get("EXTNAME")
    assert [h.kind for h in hdus] == ["PRIMARY", "IMAGE", "IMAGE", "BINTABLE", "IMAGE"]
    assert hdus[1].data_size == 7 * 5 * 4 and hdus[-1].end == len(data)


def test_walk_reads_only_the_headers_asked_for():
    buffer = io.BytesIO()
    _hdul().writeto(buffer)
    data = buffer.getvalue()
    f = io.BytesIO(data)
    primary = next(walk_hdus(f, len(data)))
    assert primary.header.get("OBS_ID") == "walk" and f.tell() == primary.data_offset


@pytest.mark.parametrize("change, reason", [
    (lambda d: d + b"junk", "no SIMPLE or XTENSION card"),
    (lambda d: d + b"XTENSION= 'IMAGE   '", "file ends inside a header"),
    (lambda d: d + bytes(BLOCK), "no SIMPLE or XTENSION card"),
    (lambda d: d.replace(b"BITPIX  =                  -32", b"BITPIX  =                  -16", 1), "BITPIX"),
    (lambda d: d.replace(b"PCOUNT  =                    0", b"PCOUNT  =                  1.0", 1), "PCOUNT"),
])
def test_walk_leaves_what_astropy_may_read_otherwise_to_astropy(change, reason):
    buffer = io.BytesIO()
    _hdul().writeto(buffer)
    data = change(buffer.getvalue())
    with pytest.raises(NotPlainFits, match=reason):
        list(walk_hdus(io.BytesIO(data), len(data)))


def test_a_header_without_end_is_read_up_to_the_bound_only(tmp_path):
    """A 1 GiB file (sparse) that starts like FITS and has no END card: the read stops after
    MAX_HEADER_BYTES, quickly, rather than holding the file in memory."""
    path = tmp_path / "junk.fits"
    with open(path, "wb") as f:
        f.write(b"SIMPLE  =                    T".ljust(CARD))
        f.truncate(1 << 30)
    start = time.perf_counter()
    with open(path, "rb") as f:
        with pytest.raises(HeaderTooLong, match=f"no END card in the first {MAX_HEADER_BYTES} bytes"):
            read_header_blocks(f)
        assert f.tell() == MAX_HEADER_BYTES - MAX_HEADER_BYTES % BLOCK + BLOCK
        with pytest.raises(HeaderTooLong):
            list(walk_hdus(f, path.stat().st_size))
    assert time.perf_counter() - start < 2
    with open(path, "rb") as f, pytest.raises(HeaderTooLong):
        read_header_blocks(f, limit=10 * BLOCK)
    assert 1 << 20 <= MAX_HEADER_BYTES <= 16 << 20  # far above real headers (< 200 kB), little memory


def test_block_and_card_sizes_are_defined_once():
    definitions = [
        f"{path.relative_to(PACKAGE)}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py")) for line in path.read_text().splitlines()
        if re.match(r"\s*_?[A-Z_]*(BLOCK|CARD)\w*\s*=\s*(2880|80)\b", line)
    ]
    assert definitions == ["fits/header.py: BLOCK = 2880  # bytes of a FITS block: headers and data are padded "
                           "to whole blocks", "fits/header.py: CARD = 80  # bytes of a header card"]
