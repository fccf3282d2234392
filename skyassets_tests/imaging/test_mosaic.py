"""The mosaic core against the emulator's known sky, exact synthetic grids and real survey images."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import astroquery
import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_area
from photutils.centroids import centroid_2dg

from skyassets.emulator.sky import make_wcs, moffat_stamp
from skyassets.imaging.mosaic import MosaicInput, build_mosaic, downscale_wcs, grown

TARGET, FILTER = "NGC 628", "F200W"


@pytest.fixture(scope="module")
def field(emulator, tmp_path_factory):
    """The F200W cal exposures of NGC 628 (two pointings, two dithers each), their truth, and the
    matched and unmatched mosaics plus one coverage map per pointing on the same grid."""
    sky = emulator.sky
    files = {name: t for name, t in sky.truth["files"].items()
             if name.endswith("_cal.fits") and t["target"] == TARGET and t["filter"] == FILTER}
    inputs = [MosaicInput(sky.root / name) for name in sorted(files)]
    out = tmp_path_factory.mktemp("mosaic")
    matched = build_mosaic(inputs, out / "matched.fits")
    grid = dict(wcs=matched.wcs, shape=matched.shape)
    unmatched = build_mosaic(inputs, out / "unmatched.fits", match_background=False, **grid)
    coverage = {}
    for pointing in (0, 1):
        mine = [i for i in inputs if files[i.path.name]["pointing"] == pointing]
        part = build_mosaic(mine, out / f"p{pointing}.fits", match_background=False, **grid)
        coverage[pointing] = fits.getdata(part.path, "CON")
    return sky.truth, files, matched, unmatched, coverage


def _stars(truth, mosaic, con, sci):
    """Truth stars on the mosaic, unsaturated, with no other star within 12 px, fully covered."""
    stars = truth["targets"][TARGET]["stars"]
    ra = np.array([s["ra"] for s in stars])
    dec = np.array([s["dec"] for s in stars])
    x, y = mosaic.wcs.world_to_pixel_values(ra, dec)
    keep = []
    for i, s in enumerate(stars):
        if s["bright"]:
            continue
        near = np.hypot(x - x[i], y - y[i])
        xi, yi = int(round(x[i])), int(round(y[i]))
        if np.sort(near)[1] < 12 or not (15 <= xi < sci.shape[1] - 15 and 15 <= yi < sci.shape[0] - 15):
            continue
        box = (slice(yi - 12, yi + 13), slice(xi - 12, xi + 13))
        if (con[box] > 0).all() and np.isfinite(sci[box]).all():
            keep.append((i, x[i], y[i], s["flux_ujy"][FILTER]))
    return keep


def _measure(sci, x, y, fwhm, beta, radius_fwhm=4.0, half=12, gap=2.0):
    """(x, y) centroid and aperture flux (sky-subtracted, corrected to total for a Moffat PSF) of
    the star near 0-based (x, y)."""
    xi, yi = int(round(x)), int(round(y))
    stamp = sci[yi - half:yi + half + 1, xi - half:xi + half + 1].astype(np.float64)
    gy, gx = np.mgrid[-half:half + 1, -half:half + 1] + np.array([yi, xi])[:, None, None]
    r = np.hypot(gx - x, gy - y)
    radius = radius_fwhm * fwhm
    annulus = r > radius + gap
    source = stamp - np.median(stamp[annulus])
    cx, cy = centroid_2dg(source[half - 5:half + 6, half - 5:half + 6])
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    enclosed = 1.0 - (1.0 + radius**2 / alpha**2) ** (1.0 - beta)
    snr = source.max() / np.std(stamp[annulus])
    return cx + xi - 5, cy + yi - 5, source[r <= radius].sum() / enclosed, snr


def test_astrometry_on_emulator_sky(field):
    """Isolated, well-exposed stars (peak S/N >= 20) sit where the truth catalogue puts them."""
    truth, _, mosaic, _, _ = field
    with fits.open(mosaic.path) as hdul:
        sci, con = hdul["SCI"].data, hdul["CON"].data
    psf = truth["psf"][FILTER]
    fwhm = psf["fwhm_arcsec"] / (math.sqrt(proj_plane_pixel_area(mosaic.wcs)) * 3600.0)
    offsets = []
    for _, x, y, _ in _stars(truth, mosaic, con, sci):
        cx, cy, _, snr = _measure(sci, x, y, fwhm, psf["beta"])
        if snr >= 20:
            offsets.append((cx - x, cy - y))
    assert len(offsets) >= 4
    assert math.sqrt(np.mean(np.sum(np.array(offsets) ** 2, axis=1))) <= 0.05


N_STARS, SCALE, FWHM_ARCSEC, BETA = 25, 0.031, 0.075, 3.0
RA0, DEC0 = 30.0, -10.0


def _star_field(seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ra, dec, flux in uJy) of a 5 x 5 grid of stars about 1 arcsec apart, jittered."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(5), np.arange(5))
    ra = RA0 + ((gx.ravel() - 2) * 32 + rng.uniform(-3, 3, N_STARS)) * SCALE / 3600 / math.cos(math.radians(DEC0))
    dec = DEC0 + ((gy.ravel() - 2) * 32 + rng.uniform(-3, 3, N_STARS)) * SCALE / 3600
    return ra, dec, rng.uniform(1.0, 10.0, N_STARS)


def _draw_exposures(tmp_path: Path, stars, pointings, n: int = 160, noise: float = 0.0,
                    sip: bool = True) -> list[Path]:
    """One SCI image (MJy/sr) per (dx, dy, pa, sky) pointing, the stars drawn exactly with the
    emulator's pixel-integrated Moffat, plus Gaussian noise of ``noise`` when given."""
    star_ra, star_dec, flux_ujy = stars
    pixar_sr = (SCALE * math.pi / 180 / 3600) ** 2
    rng = np.random.default_rng(11)
    paths = []
    for k, (dx, dy, pa, sky) in enumerate(pointings):
        wcs = make_wcs(RA0 + dx * SCALE / 3600, DEC0 + dy * SCALE / 3600, SCALE, pa, n, sip=sip)
        image = np.full((n, n), sky)
        xs, ys = wcs.all_world2pix(star_ra, star_dec, 0)
        for x, y, f in zip(xs, ys, flux_ujy, strict=True):
            stamp = moffat_stamp(float(x), float(y), FWHM_ARCSEC / SCALE, n)
            if stamp is not None:
                sy, sx, values = stamp
                image[sy, sx] += f * 1e-12 / pixar_sr * values
        if noise:
            image += rng.normal(0.0, noise, image.shape)
        path = tmp_path / f"p{k}.fits"
        sci = fits.ImageHDU(image.astype(np.float32), header=wcs.to_header(relax=True), name="SCI")
        sci.header["BUNIT"] = "MJy/sr"
        fits.HDUList([fits.PrimaryHDU(), sci]).writeto(path)
        paths.append(path)
    return paths


