"""``.fits.gz`` and ``.fits.bz2`` files: their FITS checksums are verified on the decompressed stream."""

from __future__ import annotations

import bz2
import gzip
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skyassets.archive.download import CompressedFitsVerifier, DownloadConfig, FileRequest, download_files, verify_file


def _fits_bytes(value: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits.HDUList([fits.PrimaryHDU(np.full((64, 64), value, dtype=np.float32))]).writeto(buf, checksum=True)
    return buf.getvalue()


def _pack(suffix: str, data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0) if suffix == "gz" else bz2.compress(data, level)


SUFFIXES = pytest.mark.parametrize("suffix", ["gz", "bz2"])


def _damaged(data: bytes) -> bytes:
    """FITS bytes whose data no longer match DATASUM (the header still claims the old sum)."""
    raw = bytearray(data)
    raw[2880 + 100] ^= 0x01
    return bytes(raw)


@SUFFIXES
def test_compressed_fits_verifies_whatever_the_chunking(tmp_path: Path, suffix: str) -> None:
    packed = _pack(suffix, _fits_bytes())
    for step in (1, 7, 4096, len(packed)):
        verifier = CompressedFitsVerifier(f"x.fits.{suffix}")
        for i in range(0, len(packed), step):
            verifier.update(packed[i:i + step])
        assert verifier.result().status == "ok", step
    two_streams = _pack(suffix, _fits_bytes()[:2880]) + _pack(suffix, _fits_bytes()[2880:])  # pigz, pbzip2
    (tmp_path / f"two.fits.{suffix}").write_bytes(two_streams)
    assert verify_file(tmp_path / f"two.fits.{suffix}").status == "ok"


@SUFFIXES
def test_damage_inside_or_outside_the_compressed_stream_is_bad(tmp_path: Path, suffix: str) -> None:
    bad_sum = tmp_path / f"sum.fits.{suffix}"
    bad_sum.write_bytes(_pack(suffix, _damaged(_fits_bytes())))
    check = verify_file(bad_sum)
    assert check.status == "bad" and "DATASUM" in check.message
    cut = tmp_path / f"cut.fits.{suffix}"
    cut.write_bytes(_pack(suffix, _fits_bytes())[:-40])
    check = verify_file(cut)
    assert check.status == "bad" and "truncated" in check.message, check.message
    flipped = bytearray(_pack(suffix, _fits_bytes(2.5)))
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / f"flip.fits.{suffix}").write_bytes(bytes(flipped))
    assert verify_file(tmp_path / f"flip.fits.{suffix}").status == "bad"
    (tmp_path / f"plain.fits.{suffix}").write_bytes(_fits_bytes())  # not compressed at all
    assert verify_file(tmp_path / f"plain.fits.{suffix}").status == "not-fits"


@SUFFIXES
def test_downloads_of_compressed_fits_are_checked(tmp_path: Path, suffix: str) -> None:
    good = tmp_path / "src" / f"good.fits.{suffix}"
    bad = tmp_path / "src" / f"bad.fits.{suffix}"
    good.parent.mkdir()
    good.write_bytes(_pack(suffix, _fits_bytes()))
    bad.write_bytes(_pack(suffix, _damaged(_fits_bytes())))
    requests = [FileRequest(p.name, tmp_path / "dest", local_path=p) for p in (good, bad)]
    ok, failed = download_files(requests, DownloadConfig(retries=0))
    assert (ok.status, ok.fits_checksum) == ("downloaded", "ok")
    assert failed.status == "failed" and "FITS checksum mismatch" in str(failed.error)
    again = download_files(requests[:1], DownloadConfig(verify_existing=True))[0]
    assert (again.status, again.fits_checksum) == ("skipped", "ok")


@SUFFIXES
def test_a_landed_compressed_file_that_holds_no_fits_is_refused_at_its_copy(tmp_path: Path, suffix: str) -> None:
    """Named as FITS, compressed well, but the log of a night inside: refused and kept aside as
    ``.corrupt`` with the reason, as a plain file that is not FITS is, and never placed."""
    notes = tmp_path / "src" / f"night.fits.{suffix}"
    notes.parent.mkdir()
    notes.write_bytes(_pack(suffix, b"observing log: clouds after 02:00\n" * 100))
    request = FileRequest(notes.name, tmp_path / "dest", local_path=notes)
    (result,) = download_files([request], DownloadConfig(retries=0))
    assert result.status == "failed"
    assert result.error == f"{notes.name}: not a valid FITS file: its inflated bytes do not start as FITS"
    assert (tmp_path / "dest" / f"{notes.name}.corrupt").exists() and not (tmp_path / "dest" / notes.name).exists()


@SUFFIXES
def test_a_compression_bomb_is_refused_at_the_limit(tmp_path: Path, monkeypatch, suffix: str) -> None:
    bomb = tmp_path / f"bomb.fits.{suffix}"
    bomb.write_bytes(_pack(suffix, _fits_bytes() + bytes(64 << 20), level=1))
    monkeypatch.setenv("SKYASSETS_MAX_DECOMPRESSED_BYTES", str(4 << 20))
    check = verify_file(bomb)
    assert check.status == "bad" and "inflates to more than 4194304 bytes" in check.message, check.message
    monkeypatch.setenv("SKYASSETS_MAX_DECOMPRESSED_BYTES", str(128 << 20))
    assert "inflates" not in verify_file(bomb).message
