"""Quality assets on a real Dagster instance: metrics, sources, previews, checks, the catalogue join."""

import shutil
from pathlib import Path

import numpy as np
from astropy.io import fits
from dagster import (
    AssetCheckSeverity,
    AssetKey,
    AssetRecordsFilter,
    Definitions,
    asset,
    define_asset_job,
    in_process_executor,
    instance_for_test,
)

from skyassets.catalog.db import connect, search
from skyassets.cli.main import main
from skyassets.cli.runs import QUIET, ingest, latest_metadata
from skyassets.defs.cluster import DaskResource
from skyassets.defs.partitions import observation_backfill_policy
from skyassets.defs.quality.assets import image_quality
from skyassets.defs.resources import HomeResource
from skyassets.defs.tags import partition_range
from skyassets.lake.home import Home


@asset(deps=["image_quality"], partitions_def=image_quality.partitions_def, backfill_policy=observation_backfill_policy)
def consumer() -> None:
    """Stands for the composites and mosaics that must never read an unusable image."""


def _defs(home: Path) -> Definitions:
    return Definitions(
        assets=[image_quality, consumer],
        jobs=[define_asset_job("measure", selection=[image_quality, consumer], executor_def=in_process_executor)],
        resources={"home": HomeResource(root=str(home)), "dask": DaskResource()},
    )


def _run_all(defs: Definitions, instance, keys: list[str]):
    tags = partition_range(keys[0], keys[-1])
    job = defs.resolve_job_def("measure")
    return job.execute_in_process(instance=instance, tags=tags, run_config=QUIET, raise_on_error=False)


def test_quality_of_catalogued_images(emu, tmp_path, monkeypatch, capsys):
    drop = tmp_path / "drop"
    drop.mkdir()
    for path in sorted(emu.sky.root.rglob("*_cal.fits"))[:3] + sorted(emu.sky.root.rglob("*_flc.fits"))[:1]:
        shutil.copy(path, drop / path.name)
    home = Home(tmp_path / "home")
    with instance_for_test() as instance:
        ingest([drop], home, instance)
        keys = sorted(instance.get_dynamic_partitions("observations"))
        result = _run_all(_defs(home.root), instance, keys)
        assert result.success
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert checks["usable_images"].passed and checks["metrics_within_physical_bounds"].passed
        assert "consumer" in {e.step_key for e in result.get_step_success_events()}
        report = latest_metadata(instance, "image_quality", keys[0])["report"]
        assert "data:image/png;base64," in report and "score" in report
        # each partition shows its own figures; the run's are named as the run's
        for key in keys:
            quality, sources = latest_metadata(instance, "image_quality", key), latest_metadata(
                instance, "source_catalogs", key)
            measured = home.tables.read("image_quality", key)
            assert quality["images"] == len(measured) and sum(quality["flags"].values()) == len(measured)
            assert quality["images_in_run"] == sum(len(home.tables.read("image_quality", k)) for k in keys)
            assert sources["sources"] == len(home.tables.read("source_catalogs", key)) and "sources_in_run" in sources

    rows = home.tables.read("image_quality", keys[0])
    assert len(rows) >= 1 and rows["score"].between(0, 100).all() and set(rows["flag"]) <= {"good", "usable", "reject"}
    assert (rows["fwhm_arcsec"] > 0).all()
    assert len(home.tables.read("source_catalogs", keys[0])) > 0
    assert list((home.previews / keys[0]).glob("*.png"))
    con = connect(home.root)
    images = search(con, min_quality=0).df()
    assert len(images) == sum(len(home.tables.read("image_quality", k)) for k in keys)
    assert images["s_resolution"].notna().all()  # ObsCore resolution from the measured FWHM
    assert con.execute("SELECT count(*) FROM sources").fetchone()[0] > 0
    # quality names its image's file as the other tables do, with its full location
    located = con.execute("SELECT q.abs_path, i.abs_path FROM quality AS q JOIN images AS i "
                          "USING (sha256, hdu_index, obs_id, file_name)").fetchall()
    assert len(located) == len(images) and all(q == i and Path(q).is_file() for q, i in located)

    monkeypatch.setenv("SKYASSETS_HOME", str(home.root))
    assert main(["quality", keys[0]]) == 0
    report = capsys.readouterr().out
    assert all(name in report for name in rows["file_name"]) and "FWHM" in report and "5σ depth" in report
    assert main(["quality", "not-measured"]) == 1
    assert main(["quality", "../etc"]) == 2


