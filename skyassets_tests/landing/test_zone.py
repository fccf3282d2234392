"""The landing-zone scanner: stability across ticks, bounded slices, S3 prefixes, partition keys."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from skyassets.fits.header import NotPlainFits
from skyassets.lake.names import validate_obs_id
from skyassets.landing import zone as landing
from skyassets.landing.zone import LandedFile, LandingZone, S3LandingZone, Tick, partition_key

BUCKET = "landing"


def _write(path: Path, data: bytes = b"x" * 100, mtime_ns: int | None = None) -> Path:
    """Write a file with an explicit mtime: kernel timestamps are too coarse to tell writes apart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def _append(path: Path, data: bytes = b"y" * 100) -> None:
    with path.open("ab") as f:
        f.write(data)


def _names(tick: Tick) -> list[str]:
    return sorted(f.relative for f in tick.ready)


class Driver:
    """Ticks a zone the way the sensor will: always with the cursor the last tick returned."""

    def __init__(self, zone: LandingZone | S3LandingZone):
        self.zone = zone
        self.cursor: str | None = None

    def tick(self) -> Tick:
        result = self.zone.tick(self.cursor)
        self.cursor = result.cursor
        assert len(result.cursor) < 1024
        return result


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    path = tmp_path / "landing"
    path.mkdir()
    return path


@pytest.fixture()
def zone(root: Path, tmp_path: Path) -> Driver:
    return Driver(LandingZone(root, tmp_path / "state" / "state.sqlite"))


def _state_rows(zone: LandingZone) -> list[str]:
    with sqlite3.connect(zone.state_path) as con:
        return sorted(r[0] for r in con.execute("SELECT rel FROM files"))


# --- stability --------------------------------------------------------------------------------

def test_new_file_is_taken_on_the_second_tick_only(root: Path, zone: Driver) -> None:
    _write(root / "a.fits")
    first = zone.tick()
    assert first.ready == [] and first.pending == 1 and first.scanned == 1
    second = zone.tick()
    [landed] = second.ready
    assert landed == LandedFile("local", str(root / "a.fits"), 100,
                                str((root / "a.fits").stat().st_mtime_ns), "a.fits")
    assert second.pending == 0


def test_growing_file_is_taken_once_it_stops(root: Path, zone: Driver) -> None:
    path = _write(root / "big.fits")
    assert zone.tick().ready == []
    _append(path)
    assert zone.tick().ready == []  # changed since the last tick: its wait restarts
    _append(path)
    assert zone.tick().ready == []
    assert _names(zone.tick()) == ["big.fits"]


def test_finished_file_is_taken_while_another_is_still_written(root: Path, zone: Driver) -> None:
    growing = _write(root / "growing.fits")
    zone.tick()
    _write(root / "done.fits")
    _append(growing)
    zone.tick()
    _append(growing)
    third = zone.tick()
    assert _names(third) == ["done.fits"] and third.pending == 1
    assert _names(zone.tick()) == ["growing.fits"]


def test_taken_file_is_not_offered_twice(root: Path, zone: Driver) -> None:
    _write(root / "a.fits")
    zone.tick()
    assert _names(zone.tick()) == ["a.fits"]
    for _ in range(3):
        result = zone.tick()
        assert result.ready == [] and result.pending == 0


def test_file_changed_in_place_is_offered_again(root: Path, zone: Driver) -> None:
    path = _write(root / "a.fits", b"1" * 100, mtime_ns=1_000_000_000_000_000_000)
    zone.tick()
    assert [f.signature for f in zone.tick().ready] == ["1000000000000000000"]
    _write(path, b"2" * 100, mtime_ns=1_000_000_000_000_000_001)  # same size, new mtime
    assert zone.tick().ready == []  # the change is seen; it must hold still for one more tick
    again = zone.tick().ready
    assert [(f.relative, f.signature) for f in again] == [("a.fits", "1000000000000000001")]
    _append(path)  # a new size too
    zone.tick()
    assert [f.size for f in zone.tick().ready] == [200]
    assert zone.tick().ready == []


