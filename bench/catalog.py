"""Catalog speed: connect() and a 0.1 deg cone search with instrument and time filters, per lake size.

    .venv/bin/python bench/catalog.py                          # 1,000,000 rows in 1,000 partition files
    .venv/bin/python bench/catalog.py --rows 1000000 10000000  # both sizes, side by side in one table

For each size, builds a synthetic ``image_metadata`` lake (centres uniform on the sphere, ObsCore
columns, a polygon footprint and a small JSON header per row; 1,000 rows per partition file unless
``--files``) in a temporary folder, then times: ``connect()`` with no published catalog (the whole
lake read into memory; skipped above ``--cold-max`` rows), ``publish()``, ``connect()`` starting
from the published ``catalog.duckdb`` with nothing changed since, and again after runs finished
since the publish (``--changed`` partitions rewritten by temp file + rename, one added, one removed),
then ``search()`` from that connection (which includes its refresh check), ``refresh()`` with nothing
changed, and the search on the published file. Query figures are the median over distinct random
centres. Targets: ``connect()`` < 1 s; ``search()`` < 100 ms on 1M rows, < 300 ms on 10M rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from skyassets.catalog import db as catalog

CONNECT_TARGET_S = 1.0
SEARCH_TARGET_MS = {1_000_000: 100.0, 10_000_000: 300.0}
INSTRUMENTS = np.array(["NIRCAM/IMAGE", "MIRI/IMAGE", "NIRISS/IMAGE", "WFC3/IR", "WFC3/UVIS", "ACS/WFC"])
FILTERS = np.array(["F090W", "F150W", "F200W", "F277W", "F356W", "F444W", "F770W", "F160W", "F814W"])


def synthetic_images(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, rows)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, rows)))
    half = 0.02 / np.maximum(np.cos(np.radians(dec)), 0.05)
    corners = np.stack([ra - half, dec - 0.02, ra + half, dec - 0.02, ra + half, dec + 0.02, ra - half, dec + 0.02])
    region = [
        "POLYGON ICRS " + " ".join(f"{v % 360 if i % 2 == 0 else v:.6f}" for i, v in enumerate(c)) for c in corners.T
    ]
    t_min = 59600 + rng.uniform(0, 1500, rows)
    exptime = rng.choice([107.4, 386.5, 1030.8, 2576.9], rows)
    obs = rng.integers(0, rows // 20 + 1, rows)
    obs_id = np.char.add("jw0", obs.astype(str))
    sha = [f"{x:064x}" for x in rng.integers(0, 2**62, rows)]
    filename = np.char.add(np.char.add(obs_id, np.arange(rows).astype(str)), "_cal.fits")
    header = (
        '{"TELESCOP": "JWST", "DETECTOR": "NRCA1", "READPATT": "MEDIUM8", "NGROUPS": 8, "NINTS": 1, "BUNIT": "MJy/sr"}'
    )
    hst = np.char.startswith(INSTRUMENTS[obs % 6], "WFC3") | (obs % 6 == 5)
    return pa.table(
        {
            "obs_id": obs_id,
            "obs_collection": np.where(hst, "HST", "JWST"),
            "target_name": np.char.add("FIELD-", (obs % 5000).astype(str)),
            "s_ra": ra,
            "s_dec": dec,
            "s_fov": np.full(rows, 0.057),
            "s_region": region,
            "s_resolution": np.full(rows, 0.031),
            "t_min": t_min,
            "t_max": t_min + exptime / 86400,
            "t_exptime": exptime,
            "em_min": np.full(rows, 3.9e-6),
            "em_max": np.full(rows, 5.0e-6),
            "instrument_name": INSTRUMENTS[obs % 6],
            "facility_name": np.where(hst, "HST", "JWST"),
            "dataproduct_type": np.full(rows, "image"),
            "calib_level": np.full(rows, 2),
            "access_url": np.char.add("https://mast.stsci.edu/api/v0.1/Download/file?uri=mast:JWST/product/", filename),
            "filter": FILTERS[rng.integers(0, len(FILTERS), rows)],
            "pupil": np.full(rows, "CLEAR"),
            "detector": np.full(rows, "NRCA1"),
            "proposal_id": (obs % 3000).astype(str),
            "bunit": np.full(rows, "MJy/sr"),
            "pixel_scale": np.full(rows, 0.031),
            "sha256": sha,
            "size": np.full(rows, 50_000_000),
            "filename": filename,
            "path": np.char.add("files/JWST/", filename),
            "hdu_index": np.full(rows, 1),
            "hdu_name": np.full(rows, "SCI"),
            "header": np.full(rows, header),
            "wcs_problem": pa.nulls(rows, pa.string()),
        }
    )


CHUNK_ROWS = 1_000_000
"""Rows generated at a time, so a 10M-row lake is written without holding it all in memory."""


def write_lake(root: Path, rows: int, files: int) -> None:
    folder = root / "lake" / "image_metadata"
    folder.mkdir(parents=True)
    bounds = np.linspace(0, rows, files + 1).astype(int)
    k = 0
    for chunk, first in enumerate(range(0, rows, CHUNK_ROWS)):
        last = min(first + CHUNK_ROWS, rows)
        table = synthetic_images(last - first, seed=chunk)
        while k < files and bounds[k + 1] <= last:
            pq.write_table(table.slice(bounds[k] - first, bounds[k + 1] - bounds[k]), folder / f"jw{k:06d}.parquet")
            k += 1


def replace_file(path: Path, table: pa.Table) -> None:
    """Write as a run does: a temporary file renamed over the partition."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def finish_runs(root: Path, changed: int, files: int, seed: int = 99) -> None:
    """What runs finishing after a publish leave: partitions rewritten, one added, one removed."""
    folder = root / "lake" / "image_metadata"
    for k in np.linspace(0, files - 2, changed).astype(int):
        path = folder / f"jw{k:06d}.parquet"
        table = pq.read_table(path)
        replace_file(path, table.set_column(table.schema.get_field_index("t_exptime"), "t_exptime",
                                            pa.array(np.full(table.num_rows, 42.0))))
    replace_file(folder / "jw999999.parquet", synthetic_images(1_000, seed=seed))
    (folder / f"jw{files - 1:06d}.parquet").unlink()


