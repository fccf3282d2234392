"""Jobs of the catalog: group targets and publish catalog.duckdb."""

from dagster import AssetSelection, define_asset_job

from skyassets.defs.catalog.assets import catalog
from skyassets.defs.targets.assets import target_groups

catalog_job = define_asset_job(
    "catalog_job",
    selection=AssetSelection.assets(target_groups, catalog),
    description="Group the observations into targets and publish catalog.duckdb from the Parquet lake.",
)
