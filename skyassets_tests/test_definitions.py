import subprocess
import sys

import pytest
from dagster import AssetKey

from skyassets.definitions import defs
from skyassets.defs.partitions import add_observations_request
from skyassets.lake.names import InvalidNameError


def test_dagster_definitions_validate():
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "skyassets.definitions"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_loading_the_definitions_leaves_the_science_libraries_for_the_steps_that_use_them():
    # Every run process, the code server and the command line load the definitions first; the
    # archive client, astropy and the imaging libraries cost seconds and are loaded by the steps.
    heavy = ["astroquery", "astropy", "photutils", "reproject", "scipy", "matplotlib", "distributed", "duckdb",
             "requests", "shapely", "mocpy", "astropy_healpix"]
    probe = f"import sys, skyassets.definitions; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_graph_partitions_and_pools():
    graph = defs.resolve_asset_graph()
    per_observation = [AssetKey("mast_products"), AssetKey("fits_files")]
    for key in per_observation:
        node = graph.get(key)
        assert node.partitions_def.name == "observations"
        assert node.backfill_policy.max_partitions_per_run == 25
        assert node.pools == {"mast_api"}
    assert graph.get(AssetKey("mast_observations")).pools == {"mast_api"}
    assert graph.get(AssetKey("fits_files")).parent_keys == {AssetKey("mast_products")}
    assert defs.resolve_schedule_def("daily_watchlist").cron_schedule == "0 6 * * *"
    assert defs.resolve_sensor_def("new_observations_sensor").job_name == "observation_job"


def test_partition_keys_are_validated_before_reaching_dagster():
    assert list(add_observations_request(["jw01-o1_t1"]).partition_keys) == ["jw01-o1_t1"]
    with pytest.raises(InvalidNameError):
        add_observations_request(["good", "bad/../key"])
