import bz2
import gzip
import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from skyassets.emulator.sky import Sky, SkySpec, make_wcs
from skyassets.fits import bandpasses
from skyassets.fits import header as fitsheader
from skyassets.fits import meta as fitsmeta
from skyassets.fits.header import NotPlainFits
from skyassets.fits.meta import (
    IMAGE_SCHEMA,
    UnreadableFits,
    extract,
    extract_many,
    quarantine,
    release_quarantined,
    to_table,
)

SITE = Path(fits.__file__).parents[3]


def site_file(rel: str) -> Path:
    path = SITE / rel
    if not path.exists():
        pytest.skip(f"{rel} not installed")
    return path


@pytest.fixture(scope="module")
def sky(tmp_path_factory) -> Sky:
    return Sky(tmp_path_factory.mktemp("sky"), SkySpec(image_size=64, stars_per_target=8))


def _unit_vectors(ra, dec):
    a, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=-1)


def polygon_contains(region: str, ra: float, dec: float) -> bool:
    """Point in a convex spherical polygon: on the same side of every edge's great circle."""
    numbers = [float(w) for w in region.split()[2:]]
    v = _unit_vectors(np.array(numbers[::2]), np.array(numbers[1::2]))
    p = _unit_vectors(ra, dec)
    sides = [np.dot(np.cross(v[i], v[(i + 1) % len(v)]), p) for i in range(len(v))]
    return all(s > 0 for s in sides) or all(s < 0 for s in sides)


def write_image(path: Path, primary: dict, *, shape=(20, 30), ext: dict | None = None,
                wcs: WCS | None = None) -> Path:
    """A small FITS file: keywords in the primary, the image in the primary or an extension."""
    data = np.zeros(shape, dtype=np.float32)
    ph = fits.Header(list(primary.items()))
    if ext is None:
        hdus = [fits.PrimaryHDU(data, header=ph)]
    else:
        hdus = [fits.PrimaryHDU(header=ph), fits.ImageHDU(data, header=fits.Header(list(ext.items())),
                                                          name=ext.get("EXTNAME", "SCI"))]
    if wcs is not None:
        hdus[-1].header.update(wcs.to_header(relax=True))
    fits.HDUList(hdus).writeto(path)
    return path


# ----------------------------------------------------------------------- emulator sky
def test_emulator_rows_match_the_truth(sky):
    files = sorted(sky.root.glob("*.fits"))
    frame, failures = extract_many(files, processes=1)
    assert failures == []
    assert len(frame) == len(files)  # one SCI row per file, no ERR/DQ rows
    assert set(frame["hdu_name"]) == {"SCI"}
    obs_of = {p["productFilename"]: o for o in sky.observations for p in sky.products[o["obsid"]]}
    for row in to_table(frame).to_pylist():
        name = row["file_name"]
        obs = obs_of[name]
        truth = sky.truth["files"].get(name)
        kind = name.rsplit("_", 1)[1].split(".")[0]
        assert row["calib_level"] == {"uncal": 1, "raw": 1, "cal": 2, "flt": 2, "flc": 2}.get(kind, 3)
        assert row["obs_collection"] == obs["obs_collection"]
        assert row["proposal_id"] == obs["proposal_id"]
        assert row["filter"] == obs["filters"]
        assert row["dataproduct_type"] == "image" and row["access_format"] == "image/fits"
        instrument = "NIRCAM" if obs["obs_collection"] == "JWST" else "ACS/WFC"
        band = bandpasses.lookup(instrument, obs["filters"])
        assert (row["em_min"], row["em_max"]) == (band.em_min, band.em_max)
        assert obs["em_min"] * 1e-9 < band.pivot < obs["em_max"] * 1e-9
        assert obs["t_min"] - 1e-6 <= row["t_min"] < row["t_max"] <= obs["t_max"] + 1e-6
        if kind in ("i2d", "drz"):
            assert row["obs_id"] == obs["obs_id"]
            assert row["t_min"] == pytest.approx(obs["t_min"], abs=1e-5)
            assert row["t_max"] == pytest.approx(obs["t_max"], abs=1e-5)
            assert row["t_exptime"] == pytest.approx(obs["t_exptime"])
        if truth is None:  # raw / uncal: no WCS written
            assert row["s_ra"] is None and row["s_region"] is None
            assert "no celestial WCS" in row["wcs_problem"]
            continue
        assert row["wcs_problem"] is None
        assert row["t_exptime"] == pytest.approx(truth["exptime"])
        assert row["bunit"] == truth["bunit"]
        assert row["pixel_scale"] == pytest.approx(truth["pixel_scale_arcsec"], rel=1e-6)
        header = fits.getheader(sky.root / name, "SCI")
        nx, ny = header["NAXIS1"], header["NAXIS2"]
        ra, dec = WCS(header).all_pix2world((nx - 1) / 2, (ny - 1) / 2, 0)
        assert row["s_ra"] == pytest.approx(float(ra), abs=1e-7)
        assert row["s_dec"] == pytest.approx(float(dec), abs=1e-7)
        assert polygon_contains(row["s_region"], row["s_ra"], row["s_dec"])
        assert polygon_contains(obs["s_region"], row["s_ra"], row["s_dec"])
        assert row["s_fov"] == pytest.approx(nx * math.sqrt(2) * truth["pixel_scale_arcsec"] / 3600, rel=0.02)
        assert (row["s_xel1"], row["s_xel2"]) == (nx, ny)
        if obs["obs_collection"] == "JWST":
            assert row["o_ucd"] == "phot.flux.density.sb"
            assert row["photmjsr"] == pytest.approx(truth["photmjsr"])
            assert row["zp_ab"] == pytest.approx(-2.5 * math.log10(row["pixar_sr"] * 1e6 / 3631))
        else:
            assert row["o_ucd"] == "phot.count"
            per_second = -2.5 * math.log10(row["photflam"]) - 5 * math.log10(row["photplam"]) - 2.408
            scale = 0 if kind == "drz" else 2.5 * math.log10(row["t_exptime"])
            assert row["zp_ab"] == pytest.approx(per_second + scale)
        header_json = json.loads(row["header_json"])
        assert header_json["primary"]["TELESCOP"] == obs["obs_collection"]
        assert header_json["extension"]["EXTNAME"] == "SCI"