def _photometry(mosaic, stars) -> tuple[list, list, list]:
    """Indices, centroid offsets (px) and flux ratios against the truth of the stars fully on the
    mosaic."""
    star_ra, star_dec, flux_ujy = stars
    sci = fits.getdata(mosaic.path, "SCI")
    area = proj_plane_pixel_area(mosaic.wcs)
    fwhm = FWHM_ARCSEC / (math.sqrt(area) * 3600.0)
    xs, ys = mosaic.wcs.world_to_pixel_values(star_ra, star_dec)
    used, offsets, ratios = [], [], []
    for i, (x, y, f) in enumerate(zip(xs, ys, flux_ujy, strict=True)):
        xi, yi = int(round(x)), int(round(y))
        if not (21 <= xi < sci.shape[1] - 21 and 21 <= yi < sci.shape[0] - 21):
            continue
        if not np.isfinite(sci[yi - 20:yi + 21, xi - 20:xi + 21]).all():
            continue
        # Sky from beyond the drawn stamps (5 FWHM + 2 px), so no PSF wing biases it.
        cx, cy, total, _ = _measure(sci, x, y, fwhm, BETA, radius_fwhm=5.0, half=20, gap=4.0)
        used.append(i)
        offsets.append((cx - x, cy - y))
        ratios.append(total * area * (math.pi / 180) ** 2 * 1e12 / f)
    return used, offsets, ratios