def test_file_changed_after_its_last_look_is_not_offered_until_stable(root: Path, tmp_path: Path) -> None:
    _write(root / "a.fits", mtime_ns=10**18)
    zone = Driver(LandingZone(root, tmp_path / "s.sqlite", max_ready=1))
    _write(root / "b.fits", mtime_ns=10**18)
    zone.tick()
    assert _names(zone.tick()) == ["a.fits"]  # b is stable too but waits for a ready slot
    os.utime(root / "b.fits", ns=(2 * 10**18, 2 * 10**18))
    assert zone.tick().ready == []  # re-checked before it is offered: changed, so it waits again
    assert _names(zone.tick()) == ["b.fits"]


def test_deleted_files_drop_out_of_the_state(root: Path, zone: Driver) -> None:
    _write(root / "a.fits")
    _write(root / "sub" / "b.fits")
    zone.tick()
    assert _state_rows(zone.zone) == ["a.fits", "sub/b.fits"]
    (root / "a.fits").unlink()
    (root / "sub" / "b.fits").unlink()
    (root / "sub").rmdir()
    result = zone.tick()
    assert result.ready == [] and result.pending == 0
    assert _state_rows(zone.zone) == []


def test_which_names_are_taken(root: Path, tmp_path: Path) -> None:
    for name in ["a.FITS", "b.fit", "c.fts", "d.fits.gz", "e.fz", "sub/deeper/f.fits",
                 "notes.txt", "g.fits.part", ".h.fits", ".hidden/i.fits", "j.fits.gz.part", "k.fitsx"]:
        _write(root / name)
    (root / "link.fits").symlink_to(root / "b.fit")
    (root / "linked").symlink_to(root / "sub")
    zone = Driver(LandingZone(root, tmp_path / "s.sqlite"))
    zone.tick()
    assert _names(zone.tick()) == ["a.FITS", "b.fit", "c.fts", "d.fits.gz", "e.fz", "sub/deeper/f.fits"]
    flat = Driver(LandingZone(root, tmp_path / "flat.sqlite", recursive=False))
    flat.tick()
    assert _names(flat.tick()) == ["a.FITS", "b.fit", "c.fts", "d.fits.gz", "e.fz"]


def test_offer_lost_with_a_failed_evaluation_is_made_again(root: Path, tmp_path: Path) -> None:
    zone = LandingZone(root, tmp_path / "s.sqlite")
    _write(root / "a.fits")
    first = zone.tick(None)
    lost = zone.tick(first.cursor)  # the sensor failed after this: Dagster keeps first.cursor
    assert _names(lost) == ["a.fits"]
    retried = zone.tick(first.cursor)
    assert _names(retried) == ["a.fits"]
    assert zone.tick(retried.cursor).ready == []


def test_reset_or_foreign_cursor_keeps_what_was_taken(root: Path, tmp_path: Path) -> None:
    zone = LandingZone(root, tmp_path / "s.sqlite")
    _write(root / "a.fits")
    first = zone.tick(None)
    assert _names(zone.tick(first.cursor)) == ["a.fits"]
    assert zone.tick(None).ready == []
    assert zone.tick('{"v":1,"state":"other","gen":1}').ready == []
    assert zone.tick("not json").ready == []


def test_state_file_belongs_to_one_folder(root: Path, tmp_path: Path) -> None:
    LandingZone(root, tmp_path / "s.sqlite")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError, match="belongs to"):
        LandingZone(other, tmp_path / "s.sqlite")


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    zone = LandingZone(tmp_path / "nowhere", tmp_path / "s.sqlite")
    with pytest.raises(FileNotFoundError):
        zone.tick(None)


