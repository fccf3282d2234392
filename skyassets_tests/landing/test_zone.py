"""The landing-zone scanner: stability across ticks, bounded slices, S3 prefixes."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from skyassets.landing.zone import LINKED_FOLDER, LandedFile, LandingZone, S3LandingZone, Tick


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


def test_fits_named_entries_not_taken_are_reported_once_with_why(root: Path, zone: Driver, tmp_path: Path) -> None:
    _write(root / "good.fits")
    _write(tmp_path / "outside.fits")
    (root / "link.fits").symlink_to(tmp_path / "outside.fits")
    (root / "night2").symlink_to(tmp_path)  # a linked folder: its files are passed over, and that is said
    (root / "notes-link").symlink_to(root / "notes.txt")  # a link to a file not FITS-named: not said
    os.mkfifo(root / "pipe.fits")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.fits"), "wb") as f:
        f.write(b"x" * 100)
    (root / "notes.txt").write_text("not FITS-named: not reported")
    _write(root / "packed.fits.xz")
    _write(root / "other.fit.gz")  # gzip under another FITS suffix: a name taken, not reported
    _write(root / "sdss.fits.bz2")  # bzip2, as SDSS serves its frames: taken too
    first = zone.tick()
    assert sorted(first.skipped) == [
        ("caf\\xe9.fits", "the name is not valid UTF-8 and cannot be recorded; rename the file"),
        ("link.fits", "a symbolic link: links are not followed"),
        ("night2", LINKED_FOLDER),
        ("packed.fits.xz", "FITS compressed as .xz, which is not read (gzip .gz, bzip2 .bz2 and tile-compressed "
                           ".fz are): decompress it, or recompress it with gzip"),
        ("pipe.fits", "not a regular file"),
    ]
    assert zone.tick().skipped == []  # said once, not every tick
    (root / "link.fits").unlink()
    zone.tick()
    (root / "link.fits").symlink_to(tmp_path / "outside.fits")  # gone for a pass, then back: said again
    assert [rel for rel, _ in zone.tick().skipped] == ["link.fits"]


def test_folders_nested_deeper_than_the_recursion_limit_are_walked(root: Path, tmp_path: Path) -> None:
    depth = sys.getrecursionlimit() + 100
    folder = root
    for _ in range(depth):  # os.makedirs itself recurses
        folder = folder / "d"
        os.mkdir(folder)
    _write(folder / "deep.fits")
    _write(root / "good.fits")
    # slices of 300 entries, so ticks resume deep inside the chain
    zone = Driver(LandingZone(root, tmp_path / "s.sqlite", max_files=300, max_ready=1000))
    offered: list[str] = []
    try:
        for _ in range(12):
            offered += _names(zone.tick())
    finally:  # bottom up: pytest's own clean-up recurses, once per level
        (folder / "deep.fits").unlink()
        while folder != root:
            folder.rmdir()
            folder = folder.parent
    assert sorted(offered) == sorted(["good.fits", "/".join(["d"] * depth + ["deep.fits"])])


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

@pytest.mark.slow
def test_s3_prefix_stability_and_change(s3: Any, bucket: str, prefix: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key=prefix + "a.fits", Body=b"1" * 50)
    for key in ["notes.txt", ".hidden.fits", "b.fits.part", "sub/.tmp/c.fits", "sub/"]:
        s3.put_object(Bucket=bucket, Key=prefix + key, Body=b"0")
    s3.put_object(Bucket=bucket, Key=prefix.rstrip("/") + "-other/z.fits", Body=b"0")
    s3.put_object(Bucket=bucket, Key=prefix + "packed.fits.zst", Body=b"0")
    zone = Driver(S3LandingZone(s3, bucket, prefix, tmp_path / "s.sqlite"))
    first = zone.tick()
    assert first.ready == []
    assert [(rel, why.split(",")[0]) for rel, why in first.skipped] == [
        ("packed.fits.zst", "FITS compressed as .zst")]
    s3.put_object(Bucket=bucket, Key=prefix + "sub/d.fz", Body=b"2" * 60)
    [a] = zone.tick().ready
    etag = s3.head_object(Bucket=bucket, Key=prefix + "a.fits")["ETag"].strip('"')
    assert a == LandedFile("s3", f"s3://{bucket}/{prefix}a.fits", 50, etag, "a.fits")
    assert _names(zone.tick()) == ["sub/d.fz"]
    assert zone.tick().ready == []
    s3.put_object(Bucket=bucket, Key=prefix + "a.fits", Body=b"3" * 50)  # replaced in place
    assert zone.tick().ready == []
    [again] = zone.tick().ready
    assert again.relative == "a.fits" and again.signature != etag
    s3.delete_object(Bucket=bucket, Key=prefix + "sub/d.fz")
    result = zone.tick()
    assert result.ready == [] and result.pending == 0
    assert _state_rows(zone.zone) == ["a.fits"]


@pytest.mark.slow
def test_s3_pages_are_bounded_and_cover_every_key_once(
    s3: Any, bucket: str, prefix: str, tmp_path: Path
) -> None:
    keys = sorted(f"d{i % 3}/obs{i:03d}.fits" for i in range(45))
    for key in keys:
        s3.put_object(Bucket=bucket, Key=prefix + key, Body=b"x")
    zone = Driver(S3LandingZone(s3, bucket, prefix, tmp_path / "s.sqlite", max_keys_per_tick=10,
                                max_ready=1000))
    offered: list[str] = []
    for _ in range(12):
        result = zone.tick()
        assert result.scanned <= 10
        offered += _names(result)
    assert sorted(offered) == keys


# --- reading a landed file: no link followed, a regular file only ---------------------------------

@pytest.fixture(params=["proc", "walk"])
def open_regular(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``open_regular`` checking the descriptor's path through /proc, and walking the path as without /proc."""
    from skyassets.landing import zone

    monkeypatch.setattr(zone, "_PROC_FD", request.param == "proc" and zone._PROC_FD)
    return zone.open_regular


