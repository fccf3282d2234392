"""Per-target products: a mosaic per filter from the usable images, colour composites of the mosaics."""

import colorsys
import io
import re
from functools import partial
from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, BackfillPolicy, MaterializeResult, MetadataValue, asset
from PIL import Image

from skyassets.defs.automation import data_changed, follows
from skyassets.defs.cluster import DaskResource
from skyassets.defs.metadata import column_schema, preview
from skyassets.defs.partitions import targets_partitions
from skyassets.defs.resources import CompositesResource, HomeResource, MosaicsResource
from skyassets.defs.targets.assets import target_images
from skyassets.imaging.preview import markdown_grid, markdown_image
from skyassets.lake.home import Home
from skyassets.lake.tables import table


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_").lower()


def _thumbnail(png: Path, side: int = 256) -> bytes:
    """A small PNG of a written composite, for the UI."""
    with Image.open(png) as picture:
        picture.thumbnail((side, side))
        out = io.BytesIO()
        picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


# Targets changed together (a backfill, a batch of new observations) share runs of ten.
products_backfill_policy = BackfillPolicy.multi_run(max_partitions_per_run=10)

INPUT_PREVIEW = ["filter", "obs_id", "file_name", "hdu_index", "score", "flag"]



@asset(
    group_name="products",
    deps=[target_images],
    partitions_def=targets_partitions,
    automation_condition=data_changed(),
    backfill_policy=products_backfill_policy,
    kinds={"fits", "png"},
    metadata=column_schema(table("mosaics").schema),
    description="Per target and filter: the usable images co-added on one WCS (SCI, coverage, weight) with a preview. "
    "The mosaics resource sets the grid per target, downscaling, background matching and outlier rejection.",
)
def mosaics(
    context: AssetExecutionContext, home: HomeResource, mosaics: MosaicsResource, dask: DaskResource
) -> MaterializeResult:
    # imported here: mosaicking brings in scipy, astropy's WCS and reproject, slow to import
    from skyassets.imaging.blocks import build_mosaic_blocks
    from skyassets.imaging.mosaic import MosaicInput, build_mosaic, provenance
    from skyassets.imaging.targets import without_combined_duplicates

    root, settings = home.home, mosaics.validated()
    lake = root.tables
    for target in context.partition_keys:
        images = lake.read("target_images", target, missing_ok=True)
        rows, lines, used, not_made, kept = [], [], [], [], 0
        wcs, shape = settings.grid(target) or (None, None)
        chosen = {"grid": wcs.to_header_string(relax=True) if wcs is not None else None, "shape": shape,
                  "downscale": settings.downscale, "match_background": settings.match_background,
                  "reject_sigma": settings.reject_sigma, "max_pixels": settings.max_pixels}
        made_before = {(r["instrument_name"], r["filter"]): r
                       for r in lake.read("mosaics", target, missing_ok=True).to_dict("records")}
        # every band's mosaic in place together once all are made (and stored), or none of them; the
        # old rows go first, so that a stop before the new are written leaves the bands to be made again
        folder = root.target_dir(target).relative_to(root.root)
        with root.replacing(folder, first=partial(lake.delete, "mosaics", target)) as staging:
            for (instrument, band), group in images.groupby(["instrument_name", "filter"]):
                group = without_combined_duplicates(group)
                name = f"mosaic_{_slug(instrument)}_{_slug(band)}.fits"
                dest = staging / name
                digest = provenance(zip(group["path"], group["hdu_index"], group["sha256"], strict=True), chosen) \
                    if group["sha256"].notna().all() else None
                before = made_before.get((instrument, band))
                if digest is not None and before is not None and before["path"] == str(folder / name) \
                        and _made_with(root, before["path"], digest):  # the same inputs and settings
                    rows.append(before)
                    used.append(group)
                    kept += 1
                    lines.append(f"**{instrument} {band}**: {before['n_inputs']} images, as made before")
                    lines += _mosaic_preview(root, before["path"], f"{target} {band}")
                    continue
                # fetched into the working copy (with the home on a store) only for a band made anew
                inputs = [
                    MosaicInput(path=root.local(p), hdu_index=int(h))
                    for p, h in zip(group["path"], group["hdu_index"], strict=True)
                ]
                try:
                    with dask.executor() as pool:  # on the cluster block by block, else here in one piece
                        build = build_mosaic if pool is None else partial(build_mosaic_blocks, executor=pool)
                        result = build(
                            inputs, dest, wcs=wcs, shape=shape, downscale=settings.downscale,
                            match_background=settings.match_background, reject_sigma=settings.reject_sigma,
                            max_pixels=settings.max_pixels, made_from=digest,
                        )
                except ValueError as exc:  # inputs this mosaic cannot take: this band alone goes without
                    not_made.append(f"{instrument} {band}: {exc}")
                    context.log.error(f"{target}: no {instrument} {band} mosaic: {exc}")
                    lines.append(f"**{instrument} {band}**: not made: {exc}")
                    continue
                dest.with_suffix(".png").write_bytes(result.preview_png)
                centre = result.wcs.pixel_to_world((result.shape[1] - 1) / 2, (result.shape[0] - 1) / 2)
                rows.append({
                    "target": target, "instrument_name": instrument, "filter": band,
                    "path": str(folder / name), "n_inputs": result.n_inputs, "n_rejected": result.n_rejected,
                    "naxis1": result.shape[1], "naxis2": result.shape[0],
                    "s_ra": centre.ra.deg, "s_dec": centre.dec.deg, "inputs": ";".join(group["file_name"]),
                    "wcs_header": result.wcs.to_header_string(relax=True),
                })
                used.append(group)
                lines += [f"**{instrument} {band}**: {result.n_inputs} images, {result.shape[1]}×{result.shape[0]} px",
                          markdown_image(result.preview_png, f"{target} {band}")]
        lake.write("mosaics", rows, partition=target)
        root.trim()
        inputs_used = pd.concat(used, ignore_index=True) if used else images.iloc[:0]
        context.log.info(f"{target}: {len(rows) - kept} mosaics made, {kept} kept as made before")
        context.add_asset_metadata(
            {"dagster/row_count": len(rows), "made": len(rows) - kept, "kept": kept,
             "mosaics": MetadataValue.md("\n\n".join(lines) or "no usable images"),
             "inputs": preview(inputs_used, INPUT_PREVIEW, rows=100),
             **({"not_made": not_made} if not_made else {})},
            partition_key=target,
        )
    return MaterializeResult()


