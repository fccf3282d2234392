import json
import os
import shutil
from pathlib import Path
from unittest.mock import ANY

import pandas as pd
from astropy.io import fits
from dagster import AssetMaterialization, DagsterRunStatus, instance_for_test

from skyassets.catalog.db import connect
from skyassets.cli.runs import (
    QUIET,
    IngestReport,
    InProcess,
    catalog_outdated,
    ingest,
    latest_metadata,
    made_or_kept,
    measure_quality,
    partition_batches,
    publish_outdated,
    updated_since,
)
from skyassets.lake.home import Home
from skyassets.landing.zone import LINKED_FOLDER


def test_ingest_catalogues_files_in_batched_runs(emu, tmp_path):
    drop = tmp_path / "night"
    (drop / "sub").mkdir(parents=True)
    cal = sorted(emu.sky.root.rglob("*_cal.fits"))[:5]
    for i, path in enumerate(cal):
        shutil.copy(path, (drop / "sub" if i % 2 else drop) / path.name)
    (drop / "notes.txt").write_text("not a FITS file, not taken")
    (drop / "truncated.fits").write_bytes(cal[0].read_bytes()[:5000])
    home = Home(tmp_path / "home")
    seen = []
    with instance_for_test() as instance:
        report = ingest([drop], home, instance, batch=2, progress=lambda *a: seen.append(a))
        assert (report.files, len(report.partitions), report.runs, report.failed_runs) == (6, 6, 3, [])
        assert sorted(Path(p).name for p in report.catalogued) == sorted(p.name for p in cal)
        assert list(report.quarantined) == [str(drop / "truncated.fits")] and not report.failed and not report.ok
        assert "truncated" in report.quarantined[str(drop / "truncated.fits")].lower()
        assert not report.quarantined[str(drop / "truncated.fits")].startswith("truncated.fits: ")  # named once
        runs = instance.get_runs()
        assert len(runs) == 3 and all(r.status == DagsterRunStatus.SUCCESS for r in runs)
        assert seen[-1] == (3, 3, 6, 6)  # runs, and files: the truncated one was taken too
        keys = instance.get_dynamic_partitions("observations")
        assert len(keys) == 6
        # A batched run's partitions each carry their own figures and preview, and the run's totals.
        batched = [latest_metadata(instance, "image_metadata", k) for k in keys]
        assert all(m["partitions_in_run"] == 2 for m in batched)
        # a partition's own figures come first on its page, the run's after
        for m in batched:
            names = list(m)
            assert names.index("preview") < names.index("partitions_in_run") < names.index("files_in_run"), names
        assert sorted(m["dagster/row_count"] for m in batched) == [0, 1, 1, 1, 1, 1]  # the truncated file: none
        assert sum(m["rows_in_run"] for m in batched[::2]) == 5
        for key, m in zip(keys, batched, strict=True):
            assert [r.data["obs_id"] for r in m["preview"].records] == [key] * m["dagster/row_count"]
        files = [latest_metadata(instance, "fits_files", k) for k in keys]
        assert sum(m["bytes_total"] for m in files) == sum(p.stat().st_size for p in cal)
        # each partition's own figures, and the run's named as the run's
        assert sorted(m["files"] for m in batched) == [0, 1, 1, 1, 1, 1]
        assert all(m["files_in_run"] in (1, 2) for m in batched)
        assert all(m["quarantined"] == 0 for m in batched)  # the truncated file was refused before
        # the partition of the truncated file says its copy was refused, and why
        assert sorted(m["files_not_copied"] for m in files) == [0, 0, 0, 0, 0, 1]
        (cut,) = [m for m in files if m["files_not_copied"]]
        assert "truncated.fits`: " in cut["not_copied"] and cut["files_downloaded"] == 0
        assert sorted(m["files_downloaded"] for m in files) == [0, 1, 1, 1, 1, 1]  # each partition's own copy
        assert all(m["files_downloaded_in_run"] in (1, 2) for m in files)

    rows = pd.concat(pd.read_parquet(p) for p in (home.lake / "image_metadata").glob("*.parquet"))
    assert sorted(rows["file_name"]) == sorted(p.name for p in cal)
    assert [p.name for p in home.quarantine.glob("*.fits.corrupt")] == ["truncated.fits.corrupt"]
    assert "truncated.fits" in (home.quarantine / "truncated.fits.corrupt.json").read_text()
    assert all(p.exists() for p in cal)  # the originals are copied, never moved

    # The same folder again: nothing runs, nothing is quarantined twice, every file keeps its outcome.
    quarantine_before = sorted(p.name for p in home.quarantine.iterdir())
    with instance_for_test() as instance:
        again = ingest([drop], home, instance, batch=2)
        assert (again.runs, again.unchanged, len(instance.get_runs())) == (0, 6, 0)
    assert sorted(again.catalogued) == sorted(report.catalogued) and again.quarantined == report.quarantined
    assert sorted(p.name for p in home.quarantine.iterdir()) == quarantine_before
    # one file changed: only its partition runs again
    changed = Path(sorted(report.catalogued)[0])
    changed.write_bytes(changed.read_bytes())
    os.utime(changed, ns=(1, 1))
    with instance_for_test() as instance:
        third = ingest([drop], home, instance, batch=2)
        assert (third.runs, third.unchanged, len(third.catalogued)) == (1, 5, 5)


