"""Mosaics of a synthetic sky of known truth: flagged-but-good pixels, two pixel scales, units,
and the same exposure given twice."""

from __future__ import annotations

import math
import shutil
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from reproject import reproject_interp
from reproject.mosaicking import reproject_and_coadd

from skyassets.imaging import mosaic
from skyassets.imaging.mosaic import MosaicInput, build_mosaic, exposure_name
from skyassets_tests.imaging.truth_sky import make_sky, measure, render


def _inputs(truth):
    return [MosaicInput(e.path) for e in truth.exposures]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two exposures at 0.031" and two at 0.063" of one sky (MJy/sr), its mosaic, and the same mosaic
    without outlier rejection."""
    folder = tmp_path_factory.mktemp("mixed")
    truth = make_sky(folder, scales=(0.031, 0.063), per_scale=2, size_arcsec=10.0, n_stars=30, seed=3)
    mosaic = build_mosaic(_inputs(truth), folder / "m.fits")
    kept = build_mosaic(_inputs(truth), folder / "kept.fits", wcs=mosaic.wcs, shape=mosaic.shape, reject_sigma=None)
    return truth, mosaic, kept


def test_jump_det_blobs_in_single_coverage_are_kept(mixed):
    """JUMP_DET pixels hold a value the ramp fit corrected: where only their exposure covers the sky
    they are data, not holes; DO_NOT_USE hot pixels are left out."""
    truth, mosaic, _ = mixed
    sci, con = fits.getdata(mosaic.path, "SCI"), fits.getdata(mosaic.path, "CON")
    first = truth.exposures[0]
    blobs = np.array(first.jump_blobs, float)
    x, y = mosaic.wcs.world_to_pixel(first.wcs.pixel_to_world(blobs[:, 0], blobs[:, 1]))
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    assert (con[iy, ix] == 1).all()  # single coverage: nothing else could fill a hole
    assert np.isfinite(sci[iy, ix]).all()
    assert np.abs(sci[iy, ix] - np.nanmedian(sci)).max() < 10 * first.noise  # the true sky, not a hot value


def test_two_pixel_scales_photometry_and_astrometry_against_truth_and_reproject(mixed):
    """Stars where 0.063" images meet 0.031" ones: fluxes and positions match the truth as well as
    reproject_and_coadd does or better, and rejection does not clip the undersampled cores."""
    truth, mosaic, kept = mixed
    ratio, offset, ok = measure(fits.getdata(mosaic.path, "SCI"), mosaic.wcs, truth)
    assert ok.sum() >= 15
    assert abs(ratio.mean() - 1.0) < 0.002 and ratio.std() < 0.005
    assert np.sqrt(np.mean(offset**2)) < 1.0  # mas
    kept_ratio, _, _ = measure(fits.getdata(kept.path, "SCI"), kept.wcs, truth)
    clean = np.abs(kept_ratio - 1.0) < 0.003  # stars no cosmic ray fell on
    assert clean.sum() >= 15
    np.testing.assert_allclose(ratio[clean], kept_ratio[clean], atol=0.0015)  # no star core clipped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdus = [fits.open(e.path)[1] for e in truth.exposures]
        array, footprint = reproject_and_coadd(hdus, mosaic.wcs, shape_out=mosaic.shape,
                                               reproject_function=reproject_interp, match_background=True)
    array[footprint == 0] = np.nan
    theirs, their_offset, their_ok = measure(array, mosaic.wcs, truth)
    both = ok[their_ok]
    assert abs(ratio.mean() - 1.0) <= abs(theirs[both[: len(theirs)]].mean() - 1.0) + 0.001
    assert np.sqrt(np.mean(offset**2)) <= np.sqrt(np.mean(their_offset**2)) + 0.2


def test_cosmic_rays_away_from_stars_are_rejected_at_two_scales(mixed):
    truth, mosaic, _ = mixed
    sci, con = fits.getdata(mosaic.path, "SCI"), fits.getdata(mosaic.path, "CON")
    model = render(mosaic.wcs, mosaic.shape, 0.031, truth.ra, truth.dec, truth.flux)
    level = np.nanmedian(sci - model)
    checked = 0
    for exposure in truth.exposures:
        hits = np.array(exposure.cosmic_rays, float)
        x, y = mosaic.wcs.world_to_pixel(exposure.wcs.pixel_to_world(hits[:, 0], hits[:, 1]))
        for ix, iy in zip(np.rint(x).astype(int), np.rint(y).astype(int), strict=True):
            near = (slice(iy - 3, iy + 4), slice(ix - 3, ix + 4))
            if not (3 <= ix < mosaic.shape[1] - 3 and 3 <= iy < mosaic.shape[0] - 3) or (con[near] < 3).any():
                continue
            if model[near].max() > 0.5:  # by a star core (see _reject: its contrast may hide a hit)
                continue
            checked += 1
            assert np.abs(sci[near] - model[near] - level).max() < 6 * 0.02, (exposure.path.name, ix, iy)
    assert checked >= 20


@pytest.mark.parametrize("bunit", ["MJy/sr", "DN/s"])
def test_weights_are_per_unit_of_output_flux(tmp_path, bunit):
    """Equally deep exposures at 0.031" and 0.063" get the same weight per output pixel, in MJy/sr
    as in DN/s per pixel; a mosaic of DN/s and MJy/sr inputs is in MJy/sr with the true fluxes."""
    truth = make_sky(tmp_path / "a", scales=(0.031, 0.063), per_scale=1, size_arcsec=6.0, n_stars=8,
                     cosmic_rays=0, bunit=bunit)
    mosaic = build_mosaic(_inputs(truth), tmp_path / "m.fits", reject_sigma=None)
    fine, coarse = mosaic.header["IV0001"], mosaic.header["IV0002"]
    assert coarse / fine == pytest.approx(1.0, rel=0.01)
    assert fits.getheader(mosaic.path, "SCI")["BUNIT"] == bunit


def test_inputs_in_different_units_are_converted(tmp_path):
    sr = make_sky(tmp_path / "sr", scales=(0.031,), per_scale=2, size_arcsec=6.0, n_stars=8, cosmic_rays=0)
    dn = make_sky(tmp_path / "dn", scales=(0.063,), per_scale=1, size_arcsec=6.0, n_stars=8, cosmic_rays=0,
                  bunit="DN/s", program=1002)
    mosaic = build_mosaic(_inputs(sr) + _inputs(dn), tmp_path / "m.fits", reject_sigma=None)
    assert fits.getheader(mosaic.path, "SCI")["BUNIT"] == "MJy/sr"
    assert mosaic.header["IV0003"] / mosaic.header["IV0001"] == pytest.approx(1.0, rel=0.01)
    ratio, _, _ = measure(fits.getdata(mosaic.path, "SCI"), mosaic.wcs, sr)
    assert abs(ratio.mean() - 1.0) < 0.005
    bare = tmp_path / "bare.fits"
    with fits.open(dn.exposures[0].path) as hdul:
        del hdul[1].header["PHOTMJSR"]
        hdul.writeto(bare)
    with pytest.raises(ValueError, match="bare.fits.*PHOTMJSR"):
        build_mosaic(_inputs(sr) + [MosaicInput(bare)], tmp_path / "x.fits")


def _acs(path, rootname, value):
    primary = fits.PrimaryHDU()
    primary.header.update(TELESCOP="HST", INSTRUME="ACS", DETECTOR="WFC", ROOTNAME=rootname)
    sci = fits.ImageHDU(np.full((20, 20), value, np.float32), name="SCI", ver=1)
    sci.header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=10.0, CRVAL2=20.0, CRPIX1=10.5, CRPIX2=10.5,
                      CDELT1=-0.05 / 3600, CDELT2=0.05 / 3600, BUNIT="ELECTRONS/S", CCDCHIP=2)
    fits.HDUList([primary, sci]).writeto(path)
    return MosaicInput(path)


def test_the_same_exposure_is_coadded_once(tmp_path):
    """FLT and FLC of one ACS exposure: the FLC (CTE-corrected) alone; a JWST cal held in two products:
    once; a level-3 product beside its own exposures: the combined product. Each choice is recorded."""
    flt = _acs(tmp_path / "j8pu01abq_flt.fits", "j8pu01abq", 1.0)
    flc = _acs(tmp_path / "j8pu01abq_flc.fits", "j8pu01abq", 2.0)
    other = _acs(tmp_path / "j8pu01acq_flc.fits", "j8pu01acq", 2.0)
    result = build_mosaic([flt, flc, other], tmp_path / "m.fits", reject_sigma=None, match_background=False)
    assert result.n_inputs == 2 and result.header["NDUPEXP"] == 1
    assert [result.header[f"IN{k:04d}"] for k in (1, 2)] == ["j8pu01abq_flc.fits[1]", "j8pu01acq_flc.fits[1]"]
    assert "j8pu01abq_flt.fits[1] left out" in str(result.header["HISTORY"])
    assert np.nanmax(fits.getdata(result.path, "SCI")) == pytest.approx(2.0)  # the FLT's 1.0 is not in it

    truth = make_sky(tmp_path / "jw", scales=(0.031,), per_scale=2, size_arcsec=4.0, n_stars=3, cosmic_rays=0)
    copy = tmp_path / "other_product" / truth.exposures[0].path.name
    copy.parent.mkdir()
    shutil.copy(truth.exposures[0].path, copy)
    result = build_mosaic(_inputs(truth) + [MosaicInput(copy)], tmp_path / "j.fits", reject_sigma=None)
    assert result.n_inputs == 2 and len(result.choices) == 1

    i2d = tmp_path / "jw01001-o001_t001_nircam_clear-f150w_i2d.fits"
    members = fits.BinTableHDU.from_columns(
        [fits.Column("FILENAME", "40A", array=[e.path.name for e in truth.exposures])], name="HDRTAB")
    with fits.open(truth.exposures[0].path) as hdul:
        fits.HDUList([hdul[0].copy(), hdul[1].copy(), members]).writeto(i2d)
    result = build_mosaic(_inputs(truth) + [MosaicInput(i2d)], tmp_path / "l3.fits", reject_sigma=None)
    assert result.n_inputs == 1 and result.header["IN0001"] == f"{i2d.name}[1]"
    assert all(f"in {i2d.name}[1]" in line for line in result.choices)


def test_exposure_names():
    assert exposure_name("j8pu01abq_flc.fits") == exposure_name("J8PU01ABQ_FLT.fits.gz") == "j8pu01abq"
    assert exposure_name("jw02733001001_02101_00001_nrcb1_cal.fits") == "jw02733001001_02101_00001_nrcb1"
    assert exposure_name("image.fits") == "image.fits"
    assert exposure_name("jw02733001001_02101_00001_nrcb1_rate.fits") == "jw02733001001_02101_00001_nrcb1"
    assert exposure_name("u9o40504m_c0m.fits") == exposure_name("u9o40504m_c1f.fits") == "u9o40504m"


def test_files_of_no_known_convention_are_never_taken_for_one_exposure(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = _acs(tmp_path / "a" / "image.fits", "", 1.0)
    two = _acs(tmp_path / "b" / "image.fits", "", 3.0)
    for path in (one.path, two.path):
        with fits.open(path, mode="update") as hdul:
            del hdul[0].header["ROOTNAME"]
    result = build_mosaic([one, two], tmp_path / "m.fits", reject_sigma=None, match_background=False)
    assert result.n_inputs == 2 and not result.choices


PHOTFLAM, EXPTIME = 3.1e-19, 500.0  # ACS/WFC F435W-like: counts of about 1e-20 erg/s/cm2/A


def _hst(path, rootname, value, err, bunit, dx=0.0, dy=0.0):
    """A 30 x 30 ACS-like SCI/ERR image of flat sky ``value`` in ``bunit``, shifted by (dx, dy) pixels."""
    primary = fits.PrimaryHDU()
    primary.header.update(TELESCOP="HST", INSTRUME="ACS", DETECTOR="WFC", ROOTNAME=rootname, EXPTIME=EXPTIME,
                          PHOTFLAM=PHOTFLAM)
    sci = fits.ImageHDU(np.full((30, 30), value, np.float32), name="SCI", ver=1)
    sci.header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=10.0, CRVAL2=20.0, CRPIX1=15.5 - dx,
                      CRPIX2=15.5 - dy, CDELT1=-0.05 / 3600, CDELT2=0.05 / 3600, BUNIT=bunit)
    error = fits.ImageHDU(np.full((30, 30), err, np.float32), name="ERR", ver=1)
    fits.HDUList([primary, sci, error]).writeto(path)
    return MosaicInput(path)


def test_hst_counts_beside_count_rates_are_weighted_within_float32(tmp_path):
    """FLC exposures (ELECTRONS) with a drizzled product (ELECTRONS/S) of the same sky are converted
    to erg/s/cm2/A: their inverse variances, about 1e40 there, are counted in (1e-20 erg/s/cm2/A)^-2
    (WHTSCALE 1e40), so the offsets and the co-added sky come out finite and right."""
    sky = 100.0  # electrons in EXPTIME
    inputs = [_hst(tmp_path / "j8pu01abq_flc.fits", "j8pu01abq", sky, 10.0, "ELECTRONS"),
              _hst(tmp_path / "j8pu01acq_flc.fits", "j8pu01acq", sky + 5.0, 10.0, "ELECTRONS", dx=8.0),
              _hst(tmp_path / "j8pu02010_drz.fits", "j8pu02010", sky / EXPTIME, 0.01, "ELECTRONS/S", dy=8.0)]
    result = build_mosaic(inputs, tmp_path / "m.fits", reject_sigma=None)
    header = result.header
    assert fits.getheader(result.path, "SCI")["BUNIT"] == "erg/s/cm2/A"
    backgrounds = [header[f"BG{k:04d}"] for k in (1, 2, 3)]
    assert np.isfinite(backgrounds).all()
    assert backgrounds[1] - backgrounds[0] == pytest.approx(5.0 * PHOTFLAM / EXPTIME, rel=1e-3)
    with fits.open(result.path) as hdul:
        sci, con, wht = hdul["SCI"].data, hdul["CON"].data, hdul["WHT"].data
    covered = con > 0
    assert np.isfinite(sci[covered]).all() and np.isfinite(wht).all()
    level = sky * PHOTFLAM / EXPTIME - backgrounds[0]
    np.testing.assert_allclose(sci[covered], level, rtol=0.02)
    assert header["WHTSCALE"] == 1e40
    y, x = np.mgrid[0:result.shape[0], 0:result.shape[1]]
    fx, fy = WCS(fits.getheader(inputs[0].path, 1)).world_to_pixel(result.wcs.pixel_to_world(x, y))
    only_first = (con == 1) & (np.abs(fx - 14.5) < 14) & (np.abs(fy - 14.5) < 14)  # inside the first alone
    assert only_first.sum() > 20
    first_ivar = 1.0 / (10.0 * header["FS0001"]) ** 2
    np.testing.assert_allclose(wht[only_first].astype(float) * header["WHTSCALE"], first_ivar, rtol=1e-3)


def test_an_input_with_no_overlap_keeps_offset_0_and_says_so(tmp_path):
    """Two overlapping exposures are levelled; a third far from both has nothing to be levelled
    against: offset 0, its BG card saying it was not matched."""
    inputs = [_hst(tmp_path / "a_flt.fits", "j8pu01abq", 10.0, 1.0, "ELECTRONS"),
              _hst(tmp_path / "b_flt.fits", "j8pu01acq", 12.0, 1.0, "ELECTRONS", dx=10.0),
              _hst(tmp_path / "c_flt.fits", "j8pu01adq", 50.0, 1.0, "ELECTRONS", dx=200.0)]
    header = build_mosaic(inputs, tmp_path / "m.fits", reject_sigma=None).header
    assert header["BG0001"] == pytest.approx(-1.0) and header["BG0002"] == pytest.approx(1.0)
    assert header.comments["BG0001"] == header.comments["BG0002"] == "background offset subtracted"
    assert header["BG0003"] == 0.0 and header.comments["BG0003"].startswith("not matched")


def test_no_number_that_is_not_finite_reaches_a_header(tmp_path, monkeypatch):
    """An overlap whose offset is not finite levels nothing (offsets 0, not matched), and a card of
    NaN or infinity is written undefined with what it was in its comment: the file is still written."""
    inputs = [_hst(tmp_path / "a_flt.fits", "j8pu01abq", 10.0, 1.0, "ELECTRONS"),
              _hst(tmp_path / "b_flt.fits", "j8pu01acq", 12.0, 1.0, "ELECTRONS", dx=10.0)]
    monkeypatch.setattr(mosaic, "_overlap_offset", lambda *args: (math.nan, 100))
    header = build_mosaic(inputs, tmp_path / "m.fits", reject_sigma=None).header
    assert header["BG0001"] == header["BG0002"] == 0.0
    assert header.comments["BG0001"].startswith("not matched")
    placed = mosaic._Placed("x_flt.fits[1]", 0, 1, 0, 1, "err", math.inf, math.nan, 1.0, math.nan,
                            background=math.nan, matched=True)
    card = mosaic._primary_header([placed], WCS(naxis=2), 1, True, math.nan, 0, [])
    fits.PrimaryHDU(header=card).writeto(tmp_path / "h.fits")
    written = fits.getheader(tmp_path / "h.fits")
    for key in ("BG0001", "FS0001", "IV0001", "REJSIGMA"):
        assert written[key] is None and "not finite" in written.comments[key]


def test_inputs_named_in_any_script_are_recorded_in_the_header_as_printable_ascii(tmp_path):
    """A landed file keeps its own name, whatever its script; a FITS card holds printable ASCII
    only, so the name is written escaped, and reads back exactly."""
    names = ["nébula ☆_flt.fits", "tab\there_flt.fits"]
    inputs = [_hst(tmp_path / names[0], "j8pu01abq", 10.0, 1.0, "ELECTRONS"),
              _hst(tmp_path / names[1], "j8pu01acq", 12.0, 1.0, "ELECTRONS", dx=10.0)]
    result = build_mosaic(inputs, tmp_path / "m.fits", reject_sigma=None)
    written = fits.getheader(result.path)
    assert written["IN0001"] == "n\\xe9bula \\u2606_flt.fits[1]" and written["IN0002"] == "tab\\there_flt.fits[1]"
    assert written["IN0001"].encode().decode("unicode_escape") == f"{names[0]}[1]"


@pytest.mark.parametrize("length", [40, 60, 90])
def test_a_long_input_name_is_written_whole_without_a_warning(tmp_path, length):
    """Names of 52 to 68 characters leave no room for the card's comment: it is left out rather
    than cut by astropy, which would warn in every run that writes a mosaic."""
    name = "x" * (length - len("_flt.fits")) + "_flt.fits"
    inputs = [_hst(tmp_path / name, "j8pu01abq", 10.0, 1.0, "ELECTRONS")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = build_mosaic(inputs, tmp_path / "m.fits", reject_sigma=None)
    written = fits.getheader(result.path)
    assert written["IN0001"] == f"{name}[1]"
    assert written.comments["IN0001"] in ("input file[hdu]", "")


def test_a_grid_over_the_pixel_limit_is_refused_before_anything_is_written(tmp_path):
    """Two fields 3 degrees apart under one target need a grid of 4e10 pixels at 0.05": refused
    with its size on the sky, where it used to fill the disk (or fail with "File too large")."""
    far = 3 * 3600 / 0.05  # 3 degrees in pixels
    inputs = [_hst(tmp_path / "j8pu01abq_flc.fits", "j8pu01abq", 10.0, 1.0, "ELECTRONS"),
              _hst(tmp_path / "j8pu01acq_flc.fits", "j8pu01acq", 10.0, 1.0, "ELECTRONS", dx=far, dy=far)]
    out = tmp_path / "products"
    with pytest.raises(ValueError, match=r"x 3 deg of sky, is over the limit of 4294967296 \(mosaics.max_pixels\)"):
        build_mosaic(inputs, out / "m.fits", reject_sigma=None)
    assert not out.exists() or not any(out.iterdir())
    small = build_mosaic(inputs[:1], out / "one.fits", reject_sigma=None, max_pixels=900)  # 30 x 30: at the limit
    assert small.shape == (30, 30)
    with pytest.raises(ValueError, match="over the limit of 899"):
        build_mosaic(inputs[:1], out / "one.fits", reject_sigma=None, max_pixels=899)
