"""The target_groups asset on a real Dagster instance, and the catalog's targets table."""

import shutil

import pandas as pd
from dagster import AssetKey, instance_for_test

from skyassets.catalog.db import connect
from skyassets.cli.runs import QUIET, ingest
from skyassets.definitions import defs
from skyassets.imaging.targets import inputs_digest
from skyassets.lake.home import Home


def test_catalogued_observations_are_grouped_into_targets(emu, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    for path in sorted(emu.sky.root.rglob("*_cal.fits")) + sorted(emu.sky.root.rglob("*_flc.fits")):
        shutil.copy(path, drop / path.name)
    home = Home(tmp_path / "home")
    with instance_for_test() as instance:
        ingest([drop], home, instance)
        # a target from an earlier grouping whose observations now belong to another
        instance.add_dynamic_partitions("targets", ["OLD-FIELD"])
        for table in ("target_images", "mosaics", "composites", "recipes"):
            home.tables.write(table, pd.DataFrame({"target": ["OLD-FIELD"]}), partition="OLD-FIELD")
        (home.target_dir("OLD-FIELD") / "mosaic_old.fits").parent.mkdir(parents=True)
        (home.target_dir("OLD-FIELD") / "mosaic_old.fits").write_bytes(b"old")
        run_config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
        assert defs.resolve_job_def("catalog_job").execute_in_process(instance=instance, run_config=run_config).success
        targets = set(instance.get_dynamic_partitions("targets"))
        recorded = {
            record.partition_key: record.event_log_entry.tags.get("dagster/data_version")
            for record in instance.fetch_materializations(AssetKey("target_images"), limit=10).records
        }
    grouped = home.tables.read("target_groups")
    observations = set(grouped["obs_id"])
    assert grouped["target"].nunique() == 3 and len(grouped) == len(observations)
    # nothing is measured yet, so no target has images to make products from: no partitions, and the
    # old one is gone with its tables and products
    assert set(grouped["inputs_digest"]) == {inputs_digest(pd.DataFrame(columns=["sha256", "hdu_index"]))}
    assert targets == set() and recorded == {}
    assert not any(home.tables.exists(t, "OLD-FIELD") for t in ("target_images", "mosaics", "composites", "recipes"))
    assert not home.target_dir("OLD-FIELD").exists()
    con = connect(home.root, published=True)
    assert con.execute("SELECT count(DISTINCT target) FROM targets").fetchone()[0] == 3
    # every catalogued observation with a footprint has its target
    assert observations == set(con.execute("SELECT DISTINCT obs_id FROM images").df()["obs_id"])
