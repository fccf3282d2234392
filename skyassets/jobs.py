"""Jobs: re-query the watchlist; fetch and catalogue one observation; copy and catalogue landed files;
measure image quality."""

from dagster import AssetSelection, define_asset_job, in_process_executor

from .assets.catalog import catalog, image_metadata
from .assets.mast import fits_files, mast_observations, mast_products
from .assets.products import composites, mosaics
from .assets.quality import image_quality
from .assets.targets import target_groups

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

landing_job = define_asset_job(
    "landing_job",
    selection=AssetSelection.assets(fits_files, image_metadata),
    executor_def=in_process_executor,
    description="Copy files from the landing zone into the files store and catalogue them.",
)

catalog_job = define_asset_job(
    "catalog_job",
    selection=AssetSelection.assets(target_groups, catalog),
    description="Group the observations into targets and publish catalog.duckdb from the Parquet lake.",
)

quality_job = define_asset_job(
    "quality_job",
    selection=AssetSelection.assets(image_quality),
    executor_def=in_process_executor,
    description="Measure every image of the observations: metrics, score, sources, previews and checks.",
)

products_job = define_asset_job(
    "products_job",
    selection=AssetSelection.assets(mosaics, composites),
    executor_def=in_process_executor,
    description="A target's mosaics and colour composites from its usable images.",
)
