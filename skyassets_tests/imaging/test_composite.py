import colorsys
import json
from functools import partial

import numpy as np
import pandas as pd
import pytest
import tifffile
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image
from pyavm import AVM
from scipy.ndimage import gaussian_filter

from skyassets.emulator.sky import BANDS, TARGETS, make_wcs
from skyassets.imaging import composite

MAS = 1.0 / 3.6e6  # degrees


def _hue(rgb) -> float:
    r, g, b = np.asarray(rgb, dtype=float) / max(float(np.max(rgb)), 1e-12)
    hue = colorsys.rgb_to_hsv(r, g, b)[0] * 360.0
    return hue - 360.0 if hue > 300.0 else hue  # a red with a trace of blue is just past red, not magenta


def _check_round_trip(wcs: WCS, read: WCS, shape: tuple[int, int]) -> None:
    """The read WCS puts the corners and centre of the picture where ``wcs`` does, within 1 mas."""
    h, w = shape
    x = np.array([0, w - 1, 0, w - 1, (w - 1) / 2])
    y = np.array([0, 0, h - 1, h - 1, (h - 1) / 2])
    want = wcs.pixel_to_world(x, y)
    got = read.pixel_to_world(x, y)
    assert np.all(want.separation(got).deg <= MAS), want.separation(got).to("mas")


def test_hues_run_from_blue_to_red():
    assert composite.hues(3) == [240.0, 120.0, 0.0]
    h = composite.hues(7)
    assert h[0] == 240.0 and h[-1] == 0.0 and all(a > b for a, b in zip(h, h[1:], strict=False))
    assert composite.hues(0) == []


@pytest.mark.parametrize("pivots", [[4.4, 0.9, 2.0], [1.5, 0.6, 4.4, 2.0, 0.9, 3.6], [2.0, 0.9]])
def test_channel_hue_order_follows_wavelength(pivots):
    colours = composite.channel_colours(pivots)
    by_wavelength = [colours[i] for i in np.argsort(pivots)]
    hue = [_hue(c) for c in by_wavelength]
    assert all(a > b for a, b in zip(hue, hue[1:], strict=False)), hue
    assert hue[0] >= 200 and hue[-1] <= 40
    # grey in, grey out: every colour plane gets the same total weight
    np.testing.assert_allclose(colours.sum(axis=0), 1.0)


def test_single_channel_is_grey():
    np.testing.assert_array_equal(composite.channel_colours([2.0]), [[1.0, 1.0, 1.0]])


@pytest.mark.parametrize("method", ["screen", "lupton"])
def test_composite_hue_order_follows_wavelength(method):
    """One star per filter: in the picture the shortest filter's star is bluest, the longest's reddest."""
    pivots = [2.0, 0.9, 4.4, 1.5]  # deliberately not in wavelength order
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:64, :96]
    spots = [(16, 16), (16, 48), (48, 48), (48, 80)]
    channels = []
    for y0, x0 in spots:
        star = 500.0 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 8.0)
        channels.append(10.0 + rng.normal(0, 1, yy.shape) + star)
    rgb = composite.compose(channels, composite.channel_colours(pivots), method=method)
    assert rgb.shape == (64, 96, 3) and rgb.min() >= 0.0 and rgb.max() <= 1.0
    hue = {p: _hue(rgb[y0, x0]) for p, (y0, x0) in zip(pivots, spots, strict=True)}
    ordered = [hue[p] for p in sorted(pivots)]
    assert all(a > b for a, b in zip(ordered, ordered[1:], strict=False)), hue


