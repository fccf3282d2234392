"""Catalog speed: a 0.1 deg cone search with an instrument and a time filter over a million image rows.

    .venv/bin/python bench/catalog.py                    # 1,000,000 rows in 1,000 partition files
    .venv/bin/python bench/catalog.py --rows 200000 --files 4000

Builds a synthetic ``image_metadata`` lake (centres uniform on the sphere, ObsCore columns, a
polygon footprint and a small JSON header per row) in a temporary folder, then times:
``connect()`` (the snapshot), ``search()`` from that connection (which includes its refresh check),
the same SQL without the refresh, ``publish()``, and the query on the published ``catalog.duckdb``.
Query figures are the median over distinct random centres. Target: < 100 ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from skyassets.catalog import db as catalog

TARGET_MS = 100.0
INSTRUMENTS = np.array(["NIRCAM/IMAGE", "MIRI/IMAGE", "NIRISS/IMAGE", "WFC3/IR", "WFC3/UVIS", "ACS/WFC"])
FILTERS = np.array(["F090W", "F150W", "F200W", "F277W", "F356W", "F444W", "F770W", "F160W", "F814W"])


def synthetic_images(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, rows)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, rows)))
    half = 0.02 / np.maximum(np.cos(np.radians(dec)), 0.05)
    corners = np.stack([ra - half, dec - 0.02, ra + half, dec - 0.02, ra + half, dec + 0.02, ra - half, dec + 0.02])
    region = ["POLYGON ICRS " + " ".join(f"{v % 360 if i % 2 == 0 else v:.6f}" for i, v in enumerate(c)) for c in corners.T]
    t_min = 59600 + rng.uniform(0, 1500, rows)
    exptime = rng.choice([107.4, 386.5, 1030.8, 2576.9], rows)
    obs = rng.integers(0, rows // 20 + 1, rows)
    obs_id = np.char.add("jw0", obs.astype(str))
    sha = [f"{x:064x}" for x in rng.integers(0, 2**62, rows)]
    filename = np.char.add(np.char.add(obs_id, np.arange(rows).astype(str)), "_cal.fits")
    header = '{"TELESCOP": "JWST", "DETECTOR": "NRCA1", "READPATT": "MEDIUM8", "NGROUPS": 8, "NINTS": 1, "BUNIT": "MJy/sr"}'
    return pa.table(
        {
            "obs_id": obs_id,
            "obs_collection": np.where(np.char.startswith(INSTRUMENTS[obs % 6], "WFC3") | (obs % 6 == 5), "HST", "JWST"),
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
            "facility_name": np.where(np.char.startswith(INSTRUMENTS[obs % 6], "WFC3") | (obs % 6 == 5), "HST", "JWST"),
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


def write_lake(root: Path, table: pa.Table, files: int) -> None:
    folder = root / "lake" / "image_metadata"
    folder.mkdir(parents=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for k in range(files):
        pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]), folder / f"jw{k:06d}.parquet")


def timed(function, repeats: int) -> tuple[float, list[float]]:
    times = []
    for k in range(repeats):
        start = time.perf_counter()
        function(k)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    centres = [(float(rng.uniform(0, 360)), float(np.degrees(np.arcsin(rng.uniform(-1, 1))))) for _ in range(args.repeats)]
    time_range = ("2022-07-01", "2024-07-01")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_lake(root, synthetic_images(args.rows), args.files)
        print(f"lake: {args.rows:,} image rows in {args.files:,} Parquet files, written in {time.perf_counter() - start:.1f} s")

        start = time.perf_counter()
        con = catalog.connect(root)
        print(f"connect(): {time.perf_counter() - start:.2f} s (snapshot of the lake into memory)")

        def search(k: int, con=con) -> None:
            ra, dec = centres[k]
            catalog.search(con, cone=(ra, dec, 0.1), instrument="NIRCAM", time=time_range).fetchall()

        def plain_sql(k: int, con=con) -> None:
            ra, dec = centres[k]
            con.sql(catalog.Query().cone(ra, dec, 0.1).instrument("NIRCAM").time(*time_range).sql()).fetchall()

        search(0)  # warm-up
        found = sum(len(catalog.search(con, cone=(ra, dec, 1.0)).fetchall()) for ra, dec in centres)
        print(f"(sanity: a 1 deg cone alone finds {found / len(centres):.0f} rows on average at these centres)")
        median, _ = timed(search, args.repeats)
        print(f"search(cone 0.1 deg + instrument + time), from connect(): median {median:.1f} ms  [target < {TARGET_MS:.0f} ms]"
              f"  {'met' if median < TARGET_MS else 'NOT met'}")
        median, _ = timed(plain_sql, args.repeats)
        print(f"same SQL without the refresh check: median {median:.1f} ms")
        refresh_median, _ = timed(lambda k: catalog.refresh(con), args.repeats)
        print(f"refresh() with nothing changed ({args.files:,} files stat-ed): median {refresh_median:.1f} ms")
        con.close()

        start = time.perf_counter()
        catalog.publish(root)
        print(f"publish(): {time.perf_counter() - start:.2f} s, catalog.duckdb {(root / 'catalog.duckdb').stat().st_size / 1e6:.0f} MB")
        published = catalog.connect(root, published=True)

        def on_published(k: int) -> None:
            ra, dec = centres[k]
            catalog.search(published, cone=(ra, dec, 0.1), instrument="NIRCAM", time=time_range).fetchall()

        on_published(0)
        median, _ = timed(on_published, args.repeats)
        print(f"same search on the published catalog.duckdb: median {median:.1f} ms")
        published.close()


if __name__ == "__main__":
    main()