def test_astrometry_and_flux_of_noiseless_stars(tmp_path):
    """Stars drawn exactly into two rotated, dithered, SIP-distorted pointings with different
    skies: positions within 0.05 px RMS and fluxes within 0.5 % of the truth on the mosaic."""
    stars = _star_field()
    paths = _draw_exposures(tmp_path, stars, ((0.0, 0.0, 20.0, 0.2), (0.9, 0.6, 21.5, 0.25)))
    _, offsets, ratios = _photometry(build_mosaic([MosaicInput(p) for p in paths], tmp_path / "m.fits"), stars)
    assert len(ratios) >= 9
    assert math.sqrt(np.mean(np.sum(np.array(offsets) ** 2, axis=1))) <= 0.05
    np.testing.assert_allclose(ratios, 1.0, atol=0.005)


def _hits_rejected(tmp_path, paths, hit: int, hits, noise: float):
    """Cosmic rays of 1000 noise sigmas at ``hits`` ((row, col) pixels) of exposure ``hit``, then the
    mosaic with rejection, without, and without that exposure, on one grid: rejection takes each
    hit out (coverage one less there, the value the clean mosaic's) which stays without it.
    Returns the mosaics with and without rejection."""
    with fits.open(paths[hit], mode="update") as hdul:
        for y, x in hits:
            hdul["SCI"].data[y, x] += 1000 * noise
    hit_world = WCS(fits.getheader(paths[hit], "SCI")).pixel_to_world_values(
        [x for _, x in hits], [y for y, _ in hits])
    inputs = [MosaicInput(p) for p in paths]
    kept = build_mosaic(inputs, tmp_path / "rejected.fits")
    grid = dict(wcs=kept.wcs, shape=kept.shape)
    raw = build_mosaic(inputs, tmp_path / "raw.fits", reject_sigma=None, **grid)
    clean = build_mosaic([i for i in inputs if i.path != paths[hit]], tmp_path / "clean.fits",
                         reject_sigma=None, **grid)
    assert 0 < kept.n_rejected <= 2 * 16 + 20  # each hit and its grown wings, plus a few noise pixels
    xs, ys = kept.wcs.world_to_pixel_values(*hit_world)
    sci = {name: fits.getdata(m.path, "SCI") for name, m in (("kept", kept), ("raw", raw), ("clean", clean))}
    con = fits.getdata(kept.path, "CON")
    for x, y in zip(np.round(xs).astype(int), np.round(ys).astype(int), strict=True):
        assert con[y, x] == len(paths) - 1
        assert abs(sci["kept"][y, x] - sci["clean"][y, x]) < 3 * noise
        assert sci["raw"][y, x] - sci["clean"][y, x] > 20 * noise
    return kept, raw


def test_outliers_between_exposures_rejected_and_stars_kept(tmp_path):
    """Four dithered exposures, one with cosmic rays on the sky and on a star's wing: rejection
    removes them (coverage drops there by one) and leaves the other stars' fluxes as they were;
    without it the hits stay in the mosaic."""
    stars = _star_field()
    noise = 0.01
    paths = _draw_exposures(tmp_path, stars, [(0.0, 0.0, 20.0, 0.2), (0.5, 0.3, 20.0, 0.2),
                                              (0.2, 0.7, 20.0, 0.2), (0.8, 0.9, 20.0, 0.2)],
                            noise=noise, sip=False)
    xs, ys = WCS(fits.getheader(paths[2], "SCI")).world_to_pixel_values(stars[0], stars[1])
    # Open sky in the middle of four stars, and a star's wing three pixels from its centre (on the
    # core itself, where the median is steep, a hit this size is within tolerance, as in AstroDrizzle).
    sky_x, sky_y = np.mean(xs[[6, 7, 11, 12]]), np.mean(ys[[6, 7, 11, 12]])
    hits = [(int(round(sky_y)), int(round(sky_x))), (int(round(ys[12])), int(round(xs[12])) + 3)]
    kept, raw = _hits_rejected(tmp_path, paths, 2, hits, noise)
    assert fits.getheader(kept.path, 0)["NREJECT"] == kept.n_rejected
    assert raw.n_rejected == 0 and "REJSIGMA" not in fits.getheader(raw.path, 0)
    # Starlight is not rejected: every star measures as without rejection, but the one hit, which
    # rejection brings back to its truth.
    used, _, ratios = _photometry(kept, stars)
    raw_used, _, raw_ratios = _photometry(raw, stars)
    assert used == raw_used and 12 in used and len(used) >= 9
    hit = used.index(12)
    assert abs(raw_ratios[hit] - 1.0) > 0.005 and abs(ratios[hit] - 1.0) < 0.002
    np.testing.assert_allclose(np.delete(ratios, hit), np.delete(raw_ratios, hit), atol=0.0005)


