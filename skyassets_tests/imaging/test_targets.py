"""Observations grouped into targets by overlapping footprints and agreeing names."""

import logging
import random

import pandas as pd

from skyassets.fits.meta import extract_many
from skyassets.imaging.targets import (
    INPUT_COLUMNS,
    group_targets,
    inputs_digest,
    normalise_name,
    polygons,
    target_inputs,
    visit_of,
    without_combined_duplicates,
)
from skyassets.lake.names import validate_obs_id


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


def test_a_target_keeps_its_key_as_observations_and_fields_of_its_name_come():
    """A new observation of a field, or a second field of its name, renames no target: its products,
    tiles and the name people use for it stay."""
    first = frame(("a", "MY FIELD", square(10.0, 41.0)))
    before = group_targets(first)
    assert targets(first) == {"a": "MY-FIELD"}
    elsewhere = pd.concat([first, frame(("b", "MY FIELD", square(11.0, 42.0)))], ignore_index=True)
    assert targets(elsewhere)["a"] != "MY-FIELD"  # without the last grouping: both named by their members
    now = group_targets(elsewhere, before)
    keys = dict(now[["obs_id", "target"]].itertuples(index=False))
    assert keys["a"] == "MY-FIELD" and keys["b"].startswith("MY-FIELD-")
    more = frame(("c", "MY FIELD", square(11.005, 42.0)), ("d", "MY FIELD", square(10.005, 41.0)), ("e", "MY FIELD",
                                                                                                     square(12, 43)))
    grown = pd.concat([elsewhere, more], ignore_index=True)
    then = group_targets(grown, now)
    later = dict(then[["obs_id", "target"]].itertuples(index=False))
    assert {o: later[o] for o in "abcd"} == {"a": "MY-FIELD", "d": "MY-FIELD", "b": keys["b"], "c": keys["b"]}
    assert later["e"] not in (keys["b"], "MY-FIELD")  # a third field: a key of its own
    # two targets that become one keep the key most of their observations had
    merged = grown.copy()
    merged.loc[merged["obs_id"] == "b", "s_region"] = square(10.01, 41.0)
    merged.loc[merged["obs_id"] == "c", "s_region"] = square(10.015, 41.0)
    joined = dict(group_targets(merged, then)[["obs_id", "target"]].itertuples(index=False))
    assert {joined[o] for o in "abcd"} == {"MY-FIELD"} and joined["e"] == later["e"]
    renamed = group_targets(frame(("a", "OTHER", square(10.0, 41.0))), before)
    assert list(renamed["target"]) == ["OTHER"]


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
        "obs_id", "file_name", "path", "hdu_index", "sha256", "instrument_name", "filter", "calib_level",
        "proposal_id", "asn_id", "t_exptime",
    ]
    values = [(o, f"{s}.fits", f"files/{s}.fits", 1, s, "NIRCAM", "F200W", 2, None, None, 100.0) for o, s in rows]
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
    # what tells a combined product's visit goes on to the mosaics
    named = target_inputs(groups, images.assign(asn_id="J8PU02010", proposal_id="10402"), quality)
    assert named["T2"][["asn_id", "proposal_id"]].values.tolist() == [["J8PU02010", "10402"]]
    # nothing measured yet: every target is there, with no inputs
    assert {t: len(f) for t, f in target_inputs(groups, images, None).items()} == {"T1": 0, "T2": 0}


def test_a_targets_inputs_come_sorted_by_instrument_filter_observation_and_file():
    groups = pd.DataFrame({"obs_id": ["z", "y", "x"], "target": ["T2", "T1", "T2"]})
    images = _images([("z", "s1"), ("y", "s2"), ("x", "s3"), ("z", "s0"), ("x", "s5")])
    images["filter"] = ["F444W", "F200W", "F444W", "F090W", "F090W"]
    quality = pd.DataFrame(
        {"sha256": list(images.sha256), "hdu_index": 1, "usable": True, "flag": "good", "score": 1.0}
    )
    inputs = target_inputs(groups, images.sample(frac=1, random_state=3), quality)
    assert list(inputs) == ["T1", "T2"]
    assert list(inputs["T2"]["sha256"]) == ["s5", "s0", "s3", "s1"]  # F090W x, F090W z, F444W x, F444W z
    assert list(inputs["T2"].index) == [0, 1, 2, 3] and list(inputs["T1"]["sha256"]) == ["s2"]
    assert list(inputs["T1"].index) == [0]


