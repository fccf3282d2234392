"""FITS CHECKSUM/DATASUM verification: ok, absent, bad (naming the HDU), not-fits; on a file and
streamed in chunks of any size."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skyassets.fits.header import BLOCK
from skyassets.fits.verify import FitsCheck, StreamingFitsVerifier, verify_fits


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


def _flip_data_byte(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[-BLOCK - 100] ^= 0x01
    return bytes(damaged)


def _flip_header_byte(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[damaged.index(b"EXTNAME = 'CAT") + 11] = ord("X")
    return bytes(damaged)


# name -> (bytes of the file from the valid bytes with and without checksums, expected status)
_CASES: dict[str, tuple[Callable[[bytes, bytes], bytes], str]] = {
    "valid": (lambda good, plain: good, "ok"),
    "no checksums": (lambda good, plain: plain, "absent"),
    "data byte": (lambda good, plain: _flip_data_byte(good), "bad"),
    "header byte": (lambda good, plain: _flip_header_byte(good), "bad"),
    "truncated in data": (lambda good, plain: good[:-BLOCK - 7], "bad"),
    "truncated in header": (lambda good, plain: good[: good.index(b"XTENSION") + 100], "bad"),
    "truncated at a block": (lambda good, plain: good[: -2 * BLOCK], "bad"),
    "trailing zeros": (lambda good, plain: good + bytes(3 * BLOCK + 5), "ok"),
    "trailing garbage": (lambda good, plain: good + bytes(100) + b"junk" + bytes(50), "bad"),
    "trailing short garbage": (lambda good, plain: good + b"XTEN", "bad"),
    "not fits": (lambda good, plain: b"\xff\xd8\xff\xe0" + bytes(5000), "not-fits"),
    "shorter than a block": (lambda good, plain: good[: BLOCK - 1], "not-fits"),
}
_CHUNKINGS = ["1", "3", "2879", "2881", "random", "whole"]


def _chunk_sizes(chunking: str, total: int) -> list[int]:
    if chunking == "whole":
        return [total]
    if chunking == "random":  # up to several HDUs at once
        rng = random.Random(total)
        return [rng.randint(1, 40_000) for _ in range(total)]
    return [int(chunking)] * total


def _streamed(data: bytes, name: str, chunking: str) -> FitsCheck:
    verifier = StreamingFitsVerifier(name)
    pos = 0
    for size in _chunk_sizes(chunking, len(data)):
        if pos >= len(data):
            break
        verifier.update(data[pos : pos + size])
        pos += size
    assert verifier.size == len(data)
    return verifier.result()


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A multi-extension file (with EXTNAMEs and an HDU without data), with and without sums."""
    folder = tmp_path_factory.mktemp("streamed")
    for name, checksum in (("good.fits", True), ("plain.fits", False)):
        hdus = _hdus()
        hdus.append(fits.ImageHDU(name="EMPTY"))
        hdus.writeto(folder / name, checksum=checksum)
    return (folder / "good.fits").read_bytes(), (folder / "plain.fits").read_bytes()


@pytest.mark.parametrize("chunking", _CHUNKINGS)
@pytest.mark.parametrize("case", list(_CASES))
def test_streamed_check_equals_the_file_check(
    valid_bytes: tuple[bytes, bytes], tmp_path: Path, case: str, chunking: str
) -> None:
    make, status = _CASES[case]
    data = make(*valid_bytes)
    path = tmp_path / "on_disk.part"
    path.write_bytes(data)
    on_disk = verify_fits(path, name="final.fits")
    assert on_disk.status == status, on_disk
    assert _streamed(data, "final.fits", chunking) == on_disk
    if status == "bad":
        assert all(p.startswith("final.fits") for p in on_disk.problems)


def test_streamed_problems_name_the_hdu_and_what_is_wrong(valid_bytes: tuple[bytes, bytes]) -> None:
    good, _ = valid_bytes
    data = _streamed(_flip_data_byte(good), "f.fits", "2881")
    assert data.status == "bad" and "f.fits HDU 2 (SCI)" in data.message
    assert "DATASUM" in data.message and (data.hdus, data.checked) == (4, 4)
    header = _streamed(_flip_header_byte(good), "f.fits", "3")
    assert "f.fits HDU 1 (XAT): CHECKSUM" in header.message
    truncated = _streamed(good[:-BLOCK - 7], "f.fits", "random")
    assert "f.fits HDU 2 (SCI): truncated" in truncated.message
    assert f"the file is {len(good) - BLOCK - 7} bytes" in truncated.message
    trailing = _streamed(good + bytes(100) + b"junk", "f.fits", "1")
    assert trailing.problems == ["f.fits: 104 bytes after HDU 3 are not an extension"]


def test_a_settled_stream_is_only_counted(tmp_path: Path) -> None:
    verifier = StreamingFitsVerifier("preview.jpg")
    verifier.update(b"\xff\xd8\xff\xe0" + bytes(BLOCK))
    assert verifier.settled
    verifier.skip(10**9)
    assert verifier.result() == FitsCheck("not-fits")
    unsettled = StreamingFitsVerifier("x.fits")
    with pytest.raises(ValueError):
        unsettled.skip(1)
