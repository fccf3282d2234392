"""Landing zone to catalogue rows, on a real Dagster instance."""

import json
import shutil
from pathlib import Path

import boto3
import pandas as pd
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, Definitions, SkipReason, build_sensor_context, instance_for_test

from skyassets.catalog.db import connect, search
from skyassets.defs.archive.assets import fits_files
from skyassets.defs.catalog.assets import catalog, image_metadata
from skyassets.defs.catalog.jobs import catalog_job
from skyassets.defs.catalog.search import search_index
from skyassets.defs.landing.jobs import landing_job
from skyassets.defs.landing.sensors import landing_s3_sensor, landing_zone_sensor
from skyassets.defs.partitions import requested_partitions
from skyassets.defs.resources import ArchiveResource, DownloaderResource, HomeResource, LandingResource
from skyassets.defs.targets.assets import target_groups


def _sky_files(emu, pattern: str, count: int) -> list[Path]:
    return sorted(emu.sky.root.rglob(pattern))[:count]


def test_landing_zone_to_catalogue(emu, tmp_path):
    home, landing = tmp_path / "home", tmp_path / "drop"
    landing.mkdir()
    resources = {
        "home": HomeResource(root=str(home)),
        "landing": LandingResource(folder=str(landing)),
        "downloader": DownloaderResource(),
        "archive": ArchiveResource(url=emu.url, s3_endpoint=emu.s3_endpoint),
    }
    defs = Definitions(
        assets=[fits_files, image_metadata, target_groups, catalog, search_index], jobs=[landing_job, catalog_job],
        resources=resources,
    )
    cal = _sky_files(emu, "*_cal.fits", 2)
    for path in cal:
        shutil.copy(path, landing / path.name)
    (landing / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 100)
    growing = landing / "growing.fits"
    growing.write_bytes(b"\0" * 10)

    with instance_for_test() as instance:
        def tick(cursor):
            context = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
            result = landing_zone_sensor(context)
            for request in getattr(result, "dynamic_partitions_requests", []):
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            return result

        first = tick(None)
        assert not first.run_requests  # nothing is taken the first time it is seen
        growing.write_bytes(b"\0" * 20)  # still being written
        second = tick(first.cursor)
        every = instance.get_dynamic_partitions("observations")
        keys = sorted(k for r in second.run_requests for k in requested_partitions(r, every))
        assert len(keys) == 3 and not any("growing" in k for k in keys)
        third = tick(second.cursor)  # the grown file has now settled; the others are not offered again
        assert [r.partition_key.startswith("landed-growing") for r in third.run_requests] == [True]

        job = defs.resolve_job_def("landing_job")
        for key in keys:
            assert job.execute_in_process(instance=instance, partition_key=key).success

        rows = pd.concat([pd.read_parquet(home / "lake" / "image_metadata" / f"{k}.parquet") for k in keys])
        assert sorted(rows["file_name"]) == sorted(p.name for p in cal)
        assert rows["s_ra"].notna().all() and set(rows["hdu_name"]) == {"SCI"}
        schema = pq.read_schema(home / "lake" / "image_metadata" / f"{keys[0]}.parquet")
        assert schema.field("em_min").metadata[b"unit"] == b"m"

        quarantined = list((home / "quarantine").glob("broken*.json"))
        assert len(quarantined) == 1 and "broken.fits" in json.loads(quarantined[0].read_text())["file"]
        assert defs.resolve_job_def("catalog_job").execute_in_process(instance=instance).success
        published = connect(home, published=True)
        assert published.execute("SELECT count(*) FROM images").fetchone()[0] == len(rows)
        event = instance.get_latest_materialization_event(AssetKey("catalog"))
        assert event.asset_materialization.metadata["rows"].value["images"] == len(rows)

    # The notebook view finds the same images by position.
    ra, dec = rows.iloc[0]["s_ra"], rows.iloc[0]["s_dec"]
    near = search(connect(home), cone=(ra, dec, 0.01)).df()
    assert rows.iloc[0]["sha256"] in set(near["sha256"])


