"""The quality assets: measured metrics and a score per image, the detected sources, their checks."""


from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from skyassets.defs.automation import follows
from skyassets.defs.catalog.assets import image_metadata
from skyassets.defs.cluster import DaskResource
from skyassets.defs.metadata import column_schema, preview, run_figures
from skyassets.defs.partitions import observation_backfill_policy, observations_partitions
from skyassets.defs.resources import HomeResource
from skyassets.lake.home import Home
from skyassets.lake.schemas import QUALITY_SCHEMA, SOURCE_SCHEMA
from skyassets.lake.store import Lake

# The measurements (photutils, scipy, astropy) take seconds to import; they are imported where they
# are used, so that loading the definitions stays quick.
if TYPE_CHECKING:
    from skyassets.imaging.quality import Measurement

WORST_COLUMNS = ["file_name", "hdu_index", "filter", "score", "flag", "flag_reason", "fwhm_arcsec", "depth_5sigma_ab"]
WORST_DIGITS = {"score": 1, "fwhm_arcsec": 3, "depth_5sigma_ab": 2}
PREVIEWS_PER_PARTITION = 12  # thumbnails shown in one materialisation, worst first

image_quality_spec = AssetSpec(
    "image_quality",
    deps=[image_metadata],
    partitions_def=observations_partitions,
    group_name="quality",
    kinds={"parquet"},
    automation_condition=follows(),
    metadata=column_schema(QUALITY_SCHEMA),
    description="Measured background, noise, PSF, depth and bad-pixel fractions per image, a 0–100 score and a flag.",
)
source_catalogs_spec = AssetSpec(
    "source_catalogs",
    deps=[image_metadata],
    partitions_def=observations_partitions,
    group_name="quality",
    kinds={"parquet"},
    automation_condition=follows(),
    metadata=column_schema(SOURCE_SCHEMA),
    description="The sources detected in each image: pixel and sky position, flux, FWHM, sharpness, roundness, flags.",
)



CHECK_LISTS = 10  # items a check's description names; the rest are counted


def listed(items: list[str]) -> str:
    """The first ``CHECK_LISTS`` items and how many more: a description stays a line or two, however
    many images a run of thousands flags (the image_quality table has them all)."""
    more = len(items) - CHECK_LISTS
    return "; ".join(items[:CHECK_LISTS]) + (f"; ... and {more} more (the image_quality table)" if more > 0 else "")


@multi_asset(
    specs=[image_quality_spec, source_catalogs_spec],
    check_specs=[
        AssetCheckSpec(
            "usable_images",
            asset="image_quality",
            description="Warns about images no step can use (no valid WCS, no finite pixel, unreadable, "
            "over the pixel limit), each with its reason: they stay catalogued, are left out of targets "
            "and products, and never stop the other images of their batch.",
        ),
        AssetCheckSpec("low_quality_images", asset="image_quality",
                       description="Warns about usable images flagged reject (unusable ones: usable_images)."),
        AssetCheckSpec(
            "metrics_within_physical_bounds",
            asset="image_quality",
            description="Fractions in [0, 1], FWHM and noise positive, ellipticity in [0, 1), scores in [0, 100].",
        ),
    ],
    backfill_policy=observation_backfill_policy,
    can_subset=False,
)
def image_quality(
    context: AssetExecutionContext, home: HomeResource, dask: DaskResource
) -> Iterator[MaterializeResult | AssetCheckResult]:
    from skyassets.imaging.quality import measured_from, score

    root = home.home
    lake = root.tables
    keys = context.partition_keys  # Dagster reads every key of the partitions definition on each access
    rows = _catalogued_images(lake, keys).to_dict("records")
    digests = [measured_from(row, row["hdu_index"]) for row in rows]
    # an image measured before from the same bytes and settings keeps its measurement, and copies of
    # the same bytes under other names are measured once
    kept = _measured_before(lake, keys)
    first = {d: i for i, d in reversed(list(enumerate(digests))) if d is not None and d not in kept}
    todo = [i for i, d in enumerate(digests) if d is None or first.get(d) == i]
    # one task per image: on the Dask cluster when the dask resource names a scheduler, else here
    fresh = dict(zip(todo, dask.map(partial(_measure, root), [rows[i] for i in todo]), strict=True))
    done = {**kept, **{digests[i]: m for i, m in fresh.items() if digests[i] is not None}}
    measured = [fresh[i] if d is None else done[d].of(rows[i]) for i, d in enumerate(digests)]
    reused = len(rows) - len(fresh)
    if reused:
        context.log.info(f"{len(fresh)} images measured; {reused} kept as measured before from the same bytes")
    metrics = pd.DataFrame([m.metrics for m in measured], columns=_metric_columns())
    scored = score(metrics, reference_depth=_reference_depths(lake, keys))
    sources = pd.concat([m.sources for m in measured if len(m.sources)] or [pd.DataFrame(columns=SOURCE_SCHEMA.names)])
    for obs_id in keys:
        mine = scored[scored["obs_id"] == obs_id].reset_index(drop=True)
        lake.write("image_quality", mine, partition=obs_id)
        lake.write("source_catalogs", sources[sources["obs_id"] == obs_id], partition=obs_id)
        context.add_asset_metadata(
            {**_partition_report(root, mine, measured),
             "measured": sum(m.metrics["obs_id"] == obs_id for m in fresh.values())},
            asset_key="image_quality", partition_key=obs_id,
        )
        if len(keys) > 1:
            context.add_asset_metadata({"sources": int((sources["obs_id"] == obs_id).sum())},
                                       asset_key="source_catalogs", partition_key=obs_id)
    root.trim()  # with the home on a store, the working copy back within its budget
    yield MaterializeResult(
        asset_key="image_quality",
        metadata=run_figures(len(keys), {
            "images": len(scored),
            "measured": len(fresh),
            "flags": MetadataValue.json(scored["flag"].value_counts().to_dict()),
            "worst": preview(scored.sort_values("score").round(WORST_DIGITS), WORST_COLUMNS),
        }),
    )
    yield MaterializeResult(asset_key="source_catalogs", metadata=run_figures(len(keys), {"sources": len(sources)}))
    yield from _checks(scored)


