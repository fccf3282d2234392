"""Image quality: against the truth of synthetic skies, on real images shipped in installed
packages, on broken files, and against the bare photutils chain for speed."""

import math
from pathlib import Path

import astropy
import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from skyassets.emulator.sky import make_wcs
from skyassets.fits.meta import extract
from skyassets.imaging.quality import (
    ELLIPTICITY_FREE,
    ELLIPTICITY_ZERO,
    GOOD_SCORE,
    MIN_STARS,
    QUALITY_SCHEMA,
    REJECT_SCORE,
    SCORE_COLUMNS,
    SOURCE_SCHEMA,
    Measurement,
    measure_array,
    measure_image,
    measured_from,
    physical_problems,
    score,
)

ZP = 28.0  # AB magnitude of 1 electron in the synthetic images
SCALE = 0.2  # arcsec per pixel of the synthetic images
N = 512


def star_field(n: int = N, *, fwhm: float = 3.0, beta: float = 3.0, ellipticity: float = 0.0, angle: float = 0.0,
               trail: float = 0.0, sky: float = 400.0, transparency: float = 1.0, stars: int = 150,
               cosmic_rays: int = 20, seed: int = 7) -> np.ndarray:
    """Electrons: elliptical Moffat stars integrated over 3x3 sub-pixels (``trail`` px of
    smearing along x), a flat sky, Poisson noise, cosmic rays of 1-3 pixels. The same seed
    puts the same stars in the same places, so variations differ only by what they change."""
    rng = np.random.default_rng(seed)
    half = 2 ** (1 / beta) - 1
    major, minor = fwhm / math.sqrt(1 - ellipticity), fwhm * math.sqrt(1 - ellipticity)
    alpha_major, alpha_minor = major / (2 * math.sqrt(half)), minor / (2 * math.sqrt(half))
    r = int(math.ceil(4 * major + trail)) + 2
    x, y = rng.uniform(r + 1, n - r - 2, stars), rng.uniform(r + 1, n - r - 2, stars)
    flux = 10 ** rng.uniform(3.0, 5.5, stars) * transparency
    cos, sin = math.cos(angle), math.sin(angle)
    sub = (np.arange(3) - 1) / 3
    shifts = np.linspace(-trail / 2, trail / 2, 9) if trail else np.zeros(1)
    image = np.full((n, n), sky)
    m = 2 * r + 1
    for xi, yi, fi in zip(x, y, flux, strict=True):
        x0, y0 = int(round(xi)), int(round(yi))
        xs = (np.arange(x0 - r, x0 + r + 1)[:, None] + sub).ravel()
        ys = (np.arange(y0 - r, y0 + r + 1)[:, None] + sub).ravel()
        profile = 0.0
        for shift in shifts:
            dx, dy = xs[None, :] - xi - shift, ys[:, None] - yi
            u, v = (cos * dx + sin * dy) / alpha_major, (-sin * dx + cos * dy) / alpha_minor
            profile = profile + (beta - 1) / (math.pi * alpha_major * alpha_minor) * (1 + u * u + v * v) ** -beta
        pixels = (profile / len(shifts)).reshape(m, 3, m, 3).mean(axis=(1, 3))
        image[y0 - r:y0 + r + 1, x0 - r:x0 + r + 1] += fi * pixels
    image = rng.poisson(image).astype(np.float32)
    for _ in range(cosmic_rays):
        cx, cy = rng.integers(5, n - 5, 2)
        image[cy, cx:cx + rng.integers(1, 4)] += rng.uniform(500, 5000)
    return image


def wcs(n: int = N) -> WCS:
    """A TAN WCS of SCALE arcsec per pixel for an n x n synthetic image."""
    return make_wcs(150.0, 2.0, SCALE, 0.0, n, sip=False)


