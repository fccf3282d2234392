"""Partition keys of landed files: header ids read directly and through astropy, safe stems."""

from __future__ import annotations

import bz2
import gzip
import io
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from skyassets.fits.header import NotPlainFits
from skyassets.lake.names import validate_obs_id
from skyassets.landing import keys as landing
from skyassets.landing.keys import LANDED_PREFIX, S3_HEADER_BYTES, partition_key
from skyassets.landing.zone import LandedFile


def _write(path: Path, data: bytes, mtime_ns: int | None = None) -> Path:
    """Write a file with an explicit mtime: kernel timestamps are too coarse to tell writes apart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


# --- partition keys -----------------------------------------------------------------------------

def _to_bytes(hdu: fits.PrimaryHDU) -> bytes:
    buffer = io.BytesIO()
    hdu.writeto(buffer)
    return buffer.getvalue()


def _key_shape(key: str, stem: str) -> None:
    assert validate_obs_id(key) == key
    head, _, digest = key.rpartition("-")
    assert head == LANDED_PREFIX + stem and len(digest) == 8 and int(digest, 16) >= 0


def test_key_from_obs_id(tmp_path: Path) -> None:
    path = _write(tmp_path / "any name.fits", _to_bytes(fits.PrimaryHDU(header=fits.Header(
        [("OBS_ID", "jw02736-o001_t001_nircam_clear-f090w"), ("ROOTNAME", "other")]))))
    assert partition_key(path) == LANDED_PREFIX + "jw02736-o001_t001_nircam_clear-f090w"


def test_key_falls_through_header_ids_in_order(tmp_path: Path) -> None:
    hst = _write(tmp_path / "h.fits", _to_bytes(fits.PrimaryHDU(header=fits.Header(
        [("OBS_ID", "bad id/../"), ("ROOTNAME", "j8pu01abq"), ("ASN_ID", "J8PU01020")]))))
    assert partition_key(hst) == LANDED_PREFIX + "j8pu01abq"
    asn = _write(tmp_path / "a.fits", _to_bytes(fits.PrimaryHDU(header=fits.Header(
        [("ROOTNAME", "  "), ("ASN_ID", "J8PU01020")]))))
    assert partition_key(asn) == LANDED_PREFIX + "J8PU01020"
    none = _write(tmp_path / "n.fits", _to_bytes(fits.PrimaryHDU(header=fits.Header([("ASN_ID", "NONE")]))))
    _key_shape(partition_key(none), "n")


def test_key_from_gzip_and_tile_compressed_files(tmp_path: Path) -> None:
    plain = _to_bytes(fits.PrimaryHDU(np.zeros((8, 8), dtype="f4"), header=fits.Header([("OBS_ID", "gzobs")])))
    gz = _write(tmp_path / "x.fits.gz", gzip.compress(plain))
    assert partition_key(gz) == LANDED_PREFIX + "gzobs"
    bz = _write(tmp_path / "x.fits.bz2", bz2.compress(plain))
    assert partition_key(bz) == LANDED_PREFIX + "gzobs"
    comp = fits.CompImageHDU(np.zeros((8, 8), dtype="f4"))
    comp.header["OBS_ID"] = "fzobs"
    fz = tmp_path / "x.fz"
    fits.HDUList([fits.PrimaryHDU(), comp]).writeto(fz)
    assert partition_key(fz) == LANDED_PREFIX + "fzobs"


@pytest.mark.parametrize(
    "name, stem",
    [("plain.fits", "plain"), ("my image (1).fits", "my_image_1"), ("ñébula☆.FITS", "nebula"),
     ("..x.fits.gz", "x"), ("---.fz", "file"), ("a..b.fits", "a.b"), ("x" * 200 + ".fits", "x" * 64)],
)
def test_key_without_header_ids_is_a_safe_stem_and_hash(tmp_path: Path, name: str, stem: str) -> None:
    path = _write(tmp_path / name, _to_bytes(fits.PrimaryHDU()))
    _key_shape(partition_key(path), stem)


def test_key_of_an_outside_path_and_of_files_that_are_not_fits(tmp_path: Path) -> None:
    _key_shape(partition_key("../x.fits"), "x")
    junk = _write(tmp_path / "junk.fits", b"SIMPLE  = nonsense")
    _key_shape(partition_key(junk), "junk")
    empty = _write(tmp_path / "empty.fits", b"")
    _key_shape(partition_key(empty), "empty")


def test_key_of_a_file_without_end_card_is_found_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 GiB file (sparse) that starts like FITS but has no END card: the header read stops
    after MAX_HEADER_BYTES and astropy, which would read the whole file, is not asked."""
    def no_astropy(source: Any) -> None:
        raise AssertionError("astropy read a file without END card")

    path = tmp_path / "no end.fits"
    with open(path, "wb") as f:
        f.write(b"SIMPLE  =                    T".ljust(80))
        f.truncate(1 << 30)
    monkeypatch.setattr(landing, "_astropy_header_id", no_astropy)
    start = time.perf_counter()
    _key_shape(partition_key(path), "no_end")
    assert time.perf_counter() - start < 2