@pytest.mark.parametrize("method", ["screen", "lupton"])
def test_saturated_cores_show_bright_and_the_outside_stays_black(method):
    """A star whose masked core is NaN in the mosaic is drawn bright, not with a black hole; the
    NaN beyond the footprint stays black."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:64, :64]
    star = 5000.0 * np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / 18.0)
    channel = 10.0 + rng.normal(0, 1, yy.shape) + star
    channel[star > 2000.0] = np.nan  # saturated, masked
    channel[:, :8] = np.nan  # outside the footprint
    rgb = composite.compose([channel], composite.channel_colours([2.0]), method=method)
    ring = rgb[(star > 1000.0) & (star < 2000.0)].mean()
    assert rgb[32, 32].mean() >= ring > rgb[50:, 40:].mean()
    assert (rgb[:, :8] == 0).all()
    np.testing.assert_array_equal(composite.fill_holes(channel)[:, :8], channel[:, :8])


def test_compose_takes_a_stretch_per_channel():
    rng = np.random.default_rng(0)
    channels = [rng.normal(0, 1, (20, 30)) for _ in range(3)]
    rgb = composite.compose(channels, composite.channel_colours([1, 2, 3]), method="screen",
                            stretch=["linear", {"kind": "asinh", "a": 0.05}, {"kind": "zscale"}])
    assert rgb.shape == (20, 30, 3)
    with pytest.raises(ValueError, match="2 stretches for 3 channels"):
        composite.compose(channels, composite.channel_colours([1, 2, 3]), method="screen", stretch=["linear", "sqrt"])
    with pytest.raises(ValueError, match="unknown method"):
        composite.compose(channels, composite.channel_colours([1, 2, 3]), method="press")
    with pytest.raises(ValueError, match="reproject"):
        composite.compose([channels[0], channels[1][:10]], composite.channel_colours([1, 2]))


@pytest.mark.parametrize("kind", composite.STRETCHES)
def test_stretches_map_to_unit_interval_in_order(kind):
    ramp = np.linspace(-5.0, 100.0, 2000).reshape(40, 50)
    ramp[0, 0] = np.nan
    out = composite.stretch(ramp, kind)
    assert out.shape == ramp.shape and np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.max() > 0.99
    assert out[0, 0] == 0.0  # NaN is black
    flat = out.ravel()[1:]
    assert np.all(np.diff(flat) >= -1e-12)  # monotonic: brighter stays brighter


def test_stretch_edge_cases():
    assert not composite.stretch(np.full((5, 5), 3.0), "asinh").any()
    assert not composite.stretch(np.full((5, 5), np.nan), "linear").any()
    data = np.arange(100.0)
    z = composite.stretch(data, "linear", interval="zscale")
    assert z.min() == 0.0 and z.max() == 1.0
    with pytest.raises(ValueError, match="unknown stretch"):
        composite.stretch(data, "gamma")
    with pytest.raises(ValueError, match="unknown interval"):
        composite.stretch(data, "linear", interval="minmax")


def _filters() -> pd.DataFrame:
    rows = [("NIRCAM/IMAGE", f) for f in ("F444W", "F090W", "F200W", "F187N", "F212N", "F150W")]
    rows += [("ACS/WFC", "F814W"), ("ACS/WFC", "F435W;CLEAR2L"), ("NIRCAM/IMAGE", "F090W")]
    return pd.DataFrame(rows, columns=["instrument_name", "filter"])


def test_suggest_recipes():
    recipes = composite.suggest_recipes(_filters())
    assert list(recipes.columns) == composite.RECIPE_COLUMNS
    assert list(recipes["rank"]) == list(range(1, len(recipes) + 1))
    by_name = recipes.set_index("recipe")
    assert recipes.iloc[0]["recipe"] == "nircam-classic"
    assert by_name.loc["nircam-classic", "filters"] == "F090W;F200W;F444W"
    assert by_name.loc["nircam-all", "filters"] == "F090W;F150W;F187N;F200W;F212N;F444W"
    assert by_name.loc["nircam-narrow", "filters"] == "F187N;F212N"
    assert by_name.loc["nircam-broad", "filters"] == "F090W;F150W;F200W;F444W"
    assert by_name.loc["acs-two-colour", "filters"] == "F435W;F814W"  # the CLEAR2L element dropped
    assert by_name.loc["cross-instrument", "filters"] == "F435W;F150W;F444W"
    assert by_name.loc["cross-instrument", "instruments"] == "ACS;NIRCAM;NIRCAM"
    all_filters = by_name.loc["cross-instrument-all", "filters"]
    assert all_filters == "F435W;F814W;" + by_name.loc["nircam-all", "filters"]
    assert list(recipes["recipe"][:3]) == ["nircam-classic", "cross-instrument", "cross-instrument-all"]
    for row in recipes.itertuples():
        pivots = [float(p) for p in row.pivots_um.split(";")]
        assert pivots == sorted(pivots), row
        assert row.reason
    assert set(recipes["kind"]) == {"classic", "all", "narrow-band", "broad-band", "two-colour",
                                    "cross-instrument"}


def test_suggest_recipes_per_target_and_given_pivots():
    filters = pd.DataFrame({
        "target_name": ["A", "A", "A", "B", "B"],
        "instrument_name": ["X", "X", "X", "NIRCAM", "NIRCAM"],
        "filter": ["red", "blue", "green", "F200W", "F090W"],
        "pivot_um": [0.65, 0.45, 0.55, None, None],
    })
    recipes = composite.suggest_recipes(filters)
    assert recipes.columns[0] == "target_name"
    a = recipes[recipes["target_name"] == "A"].iloc[0]
    assert (a["recipe"], a["filters"]) == ("x-classic", "blue;green;red")
    b = recipes[recipes["target_name"] == "B"]
    assert list(b["filters"]) == ["F090W;F200W"]
    assert composite.suggest_recipes(filters.iloc[:0]).empty


def test_apply_overrides():
    recipes = composite.suggest_recipes(_filters())
    out = composite.apply_overrides(recipes, {"mine": "F444W;F150W;F090W", "nircam-narrow": None,
                                              "nircam-all": "F200W;F090W"})
    assert list(out.iloc[:2]["recipe"]) == ["mine", "nircam-all"]
    assert out.iloc[0]["filters"] == "F090W;F150W;F444W" and out.iloc[0]["kind"] == "user"
    assert "nircam-narrow" not in set(out["recipe"])
    assert out["recipe"].is_unique
    assert list(out["rank"]) == list(range(1, len(out) + 1))
    per_target = composite.suggest_recipes(_filters().assign(target_name="M 74"))
    first = composite.apply_overrides(per_target, {"mine": "F090W;F444W"}).iloc[0]
    assert first[["target_name", "recipe", "pivots_um"]].tolist() == ["M 74", "mine", "0.9024;4.402"]


@pytest.mark.parametrize("cube", ["tiff", "fits"])
def test_avm_round_trips_the_wcs(tmp_path, cube):
    h, w = 60, 90  # not square, so a transposed or flipped WCS cannot pass
    wcs = make_wcs(151.7573483, -40.4364056, 0.063, 68.0, 90, sip=False)
    wcs.wcs.crpix = [40.5, 22.25]
    rgb = np.zeros((h, w, 3))
    x0, y0 = 70, 50  # near the top right of the FITS-orientation array: row 0 is the bottom
    rgb[y0, x0] = [1.0, 0.0, 0.0]
    meta = {"Title": "test", **composite.spectral_meta(["F090W", "F200W", "F444W"], [0.9, 2.0, 4.4],
                                                        composite.channel_colours([0.9, 2.0, 4.4]))}
    paths = composite.write_composite(rgb, wcs, tmp_path / "out" / "ngc3132", meta=meta, cube=cube)
    read = composite.read_avm_wcs(paths["png"])
    _check_round_trip(wcs, read, (h, w))
    picture = np.asarray(Image.open(paths["png"]))
    assert picture.shape == (h, w, 3) and picture.dtype == np.uint8
    row, col = np.argwhere(picture[..., 0] == 255)[0]
    assert row == h - 1 - y0 and col == x0  # displayed with the bottom row of the array at the bottom
    # AVM counts rows of the displayed picture from its bottom, as FITS does
    sky = read.pixel_to_world(col, h - 1 - row)
    assert sky.separation(wcs.pixel_to_world(x0, y0)).deg <= MAS
    if cube == "tiff":
        data = tifffile.imread(paths["tiff"])
        assert data.dtype == np.uint16 and data.shape == (h, w, 3)
        assert tuple(data[h - 1 - y0, x0]) == (65535, 0, 0)
        _check_round_trip(wcs, composite.read_avm_wcs(paths["tiff"]), (h, w))
    else:
        with fits.open(paths["fits"]) as hdul:
            assert hdul[0].data.shape == (3, h, w)
            assert hdul[0].data[0, y0, x0] == 1.0
            _check_round_trip(wcs, WCS(hdul[0].header).celestial, (h, w))
    avm = AVM.from_image(str(paths["png"]))
    assert avm.Title == "test"
    assert list(avm.Spectral.ColorAssignment) == ["Blue", "Green", "Red"]
    assert list(avm.Spectral.Bandpass) == ["F090W", "F200W", "F444W"]


@pytest.mark.parametrize("pa", [0.0, 112.0, 200.0, 293.0])
@pytest.mark.parametrize("mirrored", [False, True])
def test_avm_round_trips_any_rotation(tmp_path, pa, mirrored):
    """pyavm may split a rotated WCS into Scale (+, -) that readers flip back to (-, +)."""
    wcs = make_wcs(24.1739458, 15.7836619, 0.05, pa, 40, sip=False)
    if mirrored:  # east to the right, as in some ground images
        wcs.wcs.cdelt = [abs(wcs.wcs.cdelt[0]), wcs.wcs.cdelt[1]]
    paths = composite.write_composite(np.zeros((30, 40, 3)), wcs, tmp_path / "r")
    _check_round_trip(wcs, composite.read_avm_wcs(paths["png"]), (30, 40))


def test_avm_carries_the_full_header_with_distortion(tmp_path):
    wcs = make_wcs(110.83125, -73.4543333, 0.031, 246.0, 64, sip=True)
    paths = composite.write_composite(np.zeros((64, 64, 3)), wcs, tmp_path / "sip")
    full = composite.read_avm_wcs(paths["png"], full_header=True)
    assert full.sip is not None
    _check_round_trip(wcs, full, (64, 64))


def test_a_composite_png_keeps_what_it_was_made_of(tmp_path, monkeypatch):
    """The PNG carries its PROVHASH beside the AVM tags, the pixels untouched; any change to the
    mosaics, their order, the settings or COMPOSITE_RECIPE is another digest."""
    mosaics = [("products/t/mosaic_f090w.fits", "a" * 64), ("products/t/mosaic_f200w.fits", "b" * 64)]
    settings = {"filters": ["F090W", "F200W"], "pivots": [0.9, 2.0], "method": "lupton", "stretch": "lupton-asinh"}
    digest = composite.provenance(mosaics, settings)
    wcs = make_wcs(10.0, 20.0, 0.1, 0.0, 8, sip=False)
    rgb = np.random.default_rng(1).random((8, 8, 3))
    paths = composite.write_composite(rgb, wcs, tmp_path / "made", made_from=digest)
    plain = composite.write_composite(rgb, wcs, tmp_path / "plain")
    assert composite.made_of(paths["png"]) == digest
    assert composite.made_of(plain["png"]) is None and composite.made_of(tmp_path / "gone.png") is None
    assert np.array_equal(np.asarray(Image.open(paths["png"])), np.asarray(Image.open(plain["png"])))
    _check_round_trip(wcs, composite.read_avm_wcs(paths["png"]), (8, 8))
    others = [
        composite.provenance(mosaics[::-1], settings),
        composite.provenance([mosaics[0], (mosaics[1][0], "c" * 64)], settings),
        composite.provenance(mosaics, {**settings, "method": "screen"}),
        composite.provenance(mosaics, {**settings, "pivots": [0.9, 2.1]}),
    ]
    monkeypatch.setattr(composite, "COMPOSITE_RECIPE", composite.COMPOSITE_RECIPE + 1)
    others.append(composite.provenance(mosaics, settings))
    assert len({digest, *others}) == len(others) + 1


def test_write_composite_rejects_bad_input(tmp_path):
    wcs = make_wcs(10.0, 20.0, 0.1, 0.0, 8, sip=False)
    with pytest.raises(ValueError, match="H, W, 3"):
        composite.write_composite(np.zeros((8, 8)), wcs, tmp_path / "x")
    with pytest.raises(ValueError, match="cube format"):
        composite.write_composite(np.zeros((8, 8, 3)), wcs, tmp_path / "x", cube="jpeg")


def test_emulator_three_filter_composite(emu, tmp_path):
    """NIRCam short- and long-wavelength images (two pixel scales) onto one WCS, then a tagged PNG."""
    sky = emu.sky
    uris = [u for u in sky.files
            if u.startswith("mast:JWST/product/jw02733-o001") and u.endswith("_i2d.fits")]
    assert len(uris) == 3
    images, pivots, names = [], [], []
    for uri in uris:
        with fits.open(sky.files[uri][0]) as hdul:
            images.append((hdul["SCI"].data.astype(float), WCS(hdul["SCI"].header)))
            names.append(hdul[0].header["FILTER"])
            pivots.append(composite.pivot_um(hdul[0].header["INSTRUME"], names[-1]))
    channels, wcs, shape = composite.reproject_channels(images)
    assert all(c.shape == shape for c in channels)
    assert abs(wcs.proj_plane_pixel_scales()[0].to_value("arcsec") - 0.031) < 1e-3
    colours = composite.channel_colours(pivots)
    for method in ("screen", "lupton"):
        rgb = composite.compose(channels, colours, method=method)
        assert rgb.shape == (*shape, 3) and np.isfinite(rgb).all()
        paths = composite.write_composite(rgb, wcs, tmp_path / method,
                                          meta=composite.spectral_meta(names, pivots, colours))
        read = composite.read_avm_wcs(paths["png"])
        _check_round_trip(wcs, read, shape)
    # the brightest star of the truth is bright in the picture, where the AVM WCS says it is
    truth = json.loads((sky.root / "truth.json").read_text())["targets"]["NGC 3132"]["stars"]
    picture = np.asarray(Image.open(paths["png"])).astype(float).sum(axis=2)
    h, w = picture.shape
    stars = sorted(truth, key=lambda s: -s["flux_ujy"]["F200W"])
    checked = 0
    for star in stars[:10]:
        x, y = read.world_to_pixel(SkyCoord(star["ra"], star["dec"], unit="deg"))
        col, y_fits = int(round(float(x))), int(round(float(y)))
        row = h - 1 - y_fits
        if 3 <= col < w - 3 and 3 <= row < h - 3 and all(np.isfinite(c[y_fits, col]) for c in channels):
            assert picture[row - 2:row + 3, col - 2:col + 3].max() > np.percentile(picture, 99), star
            checked += 1
    assert checked >= 1
    # onto the F090W image's own grid, rotated 68 degrees from north
    f090w = images[names.index("F090W")][1]
    channels, rotated, shape = composite.reproject_channels(images, wcs=f090w.celestial, shape=(256, 256))
    rgb = composite.compose(channels, colours, method="lupton")
    paths = composite.write_composite(rgb, rotated, tmp_path / "rotated", cube="fits")
    _check_round_trip(f090w.celestial, composite.read_avm_wcs(paths["png"]), shape)


def test_channels_are_cut_to_the_sky_every_image_covers():
    """A long-wave image covering 2.4 times the width of a short-wave one: the picture's grid is
    the short-wave image's sky, not the long-wave's, where one channel alone would leave it black;
    the cut grid's WCS still says where each pixel is."""
    def image(n: int, scale_arcsec: float) -> tuple[np.ndarray, WCS]:
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [150.0, 30.0]
        w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
        w.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
        yy, xx = np.mgrid[:n, :n]
        return 1.0 + np.exp(-((xx - (n - 1) / 2) ** 2 + (yy - (n - 1) / 2) ** 2) / 8.0), w

    short, long = image(100, 0.03), image(120, 0.06)
    channels, wcs, shape = composite.reproject_channels([short, long])
    assert 98 <= shape[0] <= 102 and 98 <= shape[1] <= 102, shape  # uncut: 240 x 240
    covered = np.logical_and.reduce([np.isfinite(c) for c in channels])
    assert covered.mean() > 0.95
    x, y = wcs.world_to_pixel(SkyCoord(150.0, 30.0, unit="deg"))
    peak = np.unravel_index(np.nanargmax(channels[0]), shape)
    assert abs(peak[1] - float(x)) <= 1 and abs(peak[0] - float(y)) <= 1
    assert wcs.pixel_shape == (shape[1], shape[0])