# name -> (star_field arguments, zero point, extra: NaN patch / saturation level)
VARIATIONS = {
    "base": ({}, ZP, {}),
    "seeing x1.5": ({"fwhm": 4.5}, ZP, {}),
    "seeing x2": ({"fwhm": 6.0}, ZP, {}),
    "seeing x3": ({"fwhm": 9.0}, ZP, {}),
    "sky x2": ({"sky": 800.0}, ZP, {}),
    "sky x4": ({"sky": 1600.0}, ZP, {}),
    # Clouds dim the stars; the frame's calibrated zero point (measured on its stars) follows.
    "transparency 0.7": ({"transparency": 0.7}, ZP + 2.5 * math.log10(0.7), {}),
    "elliptical 0.2": ({"ellipticity": 0.2, "angle": 0.5}, ZP, {}),
    "trailed 4 px": ({"trail": 4.0}, ZP, {}),
    "NaN patch": ({}, ZP, {"nan": (slice(100, 228), slice(200, 328))}),
    "saturated": ({}, ZP, {"saturation": 20000.0}),
}


@pytest.fixture(scope="module")
def variations() -> pd.DataFrame:
    """The metrics of every variation, scored against the base image's depth."""
    rows = []
    for name, (kwargs, zp, extra) in VARIATIONS.items():
        image = star_field(**kwargs)
        if "nan" in extra:
            image[extra["nan"]] = np.nan
        if "saturation" in extra:
            image = np.minimum(image, extra["saturation"])
        m = measure_array(image, wcs=wcs(), zp_ab=zp, saturation=extra.get("saturation"))
        rows.append(m.metrics | {"file_name": name, "instrument_name": "SYNTH", "filter": "r",
                                 "n_saturated_sources": int(m.sources["flags"].str.contains("saturated").sum())})
    metrics = pd.DataFrame(rows)
    return score(metrics, reference_depth={("SYNTH", "r"): metrics.loc[0, "depth_5sigma_ab"]}).set_index("file_name")


def _injected_fwhm(name: str) -> float:
    """The FWHM (geometric mean of the axes) a variation was drawn with."""
    return VARIATIONS[name][0].get("fwhm", 3.0)


def test_fwhm_background_and_ellipticity_are_recovered(variations):
    for name in ("base", "seeing x1.5", "seeing x2", "seeing x3", "sky x2", "sky x4", "transparency 0.7",
                 "elliptical 0.2", "NaN patch", "saturated"):
        m = variations.loc[name]
        sky = VARIATIONS[name][0].get("sky", 400.0)
        assert m["fwhm_pix"] == pytest.approx(_injected_fwhm(name), rel=0.05), name
        assert m["fwhm_arcsec"] == pytest.approx(_injected_fwhm(name) * SCALE, rel=0.05), name
        assert abs(m["background"] - sky) < m["background_rms"], name
        assert m["background_rms"] == pytest.approx(math.sqrt(sky), rel=0.1), name
        assert m["ellipticity"] == pytest.approx(VARIATIONS[name][0].get("ellipticity", 0.0), abs=0.03), name
        assert m["n_stars_fitted"] >= 10 and m["usable"] and m["problem"] is None, name
        assert m["n_cosmic_rays"] >= 15, name