def test_the_inputs_digest_changes_with_the_images_not_their_order_or_scores():
    inputs = _images([("a", "s1"), ("b", "s2")]).assign(score=[80.0, 60.0], flag="good")
    same = inputs.iloc[::-1].assign(score=[10.0, 90.0])
    assert inputs_digest(inputs) == inputs_digest(same)
    assert inputs_digest(inputs) != inputs_digest(inputs.iloc[:1])
    assert inputs_digest(inputs) != inputs_digest(inputs.assign(hdu_index=[1, 2]))
    assert inputs_digest(inputs.iloc[:0]) == inputs_digest(_images([]))


# The last two share a field; the others each have their own.
ODD_NAMES = ["+ABC", "A..B", "x" * 300, "2MASS J0523+3314", "2MASS J0523-3314", "a/b/../c", "Ωmega Cen", "東京",
             ".M31.", "M.31", "M-31", "HD 189733.01", "ngc3132", "NGC 3132"]


def test_odd_target_names_group_under_valid_stable_distinct_keys():
    """No header value makes grouping raise: each name, on its own field, gets a valid partition key,
    the same key whatever the order, and names that differ after normalising keep different keys."""
    images = frame(*[(f"o{i:02d}", name, square(10.0 * min(i, 12), 0)) for i, name in enumerate(ODD_NAMES)])
    found = targets(images)
    assert set(found) == set(images["obs_id"])
    assert all(validate_obs_id(key) == key and len(key) <= 100 for key in found.values())
    assert targets(images.iloc[::-1]) == found
    by_name: dict[str, set[str]] = {}
    for obs_id, key in found.items():
        name = images.set_index("obs_id").loc[obs_id, "target_name"]
        by_name.setdefault(normalise_name(name) or obs_id, set()).add(key)
    assert all(len(keys) == 1 for keys in by_name.values())  # "NGC 3132" and "ngc3132" are one name
    assert len({next(iter(keys)) for keys in by_name.values()}) == len(by_name)
    assert found["o11"] == "HD-189733.01" and found["o12"] == found["o13"] == "NGC-3132"  # plain names as before
    assert all(validate_obs_id(key) == key for key in targets(frame(("a", "\x00\x7f", square(1, 1)))).values())