def _catalogued_images(lake: Lake, obs_ids: list[str]) -> pd.DataFrame:
    """The image rows of the partitions, from their ``image_metadata`` Parquet files."""
    frames = [lake.read("image_metadata", k) for k in obs_ids if lake.exists("image_metadata", k)]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["obs_id", "path", "hdu_index"])
    return rows.drop(columns=["header_json"], errors="ignore")


def _measured_before(lake: Lake, obs_ids: list[str]) -> "dict[str, Measurement]":
    """The measurements already in the partitions' ``image_quality`` and ``source_catalogs`` tables,
    by ``measured_from``. Left out: rows measured by an earlier version of the code (they have none),
    and images that could not be used, measured again in case a limit was raised since or their copy
    could not be read then."""
    from skyassets.imaging.quality import SCORE_COLUMNS, Measurement

    found: dict[str, Measurement] = {}
    for obs_id in obs_ids:
        if not lake.exists("image_quality", obs_id):
            continue
        quality = lake.read("image_quality", obs_id)
        if "measured_from" not in quality:
            continue
        sources = lake.read("source_catalogs", obs_id, missing_ok=True)
        by_image = dict(tuple(sources.groupby(["path", "hdu_index"], dropna=False))) if len(sources) else {}
        for row in quality[quality["measured_from"].notna() & quality["usable"].astype(bool)].to_dict("records"):
            metrics = {k: v for k, v in row.items() if k not in SCORE_COLUMNS}
            mine = by_image.get((row["path"], row["hdu_index"]), sources.iloc[:0])
            thumbnail = _thumbnail(obs_id, row["file_name"], row["hdu_index"])
            found[row["measured_from"]] = Measurement(metrics, mine.reset_index(drop=True), None, thumbnail)
    return found


def _measure(root: Home, row: dict) -> "Measurement":
    """One image's measurement, reading the file where the catalogue says it is stored."""
    from skyassets.imaging.quality import measure_image

    return measure_image(root.local(row["path"], row.get("sha256")), int(row["hdu_index"]), row=row)


def _metric_columns() -> list[str]:
    from skyassets.imaging.quality import SCORE_COLUMNS

    return [n for n in QUALITY_SCHEMA.names if n not in SCORE_COLUMNS]


def _reference_depths(lake: Lake, measuring: list[str]) -> dict[tuple[str, str], float]:
    """Median 5σ depth per (instrument, filter) of the images measured before, other partitions only."""
    # File by file, each from one open handle: a partition replaced by rename while being read is read whole.
    columns = ["instrument_name", "filter", "depth_5sigma_ab"]
    skip = set(measuring)
    keys = [k for k in lake.partitions("image_quality") if k not in skip]
    if not keys:
        return {}
    rows = pd.concat([lake.read("image_quality", k, columns=columns) for k in keys], ignore_index=True)
    return rows.dropna().groupby(["instrument_name", "filter"])["depth_5sigma_ab"].median().to_dict()