def test_each_degradation_lowers_the_score_by_its_documented_amount(variations):
    s = variations["score"]
    assert s["base"] > 99 and variations.loc["base", "flag"] == "good"
    # Depth term: effective exposure time against the base, 10^(0.8 Δm): 1/k² for seeing k
    # times worse (noise-equivalent area), 1/s for a sky s times brighter, T² for transparency T.
    assert s["seeing x1.5"] == pytest.approx(100 / 1.5 ** 2, rel=0.1)
    assert s["seeing x2"] == pytest.approx(100 / 2 ** 2, rel=0.1)
    assert s["seeing x3"] == pytest.approx(100 / 3 ** 2, rel=0.15)
    assert s["sky x2"] == pytest.approx(100 / 2, rel=0.1)
    assert s["sky x4"] == pytest.approx(100 / 4, rel=0.1)
    assert s["transparency 0.7"] == pytest.approx(100 * 0.7 ** 2, rel=0.1)
    # Shape term: 100 up to ellipticity 0.1, then linearly to 0 at 0.4; trailing also widens the PSF.
    for name in ("elliptical 0.2", "trailed 4 px"):
        e = variations.loc[name, "ellipticity"]
        assert variations.loc[name, "score_shape"] == pytest.approx(
            100 * min(1, max(0, 1 - (e - ELLIPTICITY_FREE) / (ELLIPTICITY_ZERO - ELLIPTICITY_FREE))))
    assert variations.loc["trailed 4 px", "ellipticity"] > 0.15
    assert s["elliptical 0.2"] == pytest.approx(100 * (1 - (0.2 - 0.1) / 0.3), rel=0.1)
    # Data term: the unusable fraction of the footprint (a 128 x 128 NaN patch in 512 x 512).
    assert variations.loc["NaN patch", "frac_nan"] == pytest.approx(128 ** 2 / N ** 2)
    assert s["NaN patch"] == pytest.approx(100 * (1 - 128 ** 2 / N ** 2), rel=0.01)
    saturated = variations.loc["saturated"]
    assert 0 < saturated["frac_saturated"] < 0.01 and saturated["n_saturated_sources"] > 0
    assert saturated["score_data"] == pytest.approx(100 * (1 - saturated["frac_unusable"]))
    assert s["base"] > s["saturated"] > s["NaN patch"]
    # The order a user expects, and the flags at their documented thresholds.
    assert s["base"] > s["seeing x1.5"] > s["seeing x2"] > s["seeing x3"]
    assert s["base"] > s["sky x2"] > s["sky x4"]
    assert s["elliptical 0.2"] > s["trailed 4 px"]
    for name, row in variations.iterrows():
        expected = "good" if row["score"] >= GOOD_SCORE else "reject" if row["score"] < REJECT_SCORE else "usable"
        assert row["flag"] == expected, name
    assert variations.loc["seeing x3", "flag"] == "reject"
    assert physical_problems(variations.reset_index()) == []


def test_a_field_where_every_background_box_is_masked_falls_back_to_global_statistics():
    image = star_field(stars=1500, seed=11)
    dq = np.zeros(image.shape, np.uint32)
    dq[:, ::6] = 1  # DO_NOT_USE columns: a sixth of every box, more than Background2D accepts
    m = measure_array(image, dq=dq, dq_kind="jwst", wcs=wcs(), zp_ab=ZP).metrics
    assert m["background_method"] == "sigma_clipped_stats"
    assert abs(m["background"] - 400.0) < m["background_rms"]
    assert m["frac_dq_flagged"] == pytest.approx(1 / 6, abs=0.01)
    assert m["frac_unusable"] == pytest.approx(m["frac_dq_flagged"], abs=0.01)
    assert m["fwhm_pix"] == pytest.approx(3.0, rel=0.05)


def test_dq_bits_follow_the_jwst_and_hst_conventions():
    image = star_field(stars=40, cosmic_rays=0)
    jwst = np.zeros(image.shape, np.uint32)
    jwst[:10, :] = 1 | (1 << 31)  # DO_NOT_USE + REFERENCE_PIXEL
    jwst[20:30, :] = 2  # SATURATED
    jwst[40:50, :] = 4  # JUMP_DET: corrected in the ramp fit, not unusable
    m = measure_array(image, dq=jwst, dq_kind="jwst", wcs=wcs()).metrics
    assert m["frac_dq_flagged"] == pytest.approx(10 / N) and m["frac_saturated"] == pytest.approx(10 / N)
    hst = np.zeros(image.shape, np.uint32)
    hst[:10, :] = 16 | 64  # hot and warm pixels: good after dark subtraction
    hst[20:30, :] = 2048  # A-to-D saturation
    hst[40:50, :] = 4096  # cosmic ray rejected by AstroDrizzle
    m = measure_array(image, dq=hst, dq_kind="hst", wcs=wcs()).metrics
    assert m["frac_dq_flagged"] == pytest.approx(20 / N) and m["frac_saturated"] == pytest.approx(10 / N)