@pytest.mark.parametrize("half", [1, 2, 3])
def test_grown_outliers_are_binary_dilation_by_a_square(half):
    """Sparse and dense masks, marks on every edge, a stack and a single plane narrower than the square."""
    from scipy.ndimage import binary_dilation

    rng = np.random.default_rng(half)
    side = 2 * half + 1
    for mask in (rng.random((3, 30, 41)) < 0.01, rng.random((2, 17, 9)) < 0.3, rng.random((4, 2)) < 0.5):
        mask[..., 0, 0] = mask[..., -1, -1] = mask[..., 0, -1] = True
        structure = np.ones((1,) * (mask.ndim - 2) + (side, side), bool)
        np.testing.assert_array_equal(grown(mask, half), binary_dilation(mask, structure=structure))


def test_with_two_inputs_the_brighter_is_the_outlier(tmp_path):
    """Two dithered exposures, one with cosmic rays on open sky: a median of two cannot say which
    value is wrong, but cosmic rays only add light, so the brighter value goes when it stands above
    the fainter (AstroDrizzle's minmed). The hits leave (coverage 1 there), the mosaic is the clean
    exposure's there, and starlight, whose two samples differ by their sub-pixel phase, is kept:
    every star measures as without rejection. (On a star's steep wing a hit as large as that
    difference stays, as the contrast term allows.)"""
    stars = _star_field()
    noise = 0.01
    paths = _draw_exposures(tmp_path, stars, [(0.0, 0.0, 20.0, 0.2), (0.5, 0.3, 20.0, 0.2)], noise=noise, sip=False)
    xs, ys = WCS(fits.getheader(paths[1], "SCI")).world_to_pixel_values(stars[0], stars[1])
    groups = ([6, 7, 11, 12], [0, 1, 5, 6])  # open sky between four stars
    hits = [(int(round(np.mean(ys[g]))), int(round(np.mean(xs[g])))) for g in groups]
    kept, raw = _hits_rejected(tmp_path, paths, 1, hits, noise)
    used, _, ratios = _photometry(kept, stars)
    raw_used, _, raw_ratios = _photometry(raw, stars)
    assert used == raw_used and len(used) >= 9
    np.testing.assert_allclose(ratios, raw_ratios, atol=0.0005)


@pytest.mark.parametrize("block", [(16, 64), (1024, 1024)])
def test_slabs_in_threads_make_the_mosaic_one_thread_makes(tmp_path, monkeypatch, block):
    """Slabs resampled and co-added two at a time write what one thread writes, value for value:
    four dithered exposures with cosmic rays to reject, in slabs of a few rows and in one."""
    import skyassets.imaging.mosaic as mosaic

    stars = _star_field()
    paths = _draw_exposures(tmp_path, stars, [(0.0, 0.0, 20.0, 0.2), (0.5, 0.3, 20.0, 0.2),
                                              (0.2, 0.7, 20.0, 0.2), (0.8, 0.9, 20.0, 0.2)], noise=0.01, sip=True)
    with fits.open(paths[1], mode="update") as hdul:
        hdul["SCI"].data[20:23, 30:32] += 10.0
    made = {}
    for threads in (1, 2):
        monkeypatch.setattr(mosaic, "THREADS", threads)
        result = build_mosaic([MosaicInput(p) for p in paths], tmp_path / f"m{threads}.fits", block_size=block)
        with fits.open(result.path) as hdul:
            made[threads] = (result.n_rejected, *(hdul[name].data.copy() for name in ("SCI", "CON", "WHT")))
    assert made[1][0] > 0 and made[1][0] == made[2][0]
    for one, two in zip(made[1][1:], made[2][1:], strict=True):
        np.testing.assert_array_equal(one, two)


