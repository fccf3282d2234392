import csv
import hashlib
import os
import subprocess
import sys
import time
import zipfile

import pandas as pd
import pytest

from skyassets.catalog.export import SUMS, ExportError, export_files
from skyassets.cli.main import main
from skyassets.fits.meta import quarantine
from skyassets.lake.home import Home


def _home_with_two_files(tmp_path) -> tuple[Home, pd.DataFrame]:
    home = Home(tmp_path / "home")
    (home.files / "JWST" / "a").mkdir(parents=True)
    (home.files / "JWST" / "b").mkdir(parents=True)
    one = home.files / "JWST" / "a" / "x.fits"
    two = home.files / "JWST" / "b" / "x.fits"  # same name, other folder
    one.write_bytes(b"one")
    two.write_bytes(b"two")
    selection = pd.DataFrame(
        {
            "path": [str(one.relative_to(home.root)), str(two.relative_to(home.root)), str(one.relative_to(home.root))],
            "sha256": [hashlib.sha256(b"one").hexdigest(), hashlib.sha256(b"two").hexdigest(), None],
        }
    )
    return home, selection


def test_export_copies_checks_and_records(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    done = export_files(selection, home, tmp_path / "out", "SELECT * FROM images")
    dest = done.dest
    with (dest / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert done.files == len(rows) == 2 and done.bytes == 6
    assert {(dest / r["name"]).read_bytes() for r in rows} == {b"one", b"two"}
    assert {r["source"] for r in rows} == set(selection["path"])
    subprocess.run(["sha256sum", "-c", "--quiet", SUMS], cwd=dest, check=True)
    assert "SELECT * FROM images" in (dest / "README.md").read_text()


def test_export_to_one_zip_holds_the_files_and_a_manifest_sha256sum_accepts(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    first = home.root / selection["path"].dropna().iloc[0]
    os.utime(first, (1_600_000_000, 1_600_000_000))  # 2020-09-13
    done = export_files(selection, home, tmp_path / "bulk", "SELECT 1", as_zip=True)
    assert done.dest == tmp_path / "bulk.zip" and done.files == 2
    with zipfile.ZipFile(done.dest) as archive:  # each file dated as it is, not 1980-01-01
        dated = {info.filename.split("/", 1)[1]: info.date_time for info in archive.infolist()}
    assert dated["a/x.fits"] == time.localtime(1_600_000_000)[:6]
    assert all(when[0] >= 2026 for name, when in dated.items() if name != "a/x.fits")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(done.dest) as archive:
        assert {f"bulk/{n}" for n in (SUMS, "manifest.csv", "README.md")} <= set(archive.namelist())
        assert {n.split("/")[0] for n in archive.namelist()} == {"bulk"}  # one folder: unzipping scatters nothing
        archive.extractall(unpacked)
    subprocess.run(["sha256sum", "-c", "--quiet", SUMS], cwd=unpacked / "bulk", check=True)


def test_an_export_of_nothing_is_refused_before_anything_is_written(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    for as_zip in (False, True):
        with pytest.raises(ExportError, match="selected no files"):
            export_files(selection.iloc[0:0], home, tmp_path / "none", "q", as_zip=as_zip)
        with pytest.raises(ExportError, match="selected no files .3 rows, none with a path"):
            export_files(selection.assign(path=None), home, tmp_path / "none", "q", as_zip=as_zip)
    assert [p.name for p in tmp_path.iterdir()] == ["home"]


def test_export_refuses_what_is_not_a_catalogued_file_or_product(tmp_path):
    home = Home(tmp_path / "home")
    home.files.mkdir(parents=True)
    (tmp_path / "secret.fits").write_bytes(b"s")
    (home.dagster).mkdir(parents=True)
    (home.dagster / "runs.db").write_bytes(b"run history")
    (home.files / "link.fits").symlink_to(tmp_path / "secret.fits")
    home.quarantine.mkdir()
    (home.quarantine / "odd.fits").write_bytes(b"quarantined")
    for path in ("../secret.fits", "dagster/runs.db", "files/link.fits", "landing-state.sqlite", "quarantine/odd.fits"):
        with pytest.raises(ExportError, match="not a catalogued file or product"):
            export_files(pd.DataFrame({"path": [path]}), home, tmp_path / "o1", "q")
    with pytest.raises(ExportError, match="'path' column"):
        export_files(pd.DataFrame({"obs_id": ["a"]}), home, tmp_path / "o3", "q")
    with pytest.raises(ExportError, match="name the files to export as path, e.g. SELECT cube AS path"):
        export_files(pd.DataFrame({"target": ["T"], "cube": ["products/T/c.tiff"], "png": ["products/T/c.png"]}),
                     home, tmp_path / "o4", "q")


def test_export_refuses_bytes_that_differ_from_the_catalogue(tmp_path):
    home = Home(tmp_path / "home")
    home.files.mkdir(parents=True)
    (home.files / "f.fits").write_bytes(b"changed")
    wrong = pd.DataFrame({"path": ["files/f.fits"], "sha256": ["0" * 64]})
    with pytest.raises(ExportError, match="files/f.fits: SHA-256 .* differs from the catalogue"):
        export_files(wrong, home, tmp_path / "o2", "q")
    with pytest.raises(ExportError, match="differs from the catalogue"):
        export_files(wrong, home, tmp_path / "z", "q", as_zip=True)
    assert not (tmp_path / "z.zip").exists()


def test_catalog_command_prints_a_query(tmp_path):
    env_home = tmp_path / "home"
    (env_home / "lake").mkdir(parents=True)  # a home whose lake holds no table yet
    result = subprocess.run(
        [sys.executable, "-m", "skyassets.cli.main", "catalog", "SELECT count(*) AS n FROM images"],
        capture_output=True, text=True, env={"SKYASSETS_HOME": str(env_home), "PATH": "/usr/bin:/bin"}, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "n" in result.stdout and "0" in result.stdout


def test_export_refuses_a_destination_inside_the_home_before_writing(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    source = home.files / "JWST" / "a" / "x.fits"
    (tmp_path / "shortcut").symlink_to(home.files / "JWST")
    for dest, as_zip in ((source.parent, False), (tmp_path / "shortcut" / "a", False), (home.root, False),
                         (source.parent / "bulk", True), (tmp_path / "shortcut" / "a" / "x", True)):
        with pytest.raises(ExportError, match="inside the skyassets home"):
            export_files(selection, home, dest, "q", as_zip=as_zip, force=True)
    assert source.read_bytes() == b"one"
    assert sorted(p.name for p in source.parent.iterdir()) == ["x.fits"]


def test_export_refuses_a_folder_or_archive_already_there_unless_forced(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "README.md").write_text("my own notes")
    with pytest.raises(ExportError, match="mine: the folder is not empty"):
        export_files(selection, home, dest, "q")
    assert [p.name for p in dest.iterdir()] == ["README.md"] and (dest / "README.md").read_text() == "my own notes"
    assert export_files(selection, home, dest, "q", force=True).files == 2
    (tmp_path / "old.zip").write_bytes(b"an archive")
    with pytest.raises(ExportError, match="old.zip: already exists"):
        export_files(selection, home, tmp_path / "old", "q", as_zip=True)
    assert (tmp_path / "old.zip").read_bytes() == b"an archive"
    assert export_files(selection, home, tmp_path / "old", "q", as_zip=True, force=True).files == 2


def test_a_forced_export_into_an_earlier_one_leaves_only_what_its_manifest_lists(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    dest = tmp_path / "out"
    export_files(selection, home, dest, "both", force=True)
    (dest / "notes.txt").write_text("mine")  # the user's own file: no export listed it
    outside = tmp_path / "keep.fits"
    outside.write_bytes(b"keep")
    with (dest / "manifest.csv").open("a") as manifest:  # names an edited manifest may hold
        manifest.write("../keep.fits,0,4,x\n/etc/hostname,0,1,x\nlinked/keep.fits,0,4,x\n")
    (dest / "linked").symlink_to(outside.parent)
    done = export_files(selection.iloc[[1]], home, dest, "only b", force=True)
    assert done.files == 1 and done.removed == ["a/x.fits"]
    on_disk = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() or p.is_symlink())
    assert on_disk == ["README.md", SUMS, "b/x.fits", "linked", "manifest.csv", "notes.txt"]
    assert not (dest / "a").exists()  # the folder it held emptied, and gone
    assert outside.read_bytes() == b"keep" and (tmp_path / "home" / "files" / "JWST" / "a" / "x.fits").exists()
    subprocess.run(["sha256sum", "-c", "--quiet", SUMS], cwd=dest, check=True)
    with (dest / "manifest.csv").open() as f:
        assert [r["name"] for r in csv.DictReader(f)] == ["b/x.fits"]


def test_a_forced_export_replaces_a_second_name_of_a_source_never_writes_through_it(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    source = home.files / "JWST" / "a" / "x.fits"
    dest = tmp_path / "out"
    (dest / "b").mkdir(parents=True)
    (dest / "b" / "x.fits").hardlink_to(source)  # where the other x.fits goes
    (dest / "README.md").symlink_to(source)
    export_files(selection, home, dest, "q", force=True)
    assert source.read_bytes() == b"one" and (dest / "b" / "x.fits").read_bytes() == b"two"
    subprocess.run(["sha256sum", "-c", "--quiet", SUMS], cwd=dest, check=True)


def test_a_destination_that_cannot_be_a_folder_is_an_export_error_naming_it(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    plain = tmp_path / "plain.txt"
    plain.write_text("a file")
    with pytest.raises(ExportError, match="plain.txt: exists and is not a folder"):
        export_files(selection, home, plain, "q")
    for as_zip in (False, True):
        with pytest.raises(ExportError, match="plain.txt.*: cannot be written"):
            export_files(selection, home, plain / "under", "q", as_zip=as_zip)
    assert plain.read_text() == "a file"


def test_a_selection_without_a_path_column_names_the_columns_it_has(tmp_path):
    home, _ = _home_with_two_files(tmp_path)
    with pytest.raises(ExportError, match="'path' column.*it returned: obs_id, sha256"):
        export_files(pd.DataFrame({"obs_id": ["a"], "sha256": ["0" * 64]}), home, tmp_path / "o", "q")
    assert not (tmp_path / "o").exists()


def test_selected_files_no_longer_in_the_home_are_left_out_with_the_reason(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    home.tables.write("fits_files", pd.DataFrame({"partition": ["c"], "path": ["files/JWST/c/removed.fits"],
                                                  "status": ["downloaded"]}), partition="c")
    gone = pd.DataFrame({"path": ["files/local/k/junk.fits", "files/JWST/c/removed.fits"],
                         "sha256": [None, None], "status": ["quarantined", "downloaded"]})
    selection = pd.concat([selection.assign(status="downloaded"), gone], ignore_index=True)
    done = export_files(selection, home, tmp_path / "out", "SELECT * FROM files")
    assert done.files == 2 and done.missing == {
        "files/local/k/junk.fits": "quarantined when it was catalogued (see the home's quarantine folder)",
        "files/JWST/c/removed.fits": "no longer in the home (removed since it was catalogued)",
    }
    subprocess.run(["sha256sum", "-c", "--quiet", SUMS], cwd=done.dest, check=True)
    # its README counts what it holds, and what was selected but could not be shipped
    assert "2 files exported (2 more selected but not exported: " in (done.dest / "README.md").read_text()
    with pytest.raises(ExportError, match=r"none of the 2 selected files can be exported .*nothing exported"):
        export_files(gone, home, tmp_path / "none", "SELECT * FROM files")
    assert not (tmp_path / "none").exists()


def test_a_landed_or_listed_file_that_never_arrived_is_said_so(tmp_path):
    """``landing`` and ``products`` rows name where a file goes before it arrives: one its
    observation's manifest does not list was never stored, one it lists as quarantined was refused."""
    home, selection = _home_with_two_files(tmp_path)
    home.tables.write("fits_files", pd.DataFrame({
        "partition": ["c", "c"], "path": ["files/local/c/bad.fits", "files/local/c/gone.fits"],
        "status": ["quarantined", "downloaded"]}), partition="c")
    # a copy refused on arrival is moved to the quarantine as <name>.corrupt, and never listed
    refused = home.files / "local" / "c" / "cut.fits.corrupt"
    refused.parent.mkdir(parents=True)
    refused.write_bytes(b"SIMPLE")
    quarantine(refused, home.quarantine, "/night/cut.fits: truncated: 6 bytes", landed_location="/night/cut.fits")
    # an old note of a file fetched again since, and stored (its manifest says so), speaks no more for it
    stale = home.files / "local" / "c" / "gone.fits"
    stale.write_bytes(b"SIMPLE")
    quarantine(stale, home.quarantine, "an older version was cut short")
    rows = pd.DataFrame({"path": ["files/local/c/bad.fits", "files/local/c/gone.fits", "files/local/c/late.fits",
                                  "files/MAST/d/listed.fits", "files/JWST/../odd.fits", "files/JWST//odd.fits",
                                  "files/local/c/cut.fits"]})
    done = export_files(pd.concat([selection, rows], ignore_index=True), home, tmp_path / "out",
                        "SELECT * FROM landing")
    never = "never stored in the home (not fetched or copied yet, or refused)"
    assert done.files == 2 and done.missing == {
        "files/local/c/bad.fits": "quarantined when it was catalogued (see the home's quarantine folder)",
        "files/local/c/gone.fits": "no longer in the home (removed since it was catalogued)",
        "files/local/c/late.fits": never,
        "files/MAST/d/listed.fits": never,  # an observation never fetched: no manifest at all
        # paths no observation's folder can have are said missing, not a crash
        "files/JWST/../odd.fits": "not a catalogued file (no table of the catalog names it)",
        "files/JWST//odd.fits": "not a catalogued file (no table of the catalog names it)",
        "files/local/c/cut.fits": "quarantined: /night/cut.fits: truncated: 6 bytes (see the home's quarantine folder)",
    }


def test_a_path_no_table_of_the_catalog_names_is_said_never_catalogued_not_removed(tmp_path, monkeypatch, capsys):
    home, selection = _home_with_two_files(tmp_path)
    home.tables.write("composites", pd.DataFrame({"target": ["t"], "png": ["products/t/gone.png"]}), partition="t")
    rows = pd.DataFrame({"path": ["files/JWST/nope.fits", "products/t/gone.png"]})
    done = export_files(pd.concat([selection, rows], ignore_index=True), home, tmp_path / "out", "q")
    assert done.files == 2 and done.missing == {
        "files/JWST/nope.fits": "not a catalogued file (no table of the catalog names it)",
        "products/t/gone.png": "no longer in the home (removed since it was catalogued)",  # a composite's PNG
    }
    monkeypatch.setenv("SKYASSETS_HOME", str(home.root))
    # none exportable: each named with its reason, as when some are, and exit status 1
    assert main(["export", "SELECT path FROM (VALUES ('files/JWST/nope.fits'), ('products/t/gone.png')) t(path)",
                 str(tmp_path / "cli")]) == 1
    said = capsys.readouterr()
    assert said.err == ("  missing: files/JWST/nope.fits: not a catalogued file (no table of the catalog names it)\n"
                        "  missing: products/t/gone.png: no longer in the home (removed since it was catalogued)\n"
                        "nothing exported\n")
    assert said.out == "not exported: 0 skipped (not files to ship), 2 missing from the home (named on stderr)\n"
    assert not (tmp_path / "cli").exists()


def test_an_export_that_stops_part_way_leaves_none_of_its_files(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    first = export_files(selection, home, tmp_path / "out", "SELECT * FROM images")
    def files(folder):
        return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    before = files(first.dest)
    selection.loc[1, "sha256"] = "0" * 64  # the second file differs from the catalogue: found after the first is copied
    with pytest.raises(ExportError, match="differs from the catalogue"):
        export_files(selection, home, tmp_path / "out", "SELECT * FROM images", force=True)
    # the forced export that failed leaves the earlier one whole, and checkable
    assert files(tmp_path / "out") == before
    subprocess.run(["sha256sum", "-c", "--quiet", SUMS], cwd=tmp_path / "out", check=True)
    (tmp_path / "new").mkdir()
    with pytest.raises(ExportError, match="differs from the catalogue"):
        export_files(selection, home, tmp_path / "new", "SELECT * FROM images")
    assert list((tmp_path / "new").iterdir()) == []


def test_a_selected_folder_is_skipped_as_a_folder_not_said_removed(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    folders = pd.DataFrame({"path": ["files/JWST/a", "files"], "sha256": [None, None]})
    for as_zip in (False, True):
        done = export_files(pd.concat([selection, folders], ignore_index=True), home, tmp_path / f"out{as_zip}",
                            "SELECT * FROM files", as_zip=as_zip)
        assert done.files == 2 and done.missing == {}
        assert done.skipped == {"files/JWST/a": "is a folder, not a file", "files": "is a folder, not a file"}
    with pytest.raises(ExportError, match="none of the 2 selected files can be exported "
                       r"\(files/JWST/a: is a folder, not a file\); nothing exported"):
        export_files(folders, home, tmp_path / "none", "SELECT * FROM files")
    assert not (tmp_path / "none").exists()


def test_the_downloads_bookkeeping_files_are_skipped_never_exported(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    folder = home.files / "JWST" / "a"
    kept = {".x.fits.verified": ".verified", "x.fits.sha256": ".sha256", "y.fits.part": ".part",
            "y.fits.part.json": ".part.json", ".x.fits.lock": ".lock", "z.fits.corrupt": ".corrupt",
            ".x.fits.verified.tmp": ".tmp"}
    for name in kept:
        (folder / name).write_bytes(b"bookkeeping")
    listing = pd.DataFrame({"path": [f"files/JWST/a/{name}" for name in kept], "sha256": None})
    for as_zip in (False, True):
        done = export_files(pd.concat([selection, listing], ignore_index=True), home, tmp_path / f"out{as_zip}",
                            "SELECT * FROM glob('files/**')", as_zip=as_zip)
        assert done.files == 2 and done.missing == {}
        assert done.skipped == {f"files/JWST/a/{name}": f"is a {suffix} file the downloads keep beside the data, "
                                "not data" for name, suffix in kept.items()}
    with zipfile.ZipFile(done.dest) as archive:
        shipped = {name.split("/", 1)[1] for name in archive.namelist()}
    assert shipped.isdisjoint(kept) and len(shipped) == 5  # two files and the three records
    with (tmp_path / "outFalse" / "manifest.csv").open() as f:
        assert [r["source"] for r in csv.DictReader(f)] == ["files/JWST/a/x.fits", "files/JWST/b/x.fits"]
    assert not set(kept) & {p.name for p in (tmp_path / "outFalse").rglob("*")}
    with pytest.raises(ExportError, match=r"none of the 7 selected files can be exported .*nothing exported"):
        export_files(listing, home, tmp_path / "none", "q")


def _names_in(done) -> dict[str, str]:
    """name in the export -> catalogue path, from the manifest of a folder or an archive."""
    if done.dest.suffix == ".zip":
        with zipfile.ZipFile(done.dest) as archive:
            text = archive.read(f"{done.dest.stem}/manifest.csv").decode()
    else:
        text = (done.dest / "manifest.csv").read_text()
    return {r["name"]: r["source"] for r in csv.DictReader(text.splitlines())}


def test_files_of_the_same_name_are_exported_in_a_folder_per_observation_or_target(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    mosaic = home.target_dir("NGC-3132") / "x.fits"
    mosaic.parent.mkdir(parents=True)
    mosaic.write_bytes(b"mosaic")
    both = pd.concat([selection, pd.DataFrame({"path": ["products/NGC-3132/x.fits"]})], ignore_index=True)
    expected = {"a/x.fits": "files/JWST/a/x.fits", "b/x.fits": "files/JWST/b/x.fits",
                "NGC-3132/x.fits": "products/NGC-3132/x.fits"}
    plain = export_files(both, home, tmp_path / "plain", "q")
    packed = export_files(both, home, tmp_path / "packed", "q", as_zip=True)
    assert _names_in(plain) == _names_in(packed) == expected
    assert (plain.dest / "a" / "x.fits").read_bytes() == b"one" and (plain.dest / "b" / "x.fits").read_bytes() == b"two"
    subprocess.run(["sha256sum", "-c", "--quiet", SUMS], cwd=plain.dest, check=True)
    with zipfile.ZipFile(packed.dest) as archive:
        archive.extractall(tmp_path / "unpacked")
    subprocess.run(["sha256sum", "-c", "--quiet", SUMS], cwd=tmp_path / "unpacked" / "packed", check=True)
    assert "folder named after its observation" in (plain.dest / "README.md").read_text()
    # a file's name does not depend on what else was selected
    alone = export_files(selection.iloc[[0]], home, tmp_path / "alone", "q")
    assert _names_in(alone) == {"a/x.fits": "files/JWST/a/x.fits"}


def test_files_that_would_still_share_a_name_keep_their_whole_path_in_the_home(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    for folder in (home.target_dir("a"), home.files / "JWST" / "SHA256SUMS"):  # a target named as an observation
        folder.mkdir(parents=True)
        (folder / "x.fits").write_bytes(b"other")
    rows = pd.DataFrame({"path": ["products/a/x.fits", "files/JWST/SHA256SUMS/x.fits"]})
    done = export_files(pd.concat([selection, rows], ignore_index=True), home, tmp_path / "out", "q")
    assert _names_in(done) == {"files/JWST/a/x.fits": "files/JWST/a/x.fits", "b/x.fits": "files/JWST/b/x.fits",
                               "products/a/x.fits": "products/a/x.fits",
                               "files/JWST/SHA256SUMS/x.fits": "files/JWST/SHA256SUMS/x.fits"}
    subprocess.run(["sha256sum", "-c", "--quiet", SUMS], cwd=done.dest, check=True)


def test_a_path_from_the_catalogue_never_names_a_file_outside_the_export(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    (tmp_path / "secret.fits").write_bytes(b"secret")
    for path in ("files/../../secret.fits", str(tmp_path / "secret.fits"), "/etc/passwd", "files/JWST/../../.."):
        for as_zip in (False, True):
            with pytest.raises(ExportError, match="not a catalogued file or product"):
                export_files(pd.DataFrame({"path": [path]}), home, tmp_path / "o", "q", as_zip=as_zip)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "secret.fits"]
    # odd names in the home: a line break would break SHA256SUMS, a backslash is a folder to Windows
    odd = {"files/JWST/a/new\nline.fits": "control character", "files/JWST/a\\b/y.fits": "path separator"}
    for path in odd:
        (home.root / path).parent.mkdir(parents=True, exist_ok=True)
        (home.root / path).write_bytes(b"odd")
    # the same file spelled three ways (one of them absolute) is exported once, under its own name
    spellings = pd.DataFrame({"path": ["files/JWST/b/../a/x.fits", str(home.files / "JWST" / "a" / "x.fits"), *odd]})
    for as_zip in (False, True):
        done = export_files(pd.concat([selection, spellings], ignore_index=True), home, tmp_path / f"o{as_zip}",
                            "q", as_zip=as_zip)
        assert _names_in(done) == {"a/x.fits": "files/JWST/a/x.fits", "b/x.fits": "files/JWST/b/x.fits"}
        assert {p: why.split(":")[0] for p, why in done.skipped.items()} == dict.fromkeys(odd, "cannot be named in "
                                                                                           "an export")
        assert all(said in done.skipped[p] for p, said in odd.items())
    with zipfile.ZipFile(done.dest) as archive:
        assert all(n.startswith("oTrue/") and ".." not in n.split("/") for n in archive.namelist())


def test_a_forced_export_never_writes_through_a_link_in_place_of_one_of_its_folders(tmp_path):
    home, selection = _home_with_two_files(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "a").symlink_to(elsewhere)
    (dest / "b").write_text("my own file")
    for blocked in ("a", "b"):
        with pytest.raises(ExportError, match=f"out/{blocked}: is in the way of the export's folder {blocked}/"):
            export_files(selection, home, dest, "q", force=True)
        (dest / blocked).unlink()
    assert list(elsewhere.iterdir()) == [] and list(dest.iterdir()) == []
    assert _names_in(export_files(selection, home, dest, "q", force=True)) == {
        "a/x.fits": "files/JWST/a/x.fits", "b/x.fits": "files/JWST/b/x.fits"}