def _level2(name: str) -> bool:
    """Single exposures: the only images with cosmic rays left in them."""
    return name.endswith(("_cal.fits", "_flt.fits", "_flc.fits"))


def _sci_wcs(path: Path) -> WCS:
    """The WCS of a file's SCI extension, to place truth positions on its pixels."""
    return WCS(fits.getheader(path, "SCI"))


def test_emulator_images_match_their_truth(emu):
    """JWST NIRCam (cal, i2d) and HST ACS (flt, flc, drz) images of NGC 628 against truth.json."""
    sky = emu.sky
    truth = sky.truth
    files = sorted(f for f in truth["files"] if f.startswith(("jw02107", "j8pu")))
    stars = truth["targets"]["NGC 628"]["stars"]
    star_sky = SkyCoord([s["ra"] for s in stars], [s["dec"] for s in stars], unit="deg")
    counts = {"cr": 0, "cr_labelled": 0, "star": 0, "star_labelled_cr": 0}
    rows = []
    for name in files:
        t = truth["files"][name]
        path = sky.root / name
        row = next(r for r in extract(path, sha256="0" * 64, obs_id=t["obs_id"]) if r["hdu_name"] == "SCI")
        m = measure_image(path, row["hdu_index"], row=row)
        metrics, sources = m.metrics, m.sources
        rows.append(metrics)
        assert metrics["usable"] and metrics["problem"] is None, name
        assert metrics["obs_id"] == t["obs_id"] and metrics["file_name"] == name and metrics["sha256"] == "0" * 64
        assert metrics["fwhm_pix"] == pytest.approx(t["fwhm_pix"], rel=0.05), name
        assert metrics["fwhm_arcsec"] == pytest.approx(truth["psf"][t["filter"]]["fwhm_arcsec"], rel=0.05), name
        assert abs(metrics["background"] - t["background"]) < metrics["background_rms"], name
        assert metrics["ellipticity"] < 0.03, name
        assert metrics["n_stars_fitted"] >= MIN_STARS, name
        assert metrics["pixel_scale_ratio"] == pytest.approx(1.0, abs=0.01), name
        assert metrics["footprint_finite"] and metrics["header_flags"] is None, name
        assert metrics["depth_5sigma_ab"] > 20 and metrics["frac_saturated"] > 0, name
        assert list(sources.columns) == SOURCE_SCHEMA.names and (sources["obs_id"] == t["obs_id"]).all()
        # Fitted stars are real stars, at their catalogue positions.
        fitted = sources[sources["flags"].str.contains("fitted")]
        _, separation, _ = SkyCoord(fitted["ra"], fitted["dec"], unit="deg").match_to_catalog_sky(star_sky)
        assert (separation.arcsec < 0.5 * t["pixel_scale_arcsec"]).all(), name
        # The bright stars that saturate are detected and flagged saturated.
        xy = sources[["x", "y"]].to_numpy()
        saturated = sources["flags"].str.contains("saturated").to_numpy()
        for i in (i for i in t["saturated_star_ids"] if stars[i]["bright"]):
            x, y = _sci_wcs(path).all_world2pix(stars[i]["ra"], stars[i]["dec"], 0)
            assert (saturated & (np.hypot(xy[:, 0] - x, xy[:, 1] - y) < 3)).any(), (name, i)
        if _level2(name):
            crs = np.array([[c["x"], c["y"]] for c in t["cosmic_rays"]])
            near_cr = cKDTree(crs).query(xy)[0] < 3
            star_xy = np.transpose(_sci_wcs(path).all_world2pix(star_sky.ra.deg, star_sky.dec.deg, 0))
            near_star = (cKDTree(star_xy).query(xy)[0] < 1.5) & ~near_cr & ~saturated
            is_cr = sources["flags"].str.contains("cosmic_ray").to_numpy()
            counts["cr"] += near_cr.sum()
            counts["cr_labelled"] += (near_cr & is_cr).sum()
            counts["star"] += near_star.sum()
            counts["star_labelled_cr"] += (near_star & is_cr).sum()
    assert counts["cr_labelled"] >= 0.9 * counts["cr"] and counts["cr"] > 100
    assert counts["star_labelled_cr"] <= 0.05 * counts["star"] and counts["star"] > 100
    scored = score(pd.DataFrame(rows))
    assert (scored["flag"] == "good").all(), scored.loc[scored["flag"] != "good", ["file_name", "flag_reason"]]
    assert physical_problems(scored) == []
    assert set(scored.columns) == set(QUALITY_SCHEMA.names)


