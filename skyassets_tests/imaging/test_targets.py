"""Observations grouped into targets by overlapping footprints and agreeing names."""

import pandas as pd

from skyassets.fits.meta import extract_many
from skyassets.imaging.targets import (
    INPUT_COLUMNS,
    group_targets,
    inputs_digest,
    normalise_name,
    polygons,
    target_inputs,
)


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


def _images(rows):
    columns = [
        "obs_id", "file_name", "path", "hdu_index", "sha256", "instrument_name", "filter", "calib_level", "t_exptime",
    ]
    values = [(o, f"{s}.fits", f"files/{s}.fits", 1, s, "NIRCAM", "F200W", 2, 100.0) for o, s in rows]
    return pd.DataFrame(values, columns=columns)


def test_a_targets_inputs_are_its_usable_unrejected_images():
    groups = pd.DataFrame({"obs_id": ["a", "b", "c"], "target": ["T1", "T1", "T2"]})
    images = _images([("a", "s1"), ("a", "s2"), ("b", "s3"), ("c", "s4")])
    quality = pd.DataFrame({
        "sha256": ["s1", "s2", "s3", "s4"], "hdu_index": [1, 1, 1, 1],
        "usable": [True, False, True, True], "flag": ["good", "reject", "reject", "usable"],
        "score": [80.0, 0.0, 20.0, 40.0],
    })
    inputs = target_inputs(groups, images, quality)
    assert list(inputs["T1"]["sha256"]) == ["s1"] and list(inputs["T2"]["sha256"]) == ["s4"]
    assert list(inputs["T1"].columns) == INPUT_COLUMNS
    # nothing measured yet: every target is there, with no inputs
    assert {t: len(f) for t, f in target_inputs(groups, images, None).items()} == {"T1": 0, "T2": 0}


def test_the_inputs_digest_changes_with_the_images_not_their_order_or_scores():
    inputs = _images([("a", "s1"), ("b", "s2")]).assign(score=[80.0, 60.0], flag="good")
    same = inputs.iloc[::-1].assign(score=[10.0, 90.0])
    assert inputs_digest(inputs) == inputs_digest(same)
    assert inputs_digest(inputs) != inputs_digest(inputs.iloc[:1])
    assert inputs_digest(inputs) != inputs_digest(inputs.assign(hdu_index=[1, 2]))
    assert inputs_digest(inputs.iloc[:0]) == inputs_digest(_images([]))