def _partition_report(root: Home, mine: pd.DataFrame, measured: "list[Measurement]") -> dict:
    """One partition's metadata: its row count, its score table and thumbnails of its images."""
    from skyassets.imaging.preview import markdown_image, thumbnail_png
    from skyassets.imaging.quality import SCORE_COLUMNS

    by_key = {(m.metrics["sha256"], m.metrics["hdu_index"]): m for m in measured}
    lines = []
    for row in mine.sort_values("score").head(PREVIEWS_PER_PARTITION).to_dict("records"):
        m = by_key.get((row["sha256"], row["hdu_index"]))
        subs = ", ".join(
            f"{c.removeprefix('score_')} {row[c]:.0f}"
            for c in SCORE_COLUMNS if c.startswith("score_") and pd.notna(row[c])
        )
        lines.append(
            f"**{row['file_name']}[{row['hdu_index']}]** {row['filter']}: "
            f"score {row['score']:.0f} ({row['flag']}; {subs})"
        )
        stored = _thumbnail(row["obs_id"], row["file_name"], row["hdu_index"])
        png = None
        if m is not None and m.image is not None:
            png = thumbnail_png(m.image, m.sources)
            root.put_bytes(stored, png)
        elif m is not None and m.thumbnail:  # kept as measured before: the thumbnail stored then
            png = _stored_thumbnail(root, stored)
            if png is None and (png := _stored_thumbnail(root, m.thumbnail)):  # first seen under this name
                root.put_bytes(stored, png)
        if png:
            lines.append(markdown_image(png, f"{row['file_name']}[{row['hdu_index']}]"))
    return {
        "dagster/row_count": len(mine),
        "images": len(mine),
        "flags": MetadataValue.json(mine["flag"].value_counts().to_dict()),
        "report": MetadataValue.md("\n\n".join(lines) or "no images"),
    }


def _thumbnail(obs_id: str, file_name: str, hdu_index: int) -> str:
    """Where an image's thumbnail is stored, relative to the home."""
    return f"previews/{obs_id}/{file_name}.{hdu_index}.png"


def _stored_thumbnail(root: Home, relative: str) -> bytes | None:
    """A thumbnail stored by an earlier run, None when there is none (or the store cannot give it)."""
    try:
        local = root.local(relative)
        return local.read_bytes() if local.is_file() else None
    except OSError:  # StorageError included
        return None


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _named(file_name: str, hdu_index: int, problem: object) -> str:
    """``file[hdu]: problem``, the image named once: a problem met while reading names it already."""
    image = f"{file_name}[{hdu_index}]"
    return f"{image}: {str(problem or 'not usable').removeprefix(f'{image}: ')}"


def _checks(scored: pd.DataFrame) -> Iterator[AssetCheckResult]:
    from skyassets.imaging.quality import physical_problems

    unusable = scored[~scored["usable"].astype(bool)]
    yield AssetCheckResult(
        check_name="usable_images",
        asset_key="image_quality",
        passed=unusable.empty,
        severity=AssetCheckSeverity.WARN,
        description=None if unusable.empty else f"{_images(len(unusable))} not usable: " + listed(
            [_named(r.file_name, r.hdu_index, r.problem) for r in unusable.itertuples()]),
        metadata={"unusable": len(unusable), "images": len(scored)},
    )
    # an unusable image is rejected by its gate and named above with its reason: not twice
    rejected = scored[(scored["flag"] == "reject") & scored["usable"].astype(bool)]
    yield AssetCheckResult(
        check_name="low_quality_images",
        asset_key="image_quality",
        passed=rejected.empty,
        severity=AssetCheckSeverity.WARN,
        description=None if rejected.empty else f"{_images(len(rejected))} flagged reject: " + listed(
            [f"{r.file_name}: {r.flag_reason}" for r in rejected.itertuples()]),
        metadata={"rejected": len(rejected), "rejected_as_unusable": len(unusable)},
    )
    problems = physical_problems(scored)
    yield AssetCheckResult(
        check_name="metrics_within_physical_bounds",
        asset_key="image_quality",
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description=listed(problems) or None,
    )