def test_key_hash_follows_the_location_not_the_version(tmp_path: Path) -> None:
    path = _write(tmp_path / "v.fits", b"1" * 10, mtime_ns=10**18)
    first = partition_key(path)
    _write(path, b"2" * 20, mtime_ns=2 * 10**18)  # changed in place: the same partition, its new version
    assert partition_key(path) == first
    landed = LandedFile("local", str(path), 20, str(2 * 10**18), "v.fits")
    assert partition_key(landed) == first
    assert partition_key(_write(tmp_path / "other" / "v.fits", b"1" * 10, mtime_ns=10**18)) != first


@pytest.mark.slow
def test_key_of_s3_objects(s3: Any, bucket: str, prefix: str) -> None:
    plain = _to_bytes(fits.PrimaryHDU(np.zeros((8, 8), dtype="f4"), header=fits.Header([("OBS_ID", "s3obs")])))
    s3.put_object(Bucket=bucket, Key=prefix + "a.fits", Body=plain)
    s3.put_object(Bucket=bucket, Key=prefix + "b.fits.gz", Body=gzip.compress(plain))
    # a bzip2 block holds up to 900 kB: its header is read from more than the first 256 kB
    noise = np.random.default_rng(1).normal(size=(300, 300)).astype("f4")
    big = _to_bytes(fits.PrimaryHDU(noise, header=fits.Header([("OBS_ID", "s3obs")])))
    assert len(bz2.compress(big)) > S3_HEADER_BYTES
    s3.put_object(Bucket=bucket, Key=prefix + "c.fits.bz2", Body=bz2.compress(big))
    s3.put_object(Bucket=bucket, Key=prefix + "odd name.fits", Body=b"not fits")
    assert partition_key(f"s3://{bucket}/{prefix}a.fits", client=s3) == LANDED_PREFIX + "s3obs"
    assert partition_key(f"s3://{bucket}/{prefix}b.fits.gz", client=s3) == LANDED_PREFIX + "s3obs"
    assert partition_key(f"s3://{bucket}/{prefix}c.fits.bz2", client=s3) == LANDED_PREFIX + "s3obs"
    _key_shape(partition_key(f"s3://{bucket}/{prefix}odd name.fits", client=s3), "odd_name")
    _key_shape(partition_key(f"s3://{bucket}/{prefix}missing.fits", client=s3), "missing")
    with pytest.raises(ValueError, match="S3 client"):
        partition_key(f"s3://{bucket}/{prefix}a.fits")


# --- header ids read directly, compared with astropy ---------------------------------------------

PRIMARY = ["SIMPLE  =                    T", "BITPIX  =                    8",
           "NAXIS   =                    0", "EXTEND  =                    T"]
IMAGE = ["XTENSION= 'IMAGE   '", "BITPIX  =                  -32", "NAXIS   =                    2",
         "NAXIS1  =                    4", "NAXIS2  =                    4", "PCOUNT  =                    0",
         "GCOUNT  =                    1"]