def timed(function, repeats: int) -> tuple[float, list[float]]:
    times = []
    for k in range(repeats):
        start = time.perf_counter()
        function(k)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), times


def seconds(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def measure(rows: int, files: int, args: argparse.Namespace) -> dict[str, float]:
    """All the timings for one lake size; prints them as it goes."""
    rng = np.random.default_rng(1)
    centres = [
        (float(rng.uniform(0, 360)), float(np.degrees(np.arcsin(rng.uniform(-1, 1))))) for _ in range(args.repeats)
    ]
    time_range = ("2022-07-01", "2024-07-01")
    figures: dict[str, float] = {}

    def search(con, k: int) -> None:
        ra, dec = centres[k]
        catalog.search(con, cone=(ra, dec, 0.1), instrument="NIRCAM", time=time_range).fetchall()

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        took, _ = seconds(lambda: write_lake(root, rows, files))
        print(f"\n== {rows:,} image rows in {files:,} Parquet files (written in {took:.0f} s)")

        if rows <= args.cold_max:
            took, con = seconds(lambda: catalog.connect(root))
            figures["cold"] = took
            print(f"connect() with no published catalog (whole lake into memory): {took:.2f} s")
            search(con, 0)
            figures["search_cold"], _ = timed(lambda k: search(con, k), args.repeats)
            print(f"search() on that snapshot: median {figures['search_cold']:.1f} ms")
            con.close()
        else:
            print(f"connect() with no published catalog: skipped above --cold-max {args.cold_max:,} rows")

        took, path = seconds(lambda: catalog.publish(root, memory_limit=args.memory_limit))
        figures["publish"] = took
        print(f"publish(): {took:.1f} s, catalog.duckdb {path.stat().st_size / 1e6:,.0f} MB")

        took, con = seconds(lambda: catalog.connect(root))
        figures["connect_same"] = took
        print(f"connect() from catalog.duckdb, nothing changed since: {took * 1000:.0f} ms")
        con.close()

        finish_runs(root, args.changed, files)
        took, con = seconds(lambda: catalog.connect(root))
        figures["connect"] = took
        print(f"connect() from catalog.duckdb after {args.changed} partitions rewritten, 1 added, 1 removed: "
              f"{took * 1000:.0f} ms")
        search(con, 0)  # warm-up: the first read of the published file's pages
        found = sum(len(catalog.search(con, cone=(ra, dec, 1.0)).fetchall()) for ra, dec in centres)
        print(f"(sanity: a 1 deg cone alone finds {found / len(centres):.0f} rows on average at these centres)")
        figures["search"], _ = timed(lambda k: search(con, k), args.repeats)
        print(f"search(cone 0.1 deg + instrument + time) from that connect(): median {figures['search']:.1f} ms")
        figures["refresh"], _ = timed(lambda k: catalog.refresh(con), args.repeats)
        print(f"refresh() with nothing changed ({files:,} files stat-ed): median {figures['refresh']:.1f} ms")
        con.close()

        published = catalog.connect(root, published=True)
        search(published, 0)
        figures["published"], _ = timed(lambda k: search(published, k), args.repeats)
        print(f"the same search on the published catalog.duckdb: median {figures['published']:.1f} ms")
        published.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000], help="lake sizes, in image rows")
    parser.add_argument("--files", type=int, default=None, help="partition files (default: 1,000 rows each)")
    parser.add_argument("--changed", type=int, default=10, help="partitions rewritten after the publish")
    parser.add_argument("--cold-max", type=int, default=2_000_000, help="largest lake also read with no catalog")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--tmp", default=None, help="folder for the temporary lakes (default: the system's)")
    parser.add_argument("--memory-limit", default="3GB", help="DuckDB's memory cap for publish() on a shared machine")
    args = parser.parse_args()
    results = {rows: measure(rows, args.files or max(rows // 1_000, 1), args) for rows in args.rows}

    print("\n| rows | connect(), no catalog | connect(), from catalog.duckdb + changes | target | ratio "
          "| search() | target | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for rows, f in results.items():
        target_ms = SEARCH_TARGET_MS[10_000_000] if rows > 1_000_000 else SEARCH_TARGET_MS[1_000_000]
        cold = f"{f['cold']:.2f} s" if "cold" in f else "skipped"
        print(f"| {rows:,} | {cold} | {f['connect'] * 1000:.0f} ms | < {CONNECT_TARGET_S * 1000:.0f} ms "
              f"| {f['connect'] / CONNECT_TARGET_S:.2f} | {f['search']:.1f} ms | < {target_ms:.0f} ms "
              f"| {f['search'] / target_ms:.2f} |")


if __name__ == "__main__":
    main()
