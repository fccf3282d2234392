"""Jobs of the archive: re-query the watchlist; fetch and catalogue one observation."""

from dagster import AssetSelection, define_asset_job, in_process_executor

from skyassets.defs.archive.assets import fits_files, mast_observations, mast_products
from skyassets.defs.catalog.assets import image_metadata

watchlist_job = define_asset_job(
    "watchlist_job",
    selection=AssetSelection.assets(mast_observations),
    description="Query MAST for every watchlist entry.",
)

# One process per run: the steps are I/O bound and each is small, so process start-up would dominate.
observation_job = define_asset_job(
    "observation_job",
    selection=AssetSelection.assets(mast_products, fits_files, image_metadata),
    executor_def=in_process_executor,
    description="List, download, verify and catalogue the products of one observation.",
)