def test_header_s_region_is_used_without_building_a_wcs(sky, tmp_path, monkeypatch):
    src = next(sky.root.glob("*_cal.fits"))
    path = tmp_path / src.name
    shutil.copy(src, path)
    region = "POLYGON ICRS  10.0 -1.0  10.2 -1.0  10.2 -0.8  10.0 -0.8"
    with fits.open(path, mode="update") as hdul:
        hdul["SCI"].header["S_REGION"] = region

    def no_wcs(*args, **kwargs):
        raise AssertionError("a WCS was built although S_REGION is present")

    monkeypatch.setattr(fitsmeta, "WCS", no_wcs)
    (row,) = extract(path)
    assert row["s_region"] == "POLYGON ICRS 10.0 -1.0 10.2 -1.0 10.2 -0.8 10.0 -0.8"
    assert row["s_ra"] == pytest.approx(10.1, abs=1e-4) and row["s_dec"] == pytest.approx(-0.9, abs=1e-4)
    assert row["s_fov"] == pytest.approx(math.hypot(0.2 * math.cos(math.radians(0.9)), 0.2), rel=1e-3)
    assert row["pixel_scale"] == pytest.approx(0.031, rel=1e-6)


def test_caller_metadata_is_kept(sky):
    src = next(sky.root.glob("*_i2d.fits"))
    (row,) = extract(src, sha256="ab" * 32, access_url="s3://stpubdata/x", obs_id="given", size=4096)
    assert (row["sha256"], row["access_url"], row["obs_id"], row["size"]) == (
        "ab" * 32, "s3://stpubdata/x", "given", 4096)
    assert row["access_estsize"] == 4
    assert row["obs_publisher_did"] == "ivo://archive.stsci.edu/jwst?given"


# --------------------------------------------------------------------- real files
def test_ukidss_image_of_the_crab():
    (row,) = extract(site_file("astroquery/ukidss/tests/data/image.fits"))
    assert row["hdu_name"] == "WSAIMAGE" and row["facility_name"] == "UKIRT"
    assert SkyCoord(row["s_ra"], row["s_dec"], unit="deg").separation(
        SkyCoord(83.633, 22.0145, unit="deg")).deg < 0.05
    assert row["pixel_scale"] == pytest.approx(0.2, rel=0.05)
    assert row["filter"] == "K"
    assert (row["em_min"], row["em_max"]) == (bandpasses.lookup("WFCAM", "K").em_min,
                                              bandpasses.lookup("WFCAM", "K").em_max)
    assert row["t_min"] == pytest.approx(54384.55006)  # MJD-OBS, not DATE-OBS
    assert row["t_exptime"] > 0 and row["t_max"] > row["t_min"]
    assert polygon_contains(row["s_region"], row["s_ra"], row["s_dec"])