def _header(cards: list[str], end: bool = True) -> bytes:
    """Header blocks of the card images given, as written (no checks, so odd cards stay odd)."""
    assert all(len(c) <= 80 for c in cards)
    raw = b"".join(c.ljust(80).encode("latin-1") for c in cards) + (b"END".ljust(80) if end else b"")
    return raw + b" " * (-len(raw) % 2880)


def _both_ways(path: Path) -> tuple[str | None, bool]:
    """The id astropy reads, after checking that the direct reading (file and S3 bytes) agrees
    or leaves the file to astropy; and whether the direct reading took it."""
    expected = landing._astropy_header_id(str(path))
    assert landing._local_header_id(str(path)) == expected
    data = path.read_bytes()
    try:
        direct = landing._plain_header_id(io.BytesIO(data), len(data))
    except NotPlainFits:
        return expected, False
    assert direct == expected == landing._astropy_header_id(io.BytesIO(data))
    return expected, True


@pytest.mark.parametrize("cards, expected, direct", [
    (PRIMARY + ["OBS_ID  = 'jw01' / comment"], "jw01", True),
    (PRIMARY + ["OBS_ID  = '  jw01   '"], "jw01", True),  # leading and trailing blanks
    (PRIMARY + ["OBS_ID  = 'jw''01'", "ROOTNAME= 'r1'"], "r1", True),  # a quote is not a key
    (PRIMARY + ["OBS_ID  = 'N/A'", "ROOTNAME= 'none'", "ASN_ID  = ''", "OBSID   = 'j9'"], "j9", True),
    (PRIMARY + ["OBSID   =                +0120"], "120", True),
    (PRIMARY + ["OBSID   =                1.5E3"], "1500.0", True),
    (PRIMARY + ["OBSID   =                    T", "ASN_ID  =", "ROOTNAME= 'r2'"], "r2", True),
    (PRIMARY + [f"COMMENT {i}" for i in range(100)] + ["OBS_ID  = 'late'"], "late", True),
    (PRIMARY + ["ENDTIME =                    1", "OBS_ID  = 'after'"], "after", True),
    (PRIMARY + ["HIERARCH ESO DET = 1", "OBS_ID  = 'h'"], "h", True),
    # Cards astropy reads in its own way are read with astropy's Card alone, the header directly.
    (PRIMARY + ["OBS_ID  = 'jw&'", "CONTINUE  '0001'"], "jw0001", True),  # a long string
    (PRIMARY + ["obs_id  = 'lower'"], "lower", True),
    (PRIMARY + ["OBS_ID= 'squeezed'"], "squeezed", True),
    (PRIMARY + ["HIERARCH OBS_ID = 'hier'"], "hier", True),
    (PRIMARY + ["OBS_ID  = 'first'", "OBS_ID  = 'second'"], "first", True),
    (PRIMARY + ["OBS_ID  = 'AXIS.1: 77'", "ROOTNAME= 'r5'"], "r5", True),  # record-valued card
    (PRIMARY + ["OBSID   = (1, 2)", "ROOTNAME= 'r4'"], "r4", True),  # ROOTNAME comes first
    (PRIMARY + ["OBS_ID  = (1, 2)", "ROOTNAME= 'r4'"], "r4", True),
    (PRIMARY + ["OBS_ID  = 'caf\xe9'", "ROOTNAME= 'r3'"], "r3", False),
    (PRIMARY + ["OBS_ID  = 'unterminated"], None, False),
    (["SIMPLE  =                    F", "BITPIX  =                    8", "NAXIS   =                    0",
      "OBS_ID  = 'simple_f'"], "simple_f", False),
])
def test_header_id_read_directly_is_astropy_s(tmp_path: Path, cards: list[str], expected: str | None,
                                              direct: bool) -> None:
    path = _write(tmp_path / "h.fits", _header(cards))
    assert _both_ways(path) == (expected, direct)