def test_a_file_cataloguing_quarantines_is_no_longer_listed_as_downloaded(emu, tmp_path):
    drop = tmp_path / "night"
    drop.mkdir()
    good = sorted(emu.sky.root.rglob("*_cal.fits"))[0]
    shutil.copy(good, drop / good.name)
    (drop / "junk.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 100)  # no sums: it copies
    home = Home(tmp_path / "home")
    with instance_for_test() as instance:
        report = ingest([drop], home, instance, batch=2)
        # its partition's own materialisation says so, with the reason; the other's says none
        shown = {k: latest_metadata(instance, "image_metadata", k) for k in report.partitions}
        assert sorted(m["quarantined"] for m in shown.values()) == [0, 1]
        (junk,) = [m for m in shown.values() if m["quarantined"]]
        assert "- `junk.fits`: " in junk["quarantined_files"] and junk["dagster/row_count"] == 0
    assert list(report.quarantined) == [str(drop / "junk.fits")]
    manifests = pd.concat(pd.read_parquet(p) for p in (home.lake / "fits_files").glob("*.parquet"))
    assert manifests.set_index("filename")["status"].to_dict() == {good.name: "copied", "junk.fits": "quarantined"}


def test_a_quarantined_file_once_repaired_is_catalogued_and_stays_so(emu, tmp_path):
    drop = tmp_path / "night"
    drop.mkdir()
    good, fixed = sorted(emu.sky.root.rglob("*_cal.fits"))[:2]
    shutil.copy(good, drop / good.name)
    broken = drop / "fixed.fits"
    broken.write_bytes(fixed.read_bytes()[:5000])
    still = drop / "still.fits"
    still.write_bytes(fixed.read_bytes()[:4000])
    home = Home(tmp_path / "home")
    with instance_for_test() as instance:
        first = ingest([drop], home, instance)
    assert sorted(first.quarantined) == [str(broken), str(still)]
    assert sorted(p.name for p in home.quarantine.iterdir()) == [
        "fixed.fits.corrupt", "fixed.fits.corrupt.json", "still.fits.corrupt", "still.fits.corrupt.json"]
    # refused on arrival, listed in `files` as a file cataloguing refuses is: quarantined, no hash
    files = connect(home).sql("SELECT file_name, status, sha256 FROM files ORDER BY file_name").fetchall()
    assert files == [("fixed.fits", "quarantined", None), (good.name, "copied", ANY),
                     ("still.fits", "quarantined", None)]
    broken.write_bytes(fixed.read_bytes())  # the whole file, landed again
    os.utime(broken, ns=(2_000_000_000_000_000_000, 2_000_000_000_000_000_000))
    for attempt in ("repaired", "unchanged since"):
        with instance_for_test() as instance:
            report = ingest([drop], home, instance)
        assert sorted(report.catalogued) == sorted([str(drop / good.name), str(broken)]), (attempt, report)
        assert list(report.quarantined) == [str(still)], attempt
        # the repaired file's broken copy has left the quarantine; the file still broken keeps its own
        assert sorted(p.name for p in home.quarantine.iterdir()) == ["still.fits.corrupt", "still.fits.corrupt.json"]
    assert report.unchanged == 3


def test_a_landed_file_still_broken_in_a_new_version_keeps_one_copy_in_the_quarantine(emu, tmp_path):
    drop = tmp_path / "night"
    drop.mkdir()
    cal = sorted(emu.sky.root.rglob("*_cal.fits"))[0]
    text = drop / "notes.fits"
    text.write_text("observing notes, not FITS\n" * 200)  # refused on arrival
    cut = drop / "cut.fits"
    cut.write_bytes(cal.read_bytes()[:80] + b"garbage" * 10)  # copied, refused by cataloguing
    home = Home(tmp_path / "home")
    for k in range(3):  # touched: a new version each time, as broken
        for path in (text, cut):
            os.utime(path, ns=(4_000_000_000_000_000_000 + k,) * 2)
        with instance_for_test() as instance:
            report = ingest([drop], home, instance)
        assert sorted(report.quarantined) == [str(cut), str(text)], k
        assert sorted(p.name for p in home.quarantine.iterdir()) == [
            "cut.fits", "cut.fits.json", "notes.fits.corrupt", "notes.fits.corrupt.json"], k
        signatures = {json.loads(p.read_text())["landed_signature"] for p in home.quarantine.glob("*.json")}
        assert signatures == {str(4_000_000_000_000_000_000 + k)}, k  # the newest version's copies


def test_a_quarantined_file_is_not_taken_again_while_its_partition_mate_changes(emu, tmp_path):
    drop = tmp_path / "night"
    drop.mkdir()
    cal = sorted(emu.sky.root.rglob("*_cal.fits"))[0]
    changing = drop / cal.name
    shutil.copy(cal, changing)
    (drop / "cut.fits").write_bytes(cal.read_bytes()[:-50_000])  # cut short; its header names the same observation
    home = Home(tmp_path / "home")
    for k in range(3):
        os.utime(changing, ns=(3_000_000_000_000_000_000 + k,) * 2)  # a new version of the mate each time
        with instance_for_test() as instance:
            report = ingest([drop], home, instance)
        assert report.catalogued == [str(changing)], k
        assert list(report.quarantined) == [str(drop / "cut.fits")], k
    assert report.runs == 1  # the partition ran again for its mate
    assert sorted(p.name for p in home.quarantine.iterdir()) == ["cut.fits.corrupt", "cut.fits.corrupt.json"]
    [manifest] = home.tables.read_partitions("fits_files", report.partitions).values()
    listed = dict(zip(manifest.column("dataURI").to_pylist(), manifest.column("status").to_pylist(), strict=True))
    assert listed == {str(changing): "copied", str(drop / "cut.fits"): "quarantined"}  # listed, never read


def test_a_file_rewritten_under_another_obs_id_is_catalogued_once_under_the_new_one(emu, tmp_path):
    drop = tmp_path / "night"
    drop.mkdir()
    source = sorted(emu.sky.root.rglob("*_cal.fits"))[0]
    landed = drop / source.name
    shutil.copy(source, landed)
    home = Home(tmp_path / "home")
    with instance_for_test() as instance:
        first = ingest([drop], home, instance)
    [old_key] = first.partitions
    with fits.open(landed) as hdul:  # the owner corrects the header's observation id
        hdul[0].header["OBS_ID"] = "jw09999-o001_t001"
        hdul.writeto(tmp_path / "corrected.fits", checksum=True)
    os.replace(tmp_path / "corrected.fits", landed)
    with instance_for_test() as instance:
        second = ingest([drop], home, instance)
    assert second.partitions == ["landed-jw09999-o001_t001"] and second.catalogued == [str(landed)]
    assert second.left == {old_key: [str(landed)]} and second.runs == 1  # one run of both partitions
    assert len(home.tables.read("image_metadata", old_key)) == 0
    assert not (home.files / "local" / old_key).exists()  # its folder went with its last file
    assert (home.files / "local" / "landed-jw09999-o001_t001" / source.name).is_file()
    con = connect(home)
    assert con.sql("SELECT DISTINCT obs_id FROM images").fetchall() == [("landed-jw09999-o001_t001",)]
    assert con.sql("SELECT count(*) FROM files").fetchall() == [(1,)]
    with instance_for_test() as instance:  # and it stays so
        third = ingest([drop], home, instance)
    assert (third.runs, third.unchanged, third.left) == (0, 1, {})


def test_a_file_without_an_observation_id_changed_in_place_keeps_its_partition(emu, tmp_path):
    drop = tmp_path / "night"
    drop.mkdir()
    landed = drop / "mycal.fits"
    with fits.open(sorted(emu.sky.root.rglob("*_cal.fits"))[0]) as hdul:
        for keyword in ("OBS_ID", "ROOTNAME", "ASN_ID", "OBSID"):
            hdul[0].header.remove(keyword, ignore_missing=True)
        hdul.writeto(landed, checksum=True)
        hdul["SCI"].data[:8, :8] += 1.0  # the observer's edit
        hdul.writeto(tmp_path / "edited.fits", checksum=True)
    home = Home(tmp_path / "home")
    with instance_for_test() as instance:
        first = ingest([drop], home, instance)
    os.replace(tmp_path / "edited.fits", landed)
    os.utime(landed, ns=(4_000_000_000_000_000_000,) * 2)
    with instance_for_test() as instance:
        second = ingest([drop], home, instance)
    assert second.partitions == first.partitions and second.runs == 1 and second.catalogued == [str(landed)]
    assert connect(home).sql("SELECT obs_id, file_name FROM images").fetchall() == [(first.partitions[0], "mycal.fits")]


def test_a_file_written_to_after_it_was_taken_is_reported_failed_with_why(emu, tmp_path):
    drop = tmp_path / "night"
    drop.mkdir()
    growing = drop / "growing: still.fits"
    growing.write_bytes(sorted(emu.sky.root.rglob("*_cal.fits"))[0].read_bytes())

    class GrowsBeforeItsCopy(InProcess):
        def run_all(self, submissions, **kwargs):
            with growing.open("ab") as out:  # the observer's program is still writing
                out.write(b"\0" * 2880)
            return super().run_all(submissions, **kwargs)

    with instance_for_test() as instance:
        report = ingest([drop], Home(tmp_path / "home"), GrowsBeforeItsCopy(instance))
    assert not report.catalogued and list(report.failed) == [str(growing)]
    assert report.failed[str(growing)].startswith("the file changed while it was being copied ("), report.failed


def test_a_file_quarantined_on_a_later_ingest_takes_its_quality_rows_with_it(emu, tmp_path):
    drop = tmp_path / "night"
    drop.mkdir()
    landed = drop / "good.fits"
    landed.write_bytes(sorted(emu.sky.root.rglob("*_cal.fits"))[0].read_bytes())
    home = Home(tmp_path / "home")
    config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
    with instance_for_test() as instance:
        [key] = ingest([drop], home, instance).partitions
        assert measure_quality(InProcess(instance), home, [key], config) == (1, 0)
        assert len(home.tables.read("image_quality", key)) == 1
        landed.write_bytes(landed.read_bytes()[:300_000])  # cut short in place: quarantined this time
        os.utime(landed, ns=(5_000_000_000_000_000_000,) * 2)
        assert list(ingest([drop], home, instance).quarantined) == [str(landed)]
        assert measure_quality(InProcess(instance), home, [key], config) == (1, 0)
    assert len(home.tables.read("image_quality", key)) == 0  # no score left for an image no longer catalogued


def test_a_file_touched_is_copied_again_but_not_measured_again(emu, tmp_path, capsys):
    drop = tmp_path / "night"
    drop.mkdir()
    cal = sorted(emu.sky.root.rglob("*_cal.fits"))[:2]
    landed = drop / "a.fits"
    landed.write_bytes(cal[0].read_bytes())
    home = Home(tmp_path / "home")
    config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
    with instance_for_test() as instance:
        [key] = ingest([drop], home, instance).partitions
        assert measure_quality(InProcess(instance), home, [key, key], config) == (1, 0)  # named twice, run once
        said = capsys.readouterr().out
        assert "flags: 1 " in said and said.count("  lowest: ") <= 1, said
        assert measure_quality(InProcess(instance), home, [key], config) == (0, 0)  # up to date
        os.utime(landed, ns=(4_000_000_000_000_000_000,) * 2)  # the same bytes, a new mtime
        assert ingest([drop], home, instance).runs == 1  # copied and catalogued again
        capsys.readouterr()
        # run, as the daemon would run it, but the image keeps its measurement
        assert measure_quality(InProcess(instance), home, [key], config) == (1, 0)
        assert latest_metadata(instance, "image_quality", key)["measured"] == 0
        assert "  0 images measured, 1 kept as measured before from the same bytes\n" in capsys.readouterr().out
        with fits.open(cal[1]) as hdul:  # new bytes under the same observation id
            hdul[0].header["OBS_ID"] = fits.getheader(cal[0])["OBS_ID"]
            hdul.writeto(landed, overwrite=True, checksum=True)
        assert ingest([drop], home, instance).runs == 1
        assert measure_quality(InProcess(instance), home, [key], config) == (1, 0)
        assert latest_metadata(instance, "image_quality", key)["measured"] == 1


def test_a_name_holding_a_colon_is_reported_quarantined_with_its_reason(emu, tmp_path):
    drop = tmp_path / "night"
    drop.mkdir()
    good = sorted(emu.sky.root.rglob("*_cal.fits"))[0]
    (drop / "night: 3.fits").write_bytes(good.read_bytes()[:5000])  # cut short: its copy is refused
    with instance_for_test() as instance:
        report = ingest([drop], Home(tmp_path / "home"), instance)
    assert list(report.quarantined) == [str(drop / "night: 3.fits")] and not report.failed
    assert "not a valid FITS file: " in report.quarantined[str(drop / "night: 3.fits")]  # cut short, not mis-summed


def test_a_file_stored_under_another_name_is_reported_so(emu, tmp_path):
    drop = tmp_path / "night"
    drop.mkdir()
    good = sorted(emu.sky.root.rglob("*_cal.fits"))[:2]
    shutil.copy(good[0], drop / good[0].name)
    odd = drop / f"first\nline_{good[1].name}"  # a newline cannot be in a stored name
    shutil.copy(good[1], odd)
    with instance_for_test() as instance:
        report = ingest([drop], Home(tmp_path / "home"), instance)
    assert sorted(report.catalogued) == sorted([str(drop / good[0].name), str(odd)])
    assert report.renamed == {str(odd): f"first_line_{good[1].name}"}  # its name, as near as can be


def test_the_catalog_is_out_of_date_once_files_are_catalogued_after_it():
    """A spectrum added beside an observation's unchanged images is measured by nothing, yet the
    catalog is published again for it; so it is when the watchlist's answers change (an observation
    no longer found, exclusive data no longer granted), which no file follows."""
    with instance_for_test() as instance:
        instance.report_runless_asset_event(AssetMaterialization("image_metadata", partition="obs-a"))
        assert updated_since(instance, "image_metadata", "catalog") and catalog_outdated(instance)  # never published
        instance.report_runless_asset_event(AssetMaterialization("catalog"))
        assert not updated_since(instance, "image_metadata", "catalog") and not catalog_outdated(instance)
        instance.report_runless_asset_event(AssetMaterialization("image_metadata", partition="obs-a"))
        assert updated_since(instance, "image_metadata", "catalog") and catalog_outdated(instance)
        for upstream in ("mast_observations", "mast_products"):
            instance.report_runless_asset_event(AssetMaterialization("catalog"))
            assert not catalog_outdated(instance)
            instance.report_runless_asset_event(AssetMaterialization(upstream))
            assert catalog_outdated(instance), upstream


def test_the_sky_is_published_again_after_a_publish_that_failed_since_a_tiling():
    """A tiling the publish after it failed to send (this command's or the daemon's) is published by
    the next command, though no target needs tiling then."""
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("targets", ["NGC-1", "NGC-2"])
        assert publish_outdated(instance)  # never published
        instance.report_runless_asset_event(AssetMaterialization("sky_tiles", partition="NGC-1"))
        instance.report_runless_asset_event(AssetMaterialization("publish"))
        assert not publish_outdated(instance)
        instance.report_runless_asset_event(AssetMaterialization("sky_tiles", partition="NGC-2"))  # its publish failed
        assert publish_outdated(instance)
        instance.report_runless_asset_event(AssetMaterialization("publish"))
        assert not publish_outdated(instance)


def test_a_linked_folder_is_said_but_fails_no_ingest_and_a_folder_that_cannot_be_listed_does(tmp_path):
    (tmp_path / "night").mkdir()
    (tmp_path / "latest").symlink_to(tmp_path / "night")  # drop/latest -> the night's own folder
    linked = IngestReport(catalogued=["a.fits"], refused={str(tmp_path / "latest"): LINKED_FOLDER})
    assert linked.ok and linked.files == 1 and linked.folders_refused == [str(tmp_path / "latest")]
    unread = IngestReport(catalogued=["a.fits"], refused={str(tmp_path / "night"): "folder cannot be listed: denied"})
    assert not unread.ok and unread.files == 1


def test_partition_batches_cover_only_the_keys_asked_for():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("observations", ["a", "b", "c", "x", "d", "e"])
        assert partition_batches(instance, ["e", "a", "b", "c", "d"], 2) == [("a", "b"), ("c", "c"), ("d", "e")]


def test_landed_files_get_safe_distinct_names(tmp_path):
    from skyassets.landing.ingest import landed_requests, record_landed
    from skyassets.landing.zone import LandedFile

    home = Home(tmp_path)
    files = [
        LandedFile("local", "/data/a/x.fits", 10, "1", "a/x.fits"),
        LandedFile("local", "/data/b/x.fits", 10, "1", "b/x.fits"),  # same name, other folder
        LandedFile("local", "/data/c/bell\x07.fits.fz", 10, "1", "c/bell.fits.fz"),
    ]
    record_landed(home, "night-1", files)
    requests = landed_requests(home, ["night-1", "from-mast"])
    assert list(requests) == ["night-1"]  # a partition without a landing record is MAST's
    names = [request.filename for _, request in requests["night-1"]]
    assert names[0] == "x.fits" and names[1].endswith("-x.fits") and names[2] == "bell_.fits.fz"
    assert all(request.dest_dir == home.files / "local" / "night-1" for _, request in requests["night-1"])


def test_a_run_of_more_partitions_than_the_limit_keeps_to_its_totals(emu, tmp_path, monkeypatch):
    """Each per-partition metadata call costs Dagster a read of every partition key, so past
    ``PER_PARTITION_LIMIT`` partitions a run's materialisations carry its totals only."""
    import skyassets.defs.metadata as metadata

    monkeypatch.setattr(metadata, "PER_PARTITION_LIMIT", 2)
    drop = tmp_path / "night"
    drop.mkdir()
    for path in sorted(emu.sky.root.rglob("*_cal.fits"))[:3]:
        shutil.copy(path, drop / path.name)
    with instance_for_test() as instance:
        report = ingest([drop], Home(tmp_path / "home"), instance, batch=3)
        assert (report.files, len(report.partitions), report.runs, report.failed_runs) == (3, 3, 1, [])
        keys = instance.get_dynamic_partitions("observations")
        totals = [latest_metadata(instance, "image_metadata", k) for k in keys]
        assert all(m["partitions_in_run"] == 3 and m["rows_in_run"] == 3 for m in totals)
        assert not any("preview" in m or "dagster/row_count" in m for m in totals)


def test_past_the_limit_a_partition_with_a_bad_file_still_names_it_on_its_own_page(emu, tmp_path, monkeypatch):
    import skyassets.defs.metadata as metadata

    monkeypatch.setattr(metadata, "PER_PARTITION_LIMIT", 2)
    drop = tmp_path / "night"
    drop.mkdir()
    cal = sorted(emu.sky.root.rglob("*_cal.fits"))[:3]
    for path in cal[:2]:
        shutil.copy(path, drop / path.name)
    (drop / cal[2].name).write_bytes(cal[2].read_bytes()[:5000])  # cut short: its copy is refused
    with instance_for_test() as instance:
        report = ingest([drop], Home(tmp_path / "home"), instance, batch=3)
        assert (len(report.partitions), report.runs, list(report.quarantined)) == (3, 1, [str(drop / cal[2].name)])
        shown = {k: latest_metadata(instance, "fits_files", k) for k in instance.get_dynamic_partitions("observations")}
    bad = [k for k, m in shown.items() if "not_copied" in m]
    assert len(bad) == 1 and cal[2].name in shown[bad[0]]["not_copied"]
    assert shown[bad[0]]["files_not_copied"] == 1 and shown[bad[0]]["files_downloaded"] == 0
    assert shown[bad[0]]["dagster/row_count"] == 1 and shown[bad[0]]["bytes_total"] == 0  # listed as quarantined
    assert all("dagster/row_count" not in m and m["partitions_in_run"] == 3 for k, m in shown.items() if k not in bad)


def test_bzip2_fits_is_copied_verified_catalogued_and_measured(emu, tmp_path):
    """SDSS serves its frames as ``.fits.bz2``: taken like ``.fits.gz``, its FITS sums checked on
    the inflated stream, catalogued and measured; one whose inflated bytes no longer match its
    DATASUM is quarantined with that reason."""
    import bz2

    drop = tmp_path / "night"
    drop.mkdir()
    cal = sorted(emu.sky.root.rglob("*_cal.fits"))[:2]
    (drop / f"{cal[0].name}.bz2").write_bytes(bz2.compress(cal[0].read_bytes()))
    damaged = bytearray(cal[1].read_bytes())
    damaged[-100] ^= 0x01  # the last HDU's data: its DATASUM no longer holds
    (drop / f"{cal[1].name}.bz2").write_bytes(bz2.compress(bytes(damaged)))
    home = Home(tmp_path / "home")
    config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
    with instance_for_test() as instance:
        report = ingest([drop], home, instance)
        assert report.catalogued == [str(drop / f"{cal[0].name}.bz2")] and not report.failed
        assert list(report.quarantined) == [str(drop / f"{cal[1].name}.bz2")]
        assert "FITS checksum mismatch" in report.quarantined[str(drop / f"{cal[1].name}.bz2")]
        key = next(k for k in report.partitions if home.tables.exists("image_metadata", k)
                   and len(home.tables.read("image_metadata", k)))
        assert measure_quality(InProcess(instance), home, [key], config) == (1, 0)
    con = connect(home)
    name, path = con.execute("SELECT file_name, abs_path FROM images").fetchone()
    assert name == f"{cal[0].name}.bz2" and Path(path).read_bytes() == (drop / name).read_bytes()
    assert con.execute("SELECT count(*) FROM quality WHERE usable").fetchone()[0] == 1


def test_every_table_that_names_a_file_gives_where_its_copy_is(emu, tmp_path):
    """``landing`` and ``sources`` name their file's copy in the home, as ``files``, ``images`` and
    ``quality`` do: each row's ``abs_path`` is the file catalogued under its observation and name."""
    drop = tmp_path / "night"
    drop.mkdir()
    for path in sorted(emu.sky.root.rglob("*_cal.fits"))[:2]:
        shutil.copy(path, drop / f"odd name {path.name}")
    home = Home(tmp_path / "home")
    config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
    with instance_for_test() as instance:
        report = ingest([drop], home, instance)
        assert len(report.catalogued) == 2
        assert measure_quality(InProcess(instance), home, list(report.partitions), config) == (2, 0)
    con = connect(home)
    stored = dict(con.execute("SELECT obs_id || '/' || file_name, abs_path FROM files").fetchall())
    assert len(stored) == 2 and all(Path(p).is_file() and Path(p).is_relative_to(home.root) for p in stored.values())
    for table in ("landing", "images", "quality", "sources"):
        named = con.execute(f"SELECT DISTINCT obs_id || '/' || file_name, abs_path FROM {table}").fetchall()
        assert dict(named) == stored, table
    assert con.sql("SELECT count(*) FROM sources").fetchall()[0][0] > 2
    assert home.tables.exists("landing_index")  # the landing zone's own: no table of the catalog
    assert {r[0] for r in con.sql("SHOW TABLES").fetchall()} == {
        "observations", "products", "landing", "files", "images", "quality", "sources"}


def test_progress_to_a_log_file_or_a_pipe_is_a_line_per_step(capsys):
    from skyassets.cli.runs import text_progress

    text_progress(1, 2, 3, 4)
    text_progress(2, 2, 4, 4)
    lines = capsys.readouterr().err.split("\n")  # pytest's stderr is not a terminal
    assert lines == ["[" + "#" * 15 + "." * 15 + "] 1/2 runs, 3/4 files", "[" + "#" * 30 + "] 2/2 runs, 4/4 files", ""]


def test_a_target_s_line_says_how_many_of_its_products_were_made_and_how_many_kept():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("targets", ["NGC-628", "M16"])
        for target, mosaics, composites in (("NGC-628", (5, 4), (3, 0)), ("M16", (2, 0), (1, 0))):
            for asset, (count, kept) in (("mosaics", mosaics), ("composites", composites)):
                instance.report_runless_asset_event(AssetMaterialization(
                    asset, partition=target, metadata={"dagster/row_count": count, "made": count - kept, "kept": kept}))
        assert made_or_kept(instance, "mosaics", "NGC-628") == "5 mosaics (1 made, 4 as made before)"
        assert made_or_kept(instance, "composites", "NGC-628") == "3 composites"  # all made anew
        assert made_or_kept(instance, "mosaics", "M16") == "2 mosaics"
        assert made_or_kept(instance, "composites", "nowhere") == "0 composites"
