"""Bounded decompression and image sizes: bombs, sparse giants and bad BITPIX refused with a reason."""

from __future__ import annotations

import bz2
import gzip
import io
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skyassets.fits import limits, meta, verify
from skyassets.imaging.quality import measure_image
from skyassets.landing.keys import partition_key


def _image_bytes(shape: tuple[int, int] = (64, 64), **cards) -> bytes:
    hdu = fits.PrimaryHDU(np.arange(np.prod(shape), dtype="f4").reshape(shape), header=fits.Header(list(cards.items())))
    buffer = io.BytesIO()
    hdu.writeto(buffer)
    return buffer.getvalue()


def _zeros_gzip(size: int, start: bytes = b"") -> bytes:
    """A gzip file of ``start`` then zeros up to ``size`` bytes, made fast: one fully flushed deflate
    block of 16 MiB of zeros repeated (its CRC is left 0: a bounded reader stops long before it)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = 16 << 20
    body = [packer.compress(start) + packer.flush(zlib.Z_FULL_FLUSH)]
    block = packer.compress(bytes(chunk)) + packer.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(size - len(start), chunk)
    body += [block] * whole + [packer.compress(bytes(rest)) + packer.flush()]
    trailer = bytes(4) + (size % (1 << 32)).to_bytes(4, "little")
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"".join(body) + trailer


def _sized_header(naxis1: int, naxis2: int, bitpix: int = -32) -> fits.Header:
    return fits.Header([("SIMPLE", True), ("BITPIX", bitpix), ("NAXIS", 2), ("NAXIS1", naxis1), ("NAXIS2", naxis2)])


# ------------------------------------------------------------------------------------ images
def test_image_over_the_pixel_limit_is_refused_from_its_header(monkeypatch):
    assert limits.check_image(_sized_header(4096, 4096), "a.fits[0]") == 4096 * 4096
    with pytest.raises(limits.TooLarge, match=r"a\.fits\[1\].*100000 x 100000.*SKYASSETS_MAX_IMAGE_PIXELS"):
        limits.check_image(_sized_header(100000, 100000), "a.fits[1]")
    monkeypatch.setenv(limits.MAX_IMAGE_PIXELS_ENV, "1000")
    with pytest.raises(limits.TooLarge):
        limits.check_image(_sized_header(40, 40), "small.fits[0]")
    monkeypatch.setenv(limits.MAX_IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match="SKYASSETS_MAX_IMAGE_PIXELS"):
        limits.current()


@pytest.mark.parametrize(("bitpix", "naxis", "naxis1"), [(7, 2, 10), (-16, 2, 10), (16, 1000, 10), (16, 2, -5)])
def test_impossible_structure_is_refused(bitpix, naxis, naxis1):
    header = {"BITPIX": bitpix, "NAXIS": naxis, "NAXIS1": naxis1, "NAXIS2": 10}
    with pytest.raises(limits.BadImageHeader, match="x.fits"):
        limits.check_image(header, "x.fits")


def test_quality_refuses_a_sparse_giant_before_reading_it(tmp_path):
    """A 40 GB image in a sparse file of a few kilobytes: measured, it would be read whole."""
    header = _sized_header(100000, 100000)
    path = tmp_path / "giant.fits"
    raw = header.tostring().encode("ascii")
    with path.open("wb") as f:
        f.write(raw)
        f.truncate(len(raw) + 100000 * 100000 * 4)
    started = time.perf_counter()
    measured = measure_image(path, 0)
    assert measured.metrics["usable"] is False
    assert "over the limit" in measured.metrics["problem"] and "giant.fits[0]" in measured.metrics["problem"]
    assert time.perf_counter() - started < 10


# ------------------------------------------------------------------------------- decompression
@pytest.mark.parametrize("kind", ["gzip", "bzip2"])
def test_decompressed_size_of_members_and_padding(kind):
    data = _image_bytes((300, 300))
    pack = gzip.compress if kind == "gzip" else bz2.compress
    stream = pack(data) + pack(b"tail") + (b"\0" * 64 if kind == "gzip" else b"")
    assert limits.decompressed_size(io.BytesIO(stream), kind, "x") == len(data) + 4
    assert limits.decompressed_size(io.BytesIO(stream), kind, "x", limit=len(data) + 4) == len(data) + 4
    with pytest.raises(limits.TooLarge, match="more than"):
        limits.decompressed_size(io.BytesIO(stream), kind, "x", limit=len(data))
    with pytest.raises(limits.BrokenStream, match="x"):
        limits.decompressed_size(io.BytesIO(pack(data)[:-20]), kind, "x", limit=1 << 33)
    assert limits.head(io.BytesIO(stream), 2880) == data[:2880]


def test_a_gzip_bomb_is_refused_from_its_trailer_and_a_lying_one_while_inflating():
    bomb = _zeros_gzip(2 << 30)  # 2 GiB of zeros in about 2 MB
    assert len(bomb) < 3 << 20
    started = time.perf_counter()
    with pytest.raises(limits.TooLarge, match="says it inflates to 2147483648"):
        limits.decompressed_size(io.BytesIO(bomb), "gzip", "bomb.fits.gz")
    assert time.perf_counter() - started < 1
    lying = _zeros_gzip(8 << 20)[:-4] + bytes(4)  # the trailer says 0 bytes
    tracemalloc.start()
    try:
        with pytest.raises(limits.TooLarge, match="inflates to more than 4194304"):
            limits.decompressed_size(io.BytesIO(lying), "gzip", "lying.fits.gz", limit=4 << 20)
        assert tracemalloc.get_traced_memory()[1] < 3 << 20  # one chunk at a time, not the stream
    finally:
        tracemalloc.stop()


def test_catalogue_refuses_a_compressed_file_over_the_limit(tmp_path, monkeypatch):
    data = _image_bytes((512, 512), OBS_ID="zipped")  # about 1 MiB once inflated
    small = tmp_path / "ok.fits.gz"
    small.write_bytes(gzip.compress(data))
    plain = tmp_path / "ok.fits"
    plain.write_bytes(data)
    monkeypatch.setenv(limits.MAX_DECOMPRESSED_BYTES_ENV, str(len(data)))
    rows = meta.extract(small)
    assert [r["s_xel1"] for r in rows] == [512] and rows[0]["header_json"] == meta.extract(plain)[0]["header_json"]
    monkeypatch.setenv(limits.MAX_DECOMPRESSED_BYTES_ENV, str(len(data) - 1))
    with pytest.raises(meta.UnreadableFits, match="ok.fits.gz.*inflates to"):
        meta.extract(small)
    bomb = tmp_path / "bomb.fits.gz"
    bomb.write_bytes(_zeros_gzip(2 << 30, data[:2880]))
    monkeypatch.delenv(limits.MAX_DECOMPRESSED_BYTES_ENV)
    with pytest.raises(meta.UnreadableFits, match="bomb.fits.gz.*2147483648"):
        meta.extract(bomb)


@pytest.mark.parametrize("pack", [gzip.compress, bz2.compress])
def test_catalogue_of_compressed_junk_stops_at_the_header_limit(tmp_path, pack):
    """A compressed "FITS" file whose header never ends: refused after MAX_HEADER_BYTES, not read whole."""
    junk = tmp_path / "junk.fits.gz"
    junk.write_bytes(pack(b"SIMPLE  =                    T".ljust(80) + b" " * (24 << 20)))
    tracemalloc.start()
    try:
        with pytest.raises(meta.UnreadableFits, match="no END card in the first"):
            meta.extract(junk)
        assert tracemalloc.get_traced_memory()[1] < 16 << 20
    finally:
        tracemalloc.stop()


def test_zip_archives_are_refused(tmp_path):
    path = tmp_path / "a.fits"
    path.write_bytes(b"PK\x03\x04" + bytes(2000))
    with pytest.raises(meta.UnreadableFits, match="zip"):
        meta.extract(path)


def test_partition_key_reads_a_bounded_head(tmp_path):
    """The key of a gzip stream without an END card: astropy once read all of it (256 MiB) as a header."""
    endless = tmp_path / "endless.fits.gz"
    endless.write_bytes(gzip.compress(b"NOTFITS = 'x'".ljust(80) + b" " * (256 << 20), 1))
    tracemalloc.start()
    try:
        key = partition_key(endless)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert key.startswith("landed-endless-") or key.startswith("endless-")
    assert peak < 48 << 20, f"{peak} bytes"


# ----------------------------------------------------------------------------------- BITPIX
def _bitpix7(tmp_path: Path) -> Path:
    raw = _image_bytes((8, 8))
    path = tmp_path / "bitpix7.fits"
    path.write_bytes(raw.replace(b"BITPIX  =                  -32", b"BITPIX  =                    7"))
    return path


def test_bitpix_7_is_refused_by_verification_and_catalogue(tmp_path):
    path = _bitpix7(tmp_path)
    check = verify.verify_fits(path)
    assert check.status == "bad" and "BITPIX = 7" in check.message and "bitpix7.fits" in check.message
    with pytest.raises(meta.UnreadableFits, match="BITPIX = 7"):
        meta.extract(path)
