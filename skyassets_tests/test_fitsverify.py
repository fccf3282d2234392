"""FITS CHECKSUM/DATASUM verification: ok, absent, bad (naming the HDU), not-fits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skyassets.fitsverify import BLOCK, verify_fits


def _hdus() -> fits.HDUList:
    rng = np.random.default_rng(7)
    return fits.HDUList(
        [
            fits.PrimaryHDU(np.arange(1000, dtype=np.int16)),
            fits.BinTableHDU.from_columns(
                [fits.Column(name="flux", format="E", array=rng.random(77, dtype=np.float32))], name="CAT"
            ),
            fits.ImageHDU(rng.random((120, 130)), name="SCI"),
        ]
    )


@pytest.fixture
def with_sums(tmp_path: Path) -> Path:
    path = tmp_path / "with.fits"
    _hdus().writeto(path, checksum=True)
    return path


def test_valid_file_is_ok(with_sums: Path) -> None:
    check = verify_fits(with_sums)
    assert (check.status, check.hdus, check.checked, check.problems) == ("ok", 3, 3, [])


def test_file_without_checksums_is_absent(tmp_path: Path) -> None:
    path = tmp_path / "plain.fits"
    _hdus().writeto(path)
    assert verify_fits(path).status == "absent"


def test_modified_data_byte_is_bad_and_names_the_hdu(with_sums: Path) -> None:
    data = bytearray(with_sums.read_bytes())
    data[-BLOCK - 100] ^= 0x01  # inside the SCI image, the last HDU
    with_sums.write_bytes(bytes(data))
    check = verify_fits(with_sums, name="final.fits")
    assert check.status == "bad"
    assert "final.fits HDU 2 (SCI)" in check.message
    assert "DATASUM" in check.message and "CHECKSUM" in check.message
    assert "HDU 0" not in check.message and "HDU 1" not in check.message


def test_modified_header_byte_is_bad(with_sums: Path) -> None:
    data = bytearray(with_sums.read_bytes())
    start = data.index(b"EXTNAME = 'CAT")
    data[start + 11] = ord("X")
    with_sums.write_bytes(bytes(data))
    check = verify_fits(with_sums)
    assert check.status == "bad"
    assert "HDU 1" in check.message and "CHECKSUM" in check.message


def test_truncated_file_is_bad(with_sums: Path) -> None:
    with_sums.write_bytes(with_sums.read_bytes()[:-BLOCK])
    check = verify_fits(with_sums)
    assert check.status == "bad" and "truncated" in check.message


def test_damaged_extension_keyword_is_bad_not_ignored(with_sums: Path) -> None:
    data = bytearray(with_sums.read_bytes())
    data[data.index(b"XTENSION")] = ord("Y")
    with_sums.write_bytes(bytes(data))
    assert verify_fits(with_sums).status == "bad"


def test_non_fits_file(tmp_path: Path) -> None:
    path = tmp_path / "preview.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(5000))
    assert verify_fits(path).status == "not-fits"
    short = tmp_path / "short.fits"
    short.write_bytes(b"SIMPLE  =                    T")
    assert verify_fits(short).status == "not-fits"
