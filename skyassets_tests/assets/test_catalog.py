"""Landing zone to catalogue rows, on a real Dagster instance."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from dagster import AssetKey, Definitions, SkipReason, build_sensor_context, instance_for_test

from skyassets.assets.catalog import catalog, image_metadata
from skyassets.catalog import connect, search
from skyassets.assets.mast import fits_files
from skyassets.jobs import catalog_job, landing_job
from skyassets.resources import ArchiveResource, DownloaderResource, HomeResource, LandingResource
from skyassets.sensors import landing_zone_sensor


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
        assets=[fits_files, image_metadata, catalog], jobs=[landing_job, catalog_job], resources=resources
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
        keys = sorted(r.partition_key for r in second.run_requests)
        assert len(keys) == 3 and not any("growing" in k for k in keys)
        third = tick(second.cursor)  # the grown file has now settled; the others are not offered again
        assert [r.partition_key.startswith("growing") for r in third.run_requests] == [True]

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