def test_acs_flt_with_stripped_data_gives_one_row_per_chip():
    path = site_file("astropy/wcs/tests/data/j94f05bgq_flt.fits")
    rows = extract(path)
    assert [(r["hdu_index"], r["hdu_name"], r["hdu_ver"], r["ccdchip"]) for r in rows] == [
        (1, "SCI", 1, 2), (4, "SCI", 2, 1)]
    for r in rows:
        assert (r["s_xel1"], r["s_xel2"]) == (4096, 2048)  # from ONAXISn: NAXISn are 1
        assert r["filter"] == "F606W"  # FILTER2 = CLEAR2L
        assert r["instrument_name"] == "ACS/WFC"
        assert r["em_min"] < 606e-9 < r["em_max"]
        assert r["pixel_scale"] == pytest.approx(0.05, rel=0.03)
        assert r["s_fov"] == pytest.approx(math.hypot(4096, 2048) * 0.05 / 3600, rel=0.05)
        assert r["calib_level"] == 2 and r["obs_id"] == "j94f05bgq"
        assert r["zp_ab"] == pytest.approx(26.49 + 2.5 * math.log10(400.0), abs=0.02)
        header = fits.getheader(path, r["hdu_index"])
        w = WCS(header)
        ra, dec = w.all_pix2world(4095 / 2, 2047 / 2, 0)
        assert (r["s_ra"], r["s_dec"]) == pytest.approx((float(ra), float(dec)), abs=1e-7)
    assert SkyCoord(rows[0]["s_ra"], rows[0]["s_dec"], unit="deg").separation(
        SkyCoord(rows[1]["s_ra"], rows[1]["s_dec"], unit="deg")).arcsec == pytest.approx(102, abs=10)


def test_a_file_renamed_keeps_the_calibration_level_its_pipeline_name_gives(tmp_path):
    """A file landed under its owner's name is as calibrated as the name in its FILENAME card says:
    an HST drz stays a combined product (which gives way to its own visit's exposures in a mosaic)."""
    original = site_file("astropy/wcs/tests/data/j94f05bgq_flt.fits")
    renamed = tmp_path / "my_field.fits"
    shutil.copyfile(original, renamed)
    assert {r["calib_level"] for r in extract(renamed)} == {2}
    with fits.open(renamed, mode="update") as hdul:
        hdul[0].header["FILENAME"] = "j94f05010_drz.fits"
    assert {r["calib_level"] for r in extract(renamed)} == {3}
    with fits.open(renamed, mode="update") as hdul:
        hdul[0].header["FILENAME"] = "my_field.fits"  # a name of no pipeline: no level
    assert {r["calib_level"] for r in extract(renamed)} == {None}


def test_stis_spectral_image_has_no_sky_footprint():
    rows = extract(site_file("astropy/io/fits/tests/data/o4sp040b0_raw.fits"))
    assert [r["hdu_index"] for r in rows] == [1, 4]
    for r in rows:
        assert r["s_region"] is None and r["s_ra"] is None
        assert r["wcs_problem"].startswith("no celestial WCS")
        assert r["instrument_name"] == "STIS/CCD" and r["filter"] is None
        assert r["calib_level"] == 1 and r["o_ucd"] == "phot.count"
        assert r["t_exptime"] == 30.0
    assert rows[0]["t_min"] == pytest.approx(50923.77657113)


def test_compressed_images_match_the_uncompressed_one(tmp_path):
    base = site_file("astropy/io/fits/hdu/compressed/tests/data/m13.fits")
    (plain,) = extract(base)
    gz = tmp_path / "m13.fits.gz"
    gz.write_bytes(gzip.compress(base.read_bytes()))
    with fits.open(base) as hdul:
        fz = tmp_path / "m13.fits.fz"
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(hdul[0].data, hdul[0].header)]).writeto(fz)
    for path in (gz, fz, site_file("astropy/io/fits/hdu/compressed/tests/data/m13_rice.fits")):
        (row,) = extract(path)
        assert (row["s_ra"], row["s_dec"], row["s_xel1"]) == pytest.approx(
            (plain["s_ra"], plain["s_dec"], plain["s_xel1"]), abs=1e-9)
        assert row["s_region"] == plain["s_region"]