def _mixed_field(seed: int = 11):
    """Three channels of one field in different units, sky levels and noise: 60 stars whose colours
    scatter around white (true fluxes equal in every filter on average), a red nebula in a corner
    and two stars bright enough that a per-channel stretch would clip them. Returns the channels,
    the blank-sky mask and the stars' (row, col)."""
    rng = np.random.default_rng(seed)
    n = 240
    yy, xx = np.mgrid[:n, :n]
    gains, skies, noises = (1.0, 40.0, 0.02), (3.0, 500.0, -0.1), (1.0, 0.6, 1.5)  # noise in flux units
    rows, cols = rng.uniform(10, n - 10, 60), rng.uniform(10, n - 10, 60)
    flux = 10 ** rng.uniform(2.3, 3.3, 60)
    flux[:2] = 3e5
    tint = np.exp(rng.normal(0.0, 0.25, (60, 3)))
    tint /= np.exp(np.log(tint).mean(axis=0))  # median star white
    nebula = 40.0 * np.exp(-((xx - 40) ** 2 + (yy - 200) ** 2) / (2 * 18.0**2))
    channels = []
    for k, widths in enumerate((1.2, 1.6, 2.4)):
        light = np.zeros((n, n))
        for r, c, f, t in zip(rows, cols, flux, tint[:, k], strict=True):
            light += f * t / (2 * np.pi * widths**2) * np.exp(-((xx - c) ** 2 + (yy - r) ** 2) / (2 * widths**2))
        light += nebula * (0.1, 0.4, 1.0)[k]
        channels.append(skies[k] + gains[k] * (light + rng.normal(0.0, noises[k], (n, n))))
    near = np.zeros((n, n), dtype=bool)
    for r, c in zip(rows, cols, strict=True):
        near |= (xx - c) ** 2 + (yy - r) ** 2 < 15**2
    sky = ~near & (nebula < 0.05)
    return channels, sky, [(int(round(r)), int(round(c))) for r, c in zip(rows[2:], cols[2:], strict=True)]


