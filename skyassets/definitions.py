"""The skyassets code location: the pipeline's table of contents."""

from dagster import Definitions

from .assets.catalog import catalog, image_metadata
from .assets.mast import fits_files, mast_observations, mast_products
from .assets.products import composites, mosaics
from .assets.quality import image_quality
from .assets.targets import target_groups, target_images
from .jobs import catalog_job, landing_job, observation_job, products_job, quality_job, watchlist_job
from .resources import default_resources
from .schedules import daily_watchlist_schedule
from .sensors import automation_sensor, landing_s3_sensor, landing_zone_sensor, new_observations_sensor

defs = Definitions(
    assets=[
        mast_observations, mast_products, fits_files, image_metadata, image_quality,
        target_groups, target_images, mosaics, composites, catalog,
    ],
    jobs=[watchlist_job, observation_job, landing_job, quality_job, products_job, catalog_job],
    schedules=[daily_watchlist_schedule],
    sensors=[new_observations_sensor, landing_zone_sensor, landing_s3_sensor, automation_sensor],
    resources=default_resources(),
)