def test_a_compressed_copy_names_the_image_of_the_file_it_holds(tmp_path, monkeypatch):
    """``fits_sha256`` is the image's identity: the plain file's SHA-256 for its .gz and .bz2
    copies (whose own ``sha256`` differs), so the catalogue keeps them as one image."""
    base = site_file("astropy/io/fits/hdu/compressed/tests/data/m13.fits")
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    (plain,) = extract(base, sha256=digest)
    assert plain["fits_sha256"] == plain["sha256"] == digest
    gz, bz = tmp_path / "m13.fits.gz", tmp_path / "m13.fits.bz2"
    gz.write_bytes(gzip.compress(base.read_bytes()))
    bz.write_bytes(bz2.compress(base.read_bytes()))
    for path in (gz, bz):
        own = hashlib.sha256(path.read_bytes()).hexdigest()
        (row,) = extract(path, sha256=own)
        assert (row["sha256"], row["fits_sha256"]) == (own, digest)

    def not_plain(*args):
        raise NotPlainFits("test")

    monkeypatch.setattr(fitsheader, "plain_cards", not_plain)  # headers astropy reads: hashed all the same
    (row,) = extract(gz)
    assert row["fits_sha256"] == digest


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning",
                            "ignore::astropy.io.fits.verify.VerifyWarning")
@pytest.mark.parametrize("rel", [
    "astroquery/magpis/tests/data/image.fits",        # galactic SIN
    "astropy/modeling/tests/data/1904-66_AZP.fits",   # zenithal perspective, Jy/beam
    "astropy/io/fits/tests/data/comp.fits",           # tile-compressed
    "astropy/wcs/tests/data/dss.14.29.56-62.41.05.fits.gz",  # DSS plate solution, gzip
    "reproject/tests/data/equatorial_3d.fits",        # cube
    "astropy/io/fits/tests/data/checksum.fits",
])
def test_real_file_centre_is_the_wcs_centre_in_icrs(rel):
    path = site_file(rel)
    for row in extract(path):
        header = fits.getheader(path, row["hdu_index"])
        w = WCS(header).celestial
        nx, ny = row["s_xel1"], row["s_xel2"]
        if row["wcs_problem"]:
            pytest.fail(row["wcs_problem"])
        centre = w.pixel_to_world((nx - 1) / 2, (ny - 1) / 2).icrs
        assert row["s_ra"] == pytest.approx(centre.ra.deg, abs=1e-6)
        assert row["s_dec"] == pytest.approx(centre.dec.deg, abs=1e-6)
        assert polygon_contains(row["s_region"], row["s_ra"], row["s_dec"])
        assert row["s_fov"] > 0 and row["pixel_scale"] > 0
        assert row["dataproduct_type"] == ("cube" if "3d" in rel else "image")


def test_files_without_images_give_no_rows_and_solar_frames_say_why():
    assert extract(site_file("astropy/io/fits/tests/data/random_groups.fits")) == []
    assert extract(site_file("astropy/io/fits/tests/data/tb.fits")) == []
    (row,) = extract(site_file("reproject/tests/data/aia_171_level1.fits"))
    assert row["s_ra"] is None and "ICRS" in row["wcs_problem"] and "HPLN" in row["wcs_problem"]
    assert row["t_min"] < row["t_max"]


def test_wfpc2_takes_filter_names_not_wheel_numbers():
    rows = extract(site_file("astropy/io/fits/tests/data/test0.fits"))
    assert len(rows) == 4 and {r["filter"] for r in rows} == {"F673N"}
    assert all(r["instrument_name"] == "WFPC2" for r in rows)


