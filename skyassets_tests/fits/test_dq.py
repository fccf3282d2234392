"""DQ conventions and pixel masks, on small arrays whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from skyassets.fits.dq import (
    DQ_BITS,
    HST_DQ,
    JWST_DQ,
    PLATEAU_PIXELS,
    WFPC2_DQ,
    dq_kind_of,
    pixel_masks,
    saturation_level,
)


def test_dq_bit_tables_are_single_named_bits():
    for table in (JWST_DQ, HST_DQ, WFPC2_DQ):
        assert all(bit > 0 and bit & (bit - 1) == 0 for bit in table)
        assert len({name for name, _ in table.values()}) == len(table)
    # JWST: DO_NOT_USE and NON_SCIENCE are unusable; JUMP_DET (4) is a jump the ramp fit removed: good.
    assert DQ_BITS["jwst"] == {"bad": 1 | 512, "saturated": 2, "cosmic_ray": 16}
    hst = DQ_BITS["hst"]
    assert hst["bad"] & (16 | 64 | 256) == 0 and hst["bad"] & (4 | 2048 | 4096)  # AstroDrizzle's final_bits are good
    assert hst["saturated"] == 256 | 2048 and hst["cosmic_ray"] == 4096 | 8192
    ir = DQ_BITS["wfc3_ir"]  # ramp-fit jumps (8192), zero-read signal (2048) and blobs (512) are good values
    assert ir["bad"] & (512 | 2048 | 8192) == 0 and ir["bad"] & (4 | 16 | 32) == 4 | 16 | 32
    wfpc2 = DQ_BITS["wfpc2"]  # repaired warm pixels are good, unrepaired ones and traps are not
    assert wfpc2["bad"] & 1024 == 0 and wfpc2["bad"] & (128 | 512) == 128 | 512 and wfpc2["saturated"] == 8


@pytest.mark.parametrize(("header", "kind"), [
    ({"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "DETECTOR": "NRCB1"}, "jwst"),
    ({"TELESCOP": "HST", "INSTRUME": "ACS", "DETECTOR": "WFC"}, "hst"),
    ({"TELESCOP": "HST", "INSTRUME": "WFC3", "DETECTOR": "UVIS"}, "hst"),
    ({"TELESCOP": "HST", "INSTRUME": "WFC3", "DETECTOR": "IR"}, "wfc3_ir"),
    ({"TELESCOP": "HST", "INSTRUME": "WFPC2"}, "wfpc2"),
    ({"TELESCOP": "HST", "INSTRUME": "NICMOS"}, None),
    ({"TELESCOP": "UKIRT"}, None),
    (None, None),
])
def test_dq_kind_follows_the_instrument(header, kind):
    assert dq_kind_of(header) == kind


def test_only_bits_meaning_a_bad_value_are_masked():
    image = np.full((2, 3), 10.0, np.float32)
    dq = np.array([[4, 1, 8192], [2048, 512, 16]], np.uint32)
    jwst = pixel_masks(image, dq, "jwst", None)  # JUMP_DET good; DO_NOT_USE and NON_SCIENCE (512) bad
    assert jwst.mask.tolist() == [[False, True, False], [False, True, False]]
    ir = pixel_masks(image, dq, "wfc3_ir", None)  # IR: jumps, zero-read and blob pixels good; hot pixel bad
    assert ir.mask.tolist() == [[True, True, False], [False, False, True]]
    uvis = pixel_masks(image, dq, "hst", None)  # UVIS/ACS: 8192 is a cosmic ray still in the FLT value
    assert uvis.mask.tolist() == [[True, True, True], [True, True, False]]


def test_saturation_level_comes_from_the_caller_then_the_header():
    assert saturation_level(100.0, {"SATURATE": 5.0}) == 100.0
    assert saturation_level(None, {"SATURATN": 0, "SATLEVEL": 7}) == 7.0
    assert saturation_level(None, {"SATURATE": True}) is None and saturation_level(None, None) is None


def test_pixel_masks_with_jwst_dq():
    image = np.full((4, 5), 10.0, np.float32)
    image[0, 0] = np.nan  # a NaN at the row's start is outside the exposed footprint
    image[1, 2] = 0.0  # a zero inside it is lost data
    dq = np.zeros(image.shape, np.uint32)
    dq[2, 1] = 1 | (1 << 31)  # DO_NOT_USE
    dq[3, 3] = 2  # SATURATED
    dq[3, 4] = 4  # JUMP_DET: a cosmic ray removed by the ramp fit, the value is good
    dq[2, 4] = 16 | 1  # OUTLIER (with DO_NOT_USE): a cosmic ray still in the value
    masks = pixel_masks(image, dq, "jwst", None)
    assert masks.n_good == 18 and masks.fill.sum() == 2
    assert masks.mask[2, 1] and masks.mask[3, 3] and not masks.mask[3, 4]
    assert masks.cosmic_ray is not None and masks.cosmic_ray[2, 4] and masks.cosmic_ray.sum() == 1
    f = masks.fractions
    assert f["frac_nan"] == pytest.approx(1 / 20) and f["frac_zero"] == pytest.approx(1 / 20)
    assert f["frac_dq_flagged"] == pytest.approx(2 / 20) and f["frac_saturated"] == pytest.approx(1 / 20)
    assert f["frac_unusable"] == pytest.approx(4 / 19)  # the zero, the two flagged and the saturated pixel


def test_pixel_masks_without_dq_find_a_saturation_plateau():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    image[0, :PLATEAU_PIXELS] = 1000.0
    masks = pixel_masks(image, None, None, None)
    assert masks.saturated.sum() == PLATEAU_PIXELS and masks.fractions["frac_dq_flagged"] is None
    image[0, 1] = 999.0  # fewer pixels at the maximum: a bright star, not saturation
    assert not pixel_masks(image, None, None, None).saturated.any()
    assert pixel_masks(image, None, None, 50.0).saturated.sum() == 50 + PLATEAU_PIXELS  # 50..99 and the top row