def test_a_sky_half_covered_by_faint_nebulosity_stays_grey_and_the_nebulosity_red():
    """A wide red haze under one noise sigma per pixel over half the field, as a planetary nebula's
    outer halo: blank sky within a few per cent of grey (the noisiest channel no longer tints it),
    while the haze keeps its colour (the sky's grey correction does not take it for sky)."""
    channels, sky, stars = _mixed_field()
    n = channels[0].shape[0]
    yy, xx = np.mgrid[:n, :n]
    haze = 0.6 / (1.0 + np.exp((xx - 0.5 * n) / 6.0))  # the left half, fading over ~20 px
    gains = (1.0, 40.0, 0.02)  # _mixed_field's units
    channels = [c + g * haze * w for c, g, w in zip(channels, gains, (0.1, 0.4, 1.0), strict=True)]
    sky &= xx > 0.5 * n + 40  # blank sky is the right half, away from the haze's edge
    colours = composite.channel_colours([0.9, 2.0, 4.4])
    rgb = composite.compose(channels, colours)
    got = composite.picture_figures(rgb, sky, stars)
    assert got["sky_spread"] < 0.03, got
    hazy = xx < 0.5 * n - 40
    star_free = np.ones((n, n), dtype=bool)
    for r, c in stars:
        star_free &= (xx - c) ** 2 + (yy - r) ** 2 >= 15**2
    red, blue = (np.median(rgb[hazy & star_free][:, k]) for k in (0, 2))
    sky_red, sky_blue = (np.median(rgb[sky][:, k]) for k in (0, 2))
    assert red / blue > 1.15 * sky_red / sky_blue, (red, blue, sky_red, sky_blue)