# ---------------------------------------------------------------- synthetic headers
@pytest.mark.parametrize("keys, filt, band", [
    ({"INSTRUME": "ACS", "DETECTOR": "WFC", "FILTER1": "CLEAR1L", "FILTER2": "F814W"}, "F814W", ("ACS/WFC", "F814W")),
    ({"INSTRUME": "ACS", "DETECTOR": "WFC", "FILTER1": "F606W", "FILTER2": "POL0V"}, "F606W;POL0V",
     ("ACS/WFC", "F606W")),
    ({"INSTRUME": "ACS", "DETECTOR": "WFC", "FILTER1": "CLEAR1L", "FILTER2": "CLEAR2L"}, None, None),
    ({"INSTRUME": "WFPC2", "FILTER1": 23, "FILTNAM1": "F555W", "FILTNAM2": ""}, "F555W", ("WFPC2", "F555W")),
    ({"INSTRUME": "NIRISS", "FILTER": "CLEAR", "PUPIL": "F150W"}, "F150W", ("NIRISS", "F150W")),
    ({"INSTRUME": "NIRCAM", "FILTER": "F444W", "PUPIL": "F405N"}, "F444W;F405N", ("NIRCAM", "F405N")),
    ({"INSTRUME": "NIRCAM", "FILTER": "F444W", "PUPIL": "CLEAR"}, "F444W", ("NIRCAM", "F444W")),
    ({"INSTRUME": "MIRI", "FILTER": "F770W"}, "F770W", ("MIRI", "F770W")),
    ({"INSTRUME": "WFC3", "DETECTOR": "IR", "FILTER": "F160W"}, "F160W", ("WFC3/IR", "F160W")),
    ({"INSTRUME": "SomeCam", "FILTER": "r'"}, "r'", ("SDSS", "R")),
    ({"INSTRUME": "SomeCam", "FILTER": "Rc"}, "Rc", ("JOHNSON", "R")),
    ({"INSTRUME": "SomeCam", "FILTER": "V"}, "V", ("JOHNSON", "V")),
    ({"INSTRUME": "SomeCam", "FILTER": "Ks"}, "Ks", ("2MASS", "KS")),
    ({"INSTRUME": "SomeCam", "FILTER": "Halpha"}, "Halpha", None),
])
def test_filters_and_bandpass(tmp_path, keys, filt, band):
    telescope = {"ACS": "HST", "WFPC2": "HST", "WFC3": "HST", "NIRISS": "JWST", "NIRCAM": "JWST",
                 "MIRI": "JWST"}.get(keys["INSTRUME"], "Ground")
    (row,) = extract(write_image(tmp_path / "f.fits", {"TELESCOP": telescope, **keys}))
    assert row["filter"] == filt
    if band is None:
        assert row["em_min"] is None and row["em_max"] is None
    else:
        bp = bandpasses.table()[band]
        assert (row["em_min"], row["em_max"]) == (bp.em_min, bp.em_max)
        assert 1e-7 < bp.em_min < bp.pivot < bp.em_max < 3e-5


@pytest.mark.parametrize("keys, t_min, t_max", [
    ({"MJD-OBS": 50000.5, "DATE-OBS": "2001-01-01T00:00:00", "EXPTIME": 86.4}, 50000.5, 50000.501),
    ({"DATE-OBS": "20/04/98", "EXPOSURE": 864.0}, Time("1998-04-20").mjd, Time("1998-04-20").mjd + 0.01),
    ({"DATE-OBS": "2005-03-07", "TIME-OBS": "06:00:00"}, Time("2005-03-07T06:00").mjd, None),
    ({"DATE-OBS": "2005-03-07"}, Time("2005-03-07").mjd, None),
    ({"DATE-BEG": "2022-07-12T00:00:00", "DATE-END": "2022-07-12T12:00:00"}, 59772.0, 59772.5),
    ({"EXPSTART": 53436.25, "EXPEND": 53436.5}, 53436.25, 53436.5),
    ({"DATE-OBS": "not a date"}, None, None),
])
def test_times(tmp_path, keys, t_min, t_max):
    (row,) = extract(write_image(tmp_path / "t.fits", keys))
    assert row["t_min"] == (None if t_min is None else pytest.approx(t_min, abs=1e-8))
    assert row["t_max"] == (None if t_max is None else pytest.approx(t_max, abs=1e-8))


def test_cube_and_extension_selection(tmp_path):
    w3 = WCS(naxis=3)
    w3.wcs.ctype = ["RA---TAN", "DEC--TAN", "WAVE"]
    w3.wcs.crval = [150.0, 2.0, 1e-6]
    w3.wcs.crpix = [8.5, 6.5, 1]
    w3.wcs.cdelt = [-1e-4, 1e-4, 1e-8]
    (row,) = extract(write_image(tmp_path / "cube.fits", {}, shape=(4, 12, 16), wcs=w3))
    assert row["dataproduct_type"] == "cube"
    assert (row["s_xel1"], row["s_xel2"]) == (16, 12)
    assert (row["s_ra"], row["s_dec"]) == pytest.approx((150.0, 2.0), abs=1e-9)
    w2 = make_wcs(150.0, 2.0, 0.1, 0.0, 30, sip=False)
    path = tmp_path / "multi.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((30, 30)), w2.to_header(), name="IMAGE"),
                  fits.ImageHDU(np.zeros((30, 30)), name="ERR"),
                  fits.ImageHDU(np.zeros((30, 30)), name="WHT")]).writeto(path)
    assert [r["hdu_name"] for r in extract(path)] == ["IMAGE"]


