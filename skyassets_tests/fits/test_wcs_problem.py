"""Headers whose WCS cannot be right are catalogued with a wcs_problem and no position at all."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from skyassets.fits import meta

GOOD = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 38.0, "CRPIX2": 38.0, "CRVAL1": 150.0,
        "CRVAL2": 2.0, "CD1_1": -1e-5, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 1e-5}


def _write(path: Path, cards: dict, raw: dict[str, bytes] | None = None) -> Path:
    """A 76 x 76 image with ``cards``; ``raw`` replaces a card's 80 bytes as they are (NaN, odd bytes)."""
    header = fits.Header()
    for key, value in cards.items():
        if value is not None:
            header[key] = value
    for key in raw or {}:
        header[key] = 0.0  # a placeholder card, rewritten below
    fits.PrimaryHDU(np.ones((76, 76), dtype="f4"), header=header).writeto(path)
    data = path.read_bytes()
    for key, card in (raw or {}).items():
        at = data.index(key.ljust(8).encode() + b"= ")
        data = data[:at] + card.ljust(80) + data[at + 80:]
    path.write_bytes(data)
    return path


BAD = {
    "zero CD": ({"CD1_1": 0.0, "CD2_2": 0.0}, None, "CD matrix is singular"),
    "singular CD": ({"CD1_1": 1e-5, "CD1_2": 1e-5, "CD2_1": 1e-5, "CD2_2": 1e-5}, None, "CD matrix is singular"),
    "one CD row": ({"CD2_1": None, "CD2_2": None}, None, "CD matrix is singular"),
    "zero CDELT": ({"CD1_1": None, "CD1_2": None, "CD2_1": None, "CD2_2": None, "CDELT1": -1e-5, "CDELT2": 0.0},
                   None, "PC matrix with CDELT is singular"),
    "singular PC": ({"CD1_1": None, "CD1_2": None, "CD2_1": None, "CD2_2": None, "CDELT1": 1e-5, "CDELT2": 1e-5,
                     "PC1_1": 1.0, "PC1_2": 1.0, "PC2_1": 1.0, "PC2_2": 1.0}, None, "singular"),
    "NaN CRVAL": ({}, {"CRVAL1": b"CRVAL1  =                  NaN"}, "CRVAL1"),
    "NaN CRVAL as text": ({"CRVAL2": "NaN"}, None, "CRVAL2"),
    "inf CD": ({}, {"CD1_1": b"CD1_1   =                  INF"}, "CD1_1"),
    "garbled CRVAL": ({}, {"CRVAL1": b"CRVAL1  = 1.5\xe90"}, "CRVAL1"),
    "huge CDELT": ({"CD1_1": None, "CD1_2": None, "CD2_1": None, "CD2_2": None, "CDELT1": 1e300, "CDELT2": 1e-5},
                   None, "larger than the sky"),
    "huge CD": ({"CD1_1": -1e300}, None, "larger than the sky"),
    "far CRPIX": ({"CRPIX1": -1e300}, None, "degrees from its reference point"),
    "NaN CRPIX": ({}, {"CRPIX2": b"CRPIX2  =                  NaN"}, "CRPIX2"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_unusable_wcs_gets_a_problem_and_no_position(tmp_path, case):
    cards, raw, reason = BAD[case]
    path = _write(tmp_path / "bad.fits", {**GOOD, **cards}, raw)
    (row,) = meta.extract(path)
    assert row["wcs_problem"] is not None and reason in row["wcs_problem"], row["wcs_problem"]
    assert row["s_ra"] is None and row["s_dec"] is None and row["s_region"] is None and row["s_fov"] is None


def test_a_good_wcs_keeps_its_position(tmp_path):
    (row,) = meta.extract(_write(tmp_path / "good.fits", GOOD))
    assert row["wcs_problem"] is None
    assert row["s_ra"] == pytest.approx(150.0, abs=1e-3) and row["s_fov"] < 0.01


def test_what_astropy_made_of_a_zero_cd_matrix(tmp_path):
    """Why the keywords are checked and not only the WCS object: wcslib takes a zero CD matrix as
    absent and uses one-degree pixels, a field of tens of degrees."""
    header = fits.Header({**GOOD, "CD1_1": 0.0, "CD2_2": 0.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scale = WCS(header).proj_plane_pixel_scales()
    assert max(s.value for s in scale) > 0.5


def test_s_region_does_not_override_a_broken_wcs(tmp_path):
    cards = {**GOOD, "CD1_1": 0.0, "CD2_2": 0.0, "S_REGION": "POLYGON ICRS 150 2 150.01 2 150.01 2.01 150 2.01"}
    (row,) = meta.extract(_write(tmp_path / "both.fits", cards))
    assert row["s_ra"] is None and "singular" in row["wcs_problem"]


@pytest.mark.parametrize("region", ["POLYGON ICRS 150 NaN 150.01 2 150.01 2.01 150 2.01",
                                    "POLYGON ICRS 150 95 150.01 2 150.01 2.01 150 2.01", "CIRCLE ICRS 10 20 0"])
def test_an_impossible_s_region_is_not_used(tmp_path, region):
    (row,) = meta.extract(_write(tmp_path / "region.fits", {**GOOD, "S_REGION": region}))
    assert row["wcs_problem"] is None and row["s_ra"] == pytest.approx(150.0, abs=1e-3)  # from the WCS instead
    assert "NaN" not in (row["s_region"] or "") and " 95" not in row["s_region"]


def test_a_byte_that_is_not_ascii_in_one_card_does_not_lose_the_file(tmp_path):
    path = _write(tmp_path / "odd.fits", {**GOOD, "EXPTIME": 1.0, "TARGNAME": "M31"},
                  {"EXPTIME": b"EXPTIME =               12.5\xff", "TARGNAME": b"TARGNAME= 'Caf\xe9 M31'"})
    (row,) = meta.extract(path)
    assert row["t_exptime"] is None and row["target_name"].endswith("M31")
    assert row["s_ra"] == pytest.approx(150.0, abs=1e-3) and row["wcs_problem"] is None