def test_the_sky_under_intracluster_light_is_the_blank_sky_s():
    """A cluster: broad light over most of the field, galaxies, and noise correlated over a few
    pixels as resampling leaves it. The sky is the blank corners' level, within a tenth of the
    noise, and the noise its own (the clipped median of what the sources' mask leaves reads the
    broad light; a mask threshold taken for white noise cuts the correlated noise's peaks)."""
    rng = np.random.default_rng(3)
    n = 384
    yy, xx = np.mgrid[:n, :n]
    light = 1.2 * np.exp(-((xx - 0.45 * n) ** 2 + (yy - 0.55 * n) ** 2) / (2 * 60.0**2))
    for r, c, f in zip(rng.uniform(100, 300, 25), rng.uniform(80, 280, 25), 10 ** rng.uniform(2.5, 3.5, 25),
                       strict=True):
        light += f / (32 * np.pi) * np.exp(-np.sqrt(((xx - c) ** 2 + (yy - r) ** 2) / 4.0))
    for true_sky, tint in ((5.0, 0.8), (20.0, 1.0), (-2.0, 1.3)):
        noise = gaussian_filter(rng.normal(0.0, 1.0, (n, n)), 1.0)
        sky, sigma = composite.sky_and_noise(true_sky + tint * light + noise / noise.std())
        assert abs(sky - true_sky) < 0.1, (sky, true_sky)
        assert sigma == pytest.approx(1.0, rel=0.05)


