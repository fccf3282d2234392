"""Jobs of the sky tiles: a target's pyramids, and the published collection."""

from dagster import AssetSelection, define_asset_job, in_process_executor

from skyassets.defs.tiles.assets import publish, sky_tiles

tiles_job = define_asset_job(
    "tiles_job",
    selection=AssetSelection.assets(sky_tiles),
    executor_def=in_process_executor,
    description="A target's HiPS pyramids from its mosaics and composites.",
)

publish_job = define_asset_job(
    "publish_job",
    selection=AssetSelection.assets(publish),
    description="Publish every target's pyramids, then the hipslist and WTML indexes.",
)
