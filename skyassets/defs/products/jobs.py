"""Jobs of a target's products."""

from dagster import AssetSelection, define_asset_job, in_process_executor

from skyassets.defs.products.assets import composites, mosaics

products_job = define_asset_job(
    "products_job",
    selection=AssetSelection.assets(mosaics, composites),
    executor_def=in_process_executor,
    description="A target's mosaics and colour composites from its usable images.",
)