SITE = Path(astropy.__file__).parent.parent
REAL = {
    # file, HDU, kind: ground images (photographic, infrared, a crowded cluster, SIP) and an HST cutout
    "m13": ("astropy/io/fits/hdu/compressed/tests/data/m13.fits", 0, "ground"),
    "ukidss": ("astroquery/ukidss/tests/data/image.fits", 1, "ground"),
    "palomar": ("astroquery/ipac/ned/tests/data/query_images.fits", 0, "ground"),
    "megaprime": ("astroquery/cadc/tests/data/query_images.fits", 0, "ground"),
    "sip": ("astropy/nddata/tests/data/sip-wcs.fits", 0, "ground"),
    "hst": ("astropy/wcs/tests/data/dist_lookup.fits.gz", 1, "space"),
}


def test_real_images_from_installed_packages():
    rows = {}
    for key, (relative, hdu, kind) in REAL.items():
        m = measure_image(SITE / relative, hdu).metrics
        rows[key] = m
        assert m["problem"] is None and m["usable"], key  # every one has a celestial WCS (DSS plates too)
        assert m["background_rms"] > 0 and m["footprint_finite"], key
        if m["fwhm_arcsec"] is not None:
            low, high = (0.3, 10.0) if kind == "ground" else (0.03, 0.5)
            assert low < m["fwhm_arcsec"] < high, key
            assert 0 <= m["ellipticity"] < 0.5, key
    assert rows["m13"]["n_stars_fitted"] >= 10  # a crowded globular cluster still gives isolated stars
    ukidss = fits.getheader(SITE / REAL["ukidss"][0], 1)
    assert rows["ukidss"]["fwhm_pix"] == pytest.approx(ukidss["SEEING"], rel=0.25)  # the survey's own FWHM
    assert rows["megaprime"]["n_sources"] == 0  # 2 s of blank sky
    scored = score(pd.DataFrame(rows.values()))
    assert physical_problems(scored) == []
    assert scored.loc[list(rows).index("megaprime"), "flag"] == "reject"
    assert "too few stars" in scored.loc[list(rows).index("megaprime"), "flag_reason"]


def test_broken_and_empty_images_give_a_problem_naming_the_file(emu, tmp_path):
    source = next(emu.sky.root.glob("jw02107*_nrcb1_cal.fits"))
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"not a FITS file at all" * 200)
    truncated = tmp_path / "truncated_cal.fits"
    truncated.write_bytes(source.read_bytes()[:30000])
    blank = tmp_path / "blank_cal.fits"
    with fits.open(source) as hdul:
        hdul["SCI"].data = np.full_like(hdul["SCI"].data, np.nan)
        hdul.writeto(blank)
    cases = [(garbage, 0), (truncated, 1), (blank, 1), (source, 9), (tmp_path / "missing.fits", 1)]
    rows = []
    for path, hdu in cases:
        m = measure_image(path, hdu)
        assert not m.metrics["usable"], path
        assert m.metrics["problem"].startswith(f"{path.name}[{hdu}]: "), m.metrics["problem"]
        assert m.sources.empty and list(m.sources.columns) == SOURCE_SCHEMA.names
        rows.append(m.metrics)
    assert "no finite, non-zero pixel" in rows[2]["problem"] and rows[2]["frac_nan"] == 1.0
    assert "no HDU 9" in rows[3]["problem"]
    scored = score(pd.DataFrame(rows))
    assert (scored["score"] == 0).all() and (scored["flag"] == "reject").all()
    assert all(p.name in r for (p, _), r in zip(cases, scored["flag_reason"], strict=True))


