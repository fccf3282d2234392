"""Jobs of image quality."""

from dagster import AssetSelection, define_asset_job, in_process_executor

from skyassets.defs.quality.assets import image_quality

quality_job = define_asset_job(
    "quality_job",
    selection=AssetSelection.assets(image_quality),
    executor_def=in_process_executor,
    description="Measure every image of the observations: metrics, score, sources, previews and checks.",
)
