"""The skyassets code location: the pipeline's table of contents."""

from dagster import Definitions, in_process_executor

from skyassets.defs.archive.assets import fits_files, mast_observations, mast_products
from skyassets.defs.archive.jobs import observation_job, watchlist_job
from skyassets.defs.archive.schedules import daily_watchlist_schedule
from skyassets.defs.archive.sensors import (
    failed_batch_sensor,
    failed_observations_sensor,
    new_observations_sensor,
)
from skyassets.defs.automation import automation_sensor
from skyassets.defs.catalog.assets import catalog, image_metadata
from skyassets.defs.catalog.jobs import catalog_job
from skyassets.defs.catalog.search import search_index
from skyassets.defs.landing.jobs import landing_job
from skyassets.defs.landing.sensors import landing_s3_sensor, landing_zone_sensor
from skyassets.defs.pools import pool_slots_sensor
from skyassets.defs.products.assets import composites, mosaics
from skyassets.defs.products.jobs import products_job
from skyassets.defs.quality.assets import image_quality
from skyassets.defs.quality.jobs import quality_job
from skyassets.defs.resources import default_resources
from skyassets.defs.targets.assets import target_groups, target_images
from skyassets.defs.tiles.assets import publish, sky_tiles
from skyassets.defs.tiles.jobs import publish_job, tiles_job

defs = Definitions(
    assets=[
        # the archive: what the watchlist finds, its products, their files
        mast_observations, mast_products, fits_files,
        # the catalog: one row per image, then the published DuckDB
        image_metadata, catalog, search_index,
        # imaging: quality per image, targets, and each target's products
        image_quality, target_groups, target_images, mosaics, composites,
        # sky tiles: a HiPS per product, and the published collection
        sky_tiles, publish,
    ],
    jobs=[watchlist_job, observation_job, landing_job, quality_job, products_job, catalog_job, tiles_job, publish_job],
    schedules=[daily_watchlist_schedule],
    sensors=[
        # the archive: new observations, a failed batch split, failed observations after each query
        new_observations_sensor, failed_batch_sensor, failed_observations_sensor,
        # landed files, then everything downstream
        landing_zone_sensor, landing_s3_sensor, automation_sensor,
        # a step Dagster left waiting beside a free pool slot is given it
        pool_slots_sensor,
    ],
    resources=default_resources(),
    # One process per run: steps run one after another (pools serialise the archive's), so a process per
    # step would only add start-up time.
    executor=in_process_executor,
)
