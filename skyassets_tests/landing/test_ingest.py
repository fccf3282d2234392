"""Local files become landed files and partitions: what is refused and why, stored names, archive partitions."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pandas as pd
import pytest

from skyassets.lake.home import Home
from skyassets.lake.names import safe_filename
from skyassets.landing.ingest import (
    HOME_REFUSED,
    STORED_NAME_MAX,
    derived_names,
    landed_requests,
    local_files,
    record_landed,
    recording,
    relocate_landed,
)
from skyassets.landing.zone import LINKED_FOLDER, LandedFile


def _file(path: Path, data: bytes = b"SIMPLE  =                    T") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_local_files_follow_no_link_and_refuse_it_with_the_reason(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    secret = _file(outside / "secret.fits")
    _file(outside / "deep" / "other.fits")
    night = tmp_path / "night"
    good = _file(night / "a.fits")
    _file(night / "sub" / "b.fits.gz")
    _file(night / ".hidden" / "c.fits")
    _file(night / "notes.txt")
    (night / "link.fits").symlink_to(secret)
    (night / "linked-folder").symlink_to(outside / "deep")
    os.mkfifo(night / "pipe.fits")
    refused: dict[str, str] = {}
    found = local_files([night], refused)
    assert [f.relative for f in found] == ["night/a.fits", "night/sub/b.fits.gz"]
    assert found[0].location == str(good) and found[0].size == good.stat().st_size
    assert refused == {
        str(night / "link.fits"): "a symbolic link: links are not followed",
        str(night / "linked-folder"): LINKED_FOLDER,  # a folder of files passed over is said
        str(night / "pipe.fits"): "not a regular file",
    }


def test_fits_compressed_in_a_way_not_read_is_refused_and_other_names_of_fits_are_found(tmp_path: Path) -> None:
    night = tmp_path / "night"
    for name in ("a.fit.gz", "b.fts.gz", "c.FITS.GZ", "d.fz", "e.fits.bz2"):
        _file(night / name)
    _file(night / "e.fits.zst")
    _file(night / "sub" / "f.fit.xz")
    _file(night / ".g.fits")  # hidden below a folder: passed over, as notes and previews are
    _file(night / "preview.jpg")
    refused: dict[str, str] = {}
    found = local_files([night], refused)
    assert [f.relative for f in found] == [
        "night/a.fit.gz", "night/b.fts.gz", "night/c.FITS.GZ", "night/d.fz", "night/e.fits.bz2"]
    assert set(refused) == {str(night / "e.fits.zst"), str(night / "sub" / "f.fit.xz")}
    assert "compressed as .zst, which is not read" in refused[str(night / "e.fits.zst")]
    assert "compressed as .xz" in refused[str(night / "sub" / "f.fit.xz")]


def test_a_file_named_on_its_own_that_is_not_taken_says_why(tmp_path: Path) -> None:
    good = _file(tmp_path / "a.fits")
    hidden, notes, xz = _file(tmp_path / ".b.fits"), _file(tmp_path / "notes.txt"), _file(tmp_path / "c.fits.xz")
    refused: dict[str, str] = {}
    found = local_files([hidden, notes, xz, good], refused)
    assert [f.location for f in found] == [str(good)]
    assert refused[str(hidden)].startswith("a hidden file")
    assert refused[str(notes)].startswith("not named as FITS (.fits, .fit, .fts, .fits.gz")
    assert "compressed as .xz" in refused[str(xz)]


def test_a_named_link_loop_is_refused_and_the_other_paths_are_found(tmp_path: Path) -> None:
    good = _file(tmp_path / "a.fits")
    loop = tmp_path / "loop.fits"
    loop.symlink_to(loop)
    refused: dict[str, str] = {}
    found = local_files([loop, good], refused)
    assert [f.location for f in found] == [str(good)]
    assert list(refused) == [str(loop)]
    assert refused[str(loop)].startswith("cannot be resolved: ")


def test_a_link_loop_named_by_a_relative_path_and_found_in_its_folder_is_listed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    night = tmp_path / "night"
    _file(night / "a.fits")
    (night / "loop.fits").symlink_to(night / "loop.fits")
    monkeypatch.chdir(tmp_path)
    refused: dict[str, str] = {}
    found = local_files(["night/loop.fits", "night"], refused)
    assert [f.location for f in found] == [str(night / "a.fits")]
    assert list(refused) == [str(night / "loop.fits")]


def test_a_named_dangling_link_is_reported_as_given_with_where_it_leads(tmp_path: Path) -> None:
    dangling = tmp_path / "night" / "dangling.fits"
    dangling.parent.mkdir()
    dangling.symlink_to(tmp_path / "nowhere" / "nothing.fits")
    refused: dict[str, str] = {}
    assert local_files([dangling], refused) == []
    assert refused == {str(dangling): f"cannot be read: No such file or directory (a link to "
                                      f"{tmp_path / 'nowhere' / 'nothing.fits'})"}


def test_nothing_in_the_home_but_its_landing_folder_is_taken(tmp_path: Path) -> None:
    home = tmp_path / "home"
    kept = _file(home / "files" / "local" / "landed-a" / "a.fits")  # the lake's own copy
    _file(home / "quarantine" / "b.fits")
    landed = _file(home / "landing" / "c.fits")
    mine = _file(tmp_path / "d.fits")
    refused: dict[str, str] = {}
    found = local_files([tmp_path, kept, home / "files"], refused, home=home)
    assert sorted(f.location for f in found) == sorted([str(landed), str(mine)])
    assert refused[str(kept)] == HOME_REFUSED and refused[str(home / "files")] == HOME_REFUSED
    assert refused[str(home)].startswith("its own folders were passed over: ")
    assert [f.location for f in local_files([home], home=home)] == [str(landed)]
    # a landing folder of another name inside the home (SKYASSETS_LANDING) is taken too
    incoming = _file(home / "incoming" / "e.fits")
    assert [f.location for f in local_files([home], home=home, landing=home / "incoming")] == [str(incoming)]


def test_a_name_that_is_not_utf8_is_refused_and_the_others_are_found(tmp_path: Path) -> None:
    night = tmp_path / "night"
    _file(night / "good.fits")
    bad = os.path.join(os.fsencode(night), b"caf\xe9.fits")
    with open(bad, "wb") as f:
        f.write(b"SIMPLE")
    refused: dict[str, str] = {}
    found = local_files([str(night)], refused)
    assert [f.relative for f in found] == ["night/good.fits"]
    ((shown, reason),) = refused.items()
    assert shown.endswith("caf\\xe9.fits") and "not valid UTF-8" in reason
    shown.encode("utf-8")  # printable and storable
    # Named directly, it is refused the same way; a missing file is refused with its reason.
    refused = {}
    assert local_files([os.fsdecode(bad), night / "gone.fits"], refused) == []
    assert len(refused) == 2 and any("No such file" in r for r in refused.values())


@pytest.mark.parametrize("length", [16, 100, STORED_NAME_MAX - 5, STORED_NAME_MAX, 240, 250, 255])
@pytest.mark.parametrize("char, suffix", [("x", ".fits"), ("é", ".fits.gz"), ("☆", ".fz")])
def test_every_name_derived_from_a_stored_name_fits(tmp_path: Path, length: int, char: str, suffix: str) -> None:
    """Landed names of any length up to the file system's limit: the stored name, the downloader's
    working files and lock, the quarantine's copy and note and the previews all fit in one component."""
    stem = char * ((length - len(suffix)) // len(char.encode()))
    name = stem + suffix
    files = [LandedFile("local", f"/data/{d}/{name}", 10, "1", f"{d}/{name}") for d in ("a", "b")]
    home = Home(tmp_path)
    record_landed(home, "landed-k", files)
    stored = [request.filename for _, request in landed_requests(home, ["landed-k"])["landed-k"]]
    assert len(set(stored)) == 2
    for each in stored:
        assert each.endswith(suffix) and stem[:20] in each
        for derived in derived_names(each):
            safe_filename(derived)
    if len(name.encode()) <= STORED_NAME_MAX:
        assert stored[0] == name  # a name that fits is kept as it is


def test_a_partition_with_archive_products_is_never_copied_from_a_landing_record(tmp_path: Path) -> None:
    """A landing record under an archive observation's key (written before landed keys had their
    own prefix) does not make the archive partition a landed one: its files stay the archive's."""
    home = Home(tmp_path)
    files = [LandedFile("local", "/data/x.fits", 10, "1", "x.fits")]
    record_landed(home, "jw01234-o001_t001_nircam_clear-f200w", files)
    record_landed(home, "landed-jw01234-o001_t001_nircam_clear-f200w", files)
    keys = ["jw01234-o001_t001_nircam_clear-f200w", "landed-jw01234-o001_t001_nircam_clear-f200w"]
    assert set(landed_requests(home, keys)) == set(keys)
    products = pd.DataFrame({"partition": ["jw01234-o001_t001_nircam_clear-f200w"], "productFilename": ["a.fits"]})
    home.tables.write("mast_products", products, partition="jw01234-o001_t001_nircam_clear-f200w")
    assert set(landed_requests(home, keys)) == {"landed-jw01234-o001_t001_nircam_clear-f200w"}


def test_a_landed_file_that_fails_cataloguing_in_any_way_is_quarantined_with_its_location(tmp_path: Path) -> None:
    from skyassets.fits.meta import Failure
    from skyassets.landing.ingest import quarantine_landed_failures

    home = Home(tmp_path)
    record_landed(home, "landed-k", [LandedFile("local", "/data/night/odd.fits", 10, "1", "night/odd.fits")])
    landed = _file(home.files / "local" / "landed-k" / "odd.fits", b"odd bytes")
    archive = _file(home.files / "JWST" / "jw1" / "a.fits", b"archive bytes")
    failures = [Failure(str(landed), "VerifyError: Unparsable card (FILTER)", unreadable=False),
                Failure(str(archive), "KeyError: 'x'", unreadable=False)]
    after = quarantine_landed_failures(home, failures)
    assert after[1] == failures[1] and archive.exists()  # an archive file's unexpected failure stays one
    assert after[0].unreadable and not landed.exists()
    moved = Path(after[0].quarantined)
    assert moved.parent == home.quarantine and moved.read_bytes() == b"odd bytes"
    note = (home.quarantine / f"{moved.name}.json").read_text()
    assert "/data/night/odd.fits: VerifyError: Unparsable card (FILTER)" in note

    # one the reader quarantined itself (not FITS) gets its landed location in its note too
    from skyassets.fits.meta import extract_many

    record_landed(home, "landed-j", [LandedFile("local", "/data/night/junk.fits", 9, "1", "night/junk.fits")])
    junk = _file(home.files / "local" / "landed-j" / "junk.fits", b"hello\nxyz")
    _, (failure,) = extract_many([str(junk)], quarantine_dir=home.quarantine)
    (after,) = quarantine_landed_failures(home, [failure])
    note = json.loads((home.quarantine / f"{Path(after.quarantined).name}.json").read_text())
    assert note["landed_location"] == "/data/night/junk.fits" and note["reason"].startswith("/data/night/junk.fits: ")


def test_a_file_recorded_under_another_partition_leaves_the_one_that_held_it(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    assert relocate_landed(home, {}) == {} and relocate_landed(home, {"landed-one": []}) == {}  # an idle tick
    assert not home.tables.exists("landing_index")
    a, b = (LandedFile("local", f"/drop/{n}.fits", 10, "1", f"{n}.fits") for n in "ab")
    # a home from before the index: its records are read once to build it
    record_landed(home, "landed-one", [a, b])
    moved_a = LandedFile("local", a.location, 12, "2", a.relative)
    assert relocate_landed(home, {"landed-two": [moved_a]}) == {"landed-one": [a.location]}
    record_landed(home, "landed-two", [moved_a])
    assert home.tables.read("landing", "landed-one")["location"].tolist() == [b.location]
    index = home.tables.read("landing_index").set_index("location")["partition"].to_dict()
    assert index == {a.location: "landed-two", b.location: "landed-one"}
    # the same file again in its partition, and a new one: nothing leaves; the new one is indexed
    c = LandedFile("local", "/drop/c.fits", 10, "1", "c.fits")
    assert relocate_landed(home, {"landed-two": [moved_a, c]}) == {}
    record_landed(home, "landed-two", [moved_a, c])
    index = home.tables.read("landing_index")
    assert sorted(zip(index["location"], index["partition"], strict=True)) == [
        (a.location, "landed-two"), (b.location, "landed-one"), (c.location, "landed-two")]
    stamp = os.stat(home.tables.path("landing_index")).st_mtime_ns
    assert relocate_landed(home, {"landed-two": [c]}) == {}
    assert os.stat(home.tables.path("landing_index")).st_mtime_ns == stamp  # nothing new: not written again


def test_a_file_named_twice_is_one_file(tmp_path: Path) -> None:
    path = _file(tmp_path / "night" / "a.fits")
    named = [tmp_path / "night", path, f"{tmp_path}/night/../night/", str(path)]
    assert [f.location for f in local_files(named)] == [str(path)]


def test_two_writers_of_the_landing_index_take_turns_and_keep_each_others_rows(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    mine, theirs = (LandedFile("local", f"/drop/{n}.fits", 10, "1", f"{n}.fits") for n in ("mine", "theirs"))

    def land(key: str, landed: LandedFile) -> None:
        with recording(home):
            relocate_landed(home, {key: [landed]})
            record_landed(home, key, [landed])

    with recording(home):  # the sensor's tick, say, mid-way
        other = threading.Thread(target=land, args=("landed-theirs", theirs))  # a command-line ingest
        other.start()
        other.join(timeout=1.0)
        assert other.is_alive()  # it waits for the tick
        relocate_landed(home, {"landed-mine": [mine]})
        record_landed(home, "landed-mine", [mine])
    other.join(timeout=30)
    index = home.tables.read("landing_index")
    assert dict(zip(index["location"], index["partition"], strict=True)) == {
        mine.location: "landed-mine", theirs.location: "landed-theirs"}