def test_an_image_without_wcs_is_measured_but_not_usable(tmp_path):
    path = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(star_field(stars=60)).writeto(path)
    m = measure_image(path, 0).metrics
    assert not m["usable"] and m["problem"] == "nowcs.fits[0]: no celestial WCS"
    assert m["fwhm_pix"] == pytest.approx(3.0, rel=0.05) and m["fwhm_arcsec"] is None
    # the catalogue says the same, in more words: said once
    catalogued = measure_image(path, 0, row={"wcs_problem": "no celestial WCS (CTYPE: none)"}).metrics
    assert catalogued["problem"] == "nowcs.fits[0]: no celestial WCS (CTYPE: none)"
    scored = score(pd.DataFrame([m]))
    assert scored.loc[0, "score"] == 0 and scored.loc[0, "flag"] == "reject"


def test_an_image_whose_catalogued_wcs_is_broken_is_not_usable_though_wcslib_reads_one(tmp_path):
    path = tmp_path / "zerocd.fits"
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 2.0,
                          "CRPIX1": 50.0, "CRPIX2": 50.0, "CD1_1": 0.0, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 0.0})
    fits.PrimaryHDU(star_field(stars=60), header).writeto(path)
    assert measure_image(path, 0).metrics["usable"]  # wcslib takes a zero CD matrix as absent: 1-degree pixels
    problem = "CD matrix is singular (determinant 0): pixels have no sky position"
    m = measure_image(path, 0, row={"wcs_problem": problem}).metrics
    assert not m["usable"] and m["problem"] == f"zerocd.fits[0]: {problem}"
    # its size in pixels stands; in arcseconds it has none (not 3600" pixels)
    assert m["fwhm_pix"] > 0 and m["pixel_scale"] is m["fwhm_arcsec"] is m["pixel_scale_ratio"] is None
    assert score(pd.DataFrame([m])).loc[0, "flag"] == "reject"


