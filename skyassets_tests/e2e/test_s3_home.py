"""The observation pipeline on the MAST emulator with the home on an S3-protocol store (moto's
server on loopback): files, lake, previews and the published catalog land in the bucket with the
local layout, verified, and every step reads what the one before stored, not a local leftover."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest
from astropy.io import fits
from dagster import AssetSelection, Definitions, build_sensor_context, define_asset_job, instance_for_test

from skyassets.catalog.db import connect
from skyassets.defs.archive.assets import fits_files, mast_observations, mast_products
from skyassets.defs.archive.jobs import observation_job, watchlist_job
from skyassets.defs.archive.sensors import new_observations_sensor
from skyassets.defs.catalog.assets import catalog, image_metadata
from skyassets.defs.cluster import DaskResource
from skyassets.defs.partitions import requested_partitions
from skyassets.defs.products.assets import composites, mosaics
from skyassets.defs.products.jobs import products_job
from skyassets.defs.quality.assets import image_quality
from skyassets.defs.resources import (
    ArchiveResource,
    CompositesResource,
    DownloaderResource,
    HomeResource,
    LandingResource,
    MosaicsResource,
    WatchlistResource,
)
from skyassets.defs.targets.assets import target_groups, target_images
from skyassets.lake.home import Home
from skyassets_tests.objectstore import BUCKET, CREDENTIALS, object_store

PREFIX = "survey/home"


@pytest.fixture
def store(monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    with object_store() as server:
        yield server


def _objects(store) -> dict[str, dict]:
    pages = store.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX + "/")
    return {o["Key"][len(PREFIX) + 1:]: o for page in pages for o in page.get("Contents", [])}


@pytest.mark.slow
def test_observation_pipeline_with_the_home_on_s3(emu, store, tmp_path):
    local = tmp_path / "home"
    # No working copy kept: each step must fetch what it reads from the store.
    home = HomeResource(root=str(local), storage=f"s3://{BUCKET}/{PREFIX}", storage_endpoint=store.endpoint,
                        cache_gb=0)
    defs = Definitions(
        assets=[mast_observations, mast_products, fits_files, image_metadata, image_quality, target_groups,
                target_images, mosaics, composites, catalog],
        jobs=[watchlist_job, observation_job, products_job,
              define_asset_job("measure", AssetSelection.assets(image_quality)),
              define_asset_job("group", AssetSelection.assets(target_groups)),
              define_asset_job("publish", AssetSelection.assets(catalog))],
        sensors=[new_observations_sensor],
        resources={
            "home": home,
            "watchlist": WatchlistResource(),
            "archive": ArchiveResource(url=emu.url, s3_endpoint=emu.s3_endpoint),
            "downloader": DownloaderResource(read_timeout=5, retries=3, backoff_base=0.01, backoff_max=0.05),
            "landing": LandingResource(),
            "dask": DaskResource(),
            "mosaics": MosaicsResource(),
            "composites": CompositesResource(),
        },
    )
    with instance_for_test() as instance:
        assert defs.resolve_job_def("watchlist_job").execute_in_process(instance=instance).success
        context = build_sensor_context(instance=instance, definitions=defs, resources=defs.resources)
        result = new_observations_sensor(context)
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        every = instance.get_dynamic_partitions("observations")
        keys = sorted(k for r in result.run_requests for k in requested_partitions(r, every))
        obs_id = next(k for k in keys if k.startswith("jw"))
        for job in ("observation_job", "measure"):
            assert defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=obs_id).success
        assert defs.resolve_job_def("group").execute_in_process(instance=instance).success
        target = instance.get_dynamic_partitions("targets")[0]
        assert defs.resolve_job_def("products_job").execute_in_process(instance=instance, partition_key=target).success
        assert defs.resolve_job_def("publish").execute_in_process(instance=instance).success

    stored = _objects(store)
    root = home.home
    manifest = root.tables.read("fits_files", obs_id)
    assert len(manifest) > 0
    for row in manifest.itertuples():
        assert row.path.startswith(f"files/JWST/{obs_id}/")
        head = store.client().head_object(Bucket=BUCKET, Key=f"{PREFIX}/{row.path}")
        assert head["ContentLength"] == row.size and head["Metadata"]["sha256"] == row.sha256
        body = store.client().get_object(Bucket=BUCKET, Key=f"{PREFIX}/{row.path}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == row.sha256
    for name in ("mast_observations.parquet", f"mast_products/{obs_id}.parquet", f"fits_files/{obs_id}.parquet",
                 f"image_metadata/{obs_id}.parquet", f"image_quality/{obs_id}.parquet"):
        assert f"lake/{name}" in stored, name
    assert "catalog.duckdb" in stored
    made = root.tables.read("mosaics", target)
    assert len(made) > 0
    for path in made["path"]:
        assert path in stored and path.removesuffix(".fits") + ".png" in stored
        with fits.open(Home(tmp_path / "reader", storage=root.storage, endpoint=root.endpoint).local(path)) as hdul:
            assert [h.name for h in hdul[1:]] == ["SCI", "CON", "WHT"] and hdul["CON"].data.max() >= 1
    assert any(k.startswith(f"previews/{obs_id}/") and k.endswith(".png") for k in stored)
    # the working copy was trimmed to its budget (0): the files exist only in the store
    fits_left = [p for p in (local / "files").rglob("*.fits") if not p.name.startswith(".")]
    assert not fits_left
    # A re-run takes the trimmed files back from the store, checked, and asks MAST for none of them.
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("observations", [obs_id])
        run = defs.resolve_job_def("observation_job").execute_in_process(instance=instance, partition_key=obs_id)
        assert run.success
        again = next(m for m in run.asset_materializations_for_node("fits_files")).metadata
    assert again["files_restored_from_store"].value == len(manifest)
    assert again["files_downloaded"].value == 0 and again["files_skipped"].value == len(manifest)
    assert (root.tables.read("fits_files", obs_id)["sha256"] == manifest["sha256"]).all()
    # One object lost from the store: that file alone comes from MAST again, the others from the store.
    lost = manifest["path"].iloc[0]
    store.client().delete_object(Bucket=BUCKET, Key=f"{PREFIX}/{lost}")
    root.trim()
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("observations", [obs_id])
        run = defs.resolve_job_def("observation_job").execute_in_process(instance=instance, partition_key=obs_id)
        assert run.success
        again = next(m for m in run.asset_materializations_for_node("fits_files")).metadata
    assert again["files_restored_from_store"].value == len(manifest) - 1 and again["files_downloaded"].value == 1
    assert lost in _objects(store)  # stored again

    images = root.tables.read("image_metadata", obs_id)
    assert set(images["file_name"]) == set(manifest["filename"]) and images["s_ra"].notna().all()
    quality = root.tables.read("image_quality", obs_id)
    assert len(quality) == len(images) and quality["score"].between(0, 100).all()

    # A notebook on another machine: only the store and an empty folder.
    elsewhere = Home(tmp_path / "notebook", storage=root.storage, endpoint=root.endpoint)
    con = connect(elsewhere)
    assert con.execute("SELECT count(*) FROM images WHERE obs_id = ?", [obs_id]).fetchone()[0] == len(images)
    assert con.execute("SELECT count(*) FROM quality").fetchone()[0] == len(quality)
    copy = elsewhere.local(manifest["path"].iloc[0], manifest["sha256"].iloc[0])
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == manifest["sha256"].iloc[0]
    assert pd.notna(quality["fwhm_arcsec"]).any()


@pytest.mark.slow
def test_ingest_into_a_home_on_s3_catalogues_into_the_store(emu, store, tmp_path):
    """`skyassets ingest` with SKYASSETS_STORAGE: its runs are pointed at the whole home, store
    included, not at its local folder alone."""
    from skyassets.cli.runs import ingest

    drop = tmp_path / "night"
    drop.mkdir()
    cal = sorted(emu.sky.root.rglob("*_cal.fits"))[:2]
    for path in cal:
        (drop / path.name).write_bytes(path.read_bytes())
    # A FITS start and junk: copied and stored as it is (no sums to check), refused by cataloguing.
    broken = drop / "broken.fits"
    broken.write_bytes(cal[0].read_bytes()[:80] + b"garbage" * 10)
    home = Home(tmp_path / "home", storage=f"s3://{BUCKET}/{PREFIX}", endpoint=store.endpoint)
    with instance_for_test() as instance:
        report = ingest([drop], home, instance)
    assert sorted(report.catalogued) == sorted(str(drop / p.name) for p in cal)
    assert list(report.quarantined) == [str(broken)]
    stored = _objects(store)
    assert all(f"lake/image_metadata/{key}.parquet" in stored for key in report.partitions)
    assert sum(k.startswith("files/local/") and k.endswith("_cal.fits") for k in stored) == 2
    # The quarantined copy is gone from the store too: no machine and no export takes it for good.
    assert not [k for k in stored if k.startswith("files/local/") and k.endswith("broken.fits")]
    files = connect(home).sql("SELECT file_name, status FROM files WHERE file_name = 'broken.fits'").fetchall()
    assert files == [("broken.fits", "quarantined")]
