"""Per-target products: a mosaic per filter from the usable images, colour composites of the mosaics."""

import colorsys
import io
import re
from pathlib import Path

import pandas as pd
from PIL import Image
from astropy.io import fits
from astropy.wcs import WCS
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from ..composite import channel_colours, compose, reproject_channels, spectral_meta, suggest_recipes, write_composite
from ..home import Home
from ..lake import read_parquet, write_parquet
from ..mosaic import MosaicInput, build_mosaic
from ..partitions import targets_partitions
from ..preview import markdown_image
from ..resources import HomeResource
from .metadata import preview
from .quality import image_quality
from .targets import target_groups

COMPOSITES_PER_TARGET = 3  # the best-ranked recipes made for each target


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_").lower()


def _thumbnail(png: Path, side: int = 256) -> bytes:
    """A small PNG of a written composite, for the UI."""
    with Image.open(png) as picture:
        picture.thumbnail((side, side))
        out = io.BytesIO()
        picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _usable_images(root: Home, groups: pd.DataFrame, target: str) -> pd.DataFrame:
    """The target's catalogued images (``groups``: target_groups) that image_quality found usable and did not reject."""
    frames = []
    for obs_id in groups.loc[groups["target"] == target, "obs_id"]:
        images, quality = root.table("image_metadata", obs_id), root.table("image_quality", obs_id)
        if images.exists() and quality.exists():
            rows = read_parquet(images).drop(columns=["header_json"])
            verdict = read_parquet(quality)[["sha256", "hdu_index", "usable", "flag", "score"]]
            frames.append(rows.merge(verdict, on=["sha256", "hdu_index"]))
    found = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["usable", "flag"])
    return found[found["usable"].astype(bool) & (found["flag"] != "reject")]


def _one_level(images: pd.DataFrame) -> pd.DataFrame:
    """The exposures (calibration level 2) when there are any, else the combined products: a level-3
    image (JWST i2d, HST drz) is made from the level-2 ones, so co-adding both would count them twice."""
    exposures = images[images["calib_level"] == 2]
    if len(exposures):
        return exposures
    levels = images["calib_level"].dropna()
    return images[images["calib_level"] == levels.max()] if len(levels) else images


@asset(
    group_name="products",
    deps=[target_groups, image_quality],
    partitions_def=targets_partitions,
    kinds={"fits", "png"},
    description="Per target and filter: the usable images co-added on one WCS (SCI, coverage, weight) with a preview.",
)
def mosaics(context: AssetExecutionContext, home: HomeResource) -> MaterializeResult:
    root = home.home
    groups = read_parquet(root.table("target_groups"))
    for target in context.partition_keys:
        rows, lines = [], []
        images = _usable_images(root, groups, target)
        for (instrument, band), group in images.groupby(["instrument_name", "filter"]):
            group = _one_level(group)
            inputs = [
                MosaicInput(path=root.root / p, hdu_index=int(h))
                for p, h in zip(group["path"], group["hdu_index"])
            ]
            dest = root.target_dir(target) / f"mosaic_{_slug(instrument)}_{_slug(band)}.fits"
            result = build_mosaic(inputs, dest)
            dest.with_suffix(".png").write_bytes(result.preview_png)
            centre = result.wcs.pixel_to_world((result.shape[1] - 1) / 2, (result.shape[0] - 1) / 2)
            rows.append({
                "target": target, "instrument_name": instrument, "filter": band, "path": str(dest.relative_to(root.root)),
                "n_inputs": result.n_inputs, "naxis1": result.shape[1], "naxis2": result.shape[0],
                "s_ra": centre.ra.deg, "s_dec": centre.dec.deg, "wcs_header": result.wcs.to_header_string(relax=True),
            })
            lines += [f"**{instrument} {band}**: {result.n_inputs} images, {result.shape[1]}×{result.shape[0]} px",
                      markdown_image(result.preview_png, f"{target} {band}")]
        frame = pd.DataFrame(rows)
        write_parquet(frame, root.table("mosaics", target))
        context.add_asset_metadata(
            {"dagster/row_count": len(frame), "mosaics": MetadataValue.md("\n\n".join(lines) or "no usable images")},
            partition_key=target,
        )
    return MaterializeResult()


@asset(
    group_name="products",
    deps=[mosaics],
    partitions_def=targets_partitions,
    kinds={"png", "tiff"},
    description="Colour composites of each target's mosaics from the best-ranked recipes, with AVM tags carrying the WCS.",
)
def composites(context: AssetExecutionContext, home: HomeResource) -> MaterializeResult:
    root = home.home
    for target in context.partition_keys:
        mosaic_rows = read_parquet(root.table("mosaics", target))
        recipes = suggest_recipes(mosaic_rows[["instrument_name", "filter"]]) if len(mosaic_rows) else pd.DataFrame()
        rows, lines = [], []
        for recipe in recipes.head(COMPOSITES_PER_TARGET).to_dict("records"):
            bands = recipe["filters"].split(";")
            chosen = [mosaic_rows[mosaic_rows["filter"].str.split(";").str[0] == b].iloc[0] for b in bands]
            images = []
            for row in chosen:
                with fits.open(root.root / row["path"]) as hdul:
                    images.append((hdul["SCI"].data.astype(float), WCS(hdul["SCI"].header)))
            channels, wcs, shape = reproject_channels(images)
            pivots = [float(p) for p in str(recipe["pivots_um"]).split(";")]
            colours = channel_colours(pivots)
            rgb = compose(channels, colours)
            paths = write_composite(
                rgb, wcs, root.target_dir(target) / f"composite_{_slug(recipe['recipe'])}",
                meta=spectral_meta(bands, pivots, colours, recipe["instruments"].split(";")),
            )
            rows.append({
                "target": target, "recipe": recipe["recipe"], "kind": recipe["kind"], "rank": recipe["rank"],
                "filters": recipe["filters"], "hues": ";".join(f"{360 * colorsys.rgb_to_hsv(*c)[0]:.0f}" for c in colours), "stretch": "asinh",
                "png": str(paths["png"].relative_to(root.root)), "cube": str(paths["tiff"].relative_to(root.root)),
                "naxis1": shape[1], "naxis2": shape[0], "wcs_header": wcs.to_header_string(relax=True),
            })
            lines += [f"**{recipe['recipe']}** ({recipe['filters']}): {recipe['reason']}",
                      markdown_image(_thumbnail(paths["png"]), recipe["recipe"])]
        frame = pd.DataFrame(rows)
        write_parquet(frame, root.table("composites", target))
        context.add_asset_metadata(
            {"dagster/row_count": len(frame), "composites": MetadataValue.md("\n\n".join(lines) or "no recipe"),
             "recipes": preview(recipes, ["recipe", "kind", "rank", "filters", "reason"])},
            partition_key=target,
        )
    return MaterializeResult()
