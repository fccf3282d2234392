"""DQ conventions and pixel masks, on small arrays whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from skyassets.fits.dq import DQ_BITS, HST_DQ, JWST_DQ, PLATEAU_PIXELS, pixel_masks, saturation_level


def test_dq_bit_tables_are_single_named_bits():
    for table in (JWST_DQ, HST_DQ):
        assert all(bit > 0 and bit & (bit - 1) == 0 for bit in table)
        assert len({name for name, _ in table.values()}) == len(table)
    assert DQ_BITS["jwst"] == {"bad": 1, "saturated": 2, "cosmic_ray": 4 | 16}
    hst = DQ_BITS["hst"]
    assert hst["bad"] & (16 | 64 | 256) == 0 and hst["bad"] & (4 | 2048 | 4096)  # AstroDrizzle's final_bits are good
    assert hst["saturated"] == 256 | 2048 and hst["cosmic_ray"] == 4096 | 8192


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
    dq[3, 4] = 4  # JUMP_DET: a cosmic ray, corrected in the ramp fit
    masks = pixel_masks(image, dq, "jwst", None)
    assert masks.n_good == 18 and masks.fill.sum() == 2
    assert masks.mask[2, 1] and masks.mask[3, 3] and not masks.mask[3, 4]
    assert masks.cosmic_ray is not None and masks.cosmic_ray[3, 4] and masks.cosmic_ray.sum() == 1
    f = masks.fractions
    assert f["frac_nan"] == pytest.approx(1 / 20) and f["frac_zero"] == pytest.approx(1 / 20)
    assert f["frac_dq_flagged"] == pytest.approx(1 / 20) and f["frac_saturated"] == pytest.approx(1 / 20)
    assert f["frac_unusable"] == pytest.approx(3 / 19)  # the zero, the flagged and the saturated pixel


def test_pixel_masks_without_dq_find_a_saturation_plateau():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    image[0, :PLATEAU_PIXELS] = 1000.0
    masks = pixel_masks(image, None, None, None)
    assert masks.saturated.sum() == PLATEAU_PIXELS and masks.fractions["frac_dq_flagged"] is None
    image[0, 1] = 999.0  # fewer pixels at the maximum: a bright star, not saturation
    assert not pixel_masks(image, None, None, None).saturated.any()
    assert pixel_masks(image, None, None, 50.0).saturated.sum() == 50 + PLATEAU_PIXELS  # 50..99 and the top row