def _mosaic_preview(root: Home, path: str, caption: str) -> list[str]:
    """The preview written beside a mosaic, as a line of markdown (none when it is gone)."""
    try:
        return [markdown_image(root.local(Path(path).with_suffix(".png")).read_bytes(), caption)]
    except OSError:
        return []


def _made_with(root: Home, path: str, digest: str) -> bool:
    """Whether the mosaic stored at ``path`` was made from what ``digest`` names (False when it is gone)."""
    from skyassets.imaging.mosaic import made_of

    try:
        return made_of(root.local(path)) == digest
    except OSError:
        return False


RECIPE_PREVIEW = ["recipe", "kind", "rank", "filters", "made", "note"]


@asset(
    group_name="products",
    deps=[mosaics],
    partitions_def=targets_partitions,
    automation_condition=follows(),  # with their mosaics
    backfill_policy=products_backfill_policy,
    kinds={"png", "tiff"},
    metadata=column_schema(table("composites").schema),
    description="Colour composites of each target's mosaics from the best-ranked recipes (the composites resource "
    "sets how many, the method, the stretch and the user's own recipes), with AVM tags carrying the WCS.",
)
def composites(context: AssetExecutionContext, home: HomeResource, composites: CompositesResource) -> MaterializeResult:
    # imported here: the composites bring in reproject, matplotlib and astropy, slow to import
    from skyassets.imaging.composite import apply_overrides, pivot_um, suggest_recipes

    root, settings = home.home, composites.validated()
    lake = root.tables
    for target in context.partition_keys:
        mosaic_rows = lake.read("mosaics", target, missing_ok=True)
        band_of = {
            str(f).split(";")[0].upper(): row
            for f, row in zip(mosaic_rows["filter"], mosaic_rows.to_dict("records"), strict=True)
        }
        suggested = suggest_recipes(mosaic_rows[["instrument_name", "filter"]])
        recipes = apply_overrides(suggested, settings.overrides(target))
        recipes["made"], recipes["note"] = False, ""
        rows, lines, kept = [], [], 0
        grid = _mosaic_cells(root, mosaic_rows)
        made_before = {r["recipe"]: r for r in lake.read("composites", target, missing_ok=True).to_dict("records")}
        # the recipes' PNGs and cubes in place together once all are made (and stored), or none of them;
        # a recipe whose mosaics and settings are those its composite was made from keeps its files
        folder = root.target_dir(target).relative_to(root.root)
        with root.replacing(folder, first=partial(lake.delete, "composites", target)) as staging:
            for i, recipe in recipes.iterrows():
                bands = recipe["filters"].split(";")
                missing = [b for b in bands if b.upper() not in band_of]
                if missing:
                    recipes.loc[i, "note"] = f"no mosaic in {', '.join(missing)}"
                    continue
                if len(rows) == settings.per_target:
                    recipes.loc[i, "note"] = f"not among the first {settings.per_target} (composites.per_target)"
                    continue
                chosen = [band_of[b.upper()] for b in bands]
                recipes.loc[i, "made"] = True
                stem = f"composite_{_slug(recipe['recipe'])}"
                pivots = _pivots(recipe)
                stretch = settings.stretch if settings.method == "screen" else "lupton-asinh"
                digest = _composite_provenance(root, chosen, {
                    "filters": bands, "instruments": [row["instrument_name"] for row in chosen],
                    "pivots": pivots, "method": settings.method, "stretch": stretch})
                before = made_before.get(recipe["recipe"])
                if _composite_made_with(root, before, folder / stem, digest):  # the same mosaics and settings
                    rows.append({**before, "kind": recipe["kind"], "rank": int(recipe["rank"])})
                    kept += 1
                    thumbnail = _thumbnail(root.local(before["png"]))
                    lines += [f"**{recipe['recipe']}** ({recipe['filters']}): {recipe['reason']}, as made before",
                              markdown_image(thumbnail, recipe["recipe"])]
                    grid.append((f"{recipe['recipe']} ({recipe['filters']})", thumbnail))
                    continue
                paths, colours = _make_composite(root, staging / stem, recipe, chosen, pivots, settings, digest)
                rows.append({
                    "target": target, "recipe": recipe["recipe"], "kind": recipe["kind"], "rank": int(recipe["rank"]),
                    "filters": recipe["filters"],
                    "hues": ";".join(f"{360 * colorsys.rgb_to_hsv(*c)[0]:.0f}" for c in colours),
                    "method": settings.method, "stretch": stretch,
                    "png": str(folder / paths["png"].name), "cube": str(folder / paths["tiff"].name),
                    "naxis1": paths["shape"][1], "naxis2": paths["shape"][0],
                    "wcs_header": paths["wcs"].to_header_string(relax=True),
                })
                thumbnail = _thumbnail(paths["png"])
                lines += [f"**{recipe['recipe']}** ({recipe['filters']}): {recipe['reason']}",
                          markdown_image(thumbnail, recipe["recipe"])]
                grid.append((f"{recipe['recipe']} ({recipe['filters']})", thumbnail))
        lake.write("composites", rows, partition=target)
        lake.write("recipes", recipes.assign(target=target), partition=target)
        # a band no bandpass table knows (one's own camera) has no wavelength to give it a colour
        unknown = sorted({f"{f} ({i})" for i, f in zip(mosaic_rows["instrument_name"], mosaic_rows["filter"],
                                                        strict=True) if pivot_um(str(i), str(f)) is None})
        why = (f"no recipe: no known wavelength for {', '.join(unknown)}, so no colour order "
               "(the bandpass tables know MAST's instruments)" if unknown else "no recipe")
        if unknown and not rows:
            context.log.warning(f"{target}: {why}")
        context.log.info(f"{target}: {len(rows) - kept} composites made, {kept} kept as made before")
        context.add_asset_metadata(
            {"dagster/row_count": len(rows), "made": len(rows) - kept, "kept": kept,
             "composites": MetadataValue.md("\n\n".join(lines) or why),
             "preview_grid": MetadataValue.md(markdown_grid(grid) or "no mosaic"),
             "recipes": preview(recipes, RECIPE_PREVIEW, rows=30)},
            partition_key=target,
        )
    return MaterializeResult()


