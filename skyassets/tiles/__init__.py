"""Sky tiles: HiPS pyramids of each target's mosaics and composites, and their publication."""

from skyassets.tiles.hips import ArrayRows, FitsRows, Pyramid, build_hips, read_properties
from skyassets.tiles.products import TargetTiles, footprints, target_manifest, tile_target, tiles_root
from skyassets.tiles.publish import FolderDestination, PublishError, PublishReport, S3Destination, publish_collection

__all__ = [
    "ArrayRows", "FitsRows", "FolderDestination", "PublishError", "PublishReport", "Pyramid", "S3Destination",
    "TargetTiles", "build_hips", "footprints", "publish_collection", "read_properties", "target_manifest",
    "tile_target", "tiles_root",
]