def test_unreadable_subfolder_keeps_its_files_in_the_state(
    root: Path, zone: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(root / "sub" / "a.fits")
    _write(root / "subway.fits")
    zone.tick()
    assert len(zone.tick().ready) == 2
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        if str(path) == str(root / "sub"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # chmod cannot lock out root, who runs CI
    zone.tick()
    assert _state_rows(zone.zone) == ["sub/a.fits", "subway.fits"]
    monkeypatch.undo()
    assert zone.tick().ready == []  # still taken: not offered again once readable


# --- slices and the cursor ---------------------------------------------------------------------

def _tree(root: Path) -> list[str]:
    names = [f"f{i:02d}.fits" for i in range(7)]
    names += [f"d{d}/f{i:02d}.fits" for d in range(4) for i in range(9)]
    names += ["d1/e/deep.fits", "d1/e/f/deeper.fits", "z.fits"]
    for name in names:
        _write(root / name)
    return sorted(names)


def test_slices_cover_every_file_exactly_once_per_pass(root: Path, tmp_path: Path) -> None:
    names = _tree(root)
    entries = len(names) + 4 + 2  # files, d0..d3, d1/e, d1/e/f
    zone = Driver(LandingZone(root, tmp_path / "s.sqlite", max_files=10, max_ready=1000))
    scanned_per_pass: dict[int, int] = {}
    offered: list[str] = []
    for _ in range(30):
        pass_no = json.loads(zone.cursor)["pass"] if zone.cursor else 1
        result = zone.tick()
        assert result.scanned <= 10
        scanned_per_pass[pass_no] = scanned_per_pass.get(pass_no, 0) + result.scanned
        offered += _names(result)
    assert scanned_per_pass[1] == scanned_per_pass[2] == entries
    assert sorted(offered) == names  # each file once, none twice
    assert len(zone.cursor) < 100


def test_file_added_behind_the_position_is_found_next_pass(root: Path, tmp_path: Path) -> None:
    names = _tree(root)
    zone = Driver(LandingZone(root, tmp_path / "s.sqlite", max_files=10, max_ready=1000))
    zone.tick()
    zone.tick()  # the position is now past "a..."
    _write(root / "a-late.fits")
    offered: list[str] = []
    for _ in range(30):
        offered += _names(zone.tick())
    assert sorted(offered) == sorted(names + ["a-late.fits"])


def test_max_ready_leaves_the_rest_for_later_ticks(root: Path, tmp_path: Path) -> None:
    for i in range(25):
        _write(root / f"f{i:02d}.fits")
    zone = Driver(LandingZone(root, tmp_path / "s.sqlite", max_ready=10))
    zone.tick()
    batches = [_names(zone.tick()) for _ in range(4)]
    assert [len(b) for b in batches] == [10, 10, 5, 0]
    assert sorted(sum(batches, [])) == [f"f{i:02d}.fits" for i in range(25)]


def test_deep_paths_keep_the_cursor_small(root: Path, tmp_path: Path) -> None:
    deep = root.joinpath(*(["a" * 200] * 10))
    _write(deep / "x.fits")
    _write(deep / "y.fits")
    zone = Driver(LandingZone(root, tmp_path / "s.sqlite", max_files=11))
    for _ in range(4):
        zone.tick()
    assert len(zone.cursor) < 100


@pytest.mark.slow
def test_tick_over_100k_entries_is_bounded(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    root.mkdir()
    started = time.perf_counter()
    for i in range(100_000):
        os.close(os.open(root / f"obs{i:06d}.fits", os.O_CREAT | os.O_WRONLY, 0o644))
    created = time.perf_counter() - started
    zone = Driver(LandingZone(root, tmp_path / "s.sqlite", max_files=20_000, max_ready=20_000))
    ready = 0
    timings: list[float] = []
    for _ in range(12):
        result = zone.tick()
        ready += len(result.ready)
        timings.append(result.seconds)
        if ready == 100_000:
            break
    print(f"\n100k files created in {created:.1f} s; {len(timings)} ticks of max_files=20000: "
          + ", ".join(f"{t:.2f}" for t in timings) + " s")
    assert ready == 100_000
    assert len(timings) == 10  # one pass to see everything, one to find it stable
    assert max(timings) < 5
    assert os.path.getsize(zone.zone.state_path) < 50 << 20
    one = Driver(LandingZone(root, tmp_path / "one.sqlite", max_files=200_000, max_ready=500))
    full = [one.tick().seconds for _ in range(3)]
    print("whole folder per tick (max_files=200000, max_ready=500): "
          + ", ".join(f"{t:.2f}" for t in full) + " s")
    assert max(full) < 5


# --- S3 -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    from skyassets.emulator.s3 import S3Server

    server = S3Server()
    try:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        server.close()


@pytest.fixture()
def prefix(s3: Any, request: pytest.FixtureRequest) -> str:
    return f"{request.node.name}/incoming/"


@pytest.mark.slow
def test_s3_prefix_stability_and_change(s3: Any, prefix: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key=prefix + "a.fits", Body=b"1" * 50)
    for key in ["notes.txt", ".hidden.fits", "b.fits.part", "sub/.tmp/c.fits", "sub/"]:
        s3.put_object(Bucket=BUCKET, Key=prefix + key, Body=b"0")
    s3.put_object(Bucket=BUCKET, Key=prefix.rstrip("/") + "-other/z.fits", Body=b"0")
    zone = Driver(S3LandingZone(s3, BUCKET, prefix, tmp_path / "s.sqlite"))
    assert zone.tick().ready == []
    s3.put_object(Bucket=BUCKET, Key=prefix + "sub/d.fz", Body=b"2" * 60)
    [a] = zone.tick().ready
    etag = s3.head_object(Bucket=BUCKET, Key=prefix + "a.fits")["ETag"].strip('"')
    assert a == LandedFile("s3", f"s3://{BUCKET}/{prefix}a.fits", 50, etag, "a.fits")
    assert _names(zone.tick()) == ["sub/d.fz"]
    assert zone.tick().ready == []
    s3.put_object(Bucket=BUCKET, Key=prefix + "a.fits", Body=b"3" * 50)  # replaced in place
    assert zone.tick().ready == []
    [again] = zone.tick().ready
    assert again.relative == "a.fits" and again.signature != etag
    s3.delete_object(Bucket=BUCKET, Key=prefix + "sub/d.fz")
    result = zone.tick()
    assert result.ready == [] and result.pending == 0
    assert _state_rows(zone.zone) == ["a.fits"]


@pytest.mark.slow
def test_s3_pages_are_bounded_and_cover_every_key_once(s3: Any, prefix: str, tmp_path: Path) -> None:
    keys = sorted(f"d{i % 3}/obs{i:03d}.fits" for i in range(45))
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=prefix + key, Body=b"x")
    zone = Driver(S3LandingZone(s3, BUCKET, prefix, tmp_path / "s.sqlite", max_keys_per_tick=10,
                                max_ready=1000))
    offered: list[str] = []
    for _ in range(12):
        result = zone.tick()
        assert result.scanned <= 10
        offered += _names(result)
    assert sorted(offered) == keys


# --- partition keys -----------------------------------------------------------------------------

def _to_bytes(hdu: fits.PrimaryHDU) -> bytes:
    buffer = io.BytesIO()
    hdu.writeto(buffer)
    return buffer.getvalue()


def _key_shape(key: str, stem: str) -> None:
    assert validate_obs_id(key) == key
    head, _, digest = key.rpartition("-")
    assert head == stem and len(digest) == 8 and int(digest, 16) >= 0


def test_key_from_obs_id(tmp_path: Path) -> None:
    path = _write(tmp_path / "any name.fits", _to_bytes(fits.PrimaryHDU(header=fits.Header(
        [("OBS_ID", "jw02736-o001_t001_nircam_clear-f090w"), ("ROOTNAME", "other")]))))
    assert partition_key(path) == "jw02736-o001_t001_nircam_clear-f090w"


def test_key_falls_through_header_ids_in_order(tmp_path: Path) -> None:
    hst = _write(tmp_path / "h.fits", _to_bytes(fits.PrimaryHDU(header=fits.Header(
        [("OBS_ID", "bad id/../"), ("ROOTNAME", "j8pu01abq"), ("ASN_ID", "J8PU01020")]))))
    assert partition_key(hst) == "j8pu01abq"
    asn = _write(tmp_path / "a.fits", _to_bytes(fits.PrimaryHDU(header=fits.Header(
        [("ROOTNAME", "  "), ("ASN_ID", "J8PU01020")]))))
    assert partition_key(asn) == "J8PU01020"
    none = _write(tmp_path / "n.fits", _to_bytes(fits.PrimaryHDU(header=fits.Header([("ASN_ID", "NONE")]))))
    _key_shape(partition_key(none), "n")


def test_key_from_gzip_and_tile_compressed_files(tmp_path: Path) -> None:
    plain = _to_bytes(fits.PrimaryHDU(np.zeros((8, 8), dtype="f4"), header=fits.Header([("OBS_ID", "gzobs")])))
    gz = _write(tmp_path / "x.fits.gz", gzip.compress(plain))
    assert partition_key(gz) == "gzobs"
    comp = fits.CompImageHDU(np.zeros((8, 8), dtype="f4"))
    comp.header["OBS_ID"] = "fzobs"
    fz = tmp_path / "x.fz"
    fits.HDUList([fits.PrimaryHDU(), comp]).writeto(fz)
    assert partition_key(fz) == "fzobs"


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


def test_key_hash_follows_the_file_version(tmp_path: Path) -> None:
    path = _write(tmp_path / "v.fits", b"1" * 10, mtime_ns=10**18)
    first = partition_key(path)
    assert partition_key(path) == first
    os.utime(path, ns=(2 * 10**18, 2 * 10**18))
    assert partition_key(path) != first
    landed = LandedFile("local", str(path), 10, str(2 * 10**18), "v.fits")
    assert partition_key(landed) == partition_key(path)


@pytest.mark.slow
def test_key_of_s3_objects(s3: Any, prefix: str) -> None:
    plain = _to_bytes(fits.PrimaryHDU(np.zeros((8, 8), dtype="f4"), header=fits.Header([("OBS_ID", "s3obs")])))
    s3.put_object(Bucket=BUCKET, Key=prefix + "a.fits", Body=plain)
    s3.put_object(Bucket=BUCKET, Key=prefix + "b.fits.gz", Body=gzip.compress(plain))
    s3.put_object(Bucket=BUCKET, Key=prefix + "odd name.fits", Body=b"not fits")
    assert partition_key(f"s3://{BUCKET}/{prefix}a.fits", client=s3) == "s3obs"
    assert partition_key(f"s3://{BUCKET}/{prefix}b.fits.gz", client=s3) == "s3obs"
    _key_shape(partition_key(f"s3://{BUCKET}/{prefix}odd name.fits", client=s3), "odd_name")
    _key_shape(partition_key(f"s3://{BUCKET}/{prefix}missing.fits", client=s3), "missing")
    with pytest.raises(ValueError, match="S3 client"):
        partition_key(f"s3://{BUCKET}/{prefix}a.fits")


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
    (PRIMARY + ["OBS_ID  = 'jw&'", "CONTINUE  '0001'"], "jw0001", False),  # a long string
    (PRIMARY + ["obs_id  = 'lower'"], "lower", False),
    (PRIMARY + ["OBS_ID= 'squeezed'"], "squeezed", False),
    (PRIMARY + ["HIERARCH OBS_ID = 'hier'"], "hier", False),
    (PRIMARY + ["OBS_ID  = 'first'", "OBS_ID  = 'second'"], "first", False),
    (PRIMARY + ["OBS_ID  = 'AXIS.1: 77'", "ROOTNAME= 'r5'"], "r5", False),  # record-valued card
    (PRIMARY + ["OBSID   = (1, 2)", "ROOTNAME= 'r4'"], "r4", True),  # ROOTNAME comes first
    (PRIMARY + ["OBS_ID  = (1, 2)", "ROOTNAME= 'r4'"], "r4", False),
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
    assert partition_key(path) == "plainobs"