def _mosaic_cells(root: Home, mosaic_rows: pd.DataFrame) -> list[tuple[str, bytes]]:
    """(caption, thumbnail) of each of a target's mosaics, from the preview PNG written beside it."""
    cells = []
    for row in mosaic_rows.sort_values("filter").itertuples(index=False):
        try:
            png = root.local(Path(row.path).with_suffix(".png"))
            cells.append((f"{row.filter} mosaic", _thumbnail(png, side=192)))
        except OSError:  # a mosaic written before previews were kept beside it: no cell
            continue
    return cells


def _pivots(recipe: pd.Series) -> list[float]:
    """The pivot wavelengths of a recipe's filters, which set their hues; with one unknown, their
    rank in the recipe (listed blue to red) instead."""
    pivots = [float(p) if p else float("nan") for p in str(recipe["pivots_um"]).split(";")]
    return pivots if all(p == p for p in pivots) else [float(i) for i in range(len(recipe["filters"].split(";")))]


def _composite_provenance(root: Home, chosen: list[dict], settings: dict) -> str | None:
    """The PROVHASH of a composite of the mosaics ``chosen`` with ``settings``, from each mosaic's
    own (its header's); None when one has none, so that composite is made every time, as its mosaic is."""
    from skyassets.imaging.composite import provenance
    from skyassets.imaging.mosaic import made_of

    made = []
    for row in chosen:
        try:
            digest = made_of(root.local(row["path"]))
        except OSError:  # gone, or not fetched from the store: making the composite will say why
            return None
        if digest is None:
            return None
        made.append((row["path"], digest))
    return provenance(made, settings)