# --------------------------------------------------------------------- bad files
def _bad_files(tmp_path: Path, sky: Sky) -> dict[str, Path]:
    good = next(sky.root.glob("*_cal.fits")).read_bytes()
    files = {
        "empty": b"",
        "not-fits": b"<html><body>503 Service Unavailable</body></html>\n",
        "truncated": good[: len(good) // 2],
        "header-only": good[:2880 * 3],
        "simple-f": fits.Header([("SIMPLE", False), ("BITPIX", 8), ("NAXIS", 0)]).tostring().encode(),
    }
    huge = fits.Header([("SIMPLE", True), ("BITPIX", 16), ("NAXIS", 2), ("NAXIS1", 10**12), ("NAXIS2", 10**12)])
    files["huge-primary"] = huge.tostring().encode()
    ext = fits.Header([("XTENSION", "IMAGE"), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", 10**12),
                       ("NAXIS2", 4), ("PCOUNT", 0), ("GCOUNT", 1), ("EXTNAME", "SCI")])
    files["huge-extension"] = fits.PrimaryHDU().header.tostring().encode() + ext.tostring().encode() + b"\0" * 2880
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.fits"
        out[name].write_bytes(data)
    return out


def test_unreadable_files_raise_with_the_file_and_the_reason(tmp_path, sky):
    for name, path in _bad_files(tmp_path, sky).items():
        with pytest.raises(UnreadableFits) as info:
            extract(path)
        assert info.value.path == str(path) and str(path) in str(info.value), name
        assert info.value.reason, name
    assert "empty" in _reason(tmp_path / "empty.fits")
    assert "not FITS" in _reason(tmp_path / "not-fits.fits")
    assert "file has" in _reason(tmp_path / "truncated.fits")
    assert "file has" in _reason(tmp_path / "huge-extension.fits")


def test_a_header_without_end_card_is_unreadable_at_once(tmp_path):
    """A 1 GiB file (sparse) that starts like FITS but has no END card is not read to its end,
    neither directly nor by astropy: its first MAX_HEADER_BYTES say it is unreadable."""
    path = tmp_path / "no-end.fits"
    with open(path, "wb") as f:
        f.write(b"SIMPLE  =                    T".ljust(80))
        f.truncate(1 << 30)
    start = time.perf_counter()
    with pytest.raises(UnreadableFits, match="no END card") as info:
        extract(path)
    assert time.perf_counter() - start < 2 and str(path) in str(info.value)


def _reason(path: Path) -> str:
    with pytest.raises(UnreadableFits) as info:
        extract(path)
    return info.value.reason


def test_extract_many_reports_and_quarantines_bad_files(tmp_path, sky):
    (tmp_path / "in").mkdir()
    bad = _bad_files(tmp_path / "in", sky)
    good = sorted(sky.root.glob("*_i2d.fits"))[:3]
    qdir = tmp_path / "quarantine"
    sources = [*good[:2], *bad.values(), {"path": good[2], "sha256": "00" * 32}, tmp_path / "missing.fits"]
    frame, failures = extract_many(sources, processes=2, quarantine_dir=qdir)
    assert sorted(frame["file_name"]) == sorted(p.name for p in good)
    assert frame.set_index("file_name").loc[good[2].name, "sha256"] == "00" * 32
    by_path = {f.path: f for f in failures}
    assert set(by_path) == {str(p) for p in bad.values()} | {str(tmp_path / "missing.fits")}
    for path in bad.values():
        failure = by_path[str(path)]
        assert failure.unreadable and not path.exists()
        moved = Path(failure.quarantined)
        assert moved.parent == qdir and moved.exists()
        note = json.loads((qdir / f"{moved.name}.json").read_text())
        assert note["reason"] == failure.reason and note["original_path"] == str(path.absolute())
        assert note["file"] == moved.name and note["size"] == moved.stat().st_size and note["moved_at"]
    assert by_path[str(tmp_path / "missing.fits")].quarantined is None


def test_quarantine_never_overwrites(tmp_path):
    names = []
    for i in range(3):
        src = tmp_path / f"d{i}" / "same.fits.gz"
        src.parent.mkdir()
        src.write_bytes(b"x" * (i + 1))
        names.append(quarantine(src, tmp_path / "q", f"reason {i}").name)
    assert names == ["same.fits.gz", "same-1.fits.gz", "same-2.fits.gz"]
    for i, name in enumerate(names):
        assert (tmp_path / "q" / name).read_bytes() == b"x" * (i + 1)
        assert json.loads((tmp_path / "q" / f"{name}.json").read_text())["reason"] == f"reason {i}"


def test_a_landed_file_taken_in_another_version_leaves_the_quarantine(tmp_path):
    qdir = tmp_path / "q"
    for name, location, signature in [("a.fits", "/night/a.fits", "10:1"), ("b.fits", "/night/b.fits", "10:1"),
                                      ("c.fits", None, None)]:
        (tmp_path / name).write_bytes(b"x")
        quarantine(tmp_path / name, qdir, "broken", landed_location=location, landed_signature=signature)
    (qdir / "junk.json").write_text("{not json")
    # a is taken in a new version, b again as it was quarantined (it stays), c is an archive file's
    released = release_quarantined(qdir, {"/night/a.fits": "99:2", "/night/b.fits": "10:1", "c.fits": "1:1"})
    assert released == [qdir / "a.fits"]
    assert sorted(p.name for p in qdir.iterdir()) == ["b.fits", "b.fits.json", "c.fits", "c.fits.json", "junk.json"]


# ------------------------------------------------------------------------- schema
def test_parquet_keeps_the_units(tmp_path, sky):
    frame, _ = extract_many(sorted(sky.root.glob("*.fits"))[:4], processes=1)
    for table in (to_table(frame), to_table(frame.to_dict("records"))):
        assert table.schema.equals(IMAGE_SCHEMA, check_metadata=True)
        pq.write_table(table, tmp_path / "images.parquet")
        schema = pq.read_schema(tmp_path / "images.parquet")
        units = {f.name: (f.metadata or {}).get(b"unit") for f in schema}
        assert units["s_ra"] == b"deg" and units["em_min"] == b"m" and units["t_min"] == b"d"
        assert units["t_exptime"] == b"s" and units["s_fov"] == b"deg" and units["access_estsize"] == b"kbyte"
        assert pq.read_table(tmp_path / "images.parquet").num_rows == len(frame)
    assert to_table([]).num_rows == 0


# ---------------------------------------------------------- headers read directly
def _header(cards: list[str]) -> bytes:
    """Header blocks of the card images given, as written (no checks, so odd cards stay odd)."""
    assert all(len(c) <= 80 for c in cards)
    raw = b"".join(c.ljust(80).encode("latin-1") for c in cards) + b"END".ljust(80)
    return raw + b" " * (-len(raw) % 2880)


def _outcome(path: Path) -> str:
    try:
        return json.dumps(extract(path), sort_keys=True)
    except Exception as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"


def _outcome_with_astropy(path: Path, monkeypatch) -> str:
    """``extract`` as it reads files that are not plain: astropy opens them and reads every card."""
    def not_plain(*args):
        raise NotPlainFits("test")

    with monkeypatch.context() as m:
        m.setattr(fitsheader, "plain_cards", not_plain)
        return _outcome(path)


def _read_directly(path: Path) -> bool:
    """Whether ``extract`` reads the file without astropy (finding it truncated counts)."""
    with open(path, "rb") as f:
        try:
            fitsmeta._read_plain_hdus(path, f, path.stat().st_size)
        except NotPlainFits:
            return False
        except UnreadableFits:
            pass
    return True


PRIMARY = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    0",
           "EXTEND  =                    T", "TELESCOP= 'JWST'", "INSTRUME= 'NIRCAM'", "DETECTOR= 'NRCA1'",
           "DETECTOR= 'NRCB2'", "FILTER  = 'F200W'", "PUPIL   = 'CLEAR'", "EXP_TYPE= 'NRC_IMAGE'",
           "PROGRAM = '02736'", "OBS_ID  = 'V02736001001P0000000002105'", "EXPSTART=       59733.50115282",
           "EXPEND  =       59733.50379965", "EFFEXPTM=              1503.18", "TARGPROP=",
           "TITLE   = 'A long title that goes on and on, past what one card holds, &'",
           "CONTINUE  'so it continues'", "PI_NAME = 'O''Brien / Smith'", "HIERARCH ESO DET CHIP = 'A'",
           "date-obs= '2022-06-03'", "COMMENT   first comment", "HISTORY   history line", "        / blank",
           "ZERO    =                   -0.0", "BIG     =                1E999", "LOGICAL =                    F"]
