"""Jobs of the landing zone: copy and catalogue landed files."""

from dagster import AssetSelection, define_asset_job, in_process_executor

from skyassets.defs.archive.assets import fits_files
from skyassets.defs.catalog.assets import image_metadata

landing_job = define_asset_job(
    "landing_job",
    selection=AssetSelection.assets(fits_files, image_metadata),
    executor_def=in_process_executor,
    description="Copy files from the landing zone into the files store and catalogue them.",
)