def test_background_steps_within_noise_after_matching(field):
    _, files, matched, unmatched, coverage = field
    only = {0: (coverage[0] > 0) & (coverage[1] == 0), 1: (coverage[1] > 0) & (coverage[0] == 0)}
    assert only[0].sum() > 1000 and only[1].sum() > 1000

    def step(mosaic):
        sci = fits.getdata(mosaic.path, "SCI")
        levels = [sigma_clipped_stats(sci[only[p]], sigma=3.0) for p in (0, 1)]
        return abs(levels[0][1] - levels[1][1]), levels[0][2]

    matched_step, noise = step(matched)
    unmatched_step, _ = step(unmatched)
    assert matched_step <= noise
    assert matched_step <= 0.1 * unmatched_step  # the pointings' skies differ: matching levelled them
    backgrounds = {p: next(t["background"] for t in files.values() if t["pointing"] == p) for p in (0, 1)}
    assert unmatched_step == pytest.approx(abs(backgrounds[0] - backgrounds[1]), rel=0.2)


def test_header_records_inputs_and_preview(field):
    _, files, mosaic, _, _ = field
    primary = fits.getheader(mosaic.path, 0)
    assert primary["NINPUTS"] == mosaic.n_inputs == len(files)
    assert primary["TELESCOP"] == "JWST" and primary["FILTER"] == FILTER and primary["MJD-BEG"] < primary["MJD-END"]
    assert {primary[f"IN{k:04d}"].split("[")[0] for k in range(1, len(files) + 1)} == set(files)
    assert all(primary[f"WT{k:04d}"] == "err" for k in range(1, len(files) + 1))
    assert mosaic.preview_png.startswith(b"\x89PNG")
    assert WCS(fits.getheader(mosaic.path, "SCI")).array_shape == mosaic.shape


def test_a_mosaic_says_what_its_inputs_agree_on(tmp_path):
    from skyassets.imaging.mosaic import described

    nircam = [fits.Header({"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "FILTER": "F444W", "DETECTOR": d,
                           "BUNIT": "MJy/sr", "PHOTMJSR": 0.5, "EXPTIME": 300.0, "EXPSTART": start,
                           "EXPEND": start + 0.01}) for d, start in (("NRCALONG", 60000.0), ("NRCBLONG", 60001.0))]
    said = described(nircam, "MJy/sr")
    assert {k: said[k] for k in ("TELESCOP", "INSTRUME", "FILTER", "PHOTMJSR", "EXPTIME")} == {
        "TELESCOP": "JWST", "INSTRUME": "NIRCAM", "FILTER": "F444W", "PHOTMJSR": 0.5, "EXPTIME": 300.0}
    assert "DETECTOR" not in said and (said["MJD-BEG"], said["MJD-END"]) == (60000.0, 60001.01)
    # inputs that disagree, or whose unit the mosaic changed, leave the keyword out
    nircam[1]["FILTER"], nircam[1]["BUNIT"] = "F410M", "MJy"
    converted = described(nircam, "erg/s/cm2/A")
    assert "FILTER" not in converted and "PHOTMJSR" not in converted and converted["INSTRUME"] == "NIRCAM"
    # HST's two filter wheels: the band in FILTER1 or FILTER2, the other wheel clear
    acs = [fits.Header({"TELESCOP": "HST", "INSTRUME": "ACS", "FILTER1": "F435W", "FILTER2": "CLEAR2L",
                        "PHOTFLAM": 3.1e-19}) for _ in range(2)]
    assert {k: described(acs, None)[k] for k in ("FILTER1", "FILTER2")} == {"FILTER1": "F435W", "FILTER2": "CLEAR2L"}


def _synthetic(path: Path, wcs: WCS, value: float, n: int, *, dq_box=None, err: float | None = None,
               telescope: str = "JWST", bunit: str = "MJy/sr") -> Path:
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = telescope
    sci = fits.ImageHDU(np.full((n, n), value, np.float32), header=wcs.to_header(), name="SCI")
    sci.header["BUNIT"] = bunit
    dq = np.zeros((n, n), np.uint32)
    if dq_box is not None:
        dq[dq_box] = 1  # DO_NOT_USE
    hdus = [primary, sci, fits.ImageHDU(dq, name="DQ")]
    if err is not None:
        hdus.append(fits.ImageHDU(np.full((n, n), err, np.float32), name="ERR"))
    fits.HDUList(hdus).writeto(path)
    return path