def test_header_flags_and_an_odd_pixel_scale_cap_the_flag():
    image = star_field(stars=80)
    header = fits.Header({"TELESCOP": "HST", "INSTRUME": "ACS", "DETECTOR": "WFC", "EXPFLAG": "NORMAL",
                          "FGSLOCK": "GYROS"})
    hst = measure_array(image, header=header, wcs=wcs(), zp_ab=ZP).metrics
    assert hst["header_flags"] == "FGSLOCK=GYROS"
    assert hst["pixel_scale_nominal"] == 0.05 and hst["pixel_scale_ratio"] == pytest.approx(SCALE / 0.05)
    header = fits.Header({"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "DETECTOR": "NRCBLONG", "ENG_QUAL": "SUSPECT"})
    jwst = measure_array(image, header=header, wcs=wcs(), zp_ab=ZP, pixel_scale=0.063).metrics
    assert jwst["header_flags"] == "ENG_QUAL=SUSPECT" and jwst["pixel_scale_ratio"] == pytest.approx(1.0)
    scored = score(pd.DataFrame([hst, jwst]))
    assert (scored["score"] > GOOD_SCORE).all() and (scored["flag"] == "usable").all()
    assert "FGSLOCK=GYROS" in scored.loc[0, "flag_reason"] and "nominal" in scored.loc[0, "flag_reason"]
    assert "ENG_QUAL=SUSPECT" in scored.loc[1, "flag_reason"]


def test_depth_against_the_reference_of_earlier_images_and_the_gates():
    base = {"usable": True, "n_stars_fitted": 30, "ellipticity": 0.02, "frac_unusable": 0.0, "instrument_name": "X",
            "filter": "F1", "file_name": "a.fits", "hdu_index": 1}
    rows = pd.DataFrame([base | {"depth_5sigma_ab": 25.0}, base | {"depth_5sigma_ab": 24.5},
                         base | {"depth_5sigma_ab": 25.0, "n_stars_fitted": 2},
                         base | {"depth_5sigma_ab": 25.0, "filter": None}])
    own = score(rows)  # the median of the rows given
    assert own.loc[0, "depth_reference_ab"] == 25.0 and own.loc[0, "score"] == pytest.approx(100)
    assert own.loc[1, "effective_time_ratio"] == pytest.approx(10 ** (0.8 * -0.5))
    assert own.loc[2, "score"] == 0 and "too few stars" in own.loc[2, "flag_reason"]
    assert own.loc[3, "depth_reference_ab"] == 25.0  # its own group: no filter
    earlier = score(rows, reference_depth={("X", "F1"): 25.5, ("X", None): 24.0})
    assert earlier.loc[0, "score_depth"] == pytest.approx(100 * 10 ** (0.8 * -0.5))
    assert earlier.loc[3, "score_depth"] == 100 and earlier.loc[3, "effective_time_ratio"] > 1
    assert list(score(rows.iloc[:0]).columns[-len(SCORE_COLUMNS):]) == list(SCORE_COLUMNS)


def test_physical_problems_name_the_image_and_the_quantity():
    rows = pd.DataFrame([{"file_name": "a.fits", "hdu_index": 1, "frac_nan": 1.5, "fwhm_pix": -1.0, "score": 120.0,
                          "ellipticity": 1.0},
                         {"file_name": "b.fits", "hdu_index": 2, "frac_nan": 0.0, "fwhm_pix": 2.0, "score": 50.0,
                          "ellipticity": 0.1}])
    problems = physical_problems(rows)
    assert len(problems) == 4 and all(p.startswith("a.fits[1]: ") for p in problems)
    assert any("frac_nan = 1.5" in p for p in problems) and any("ellipticity" in p for p in problems)




def test_flagged_hot_pixels_do_not_reach_detection():
    """Hot pixels flagged DO_NOT_USE keep finite, high values in cal files: they are neither sources
    nor cosmic rays; the unflagged cosmic rays still are."""
    clean = star_field(cosmic_rays=25, seed=5)
    hot = clean.copy()
    rng = np.random.default_rng(5)
    ys, xs = rng.integers(0, N, (2, 150))
    hot[ys, xs] += rng.uniform(2000, 20000, 150)
    dq = np.zeros(hot.shape, np.uint32)
    dq[ys, xs] = 1  # DO_NOT_USE
    without = measure_array(clean, wcs=wcs(), zp_ab=ZP).metrics
    flagged = measure_array(hot, dq=dq, dq_kind="jwst", wcs=wcs(), zp_ab=ZP).metrics
    assert abs(flagged["n_sources"] - without["n_sources"]) <= 2
    assert abs(flagged["n_cosmic_rays"] - without["n_cosmic_rays"]) <= 2 and 15 <= flagged["n_cosmic_rays"] <= 30
    unflagged = measure_array(hot, wcs=wcs(), zp_ab=ZP).metrics  # the same pixels without DQ: detected
    assert unflagged["n_sources"] >= without["n_sources"] + 100


@pytest.mark.parametrize("masked", [False, True])
def test_noise_is_corrected_for_sigma_clipping(masked):
    """Pure Gaussian noise: the clipped standard deviation is 1.9 % low; the reported noise is not,
    from Background2D and from the global fallback alike."""
    image = np.random.default_rng(3).normal(100.0, 10.0, (N, N)).astype(np.float32)
    dq = np.zeros(image.shape, np.uint32)
    if masked:
        dq[:, ::6] = 1  # every background box too masked: the global estimate
    m = measure_array(image, dq=dq, dq_kind="jwst", wcs=wcs()).metrics
    assert m["background_method"] == ("sigma_clipped_stats" if masked else "Background2D")
    assert m["background_rms"] == pytest.approx(10.0, rel=0.005)


def test_galaxies_and_cluster_light_are_not_taken_for_noise():
    """A cluster field: broad intracluster light up to 8 sigma and 800 compact galaxies over unit
    noise. Measured within background boxes, their faint wings read as noise (1.6 sigma), and the
    frame's depth came out half a magnitude shallow; with the sources masked it is the noise."""
    rng = np.random.default_rng(5)
    n = 1024
    y, x = np.mgrid[0:n, 0:n].astype(float)
    image = 10.0 + 8.0 * np.exp(-((x - 500) ** 2 + (y - 540) ** 2) / (4 * 260.0**2)) + rng.normal(0, 1.0, (n, n))
    for _ in range(800):
        cx, cy, width, peak = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(2, 8), rng.uniform(3, 40)
        box = (slice(max(int(cy - 5 * width), 0), min(int(cy + 5 * width), n)),
               slice(max(int(cx - 5 * width), 0), min(int(cx + 5 * width), n)))
        image[box] += peak * np.exp(-((x[box] - cx) ** 2 + (y[box] - cy) ** 2) / (2 * width**2))
    m = measure_array(image.astype(np.float32), wcs=wcs(n)).metrics
    assert m["background_method"] == "Background2D"
    assert m["background_rms"] == pytest.approx(1.0, rel=0.04)


def test_what_a_measurement_read_is_named_by_a_digest_that_changes_with_any_of_it(monkeypatch):
    import skyassets.imaging.quality as quality

    row = {"sha256": "ab" * 32, "zp_ab": 25.3, "pixel_scale": 0.031, "wcs_problem": None, "file_name": "a.fits"}
    digest = measured_from(row, 1)
    assert digest == measured_from({**row, "file_name": "b.fits", "obs_id": "other", "path": "x/b.fits"}, 1)
    assert digest == measured_from({**row, "wcs_problem": float("nan")}, 1)  # a catalogue's NaN is none
    changed = [measured_from({**row, "sha256": "cd" * 32}, 1), measured_from(row, 2),
               measured_from({**row, "zp_ab": 25.4}, 1), measured_from({**row, "pixel_scale": None}, 1),
               measured_from({**row, "wcs_problem": "the CD matrix is singular"}, 1)]
    assert len({digest, *changed}) == 6
    assert measured_from({**row, "sha256": None}, 1) is None  # nothing says two such copies are the same bytes
    monkeypatch.setattr(quality, "QUALITY_RECIPE", quality.QUALITY_RECIPE + 1)
    assert measured_from(row, 1) != digest


def test_a_measurement_named_for_another_copy_carries_that_copy_s_name_everywhere():
    sources = pd.DataFrame({"obs_id": ["o1"] * 2, "sha256": ["s"] * 2, "hdu_index": [1, 1],
                            "file_name": ["a.fits"] * 2, "path": ["o1/a.fits"] * 2, "flux": [1.0, 2.0]})
    metrics = {"obs_id": "o1", "sha256": "s", "hdu_index": 1, "file_name": "a.fits", "path": "o1/a.fits",
               "problem": "a.fits[1]: 30% of the pixels are NaN", "background": 3.0}
    measured = Measurement(metrics, sources, None, "previews/o1/a.fits.1.png")
    copy = measured.of({"obs_id": "o2", "sha256": "s", "file_name": "b.fits", "path": "o2/b.fits"})
    assert copy.metrics["problem"] == "b.fits[1]: 30% of the pixels are NaN" and copy.metrics["background"] == 3.0
    assert (copy.metrics["obs_id"], copy.metrics["file_name"], copy.metrics["path"]) == ("o2", "b.fits", "o2/b.fits")
    assert set(copy.sources["file_name"]) == {"b.fits"} and set(copy.sources["obs_id"]) == {"o2"}
    assert copy.sources["flux"].tolist() == [1.0, 2.0] and copy.thumbnail == measured.thumbnail
    assert measured.metrics["file_name"] == "a.fits" and set(sources["file_name"]) == {"a.fits"}  # left as it was
