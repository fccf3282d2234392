"""Images with a wcs_problem are never found by where they are: cone, footprint, SQL macros."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skyassets.catalog import db as catalog
from skyassets.lake.parquet import write_parquet

SQUARE = "POLYGON ICRS 9.99 19.99 10.01 19.99 10.01 20.01 9.99 20.01"


def _images(home: Path) -> None:
    """Two images at the same place; the second's position came from a WCS later found unusable."""
    rows = pd.DataFrame({
        "obs_id": ["good", "bad"], "sha256": ["a" * 64, "b" * 64], "hdu_index": [1, 1],
        "path": ["files/x/good.fits", "files/x/bad.fits"], "file_name": ["good.fits", "bad.fits"],
        "s_ra": [10.0, 10.0], "s_dec": [20.0, 20.0], "s_fov": [0.03, 0.03], "s_region": [SQUARE, SQUARE],
        "t_min": [60000.0, 60000.0], "wcs_problem": [None, "unusable WCS: CD matrix is singular"],
    })
    write_parquet(rows, Path(home) / "lake" / "image_metadata" / "obs.parquet")


def test_cone_and_footprint_leave_out_images_with_a_wcs_problem(tmp_path):
    _images(tmp_path)
    con = catalog.connect(tmp_path)
    assert set(con.sql("SELECT obs_id FROM images").df().obs_id) == {"good", "bad"}  # still catalogued
    assert list(catalog.search(con, cone=(10.0, 20.0, 0.1)).df().obs_id) == ["good"]
    assert list(catalog.search(con, footprint=(10.0, 20.0)).df().obs_id) == ["good"]
    assert list(con.sql("SELECT obs_id FROM cone(10.0, 20.0, 0.1)").df().obs_id) == ["good"]
    assert list(con.sql("SELECT obs_id FROM footprint(10.0, 20.0)").df().obs_id) == ["good"]
    assert list(catalog.Query().cone(10.0, 20.0, 0.1).df(con).obs_id) == ["good"]