SCI = ["XTENSION= 'IMAGE   '", "BITPIX  =                  -32", "NAXIS   =                    2",
       "NAXIS1  =                   16", "NAXIS2  =                   12", "PCOUNT  =                    0",
       "GCOUNT  =                    1", "EXTNAME = 'SCI'", "EXTVER  =                    1",
       "BUNIT   = 'MJy/sr'", "PHOTMJSR=                 4.87", "PIXAR_SR=             2.29E-14",
       "CTYPE1  = 'RA---TAN'", "CTYPE2  = 'DEC--TAN'",
       "CRVAL1  =             151.7578", "CRVAL2  =             -40.4367", "CRPIX1  =                  8.5",
       "CRPIX2  =                  6.5", "CD1_1   =              -8.6D-6", "CD1_2   =                  0.0",
       "CD2_1   =                  0.0", "CD2_2   =               8.6E-6", "DP1     = 'AXIS.1: 1'"]
ERR = ["XTENSION= 'IMAGE   '", "BITPIX  =                  -32", "NAXIS   =                    2",
       "NAXIS1  =                   16", "NAXIS2  =                   12", "PCOUNT  =                    0",
       "GCOUNT  =                    1", "EXTNAME = 'ERR'"]
TABLE = ["XTENSION= 'BINTABLE'", "BITPIX  =                    8", "NAXIS   =                    2",
         "NAXIS1  =                    8", "NAXIS2  =                    3", "PCOUNT  =                    0",
         "GCOUNT  =                    1", "TFIELDS =                    1", "TFORM1  = 'D'", "EXTNAME = 'ASDF'"]
