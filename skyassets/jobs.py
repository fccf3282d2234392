"""Jobs: re-query the watchlist; fetch one observation."""

from dagster import AssetSelection, define_asset_job, in_process_executor

from .assets.mast import fits_files, mast_observations, mast_products

watchlist_job = define_asset_job(
    "watchlist_job",
    selection=AssetSelection.assets(mast_observations),
    description="Query MAST for every watchlist entry.",
)

# One process per run: the steps are I/O bound and each is small, so process start-up would dominate.
observation_job = define_asset_job(
    "observation_job",
    selection=AssetSelection.assets(mast_products, fits_files),
    executor_def=in_process_executor,
    description="List, download and verify the products of one observation.",
)
