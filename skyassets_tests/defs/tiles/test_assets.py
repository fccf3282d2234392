"""Sky tiles and the published collection on a real Dagster instance: tiles follow the products by
declarative automation, an unchanged target is not re-tiled, publish writes the collection and its indexes."""

import shutil

import pytest
from dagster import AssetKey, evaluate_automation_conditions, instance_for_test

from skyassets.cli.runs import QUIET, ingest
from skyassets.definitions import defs
from skyassets.defs.tags import partition_range
from skyassets.lake.home import Home
from skyassets.tiles.hips import read_properties
from skyassets.tiles.products import target_manifest, tiles_root

pytestmark = pytest.mark.slow

SKY_TILES = AssetKey("sky_tiles")


def _catalogue(files, drop, home, instance, run_config) -> None:
    drop.mkdir()
    for path in files:
        shutil.copy(path, drop / path.name)
    before = set(instance.get_dynamic_partitions("observations"))
    ingest([drop], home, instance)
    new = sorted(set(instance.get_dynamic_partitions("observations")) - before)
    quality = defs.resolve_job_def("quality_job")
    assert quality.execute_in_process(instance=instance, tags=partition_range(new[0], new[-1]),
                                      run_config=run_config).success
    assert defs.resolve_job_def("catalog_job").execute_in_process(instance=instance, run_config=run_config).success


def test_tiles_follow_the_products_and_publish_writes_the_collection(emu, tmp_path):
    sky = sorted(emu.sky.root.rglob("jw02733*_cal.fits"))
    home = Home(tmp_path / "home")
    resources = {"home": {"config": {"root": str(home.root)}},
                 "publish": {"config": {"url": str(tmp_path / "site")}}}
    run_config = {**QUIET, "resources": resources}
    with instance_for_test() as instance:
        _catalogue(sky, tmp_path / "drop", home, instance, {**QUIET, "resources": {"home": resources["home"]}})
        assert defs.resolve_job_def("products_job").execute_in_process(
            instance=instance, partition_key="NGC-3132", run_config={**QUIET, "resources": {"home": resources["home"]}}
        ).success
        first = evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.get_requested_partitions(SKY_TILES) == {"NGC-3132"}
        tiles = defs.resolve_job_def("tiles_job")
        assert tiles.execute_in_process(instance=instance, partition_key="NGC-3132", run_config=run_config).success
        manifest = target_manifest(home, "NGC-3132")
        kinds = sorted(p["kind"] for p in manifest["pyramids"])
        assert kinds.count("mosaic") == 3 and kinds.count("composite") >= 1
        settled = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert settled.get_num_requested(SKY_TILES) == 0
        assert settled.get_num_requested(AssetKey("publish")) == 1  # the collection follows new tiles

        # asked again (by hand), an unchanged target keeps its pyramids
        served = (tiles_root(home) / "NGC-3132").resolve()
        assert tiles.execute_in_process(instance=instance, partition_key="NGC-3132", run_config=run_config).success
        assert (tiles_root(home) / "NGC-3132").resolve() == served
        event = instance.get_latest_materialization_event(SKY_TILES)
        assert event.asset_materialization.metadata["retiled"].value is False

        assert defs.resolve_job_def("publish_job").execute_in_process(instance=instance, run_config=run_config).success
    site = tmp_path / "site"
    hipslist = (site / "hipslist").read_text()
    assert hipslist.count("hips_service_url") == len(manifest["pyramids"])
    for pyramid in manifest["pyramids"]:
        assert read_properties(site / "NGC-3132" / pyramid["name"])["hips_tile_format"] == pyramid["tile_format"]
    assert (site / "index.wtml").exists() and (site / "NGC-3132" / "footprints.json").stat().st_size > 100
