"""The target_groups asset on a real Dagster instance, and the catalog's targets table."""

import shutil

from dagster import instance_for_test

from skyassets.catalog import connect
from skyassets.definitions import defs
from skyassets.home import Home
from skyassets.lake import read_parquet
from skyassets.runs import QUIET, ingest


def test_catalogued_observations_are_grouped_into_targets(emu, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    for path in sorted(emu.sky.root.rglob("*_cal.fits")) + sorted(emu.sky.root.rglob("*_flc.fits")):
        shutil.copy(path, drop / path.name)
    home = Home(tmp_path / "home")
    with instance_for_test() as instance:
        ingest([drop], home, instance)
        run_config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
        assert defs.resolve_job_def("catalog_job").execute_in_process(instance=instance, run_config=run_config).success
    grouped = read_parquet(home.table("target_groups"))
    observations = set(grouped["obs_id"])
    assert grouped["target"].nunique() == 3 and len(grouped) == len(observations)
    con = connect(home.root, published=True)
    assert con.execute("SELECT count(DISTINCT target) FROM targets").fetchone()[0] == 3
    # every catalogued observation with a footprint has its target
    assert observations == set(con.execute("SELECT DISTINCT obs_id FROM images").df()["obs_id"])