def test_header_id_of_the_first_extension_read_directly(tmp_path: Path) -> None:
    ext = _header(IMAGE + ["OBS_ID  = 'in_sci'"]) + b"\0" * 2880
    assert _both_ways(_write(tmp_path / "a.fits", _header(PRIMARY) + ext)) == ("in_sci", True)
    no_extend = _header(PRIMARY[:3]) + ext  # astropy adds EXTEND while it opens the file
    assert _both_ways(_write(tmp_path / "b.fits", no_extend)) == ("in_sci", True)
    image_primary = _header(PRIMARY[:2] + ["NAXIS   = 1", "NAXIS1  = 8", "OBS_ID  = 'p'"]) + b"\0" * 2880
    assert _both_ways(_write(tmp_path / "c.fits", image_primary + ext)) == ("p", False)  # no EXTEND
    table = _header(["XTENSION= 'BINTABLE'", "BITPIX  = 8", "NAXIS   = 2", "NAXIS1  = 0",
                     "NAXIS2  = 0", "PCOUNT  = 0", "GCOUNT  = 1", "TFIELDS = 0", "OBS_ID  = 't'"])
    assert _both_ways(_write(tmp_path / "d.fits", _header(PRIMARY) + table)) == ("t", False)
    assert _both_ways(_write(tmp_path / "e.fits", _header(PRIMARY))) == (None, True)


def test_header_id_of_truncated_and_odd_files_is_astropy_s(tmp_path: Path) -> None:
    whole = _header(PRIMARY + ["OBS_ID  = 'cut'"]) + _header(IMAGE + ["OBS_ID  = 'x'"]) + b"\0" * 2880
    for size in (0, 100, 2880, 2880 + 1000, len(whole) - 2880):
        _both_ways(_write(tmp_path / f"cut{size}.fits", whole[:size]))
    no_end = _header(PRIMARY + ["OBS_ID  = 'x'"], end=False)
    assert _both_ways(_write(tmp_path / "noend.fits", no_end))[0] is None
    assert _both_ways(_write(tmp_path / "text.fits", b"not a FITS file\n" * 400)) == (None, False)
    odd_end = _header(PRIMARY + ["END     = 1", "OBS_ID  = 'y'"])  # astropy may take it for END
    assert _both_ways(_write(tmp_path / "badend.fits", odd_end))[1] is False


def test_header_id_of_random_headers_is_astropy_s(tmp_path: Path) -> None:
    """Seeded random headers and first extensions: the direct reading never disagrees."""
    rng = random.Random(7)
    values = ["'jw02736'", "'a''b'", "'x y'", "'N/A'", "''", "12", "1.5", "T", "", "'ok' / c", "'AXIS.1: 3'",
              "'ab&'", "-4", "'..x'", "'lower_ok'", "(1, 2)", "'open"]
    forms = ["{k:<8}= {v}"] * 20 + ["{kl:<8}= {v}", "{k}= {v}", "HIERARCH {k} = {v}", "{k:<8}  {v}"]
    fillers = ["COMMENT c", "HISTORY h", "        / blank", "DATE    = '2020-01-01'", "BSCALE  = 1.0"]
    odd = ["CONTINUE  'x'", "LONG    = 'ab&'", "BLANK   = -1", "GROUPS  = T", "EXTEND  = F", "NAXIS   = 1"]
    direct = 0
    for i in range(150):
        def cards() -> list[str]:
            out = [rng.choice(odd if rng.random() < 0.05 else fillers) for _ in range(rng.randint(0, 12))]
            for _ in range(rng.randint(0, 3)):
                k = rng.choice(landing.HEADER_ID_KEYWORDS)
                card = rng.choice(forms).format(k=k, kl=k.lower(), v=rng.choice(values))
                out.insert(rng.randint(0, len(out)), card[:80])
            return out
        data = _header(PRIMARY + cards())
        if rng.random() < 0.7:
            data += _header(IMAGE + cards()) + b"\0" * 2880
        if rng.random() < 0.1:
            data = data[:rng.randint(0, len(data))]
        direct += _both_ways(_write(tmp_path / f"r{i}.fits", data))[1]
    assert direct >= 20  # the seeded headers exercise both readings