def test_default_composite_is_balanced_like_press_images():
    """Channels in different units with different skies and noise: the default picture has a
    neutral grey sky, white stars on average, the red nebula red, and almost nothing clipped; the
    per-channel "screen" picture, for comparison, does not balance its stars."""
    channels, sky, stars = _mixed_field()
    colours = composite.channel_colours([0.9, 2.0, 4.4])
    balance = composite.balance_channels(channels)
    assert balance.method == "stars" and balance.n_stars >= 20
    for got_sky, true_sky, noise in zip(balance.sky, (3.0, 500.0, -0.1), (1.0, 24.0, 0.03), strict=True):
        assert abs(got_sky - true_sky) < 0.1 * noise  # on the sky, though the nebula and stars skew it
    rgb, figures = composite.lupton_rgb(channels, colours, balance)
    np.testing.assert_array_equal(rgb, composite.compose(channels, colours))  # the default
    got = composite.picture_figures(rgb, sky, stars)
    assert got["sky_spread"] < 0.03, got  # channel medians of blank sky within 3 %
    assert 0.02 < got["sky_g"] < 0.2  # dark grey, not black: the noise shows
    # White within 25 %: the asinh compresses the sharp blue cores more than the wide red PSF.
    assert abs(got["star_rg"] - 1) < 0.25 and abs(got["star_bg"] - 1) < 0.25, got
    assert got["clipped"] < 0.002 and figures["clipped_fraction"] < 0.002, (got, figures)
    red, green, blue = rgb[200, 40]
    assert red > 1.5 * green > 1.5 * blue  # the nebula keeps its colour
    screen = composite.picture_figures(composite.compose(channels, colours, method="screen"), sky, stars)
    assert max(abs(screen["star_rg"] - 1), abs(screen["star_bg"] - 1)) > 2 * max(
        abs(got["star_rg"] - 1), abs(got["star_bg"] - 1))