@pytest.mark.slow
@pytest.mark.parametrize("home_stored", [False, True], ids=["local-home", "home-on-the-same-store"])
def test_landing_zone_on_s3(emu, tmp_path, monkeypatch, home_stored):
    for name, value in {"AWS_ACCESS_KEY_ID": "observatory", "AWS_SECRET_ACCESS_KEY": "secret",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    uploader = boto3.client("s3", endpoint_url=emu.s3_endpoint)
    uploader.create_bucket(Bucket="observatory")
    cal = _sky_files(emu, "*_cal.fits", 2)
    for path in cal:
        uploader.upload_file(str(path), "observatory", f"nights/2026-11-20/{path.name}")
    uploader.put_object(Bucket="observatory", Key="nights/readme.txt", Body=b"not FITS, not taken")
    home = tmp_path / "home"
    if home_stored:  # files and lake in a bucket of the landing zone's own store
        uploader.create_bucket(Bucket="skyassets-home")
    stored = {"storage": "s3://skyassets-home/h", "storage_endpoint": emu.s3_endpoint} if home_stored else {}
    resources = {
        "home": HomeResource(root=str(home), **stored),
        "landing": LandingResource(folder=str(tmp_path / "drop"), s3_url="s3://observatory/nights/",
                                   s3_endpoint=emu.s3_endpoint),
        "downloader": DownloaderResource(),
        "archive": ArchiveResource(url=emu.url, s3_endpoint=emu.s3_endpoint),
    }
    defs = Definitions(assets=[fits_files, image_metadata], jobs=[landing_job], resources=resources)
    with instance_for_test() as instance:
        cursor, keys = None, []
        for _ in range(2):
            result = landing_s3_sensor(build_sensor_context(instance=instance, cursor=cursor, resources=resources))
            for request in getattr(result, "dynamic_partitions_requests", []):
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            every = instance.get_dynamic_partitions("observations")
            cursor = result.cursor
            keys += [k for r in result.run_requests for k in requested_partitions(r, every)]
        assert len(keys) == 2
        copied = []
        for key in keys:
            run = defs.resolve_job_def("landing_job").execute_in_process(instance=instance, partition_key=key)
            assert run.success
            made = run.asset_materializations_for_node("fits_files")
            copied += [m.metadata["files_copied_in_store"].value for m in made]
        # An object that cataloguing once quarantined is fetched again on the next run of its
        # observation (an object of a store is not skipped as a local file is), and the run goes on.
        landed = HomeResource(root=str(home), **stored).home
        record = landed.tables.read("landing", keys[0]).iloc[0]
        landed.quarantine.mkdir(parents=True, exist_ok=True)
        (landed.quarantine / "earlier.fits.json").write_text(json.dumps({
            "file": "earlier.fits", "reason": f"{record['location']}: a card astropy refused",
            "landed_location": record["location"], "landed_signature": record["signature"]}))
        again = defs.resolve_job_def("landing_job").execute_in_process(instance=instance, partition_key=keys[0])
        assert again.success
    lake = HomeResource(root=str(home), **stored).home.tables
    manifests = pd.concat(lake.read("fits_files", k) for k in keys)
    assert set(manifests["source"]) == {"s3"} and set(manifests["fits_checksum"]) == {"ok"}
    rows = pd.concat(lake.read("image_metadata", k) for k in keys)
    assert sorted(rows["file_name"]) == sorted(p.name for p in cal)
    # With the home on the landing zone's store, the store copies each file object to object.
    assert copied == ([1, 1] if home_stored else [0, 0])
    for row in manifests.itertuples() if home_stored else ():
        head = uploader.head_object(Bucket="skyassets-home", Key=f"h/{row.path}")
        assert head["ContentLength"] == row.size and head["Metadata"]["sha256"] == row.sha256


def test_s3_landing_sensor_skips_when_not_configured(tmp_path):
    resources = {"home": HomeResource(root=str(tmp_path)), "landing": LandingResource()}
    with instance_for_test() as instance:
        result = landing_s3_sensor(build_sensor_context(instance=instance, resources=resources))
    assert isinstance(result, SkipReason) and "s3_url" in result.skip_message