DATA = b"\0" * 2880


@pytest.mark.parametrize("name, data, direct", [
    ("jwst", _header(PRIMARY) + _header(SCI) + DATA + _header(ERR) + DATA + _header(TABLE) + DATA, True),
    ("s_region", _header(PRIMARY) + _header(SCI + ["S_REGION= 'POLYGON ICRS 10 1 10.1 1 10.1 1.1 10 1.1'"])
     + DATA, True),
    ("no-extend", _header([c for c in PRIMARY if not c.startswith("EXTEND")]) + _header(SCI) + DATA, False),
    ("extend-f", _header([c.replace("T", "F") if c.startswith("EXTEND") else c for c in PRIMARY])
     + _header(SCI) + DATA, False),
    ("truncated", _header(PRIMARY) + _header(SCI) + DATA + _header(ERR), True),
    ("trailing-bytes", _header(PRIMARY) + _header(SCI) + DATA + b"junk", False),
    ("compressed-table", _header(PRIMARY) + _header(TABLE + ["ZIMAGE  =                    T"]) + DATA, False),
    ("image-primary", _header(PRIMARY[:2] + ["NAXIS   = 2", "NAXIS1  = 16", "NAXIS2  = 12"] + PRIMARY[3:]
                              + SCI[9:]) + DATA, True),
    ("undefined-naxis1", _header(PRIMARY) + _header(SCI[:3] + ["NAXIS1  ="] + SCI[4:]) + DATA, False),
    ("unparsable-instrument", _header(PRIMARY[:5] + ["INSTRUME= 'NIRCAM' junk"] + PRIMARY[6:]) + _header(SCI)
     + DATA, False),
    ("non-ascii-padding", (lambda h: h[:-1] + b"\xe9")(_header(PRIMARY)) + _header(SCI) + DATA, True),
])
def test_rows_of_headers_read_directly_are_astropy_s(tmp_path, monkeypatch, name, data, direct):
    path = tmp_path / f"{name}.fits"
    path.write_bytes(data)
    assert _read_directly(path) == direct
    assert _outcome(path) == _outcome_with_astropy(path, monkeypatch)


def test_emulator_rows_read_directly_are_astropy_s(sky, monkeypatch):
    for path in sorted(sky.root.glob("*.fits")):
        assert _read_directly(path), path.name
        assert _outcome(path) == _outcome_with_astropy(path, monkeypatch), path.name


def test_plain_files_are_not_opened_with_astropy(tmp_path, monkeypatch):
    def no_open(*args, **kwargs):
        raise AssertionError("astropy opened a plain file")

    path = write_image(tmp_path / "p.fits", {"TELESCOP": "JWST", "INSTRUME": "NIRCAM"}, ext={"EXTNAME": "SCI"},
                       wcs=make_wcs(150.0, 2.0, 0.1, 0.0, 30, sip=True))
    expected = extract(path)
    monkeypatch.setattr(fits, "open", no_open)
    assert extract(path) == expected and expected[0]["s_region"]


@pytest.mark.parametrize(("band", "name", "edges"), [(1, "NUV", (177.1, 283.1)), (2, "FUV", (134.4, 178.6))])
def test_a_galex_image_is_catalogued_with_the_band_its_header_numbers(tmp_path, band, name, edges):
    path = tmp_path / "galex-int.fits.gz"
    hdu = fits.PrimaryHDU(np.ones((16, 16), np.float32), make_wcs(24.17, 15.78, 1.5, 0.0, 16, sip=False).to_header())
    hdu.header.update({"TELESCOP": "GALEX", "INSTRUME": "GALEX", "BAND": band, "BUNIT": "counts/s"})
    with gzip.open(path, "wb") as out:
        hdu.writeto(out)
    (row,) = fitsmeta.extract(path)
    assert row["filter"] == name
    assert (row["em_min"] * 1e9, row["em_max"] * 1e9) == pytest.approx(edges)