def test_bright_cores_keep_their_hue():
    """A red star bright enough to exceed white: its core is scaled down with R, G and B together,
    so the core's hue is its wing's, not white."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:96, :96]
    channels = []
    for amplitude in (2e4, 6e4, 2e5):  # blue, green, red filters: a red star
        star = amplitude * np.exp(-((xx - 48) ** 2 + (yy - 48) ** 2) / 8.0)
        channels.append(rng.normal(0, 1, yy.shape) + star)
    colours = composite.channel_colours([0.9, 2.0, 4.4])
    balance = composite.Balance((0.0,) * 3, (1.0,) * 3, (1.0,) * 3, "given", 0)
    rgb, figures = composite.lupton_rgb(channels, colours, balance)
    assert 0 < figures["clipped_fraction"] < 0.01
    assert rgb[48, 48].max() == pytest.approx(1.0)
    assert _hue(rgb[48, 48]) == pytest.approx(_hue(rgb[48, 52]), abs=5)
    assert _hue(rgb[48, 48]) < 40  # red, not white
    assert rgb[48, 48].min() < 0.6


def _moffat(r2: np.ndarray, fwhm: float, beta: float) -> np.ndarray:
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    return (beta - 1) / (np.pi * alpha**2) * (1 + r2 / alpha**2) ** -beta


def _gaussian(r2: np.ndarray, fwhm: float) -> np.ndarray:
    sigma = fwhm / 2.3548
    return np.exp(-r2 / (2 * sigma**2)) / (2 * np.pi * sigma**2)


@pytest.mark.parametrize("psf", ["gaussian", "moffat 3", "moffat 1.8"])
@pytest.mark.parametrize("fluxes", [(1, 1, 1), (1, 2, 4)], ids=["white", "red"])
@pytest.mark.parametrize("holes", [(2.0, 3.0, 6.0), (2.0, 0.0, 0.0), (2.0, 3.0, 0.0)],
                         ids=["all masked", "F090W masked", "F090W and F200W masked"])
def test_a_saturated_core_takes_its_star_s_colour(psf: str, fluxes: tuple[int, int, int],
                                                   holes: tuple[float, float, float]):
    """A bright star saturated in three filters over a core the larger the wider the PSF (as in
    NIRCam's long-wave channel), or in the sharper filters only, beside seven unsaturated white
    stars: its core and the surroundings its filled values reach come out in the star's own colour
    (its fluxes against the white stars'), whatever the PSFs' shape. Coloured from the ring just
    outside the widest hole, a white star's core came out red (0.46 : 0.29 : 0.24), as the sharp
    filters' missing cores, blurred to the widest PSF, dimmed them there."""
    rng = np.random.default_rng(8)
    yy, xx = np.mgrid[:192, :192]
    profile = _gaussian if psf == "gaussian" else partial(_moffat, beta=float(psf.split()[1]))
    faint = [(40.2, 40.7), (40.5, 150.1), (150.9, 40.3), (150.4, 150.6), (96.1, 30.8), (30.6, 96.4), (160.3, 96.9)]
    r2 = (xx - 96.3) ** 2 + (yy - 95.8) ** 2
    channels = []
    for fwhm, hole, flux in zip((2.8, 3.8, 5.6), holes, fluxes, strict=True):  # blue, green, red
        channel = rng.normal(0, 1, yy.shape) + 2e5 * flux * profile(r2, fwhm)
        for y, x in faint:
            channel += 3e3 * profile((xx - x) ** 2 + (yy - y) ** 2, fwhm)
        channel[r2 <= hole**2] = np.nan
        channels.append(channel)
    colours = composite.channel_colours([0.9, 2.0, 4.4])
    balance = composite.balance_channels(channels)
    assert balance.method == "stars" and balance.n_stars == len(faint)
    rgb, _ = composite.lupton_rgb(channels, colours, balance)
    want = np.array(fluxes, dtype=float) @ colours  # against the white field stars, as the picture shows them
    want /= want.sum()
    core = rgb[96, 96]
    near = rgb[r2 <= 8**2].mean(axis=0)  # the holes and the blur's reach around them
    assert core.sum() > 2 * rgb[r2 > 20**2].mean(axis=0).sum()  # bright, not a hole
    np.testing.assert_allclose(core / core.sum(), want, atol=0.04)
    np.testing.assert_allclose(near / near.sum(), want, atol=0.04)


def test_a_saturated_core_s_colour_reaches_as_far_in_every_direction():
    """Around a masked core the picture differs from the star unsaturated as far along a diagonal as
    along a row: drawn over the blur kernel's square, two bright stars at the centre of NGC 3132 came
    out as flat orange and cyan squares (the diagonal reach 1.27 times the row's here)."""
    yy, xx = np.mgrid[:192, :192]
    faint = [(40.2, 40.7), (40.5, 150.1), (150.9, 40.3), (150.4, 150.6), (96.1, 30.8), (30.6, 96.4), (160.3, 96.9)]
    r2 = (xx - 96.0) ** 2 + (yy - 96.0) ** 2

    def field(masked: bool) -> list[np.ndarray]:
        rng = np.random.default_rng(8)
        channels = []
        for fwhm, hole, flux in zip((2.8, 3.8, 5.6), (2.0, 3.0, 6.0), (1, 2, 4), strict=True):
            channel = rng.normal(0, 1, yy.shape) + 2e5 * flux * _gaussian(r2, fwhm)
            for y, x in faint:
                channel += 3e3 * _gaussian((xx - x) ** 2 + (yy - y) ** 2, fwhm)
            if masked:
                channel[r2 <= hole**2] = np.nan
            channels.append(channel)
        return channels

    colours = composite.channel_colours([0.9, 2.0, 4.4])
    balance = composite.balance_channels(field(False))
    clean, _ = composite.lupton_rgb(field(False), colours, balance)
    cored, _ = composite.lupton_rgb(field(True), colours, balance)
    changed = np.abs(cored - clean).max(axis=2) > 0.02
    signs = [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    along_rows = max(k for k in range(25) for a, b in signs if changed[96 + a * k, 96] or changed[96, 96 + b * k])
    along_diagonals = max(k for k in range(25) for a, b in signs if changed[96 + a * k, 96 + b * k]) * np.sqrt(2)
    assert 6 <= along_rows <= 14  # the masked cores and the reach of the blur that matched the PSFs
    assert along_diagonals <= 1.1 * along_rows


def test_scattered_bad_pixels_leave_the_colours_around_them_alone():
    """Single bad pixels, filled from their neighbours, are no masked cores: the pixels around them
    keep the colours they have without them. Only a masked core's blurred reach is recoloured;
    recolouring every hole's reach changed them by 0.03 here."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:160, :160]
    nebula = np.exp(-((xx - 80) ** 2 + (yy - 80) ** 2) / (2 * 40.0**2))
    channels = [rng.normal(0, 1, yy.shape) + 30 * nebula * (1 + k * xx / 160) for k in range(3)]
    radii = (np.arange(24) + 0.5) / 2
    widths = (2.8, 3.8, 5.6)
    balance = composite.Balance((0.0,) * 3, (1.0,) * 3, (1.0,) * 3, "given", 0, widths,
                                tuple(np.stack([radii, _gaussian(radii**2, w)]) for w in widths))
    colours = composite.channel_colours([0.9, 2.0, 4.4])
    clean, _ = composite.lupton_rgb(channels, colours, balance)
    bad = np.zeros(yy.shape, dtype=bool)
    damaged = []
    for channel in channels:
        rows, cols = rng.integers(10, 150, (2, 60))
        channel = channel.copy()
        channel[rows, cols] = np.nan
        bad[rows, cols] = True
        damaged.append(channel)
    rgb, _ = composite.lupton_rgb(damaged, colours, balance)
    assert np.abs(rgb - clean)[~bad].max() < 0.02


def test_balance_falls_back_without_stars():
    """No star seen in every channel: the channels' bright pixels set the balance."""
    rng = np.random.default_rng(4)
    channels = [rng.normal(10.0 * k, 1.0 + k, (64, 64)) for k in range(3)]
    balance = composite.balance_channels(channels)
    assert balance.method == "bright pixels" and balance.n_stars == 0
    np.testing.assert_allclose(balance.sky, (0.0, 10.0, 20.0), atol=0.2)
    np.testing.assert_allclose(balance.noise, (1.0, 2.0, 3.0), rtol=0.05)


def test_emulator_composite_measures_like_a_press_image(emu):
    """NGC 628's NIRCam F090W, F200W and F444W images (two pixel scales, stars of known colours):
    blank sky neutral, the stars on blank sky white on average, almost nothing clipped."""
    sky = emu.sky
    target = next(t for t in TARGETS if t.name == "NGC 628")
    filters = ("F090W", "F200W", "F444W")
    images = []
    for f in filters:
        name = f"jw02107-o001_t002_nircam_clear-{f.lower()}_i2d.fits"
        with fits.open(sky.root / name) as hdul:
            images.append((hdul["SCI"].data.astype(float), WCS(hdul["SCI"].header)))
    channels, wcs, shape = composite.reproject_channels(images)
    rgb = composite.compose(channels, composite.channel_colours([BANDS[f].pivot_um for f in filters]))
    footprint = np.all([np.isfinite(c) for c in channels], axis=0)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    stars = sky.truth["targets"][target.name]["stars"]
    sx, sy = wcs.world_to_pixel_values([s["ra"] for s in stars], [s["dec"] for s in stars])
    blank = footprint.copy()
    for s, x, y in zip(stars, sx, sy, strict=True):
        radius = 15.0 * max(1.0, max(s["flux_ujy"][f] for f in filters)) ** (1 / 5)
        blank &= (cols - x) ** 2 + (rows - y) ** 2 >= radius**2
    assert blank.sum() > 10000
    measured = [(int(round(y)), int(round(x))) for s, x, y in zip(stars, sx, sy, strict=True)
                if not s["bright"] and s["flux_ujy"]["F200W"] > 0.5]
    got = composite.picture_figures(rgb, blank, measured, half=8, footprint=footprint)
    assert got["n_stars"] >= 4
    # Blank-sky medians within 0.01 of full scale of each other.
    assert max(got["sky_r"], got["sky_g"], got["sky_b"]) - min(got["sky_r"], got["sky_g"], got["sky_b"]) < 0.01, got
    assert got["sky_spread"] < 0.05 and 0.02 < got["sky_g"] < 0.15, got  # channel medians within a few per cent
    assert abs(got["star_rg"] - 1) < 0.15 and abs(got["star_bg"] - 1) < 0.15, got
    assert got["clipped"] < 0.002, got
    assert not rgb[~footprint].any()  # where a filter has no data the picture is black, not tinted