def test_random_target_names_never_share_or_break_a_key():
    rng = random.Random(7)
    alphabet = "AbZ09 +-._/\\'\"é☆東" + "\x00\t"
    drawn = ("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 90))) for _ in range(400))
    names = sorted({normalise_name(n): n for n in drawn if normalise_name(n)}.values())  # one spelling a name
    images = frame(*[(f"o{i:03d}", name, square(0.5 * i % 360, 0.4 * (i // 720))) for i, name in enumerate(names)])
    grouped = group_targets(images)
    assert all(validate_obs_id(key) == key for key in grouped["target"])
    normal = images.set_index("obs_id")["target_name"].map(normalise_name)
    pairs = set(zip(grouped["obs_id"].map(normal), grouped["target"], strict=True))
    assert len({n for n, _ in pairs}) == len(pairs) == len({k for _, k in pairs})


def test_an_exposure_is_one_input_however_many_files_hold_it():
    """FLT and FLC of one ACS exposure: the FLC; one JWST cal under two products: once; chips apart."""
    groups = pd.DataFrame({"obs_id": ["j8pu01010", "jw-l2", "jw-l3"], "target": ["T1", "T1", "T1"]})
    rows = [("j8pu01010", "j8pu01abq_flt", "s1", 1), ("j8pu01010", "j8pu01abq_flc", "s2", 1),
            ("j8pu01010", "j8pu01abq_flc", "s2", 4), ("j8pu01010", "j8pu01abq_flt", "s1", 4),
            ("jw-l2", "jw01001001001_02101_00001_nrcb1_cal", "s3", 1),
            ("jw-l3", "jw01001001001_02101_00001_nrcb1_cal", "s3", 1)]
    images = pd.DataFrame(
        [(o, f"{n}.fits", f"files/{o}/{n}.fits", h, s, "X", "F814W", 2, None, None, 100.0) for o, n, s, h in rows],
        columns=["obs_id", "file_name", "path", "hdu_index", "sha256", "instrument_name", "filter", "calib_level",
                 "proposal_id", "asn_id", "t_exptime"])
    quality = pd.DataFrame({"sha256": ["s1", "s1", "s2", "s2", "s3"], "hdu_index": [1, 4, 1, 4, 1],
                            "usable": True, "flag": "good", "score": 90.0})
    inputs = target_inputs(groups, images, quality)["T1"]
    assert sorted(zip(inputs["file_name"], inputs["hdu_index"], strict=True)) == [
        ("j8pu01abq_flc.fits", 1), ("j8pu01abq_flc.fits", 4), ("jw01001001001_02101_00001_nrcb1_cal.fits", 1)]
    assert list(inputs.loc[inputs["sha256"] == "s3", "obs_id"]) == ["jw-l2"]


def test_one_s_own_version_of_an_exposure_is_used_over_the_archive_s_and_said(caplog):
    """A landed file named as an archive exposure but with other bytes (reduced again, fixed) is the
    one co-added, and the run's log says which version was left out; a landed copy of the archive's
    own bytes changes nothing, nor does a less calibrated landed file (a rate beside the cal)."""
    name = "jw01001001001_02101_00001_nrcb1"
    groups = pd.DataFrame({"obs_id": ["jw01001001001", "landed-mine", "landed-copy", "landed-rate"], "target": "T1"})
    rows = [("jw01001001001", f"{name}_cal", "archive"), ("landed-mine", f"{name}_cal", "mine"),
            ("landed-copy", f"{name}_cal", "archive"), ("landed-rate", f"{name}_rate", "rate")]
    images = pd.DataFrame(
        [(o, f"{n}.fits", f"files/{o}/{n}.fits", 1, s, "NIRCAM", "F444W", 2, None, None, 100.0) for o, n, s in rows],
        columns=["obs_id", "file_name", "path", "hdu_index", "sha256", "instrument_name", "filter", "calib_level",
                 "proposal_id", "asn_id", "t_exptime"])
    quality = pd.DataFrame({"sha256": ["archive", "mine", "rate"], "hdu_index": 1, "usable": True, "flag": "good",
                            "score": 90.0})
    with caplog.at_level(logging.INFO, logger="skyassets.imaging.targets"):
        inputs = target_inputs(groups, images, quality)["T1"]
    assert list(zip(inputs["obs_id"], inputs["sha256"], strict=True)) == [("landed-mine", "mine")]
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert said == [f"T1: {name}_cal.fits[1] ({obs_id}) left out, another version of the same exposure as "
                    f"{name}_cal.fits (landed-mine)" for obs_id in ("jw01001001001", "landed-copy")]
    # without one's own version: the archive's copy, before a landed copy of the same bytes
    inputs = target_inputs(groups, images[images["obs_id"] != "landed-mine"], quality)["T1"]
    assert list(inputs["obs_id"]) == ["jw01001001001"]


def test_a_cal_wins_over_its_rate_and_wfpc2_science_over_its_data_quality_files():
    """A JWST rate (counts per second) is the cal's exposure before flux calibration, and WFPC2's
    c1m/c1f hold the c0m/c0f's flags: neither is co-added, even as the only file of its exposure."""
    groups = pd.DataFrame({"obs_id": ["jw", "u9"], "target": ["T1", "T1"]})
    rows = [("jw", "jw01001001001_02101_00001_nrcb1_rate", 1), ("jw", "jw01001001001_02101_00001_nrcb1_cal", 1),
            *[("u9", f"u9o40504m_{s}", h) for s in ("c1m", "c0m", "c1f", "c0f") for h in (1, 2)],
            ("u9", "u9o40505m_c1m", 1)]
    images = pd.DataFrame(
        [(o, f"{n}.fits", f"files/{o}/{n}.fits", h, f"{n}#{h}", "X", "F555W", 2, None, None, 100.0)
         for o, n, h in rows],
        columns=["obs_id", "file_name", "path", "hdu_index", "sha256", "instrument_name", "filter", "calib_level",
                 "proposal_id", "asn_id", "t_exptime"])
    quality = pd.DataFrame({"sha256": images["sha256"], "hdu_index": images["hdu_index"],
                            "usable": True, "flag": "good", "score": 90.0})
    inputs = target_inputs(groups, images, quality)["T1"]
    assert sorted(zip(inputs["file_name"], inputs["hdu_index"], strict=True)) == [
        ("jw01001001001_02101_00001_nrcb1_cal.fits", 1), ("u9o40504m_c0m.fits", 1), ("u9o40504m_c0m.fits", 2)]


def _levelled(*rows: tuple[str, float | None]) -> pd.DataFrame:
    return pd.DataFrame({"file_name": [r[0] for r in rows], "calib_level": [r[1] for r in rows]})


def test_a_combined_product_gives_way_only_to_its_own_visits_exposures():
    images = _levelled(
        ("jw02733-o001_t001_nircam_clear-f090w_i2d.fits", 3),
        ("jw02733001001_02101_00001_nrcb1_cal.fits", 2),
        ("jw02733001001_02101_00002_nrcb1_cal.fits", 2),
        ("jw02733-o002_t001_nircam_clear-f090w_i2d.fits", 3),  # no exposure of observation 002 here
        ("j8pu01010_drz.fits", 3),
        ("j8pu01abq_flc.fits", 2),
        ("j8pu02010_drz.fits", 3),  # a visit with only its combined product
        ("night-0.fits", None),  # landed, no calibration level
    )
    kept = without_combined_duplicates(images)["file_name"].tolist()
    assert kept == [
        "jw02733001001_02101_00001_nrcb1_cal.fits", "jw02733001001_02101_00002_nrcb1_cal.fits",
        "jw02733-o002_t001_nircam_clear-f090w_i2d.fits", "j8pu01abq_flc.fits", "j8pu02010_drz.fits", "night-0.fits",
    ]


def test_a_combined_product_landed_under_another_name_gives_way_to_its_visits_exposures():
    """The drz of visit j8pu02 landed as ``NGC628_Überblick.fits``: its header's association
    (``asn_id``) names the visit its flc exposures belong to, so it is not co-added with them; a
    JWST i2d landed likewise by its association table; another visit's landed drz stays."""
    images = pd.DataFrame([
        ("landed-j8pu02010", "NGC628_Überblick.fits", 3, "J8PU02010"),
        ("j8pu02010", "j8pu02abq_flc.fits", 2, "J8PU02010"),
        ("landed-j8pu07010", "other_visit.fits", 3, "J8PU07010"),
        ("landed-mine", "my_i2d.fits", 3, "jw02733-o001_20220712t173322_image3_00004_asn.json"),
        ("jw02733001001", "jw02733001001_02101_00001_nrcb1_cal.fits", 2, None),
        ("landed-jw02733-o002_t001_nircam_clear-f090w", "renamed.fits", 3, None),
        ("jw02733002001", "jw02733002001_02101_00001_nrcb1_cal.fits", 2, None),
    ], columns=["obs_id", "file_name", "calib_level", "asn_id"])
    assert without_combined_duplicates(images)["file_name"].tolist() == [
        "j8pu02abq_flc.fits", "other_visit.fits", "jw02733001001_02101_00001_nrcb1_cal.fits",
        "jw02733002001_02101_00001_nrcb1_cal.fits"]


def test_combined_products_alone_or_of_unknown_names_are_kept():
    alone = _levelled(("jw01234-o005_t001_miri_f770w_i2d.fits", 3), ("jw01234-o006_t001_miri_f770w_i2d.fits", 3))
    assert without_combined_duplicates(alone).equals(alone)
    unknown = _levelled(("mosaic_a.fits", 3), ("jw02733001001_02101_00001_nrcb1_cal.fits", 2))
    assert without_combined_duplicates(unknown)["file_name"].tolist() == unknown["file_name"].tolist()
    both_unknown = _levelled(("mosaic_a.fits", 3), ("exposure_b.fits", 2))
    assert without_combined_duplicates(both_unknown)["file_name"].tolist() == ["exposure_b.fits"]
    assert visit_of("JW02733001001_02101_00001_NRCB1_cal.fits") == "jw02733-o001"
    assert visit_of("j8pu01abq_flt.fits") == "j8pu01" and visit_of("night-0.fits") is None


def _with_proposals(*rows: tuple[str, int, str | None]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["file_name", "calib_level", "proposal_id"])


def test_an_hla_product_gives_way_to_the_exposures_of_its_proposal_and_visit():
    """HLA names give the proposal and visit number, exposure names a program code: the exposures'
    proposal_id tells which HLA product they were combined into."""
    images = _with_proposals(
        ("j8pu01010_drz.fits", 3, "10402"),
        ("j8pu01abq_flc.fits", 2, "10402"),
        ("j8pu01acq_flc.fits", 2, "10402"),
        ("hst_10402_01_acs_wfc_f435w_drz.fits", 3, "10402"),  # made from the two flc: left out
        ("hst_10402_02_acs_wfc_f435w_drz.fits", 3, "10402"),  # visit 02: no exposure here
        ("hst_09999_01_acs_wfc_f435w_drz.fits", 3, "9999"),  # visit 01 of another proposal
    )
    assert without_combined_duplicates(images)["file_name"].tolist() == [
        "j8pu01abq_flc.fits", "j8pu01acq_flc.fits", "hst_10402_02_acs_wfc_f435w_drz.fits",
        "hst_09999_01_acs_wfc_f435w_drz.fits",
    ]
    assert visit_of("hst_10402_01_acs_wfc_f435w_drz.fits") == "hst_10402_01"
    assert visit_of("HST_05369_0A_WFPC2_F814W_PC_drz.fits") == "hst_5369_0a"


def test_an_hla_product_of_exposures_of_unknown_proposal():
    """Without proposal ids an exposure of the same visit number may be one the HLA product was
    made from, so the product is left out; by observation id as by file name."""
    images = _levelled(
        ("j8pu01abq_flc.fits", 2),
        ("hst_10402_01_acs_wfc_f435w_drz.fits", 3),
        ("hst_10402_02_acs_wfc_f435w_drz.fits", 3),
    )
    assert without_combined_duplicates(images)["file_name"].tolist() == [
        "j8pu01abq_flc.fits", "hst_10402_02_acs_wfc_f435w_drz.fits"]
    renamed = images.assign(obs_id=["j8pu01010", "hst_10402_01_acs_wfc_f435w", "hst_10402_02_acs_wfc_f435w"],
                            file_name=["j8pu01abq_flc.fits", "visit_a.fits", "visit_b.fits"])
    assert without_combined_duplicates(renamed)["file_name"].tolist() == ["j8pu01abq_flc.fits", "visit_b.fits"]


def test_an_hla_product_gives_way_to_the_pipeline_product_of_its_visit():
    """Without the exposures, the pipeline's drz and the HLA drz of one visit hold the same light:
    the pipeline's alone is co-added; a visit's only combined product still is."""
    images = _with_proposals(
        ("j8pu01010_drz.fits", 3, "10402"),
        ("hst_10402_01_acs_wfc_f435w_drz.fits", 3, "10402"),
        ("hst_10402_02_acs_wfc_f435w_drz.fits", 3, "10402"),
        ("hst_09999_01_acs_wfc_f435w_drz.fits", 3, "9999"),
    )
    assert without_combined_duplicates(images)["file_name"].tolist() == [
        "j8pu01010_drz.fits", "hst_10402_02_acs_wfc_f435w_drz.fits", "hst_09999_01_acs_wfc_f435w_drz.fits"]
    unknown = images.drop(columns="proposal_id")
    assert without_combined_duplicates(unknown)["file_name"].tolist() == [
        "j8pu01010_drz.fits", "hst_10402_02_acs_wfc_f435w_drz.fits"]
