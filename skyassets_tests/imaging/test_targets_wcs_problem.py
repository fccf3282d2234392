"""Target grouping never places an image whose WCS is unusable, nor reads a NaN as a vertex."""

from __future__ import annotations

import pandas as pd

from skyassets.imaging.targets import group_targets, polygons


def _square(ra: float, dec: float, half: float = 0.01) -> str:
    return (f"POLYGON ICRS {ra - half} {dec - half} {ra + half} {dec - half} "
            f"{ra + half} {dec + half} {ra - half} {dec + half}")


def test_images_with_a_wcs_problem_are_not_grouped():
    images = pd.DataFrame({
        "obs_id": ["a", "b", "c"],
        "target_name": ["M31", "M31", "M31"],
        # c's footprint (from a singular CD matrix) would bridge a and b into one target
        "s_region": [_square(10.0, 41.0), _square(10.5, 41.0), _square(10.25, 41.0, 0.3)],
        "wcs_problem": [None, None, "unusable WCS: CD matrix is singular"],
    })
    grouped = group_targets(images)
    assert sorted(grouped.obs_id) == ["a", "b"] and grouped.target.nunique() == 2
    assert group_targets(images.drop(columns="wcs_problem")).target.nunique() == 1  # what c did before


def test_a_polygon_with_a_nan_or_an_impossible_latitude_is_left_out():
    assert polygons("POLYGON ICRS 10 NaN 11 20 11 21 10 21") == []
    assert polygons("POLYGON ICRS 10 20 11 inf 11 21 10 21") == []
    assert polygons("POLYGON ICRS 10 95 11 20 11 21 10 21") == []
    assert [p.shape for p in polygons("POLYGON ICRS 10 20 11 20 11 21 10 21")] == [(4, 2)]