def test_an_unusable_image_is_reported_with_its_reason_and_never_stops_its_batch(emu, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    good = sorted(emu.sky.root.rglob("*_cal.fits"))[0]
    shutil.copy(good, drop / good.name)
    blank = drop / "jw99999001001_02101_00001_nrca1_cal.fits"
    with fits.open(good) as hdul:
        hdul[0].header["OBS_ID"] = "V99999001001P0000000002101"
        hdul["SCI"].data = np.full_like(hdul["SCI"].data, np.nan)
        hdul.writeto(blank, checksum=True)  # new checksums: a valid file whose pixels are all NaN
    home = Home(tmp_path / "home")
    with instance_for_test() as instance:
        ingest([drop], home, instance)
        keys = sorted(instance.get_dynamic_partitions("observations"))
        assert len(keys) == 2
        result = _run_all(_defs(home.root), instance, keys)
        assert result.success  # one bad image never fails the run of its batch
        check = next(c for c in result.get_asset_check_evaluations() if c.check_name == "usable_images")
        assert not check.passed and check.severity == AssetCheckSeverity.WARN
        assert blank.name in check.description and "finite" in check.description
        assert check.description.count(blank.name) == 1  # the image named once, with its HDU
        assert f"{blank.name}[1]: " in check.description
        low = next(c for c in result.get_asset_check_evaluations() if c.check_name == "low_quality_images")
        assert low.passed and low.metadata["rejected_as_unusable"].value == 1  # named once, by usable_images
        assert "consumer" in {e.step_key for e in result.get_step_success_events()}
        for key in keys:  # downstream went on for both partitions, the good one and the bad one
            filtered = AssetRecordsFilter(AssetKey("consumer"), asset_partitions=[key])
            assert instance.fetch_materializations(filtered, limit=1).records
        assert _run_all(_defs(home.root), instance, keys).success  # again: the unusable image is measured again
        measured = {k: latest_metadata(instance, "image_quality", k)["measured"] for k in keys}
        assert measured == {"landed-V99999001001P0000000002101": 1, next(k for k in keys if "V9999" not in k): 0}
    rows = home.tables.read("image_quality", "landed-V99999001001P0000000002101")  # landed keys: their own
    assert rows["usable"].tolist() == [False] and rows["score"].tolist() == [0]


def test_a_check_names_its_first_images_and_counts_the_rest():
    from skyassets.defs.quality.assets import CHECK_LISTS, listed

    few = [f"f{i}.fits: low signal" for i in range(3)]
    assert listed(few) == "; ".join(few)
    many = [f"f{i}.fits: low signal" for i in range(4000)]  # a landing run of thousands of images
    said = listed(many)
    assert said.startswith("; ".join(many[:CHECK_LISTS]) + "; ... and 3990 more")
    assert len(said) < 400


def test_an_image_measured_before_from_the_same_bytes_is_kept_and_copies_are_measured_once(emu, tmp_path, monkeypatch):
    import skyassets.imaging.quality as quality

    drop = tmp_path / "drop"
    drop.mkdir()
    first = sorted(emu.sky.root.rglob("*_cal.fits"))[0]
    shutil.copy(first, drop / first.name)
    home = Home(tmp_path / "home")
    with instance_for_test() as instance:
        defs = _defs(home.root)

        def measure() -> tuple[dict, "object"]:
            keys = sorted(instance.get_dynamic_partitions("observations"))
            assert len(keys) == 1 and _run_all(defs, instance, keys).success
            return latest_metadata(instance, "image_quality", keys[0]), home.tables.read("image_quality", keys[0])

        ingest([drop], home, instance)
        said, before = measure()
        assert said["measured"] == 1 and said["images"] == 1
        # the same bytes under another name, and an image of the same observation with other pixels
        shutil.copy(first, drop / f"copy_{first.name}")
        other = drop / f"other_{first.name}"
        with fits.open(first) as hdul:
            hdul["SCI"].data = hdul["SCI"].data * 1.5
            hdul.writeto(other, checksum=True)
        ingest([drop], home, instance)
        said, after = measure()
        assert said["images"] == 3 and said["measured"] == 1  # only the new pixels
        by_name = after.set_index("file_name")
        kept, copy = by_name.loc[first.name], by_name.loc[f"copy_{first.name}"]
        assert kept["seconds"] == before["seconds"].iloc[0]  # not measured again
        measured = [c for c in quality.QUALITY_SCHEMA.names if c not in quality.SCORE_COLUMNS
                    and c not in ("file_name", "path")]
        assert copy[measured].equals(kept[measured])  # the copy carries the measurement under its own name
        assert copy["path"].endswith(copy.name) and kept["path"].endswith(first.name)
        sources = home.tables.read("source_catalogs", after["obs_id"].iloc[0])
        counts = sources.groupby("file_name").size()
        assert counts[first.name] == counts[copy.name] > 0 and counts[other.name] > 0
        report = latest_metadata(instance, "image_quality", after["obs_id"].iloc[0])["report"]
        assert report.count("data:image/png;base64,") == 3  # the kept images' thumbnails too

        said, again = measure()  # nothing changed: nothing measured
        assert said["measured"] == 0 and again["seconds"].tolist() == after["seconds"].tolist()
        monkeypatch.setattr(quality, "QUALITY_RECIPE", quality.QUALITY_RECIPE + 1)
        said, _ = measure()  # the measuring code changed: every distinct image measured again, once
        assert said["measured"] == 2
