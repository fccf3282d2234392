"""Jobs of the catalog: group targets, publish catalog.duckdb and bring the text search index up to date."""

from dagster import AssetSelection, define_asset_job

from skyassets.defs.catalog.assets import catalog
from skyassets.defs.catalog.search import search_index
from skyassets.defs.targets.assets import target_groups

catalog_job = define_asset_job(
    "catalog_job",
    selection=AssetSelection.assets(target_groups, catalog, search_index),
    description="Group the observations into targets, publish catalog.duckdb from the Parquet lake and add "
    "the new images to the text search index.",
)
