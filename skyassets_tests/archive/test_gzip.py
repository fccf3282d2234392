"""``.fits.gz`` products: their FITS checksums are verified on the decompressed stream."""

from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from skyassets.archive.download import DownloadConfig, FileRequest, GzipFitsVerifier, download_files, verify_file


def _fits_bytes(value: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits.HDUList([fits.PrimaryHDU(np.full((64, 64), value, dtype=np.float32))]).writeto(buf, checksum=True)
    return buf.getvalue()


def _damaged(data: bytes) -> bytes:
    """FITS bytes whose data no longer match DATASUM (the header still claims the old sum)."""
    raw = bytearray(data)
    raw[2880 + 100] ^= 0x01
    return bytes(raw)


def test_gzip_fits_verifies_whatever_the_chunking(tmp_path: Path) -> None:
    packed = gzip.compress(_fits_bytes(), mtime=0)
    for step in (1, 7, 4096, len(packed)):
        verifier = GzipFitsVerifier("x.fits.gz")
        for i in range(0, len(packed), step):
            verifier.update(packed[i:i + step])
        assert verifier.result().status == "ok", step
    two_members = gzip.compress(_fits_bytes()[:2880], mtime=0) + gzip.compress(_fits_bytes()[2880:], mtime=0)
    (tmp_path / "two.fits.gz").write_bytes(two_members)
    assert verify_file(tmp_path / "two.fits.gz").status == "ok"


def test_damage_inside_or_outside_the_gzip_stream_is_bad(tmp_path: Path) -> None:
    bad_sum = tmp_path / "sum.fits.gz"
    bad_sum.write_bytes(gzip.compress(_damaged(_fits_bytes()), mtime=0))
    check = verify_file(bad_sum)
    assert check.status == "bad" and "DATASUM" in check.message
    cut = tmp_path / "cut.fits.gz"
    cut.write_bytes(gzip.compress(_fits_bytes(), mtime=0)[:-40])
    assert verify_file(cut).status == "bad"
    flipped = bytearray(gzip.compress(_fits_bytes(2.5), mtime=0))
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / "flip.fits.gz").write_bytes(bytes(flipped))
    assert verify_file(tmp_path / "flip.fits.gz").status == "bad"
    (tmp_path / "plain.fits.gz").write_bytes(_fits_bytes())  # not compressed at all
    assert verify_file(tmp_path / "plain.fits.gz").status == "not-fits"


def test_downloads_of_gzip_fits_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "src" / "good.fits.gz"
    bad = tmp_path / "src" / "bad.fits.gz"
    good.parent.mkdir()
    good.write_bytes(gzip.compress(_fits_bytes(), mtime=0))
    bad.write_bytes(gzip.compress(_damaged(_fits_bytes()), mtime=0))
    requests = [FileRequest(p.name, tmp_path / "dest", local_path=p) for p in (good, bad)]
    ok, failed = download_files(requests, DownloadConfig(retries=0))
    assert (ok.status, ok.fits_checksum) == ("downloaded", "ok")
    assert failed.status == "failed" and "FITS checksum mismatch" in str(failed.error)
    again = download_files(requests[:1], DownloadConfig(verify_existing=True))[0]
    assert (again.status, again.fits_checksum) == ("skipped", "ok")


def test_a_gzip_bomb_is_refused_at_the_limit(tmp_path: Path, monkeypatch) -> None:
    bomb = tmp_path / "bomb.fits.gz"
    bomb.write_bytes(gzip.compress(_fits_bytes() + bytes(64 << 20), compresslevel=1))
    monkeypatch.setenv("SKYASSETS_MAX_DECOMPRESSED_BYTES", str(4 << 20))
    check = verify_file(bomb)
    assert check.status == "bad" and "inflates to more than 4194304 bytes" in check.message, check.message
    monkeypatch.setenv("SKYASSETS_MAX_DECOMPRESSED_BYTES", str(128 << 20))
    assert "inflates" not in verify_file(bomb).message