def test_plain_files_are_read_without_astropy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_astropy(source: Any) -> None:
        raise AssertionError("astropy read a plain file")

    path = _write(tmp_path / "p.fits", _to_bytes(fits.PrimaryHDU(np.zeros((4, 4), "f4"), header=fits.Header(
        [("OBS_ID", "plainobs"), ("COMMENT", "a comment")]))))
    monkeypatch.setattr(landing, "_astropy_header_id", no_astropy)
    assert partition_key(path) == LANDED_PREFIX + "plainobs"


# --- a key for every file, never one from outside the zone ------------------------------------

def test_a_key_never_raises_and_never_reads_through_a_link(tmp_path: Path) -> None:
    """Whatever lies in the zone (a link to a FITS file outside, a FIFO, a folder, a file gone, a
    name that is not UTF-8, junk bytes that trip the direct reading), its key is the name-based
    one: a link's target is not opened, so its header never names a partition."""
    outside = _write(tmp_path / "outside" / "real.fits",
                     _to_bytes(fits.PrimaryHDU(header=fits.Header([("OBS_ID", "from-outside")]))))
    zone = tmp_path / "zone"
    zone.mkdir()
    (zone / "link.fits").symlink_to(outside)
    (zone / "linked").symlink_to(outside.parent, target_is_directory=True)
    os.mkfifo(zone / "pipe.fits")
    (zone / "folder.fits").mkdir()
    bad_name = os.fsdecode(os.path.join(os.fsencode(zone), b"caf\xe9.fits"))
    _write(Path(bad_name), _to_bytes(fits.PrimaryHDU()))
    junk = [_write(zone / f"junk{i}.fits", b"SIMPLE  =                    T" + bytes(random.Random(i).randbytes(3000)))
            for i in range(20)]
    for path in [zone / "link.fits", zone / "linked" / "real.fits", zone / "pipe.fits", zone / "folder.fits",
                 zone / "gone.fits", Path(bad_name), *junk]:
        key = partition_key(path)
        assert validate_obs_id(key) == key and key.startswith(LANDED_PREFIX) and "from-outside" not in key
    assert partition_key(outside) == LANDED_PREFIX + "from-outside"


def test_a_header_id_too_long_for_the_prefix_falls_back_to_the_name(tmp_path: Path) -> None:
    longest = "a" * (128 - len(LANDED_PREFIX))
    fits_ = _write(tmp_path / "x.fits", _to_bytes(fits.PrimaryHDU(header=fits.Header([("OBS_ID", longest)]))))
    assert partition_key(fits_) == LANDED_PREFIX + longest
    over = _write(tmp_path / "y.fits", _to_bytes(fits.PrimaryHDU(header=fits.Header(
        [("OBS_ID", longest + "b"), ("ROOTNAME", "r1")]))))
    assert partition_key(over) == LANDED_PREFIX + "r1"


def test_an_id_no_key_may_hold_is_made_safe_and_still_groups_its_files(tmp_path: Path) -> None:
    """Observatories outside MAST write ids with blanks and slashes: the files of one such
    observation share a partition, two ids alike once made safe do not, and a usable id of a
    later keyword still comes first."""
    def landed(name: str, cards: list[tuple[str, Any]]) -> str:
        return partition_key(_write(tmp_path / name, _to_bytes(fits.PrimaryHDU(header=fits.Header(cards)))))

    first = landed("a.fits", [("OBS_ID", "NGC 1365 / run 2")])
    assert first == landed("b.fits", [("OBS_ID", "NGC 1365 / run 2")])
    _key_shape(first, "NGC_1365_run_2")
    assert landed("c.fits", [("OBS_ID", "NGC 1365 : run 2")]) != first
    assert landed("d.fits", [("OBS_ID", "NGC 1365 / run 2"), ("ROOTNAME", "r7")]) == LANDED_PREFIX + "r7"
    _key_shape(landed("e.fits", [("OBS_ID", "..//..")]), "id")
    _key_shape(landed("f.fits", [("OBS_ID", "x" * 300)]), "x" * landing.STEM_MAX)