def test_coverage_and_values_exact_on_aligned_grids(tmp_path):
    n = 40
    base = make_wcs(10.0, 20.0, 0.1, 0.0, n, sip=False)
    grid = make_wcs(10.0, 20.0, 0.1, 0.0, 100, sip=False)
    shifted = []
    for dx, dy in ((0, 0), (15, 0), (0, 20), (30, 30)):
        w = base.deepcopy()
        w.wcs.crpix = [base.wcs.crpix[0] - dx, base.wcs.crpix[1] - dy]
        shifted.append(w)
    a = _synthetic(tmp_path / "a.fits", shifted[0], 1.0, n, err=1.0)
    b = _synthetic(tmp_path / "b.fits", shifted[1], 3.0, n, err=1.0, dq_box=(slice(0, 10), slice(0, 5)))
    c = _synthetic(tmp_path / "c.fits", shifted[2], 5.0, n, err=1.0 / math.sqrt(3.0))
    d = _synthetic(tmp_path / "d.fits", shifted[3], 99.0, n, err=1.0)
    inputs = [MosaicInput(a), MosaicInput(b), MosaicInput(c), MosaicInput(d, flag="reject")]
    result = build_mosaic(inputs, tmp_path / "m.fits", wcs=grid, shape=(100, 100), match_background=False,
                          block_size=(7, 13))
    assert result.n_inputs == 3
    with fits.open(result.path) as hdul:
        sci, con, wht = hdul["SCI"].data, hdul["CON"].data, hdul["WHT"].data
    # Input pixel (0, 0) of a lands on grid pixel (30, 30) (crpix 20.5 vs 50.5).
    o = 30
    expected = np.zeros((100, 100), np.int32)
    masks = [np.zeros((100, 100), bool) for _ in range(3)]
    for mask, (dx, dy) in zip(masks, ((0, 0), (15, 0), (0, 20)), strict=True):
        mask[o + dy:o + dy + n, o + dx:o + dx + n] = True
    masks[1][o:o + 10, o + 15:o + 20] = False  # b's DQ box
    for mask in masks:
        expected += mask
    np.testing.assert_array_equal(con, expected)
    np.testing.assert_allclose(wht, masks[0] * 1.0 + masks[1] * 1.0 + masks[2] * 3.0, rtol=1e-6)
    mean = (masks[0] * 1.0 + masks[1] * 3.0 + masks[2] * 15.0) / np.where(expected > 0, wht, 1.0)
    np.testing.assert_allclose(sci[expected > 0], mean[expected > 0], rtol=1e-6)
    assert np.isnan(sci[expected == 0]).all()


def test_count_images_keep_summed_flux_when_downscaled(tmp_path):
    n = 40
    wcs = make_wcs(10.0, 20.0, 0.1, 0.0, n, sip=False)
    path = _synthetic(tmp_path / "flt.fits", wcs, 2.0, n, telescope="HST", bunit="ELECTRONS")
    result = build_mosaic([MosaicInput(path)], tmp_path / "m.fits", wcs=wcs, shape=(n, n), downscale=2)
    sci = fits.getdata(result.path, "SCI")
    assert result.shape == (20, 20)
    np.testing.assert_allclose(sci[np.isfinite(sci)], 8.0, rtol=1e-6)
    assert fits.getheader(result.path, 0)["FS0001"] == pytest.approx(4.0)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_downscale_keeps_pixel_centres_on_the_sky(factor):
    wcs = make_wcs(150.0, 2.0, 0.03, 17.0, 300, sip=False)
    wcs.wcs.crpix = [151.3, 140.7]
    wcs.wcs.set()
    small = downscale_wcs(wcs, factor)
    np.testing.assert_allclose(small.wcs.crpix, (np.array([151.3, 140.7]) - 0.5) / factor + 0.5)
    np.testing.assert_allclose(small.wcs.cdelt, wcs.wcs.cdelt * factor)
    j = np.array([0.0, 5.0, 37.0, 60.0])
    # 0-based pixel j of the small grid is the centre of big pixels f*j .. f*j + f - 1.
    big = factor * j + (factor - 1) / 2.0
    np.testing.assert_allclose(small.pixel_to_world_values(j, j[::-1]),
                               wcs.pixel_to_world_values(big, big[::-1]), rtol=0, atol=1e-10)
    assert small.pixel_shape == (math.ceil(300 / factor),) * 2