def _composite_made_with(root: Home, row: dict | None, stem: Path, digest: str | None) -> bool:
    """Whether the composite a ``composites`` row describes is the one to be written at ``stem`` and
    was made from what ``digest`` names: its PNG carries it and its cube is there (False without a
    row or a digest, and when either file is gone)."""
    from skyassets.imaging.composite import made_of

    if row is None or digest is None or (row["png"], row["cube"]) != (f"{stem}.png", f"{stem}.tif"):
        return False
    try:
        return made_of(root.local(row["png"])) == digest and root.exists(row["cube"])
    except OSError:
        return False


def _make_composite(root: Home, stem: Path, recipe: pd.Series, chosen: list[dict], pivots: list[float],
                    settings: CompositesResource, made_from: str | None):
    """One recipe's composite from its mosaics: channels on one WCS, hues by pivot wavelength, written
    as ``stem``.png and 16-bit .tif with AVM tags, the PNG with ``made_from`` as its PROVHASH.
    Returns the written paths (with the grid) and the colours."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from skyassets.imaging.composite import channel_colours, compose, reproject_channels, spectral_meta, write_composite

    images = []
    for row in chosen:
        with fits.open(root.local(row["path"])) as hdul:
            images.append((hdul["SCI"].data.astype(float), WCS(hdul["SCI"].header)))
    channels, wcs, shape = reproject_channels(images)
    colours = channel_colours(pivots)
    rgb = compose(channels, colours, method=settings.method, stretch=settings.stretch)
    instruments = [row["instrument_name"] for row in chosen]
    paths = write_composite(rgb, wcs, stem, meta=spectral_meta(recipe["filters"].split(";"), pivots, colours,
                                                               instruments), made_from=made_from)
    return {**paths, "wcs": wcs, "shape": shape}, colours
