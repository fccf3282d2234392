"""The synthetic sky: deterministic bytes, valid FITS with checksums, WCS consistent with truth."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from skyassets.emulator import Emulator, SkySpec
from skyassets.emulator.sky import BANDS, SR_PER_ARCSEC2, TARGETS, Sky


def test_same_spec_same_bytes(tmp_path: Path) -> None:
    spec = SkySpec(image_size=64, pointings=1, stars_per_target=10)
    a, b = Sky(tmp_path / "a", spec), Sky(tmp_path / "b", spec)
    names = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b.root) for p in b.root.rglob("*") if p.is_file())
    assert any(name.parts[0] == "more" for name in names)  # the HLA and GALEX files
    for name in names:
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes(), name
    assert a.observations == b.observations and a.more_observations == b.more_observations
    assert Sky(tmp_path / "a", spec).root == a.root  # reused, not regenerated


def test_every_product_exists_with_its_size(emu: Emulator) -> None:
    for rows in emu.sky.products.values():
        for row in rows:
            path, size, _ = emu.sky.files[row["dataURI"]]
            assert path.stat().st_size == size == row["size"]
            assert row["dataURI"].endswith("/" + row["productFilename"])


def test_fits_files_have_valid_checksums_and_keywords(emu: Emulator) -> None:
    for path in sorted(emu.sky.root.glob("*.fits")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with fits.open(path, checksum=True) as hdus:
                assert all("CHECKSUM" in h.header and "DATASUM" in h.header for h in hdus)
                primary = hdus[0].header
                assert primary["TELESCOP"] in ("JWST", "HST")
                if primary["TELESCOP"] == "JWST":
                    for key in ("FILTER", "PUPIL", "TARGNAME", "DATE-BEG", "EFFEXPTM", "PROGRAM", "ENG_QUAL"):
                        assert key in primary
                if path.name.endswith(("_cal.fits", "_i2d.fits", "_flt.fits", "_drz.fits")):
                    assert [h.name for h in hdus] == ["PRIMARY", "SCI", "ERR", "DQ"]
                    assert "PIXAR_SR" in hdus["SCI"].header


def test_wcs_places_truth_stars_in_the_images(emu: Emulator) -> None:
    truth = emu.sky.truth
    for name in ("jw02736001001_02101_00001_nrcb1_cal.fits", "jw02736-o001_t003_nircam_clear-f444w_i2d.fits",
                 "j8pu01abq_flt.fits"):
        info = truth["files"][name]
        stars = truth["targets"][info["target"]]["stars"]
        with fits.open(emu.sky.root / name) as hdus:
            sci = hdus["SCI"].data
            header = hdus["SCI"].header
            wcs = WCS(header)
            assert header["CTYPE1"] == ("RA---TAN" if "_i2d" in name else "RA---TAN-SIP")
            x, y = wcs.all_world2pix([s["ra"] for s in stars], [s["dec"] for s in stars], 0)
            n = sci.shape[0]
            inside = [i for i in range(len(stars)) if 10 < x[i] < n - 10 and 10 < y[i] < n - 10]
            assert len(inside) >= 5
            bright = max(inside, key=lambda i: stars[i]["flux_ujy"][info["filter"]])
            cx, cy = int(round(x[bright])), int(round(y[bright]))
            assert sci[cy, cx] > info["background"] + 20 * np.nanmedian(hdus["ERR"].data)
            dq = hdus["DQ"].data
            if info["saturated_star_ids"]:
                assert (dq & (2 if name.startswith("jw") else 256)).any()
            flagged = [c for c in info["cosmic_rays"] if c["flagged"]]
            for cr in flagged:
                assert dq[cr["y"], cr["x"]] & (4 if name.startswith("jw") else 4096)
            assert np.isnan(sci[0, 0]) == name.startswith("jw")


def test_truth_is_saved_beside_the_files(emu: Emulator) -> None:
    truth = json.loads((emu.sky.root / "truth.json").read_text())
    assert set(truth["targets"]) == {"NGC 3132", "NGC 628", "SMACS J0723.3-7327"}
    psf = truth["psf"]
    assert psf["F090W"]["fwhm_arcsec"] < psf["F200W"]["fwhm_arcsec"] < psf["F444W"]["fwhm_arcsec"]
    backgrounds = {f["obs_id"]: f["background"] for f in truth["files"].values() if f["filter"] == "F090W"}
    assert len(set(round(b, 6) for b in backgrounds.values())) > 1  # offsets between pointings


def test_extended_sources_have_their_colours(emu: Emulator) -> None:
    """Each component's spectrum, against the field stars' median (f_nu ~ lambda**-0.5, white in a
    balanced picture): young arms and lensed arcs blue, old stars yellow-red, HII regions and
    molecular hydrogen bright in their 2 and 4 um lines; NGC 628 stays a field of stars."""
    targets = emu.sky.truth["targets"]
    assert targets["NGC 628"]["extended"] == [] and not any(s["on_extended"] for s in targets["NGC 628"]["stars"])
    parts = {c["name"]: c["peak_ujy_arcsec2"] for t in targets.values() for c in t["extended"]}
    assert {"bulge", "arms", "hii_regions", "dust_glow", "lensed_arcs", "intracluster_light", "shell",
            "filaments"} <= set(parts)

    def blue_over_red(name: str) -> float:  # 1 for the stars' median colour
        return parts[name]["F090W"] / parts[name]["F444W"] / (0.902 / 4.421) ** -0.5

    assert blue_over_red("arms") > 1.5 and blue_over_red("lensed_arcs") > 1.5
    assert 0.5 < blue_over_red("bulge") < 1.0
    assert blue_over_red("hii_regions") < 0.3 and blue_over_red("filaments") < 0.1
    assert parts["filaments"]["F200W"] > 5 * parts["filaments"]["F090W"]  # H2 1-0 S(1) at 2.12 um
    assert parts["dust_glow"]["F444W"] > 100 * parts["dust_glow"]["F200W"]
    assert sum(s["on_extended"] for s in targets["SMACS J0723.3-7327"]["stars"]) >= 1


def test_images_hold_the_extended_emission_truth_describes(emu: Emulator) -> None:
    """Away from stars, an image minus its sky is the truth's extended emission, in every filter,
    dust lanes and PSF included."""
    sky = emu.sky
    target = next(t for t in TARGETS if t.name == "SMACS J0723.3-7327")
    for name in ("jw02736-o001_t003_nircam_clear-f090w_i2d.fits", "jw02736-o001_t003_nircam_clear-f444w_i2d.fits"):
        info = sky.truth["files"][name]
        with fits.open(sky.root / name) as hdus:
            sci, err, wcs = hdus["SCI"].data, hdus["ERR"].data, WCS(hdus["SCI"].header)
        rows, cols = np.mgrid[: sci.shape[0], : sci.shape[1]]
        ra, dec = wcs.all_pix2world(cols, rows, 0)
        model = sky.extended_at(target, BANDS[info["filter"]], ra, dec) * 1e-12 / SR_PER_ARCSEC2  # MJy/sr
        stars = sky.truth["targets"][target.name]["stars"]
        sx, sy = wcs.all_world2pix([s["ra"] for s in stars], [s["dec"] for s in stars], 0)
        clear = np.ones(sci.shape, dtype=bool)
        for x, y in zip(sx, sy, strict=True):
            clear &= (cols - x) ** 2 + (rows - y) ** 2 > 12**2
        bright = clear & np.isfinite(sci) & (model > 20 * np.nanmedian(err))
        assert bright.sum() > 200, name
        ratio = np.median((sci[bright] - info["background"]) / model[bright])
        assert abs(ratio - 1) < 0.03, (name, ratio)
        residual = (sci - info["background"] - model)[clear & np.isfinite(sci)]
        assert abs(np.median(residual)) < 0.1 * np.nanmedian(err), name  # faint parts too


def test_without_extended_sources_only_their_targets_change(tmp_path: Path) -> None:
    spec = SkySpec(image_size=64, pointings=1, stars_per_target=10)
    plain, full = Sky(tmp_path / "a", replace(spec, extended=False)), Sky(tmp_path / "b", spec)
    assert all(t["extended"] == [] for t in plain.truth["targets"].values())
    for name in ("jw02107-o001_t002_nircam_clear-f200w_i2d.fits", "jw02733-o001_t001_nircam_clear-f200w_i2d.fits"):
        same = (plain.root / name).read_bytes() == (full.root / name).read_bytes()
        assert same == name.startswith("jw02107"), name  # NGC 628 is stars only either way
