"""Mosaics and composites per target, from ingest to the catalog, on a real Dagster instance."""

import shutil

from dagster import build_sensor_context, instance_for_test
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from skyassets.catalog import connect
from skyassets.cli import main
from skyassets.composite import read_avm_wcs
from skyassets.definitions import defs
from skyassets.home import Home
from skyassets.lake import read_parquet
from skyassets.resources import HomeResource
from skyassets.runs import QUIET, ingest
from skyassets.sensors import targets_sensor


def test_a_target_gets_a_mosaic_per_filter_and_composites(emu, tmp_path, monkeypatch, capsys):
    drop = tmp_path / "drop"
    drop.mkdir()
    for path in sorted(emu.sky.root.rglob("jw02733*_cal.fits")):  # NGC 3132: three filters, two pointings
        shutil.copy(path, drop / path.name)
    home = Home(tmp_path / "home")
    run_config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
    with instance_for_test() as instance:
        ingest([drop], home, instance)
        keys = instance.get_dynamic_partitions("observations")
        tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
        assert defs.resolve_job_def("quality_job").execute_in_process(instance=instance, tags=tags, run_config=run_config).success
        assert defs.resolve_job_def("catalog_job").execute_in_process(instance=instance, run_config=run_config).success

        resources = {"home": HomeResource(root=str(home.root))}
        result = targets_sensor(build_sensor_context(instance=instance, resources=resources))
        [target] = [r.partition_key for r in result.run_requests]
        instance.add_dynamic_partitions("targets", list(result.dynamic_partitions_requests[0].partition_keys))
        again = targets_sensor(build_sensor_context(instance=instance, cursor=result.cursor, resources=resources))
        assert not again.run_requests  # nothing changed: no new run
        run = defs.resolve_job_def("products_job").execute_in_process(
            instance=instance, partition_key=target, run_config=run_config
        )
        assert run.success

    mosaics = read_parquet(home.table("mosaics", target))
    assert len(mosaics) == 3 and (mosaics["n_inputs"] >= 2).all()  # every filter has both pointings
    composites = read_parquet(home.table("composites", target))
    assert len(composites) >= 1
    first = composites.iloc[0]
    png = home.root / first["png"]
    assert png.exists() and (home.root / first["cube"]).exists()
    assert read_avm_wcs(png).celestial.has_celestial
    con = connect(home.root)
    assert con.execute("SELECT count(*) FROM mosaics").fetchone()[0] == 3
    assert con.execute("SELECT count(*) FROM composites").fetchone()[0] == len(composites)

    monkeypatch.setenv("SKYASSETS_HOME", str(home.root))
    assert main(["show", target]) == 0
    shown = capsys.readouterr().out
    assert str(png) in shown and shown.count("mosaic ") == 3
    assert main(["show", "NOWHERE"]) == 1