def test_open_regular_reads_a_file_and_follows_no_link(tmp_path: Path, open_regular: Any) -> None:

    outside = _write(tmp_path / "outside" / "secret.fits", b"secret")
    zone = tmp_path / "zone"
    good = _write(zone / "night" / "good.fits", b"good")
    fd = open_regular(good)
    try:
        assert os.read(fd, 10) == b"good"
    finally:
        os.close(fd)
    (zone / "link.fits").symlink_to(outside)
    (zone / "linked").symlink_to(outside.parent, target_is_directory=True)
    os.mkfifo(zone / "pipe.fits")
    for path, reason in [
        (zone / "link.fits", "symbolic link"),  # the file itself is a link
        (zone / "linked" / "secret.fits", "symbolic link"),  # a folder on its path is
        (zone / "pipe.fits", "not a regular file"),  # and opening it did not wait for a writer
        (zone / "night", "not a regular file"),
        (zone / "gone.fits", "No such file"),
    ]:
        with pytest.raises(OSError, match=reason) as raised:
            open_regular(path)
        assert str(path) in str(raised.value)


def test_a_folder_swapped_for_a_link_after_the_scan_is_not_followed(
    root: Path, tmp_path: Path, open_regular: Any
) -> None:
    """The zone saw a real folder; before the copy it becomes a link to a folder outside holding a
    file of the same name. The file offered cannot be opened, and the outside file is never read."""

    _write(root / "night" / "a.fits", b"landed")
    zone = Driver(LandingZone(root, tmp_path / "s.sqlite"))
    zone.tick()
    (ready,) = zone.tick().ready
    _write(tmp_path / "elsewhere" / "a.fits", b"secret")
    os.rename(root / "night", tmp_path / "moved")
    (root / "night").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(OSError, match="symbolic link"):
        open_regular(ready.location)
    assert zone.tick().ready == []  # the link is not part of the zone
