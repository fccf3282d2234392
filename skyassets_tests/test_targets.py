"""Observations grouped into targets by overlapping footprints and agreeing names."""

import pandas as pd

from skyassets.fitsmeta import extract_many
from skyassets.targets import group_targets, normalise_name, polygons


def square(ra: float, dec: float, half: float = 0.01) -> str:
    corners = [(ra - half, dec - half), (ra + half, dec - half), (ra + half, dec + half), (ra - half, dec + half)]
    return "POLYGON ICRS " + " ".join(f"{a % 360:.6f} {d:.6f}" for a, d in corners)


def frame(*rows: tuple[str, str | None, str | None]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["obs_id", "target_name", "s_region"])


def targets(images: pd.DataFrame) -> dict[str, str]:
    return dict(group_targets(images)[["obs_id", "target"]].itertuples(index=False))


def test_overlapping_fields_of_one_name_are_one_target():
    found = targets(frame(("a", "NGC 3132", square(151.75, -40.43)), ("b", "ngc-3132", square(151.765, -40.43))))
    assert found == {"a": "NGC-3132", "b": "NGC-3132"}


def test_overlap_across_ra_zero_and_at_the_pole():
    assert len(set(targets(frame(("a", "X", square(359.995, 10)), ("b", "X", square(0.005, 10)))).values())) == 1
    around_pole = [
        "POLYGON ICRS " + " ".join(f"{ra} {dec}" for ra in (start, start + 90, start + 180, start + 270))
        for start, dec in ((0, 89.99), (45, 89.985))
    ]
    assert len(set(targets(frame(("a", "P", around_pole[0]), ("b", "P", around_pole[1]))).values())) == 1


def test_one_name_on_separate_fields_and_two_names_on_one_field_stay_apart():
    apart = targets(frame(("a", "M31", square(10.0, 41.0)), ("b", "M31", square(11.0, 42.0))))
    assert apart["a"] != apart["b"] and all(k.startswith("M31-") for k in apart.values())
    touching = targets(frame(("a", "NGC 628", square(24.17, 15.78)), ("b", "SN 2013ej", square(24.175, 15.78))))
    assert touching == {"a": "NGC-628", "b": "SN-2013EJ"}


def test_fields_without_a_footprint_are_left_out_and_unnamed_fields_get_a_key():
    found = targets(frame(("a", None, square(30, 0)), ("b", "Y", None), ("c", "", square(30.005, 0))))
    assert set(found) == {"a", "c"} and found["a"] == found["c"] and found["a"].startswith("FIELD-")


def test_the_demo_sky_has_one_target_per_field(emu):
    files = sorted(emu.sky.root.rglob("*_cal.fits")) + sorted(emu.sky.root.rglob("*_flc.fits"))
    rows, failures = extract_many(files, processes=1)
    assert not failures
    grouped = group_targets(rows)
    assert grouped["target"].nunique() == 3  # NGC 3132, NGC 628 (JWST and HST together), SMACS 0723
    per_target = grouped.merge(rows[["obs_id", "instrument_name"]].drop_duplicates(), on="obs_id")
    ngc628 = per_target[per_target["target"].map(normalise_name) == "NGC628"]
    assert {i.split("/")[0] for i in ngc628["instrument_name"]} == {"NIRCAM", "ACS"}


def test_polygons_of_a_region_string():
    assert [p.shape for p in polygons("POLYGON ICRS 1 2 3 4 5 6 POLYGON 7 8 9 10 11 12 13 14")] == [(3, 2), (4, 2)]
    assert polygons("CIRCLE ICRS 1 2 3") == [] and polygons(None) == []