def test_downscale_cd_matrix():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [10.0, 12.0]
    wcs.wcs.crval = [1.0, 2.0]
    wcs.wcs.cd = [[-1e-5, 2e-6], [2e-6, 1e-5]]
    wcs.wcs.set()
    small = downscale_wcs(wcs, 2)
    np.testing.assert_allclose(small.wcs.cd, np.asarray(wcs.wcs.cd) * 2)
    np.testing.assert_allclose(small.pixel_to_world_values(0.0, 0.0), wcs.pixel_to_world_values(0.5, 0.5),
                               atol=1e-12)


def test_real_crab_pair(tmp_path):
    data = Path(astroquery.__file__).parent
    inputs = [MosaicInput(data / "ukidss/tests/data/image.fits", 1),
              MosaicInput(data / "ipac/ned/tests/data/query_images.fits", 0)]
    result = build_mosaic(inputs, tmp_path / "crab.fits")
    with fits.open(result.path) as hdul:
        con = hdul["CON"].data
        assert np.isfinite(hdul["SCI"].data[con > 0]).all()
    assert con.max() == 2 and result.n_inputs == 2
    assert result.preview_png.startswith(b"\x89PNG")


_PEAK_RSS = """
import sys
from pathlib import Path
from skyassets.imaging.mosaic import MosaicInput, build_mosaic

def peak_kib():  # this process's own high-water mark (ru_maxrss would include the parent's)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])

root, count = Path(sys.argv[1]), int(sys.argv[2])
inputs = [MosaicInput(p) for p in sorted(root.glob("in*.fits"))[:count]]
before = peak_kib()
build_mosaic(inputs, root / f"out{count}.fits", block_size=(256, 256))
print(before, peak_kib())
"""


def test_peak_memory_does_not_grow_with_inputs(tmp_path):
    """What building a mosaic adds to the process's peak (after imports) hardly changes from 4 to
    16 overlapping 1024^2 inputs, where holding the inputs would quadruple it (16 MB each)."""
    n = 1024
    rng = np.random.default_rng(1)
    for k in range(16):
        wcs = make_wcs(10.0 + 0.0005 * (k % 4), 20.0 + 0.0005 * (k // 4), 0.1, 0.0, n, sip=False)
        sci = fits.ImageHDU(rng.normal(1.0, 0.1, (n, n)).astype(np.float32), header=wcs.to_header(), name="SCI")
        sci.header["BUNIT"] = "MJy/sr"
        err = fits.ImageHDU(np.full((n, n), 0.1, np.float32), name="ERR")
        fits.HDUList([fits.PrimaryHDU(), sci, err]).writeto(tmp_path / f"in{k:02d}.fits")
    added = {}
    for count in (4, 16):
        out = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(tmp_path), str(count)],
                             capture_output=True, text=True, check=True)
        before, after = map(int, out.stdout.split()[-2:])
        added[count] = (after - before) / 1024  # MiB
    assert added[16] <= 1.25 * added[4] + 16, added  # a quarter more, plus one input's worth


def test_a_mosaics_provenance_changes_with_any_input_or_setting_and_not_with_their_order():
    from skyassets.imaging.mosaic import provenance

    inputs = [("files/JWST/a/a_cal.fits", 1, "aa" * 32), ("files/JWST/b/b_cal.fits", 1, "bb" * 32)]
    settings = {"downscale": 1, "match_background": True, "reject_sigma": 5.0, "grid": None}
    made = provenance(inputs, settings)
    assert provenance(reversed(inputs), dict(reversed(settings.items()))) == made
    assert provenance([inputs[0], (*inputs[1][:2], "cc" * 32)], settings) != made  # a file's content changed
    assert provenance([inputs[0], (inputs[1][0], 2, inputs[1][2])], settings) != made  # another HDU
    assert provenance(inputs[:1], settings) != made
    assert provenance(inputs, {**settings, "downscale": 2}) != made
