"""The catalogue assets: image metadata per observation, and the DuckDB catalog of the lake."""

import os
from typing import Any

from dagster import (
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from skyassets.defs.archive.assets import fits_files, mast_observations, mast_products
from skyassets.defs.automation import catch_up, follows
from skyassets.defs.metadata import column_schema, partition_metadata
from skyassets.defs.partitions import observation_backfill_policy, observations_partitions
from skyassets.defs.resources import HomeResource
from skyassets.lake.home import Home
from skyassets.lake.store import Lake
from skyassets.lake.tables import TABLES, table
from skyassets.landing.keys import LANDED_PREFIX

IMAGE_PREVIEW = ["obs_id", "file_name", "hdu_name", "instrument_name", "filter", "s_ra", "s_dec", "t_min", "t_exptime"]


def _mark_quarantined(home: Home, sources: list[dict], failures: list) -> None:
    """Say ``quarantined`` in the ``fits_files`` rows of the files cataloguing moved to the quarantine,
    so the catalogue's ``files`` no longer lists them as downloaded where they no longer are, and
    delete what is left of them in the home: with a store, the stored object, which every machine
    and ``skyassets export`` would otherwise still take for a good file."""
    moved = {f.path for f in failures if f.quarantined}
    by_partition: dict[str, set[str]] = {}
    for source in sources:
        if source["path"] in moved:
            by_partition.setdefault(source["obs_id"], set()).add(source["stored_path"])
    for key, paths in by_partition.items():
        manifest = home.tables.read("fits_files", key)
        manifest.loc[manifest["path"].isin(paths), "status"] = "quarantined"
        home.tables.write("fits_files", manifest, partition=key)
    home.remove_files(sorted(path for paths in by_partition.values() for path in paths))


def _quarantined_by_partition(keys: list[str], sources: list[dict], failures: list) -> dict[str, dict]:
    """Each partition's quarantined files, counted and named with the reason, for its own materialisation."""
    partition_of = {source["path"]: source["obs_id"] for source in sources}
    named: dict[str, list[str]] = {key: [] for key in keys}
    for failure in failures:
        if (key := partition_of.get(failure.path)) in named:
            named[key].append(f"- `{os.path.basename(failure.path)}`: {failure.reason}")
    return {key: {"quarantined": len(lines), **({"quarantined_files": MetadataValue.md("\n".join(lines))}
                                                 if lines else {})} for key, lines in named.items()}


def _archive_labels(lake: Lake, keys: list[str]) -> dict[str, dict[str, Any]]:
    """The archive's collection and calibration level of each MAST product (by dataURI), which its
    headers may not say (an HLA product's TELESCOP is HST); landed files have none."""
    archived = [k for k in keys if not k.startswith(LANDED_PREFIX)]
    products = lake.read_partitions("mast_products", archived, columns=["dataURI", "obs_collection", "calib_level"])
    labels = {}
    for listed in products.values():
        for row in listed.to_pylist():
            said = {"obs_collection": row["obs_collection"] or None, "calib_level": row["calib_level"]}
            labels[row["dataURI"]] = {k: v for k, v in said.items() if v is not None}
    return labels


@asset(
    group_name="catalog",
    deps=[fits_files],
    partitions_def=observations_partitions,
    backfill_policy=observation_backfill_policy,
    automation_condition=follows(),
    kinds={"parquet"},
    metadata=column_schema(table("image_metadata").schema),
    description="One row per image HDU of the observation's files, with IVOA ObsCore columns and units.",
)
def image_metadata(context: AssetExecutionContext, home: HomeResource) -> MaterializeResult:
    # imported here: the FITS reader (astropy) and the landing zone's downloader are slow to import
    from skyassets.fits.meta import extract_many, to_table
    from skyassets.landing.ingest import quarantine_landed_failures

    root = home.home
    lake = root.tables
    keys = context.partition_keys  # Dagster reads every key of the partitions definition on each access
    manifests = lake.read_partitions("fits_files", keys, columns=["path", "sha256", "size", "dataURI", "status"])
    missing = [k for k in keys if k not in manifests]
    if missing:
        raise Failure(f"no fits_files manifest for {len(missing)} partitions: {', '.join(missing[:5])}")
    labels = _archive_labels(lake, keys)
    sources = [
        {
            "path": str(root.local(row["path"], row["sha256"])),
            "stored_path": row["path"],
            "sha256": row["sha256"],
            "size": int(row["size"]),
            "access_url": row["dataURI"],
            "obs_id": obs_id,
            **labels.get(row["dataURI"], {}),
        }
        for obs_id in keys
        for row in manifests[obs_id].to_pylist()
        if row["status"] != "quarantined"  # refused on arrival or by an earlier cataloguing: nothing to read
    ]
    # Worker processes pay off only for batches (backfills, bulk ingests); a few files go inline.
    workers = 1 if len(sources) < 16 else os.cpu_count() or 1
    rows, failures = extract_many(sources, processes=workers, quarantine_dir=root.quarantine)
    failures = quarantine_landed_failures(root, failures)  # a landed file's failure, of any kind, is its own
    unexpected = [f for f in failures if not f.unreadable]
    if unexpected:
        raise Failure(
            f"{len(unexpected)} files could not be catalogued: "
            + "; ".join(f"{f.path}: {f.reason}" for f in unexpected[:5])
        )
    for failure in failures:
        context.log.warning(f"quarantined {failure.path}: {failure.reason} (now {failure.quarantined})")
    _mark_quarantined(root, sources, failures)
    # One conversion and one cast for the batch, then a file per partition: converting each
    # partition's rows on their own costs more than extracting them.
    lake.write_partitions("image_metadata", to_table(rows), by="obs_id", partitions=keys)
    root.trim()
    quarantined = "\n".join(f"- `{f.path}`: {f.reason} (moved to `{f.quarantined}`)" for f in failures)
    run = {
        "files": len(sources),
        "quarantined": len(failures),
        **({"quarantined_files": MetadataValue.md(quarantined)} if failures else {}),
    }
    return MaterializeResult(metadata=partition_metadata(
        context, rows.drop(columns=["header_json"]), preview_columns=IMAGE_PREVIEW, by="obs_id",
        figures=lambda part: {"files": int(part["path"].nunique()) if len(part) else 0},
        per_key=_quarantined_by_partition(keys, sources, failures), run=run))


@asset(
    group_name="catalog",
    deps=[
        mast_observations, mast_products, fits_files, image_metadata,
        "image_quality", "source_catalogs", "target_groups", "mosaics", "composites",
    ],
    pool="duckdb_catalog",
    # Whenever a table changes, without waiting for every observation: a failed or missing one must
    # not hold the catalogue back forever.
    automation_condition=catch_up(),
    kinds={"duckdb"},
    description="catalog.duckdb: the lake's tables, sorted for fast sky and time filters, published atomically.",
)
def catalog(context: AssetExecutionContext, home: HomeResource) -> MaterializeResult:
    from skyassets.catalog.db import connect, publish

    root = home.home
    path = publish(root)  # with the home on a store, read from it and stored there
    con = connect(root, published=True)
    try:
        rows = con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()
        published = {name for (name,) in rows}
        counts = {
            t.catalog: con.execute(f'SELECT count(*) FROM "{t.catalog}"').fetchone()[0]
            for t in TABLES.values() if t.catalog in published
        }
    finally:
        con.close()
    context.log.info(f"published {path}: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(root.url(path.name)),
            "bytes": path.stat().st_size,
            "rows": MetadataValue.json(counts),
            "dagster/row_count": counts.get("images", 0),
        }
    )
