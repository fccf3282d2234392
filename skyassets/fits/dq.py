"""Data-quality (DQ) conventions of JWST and HST pixel arrays, and the bad-pixel masks they give.

The DQ extension of a calibrated image marks each pixel with bits whose meanings the mission
defines, per instrument; :data:`DQ_BITS` groups them into unusable, saturated and cosmic-ray pixels
(only bits that say the value itself is wrong: a flag for a defect the calibration corrected, such
as a JWST jump removed by the ramp fit, leaves the pixel good), and :func:`dq_kind_of` says which
convention a header's instrument follows. Image quality
(:mod:`skyassets.imaging.quality`) and the mosaic (:mod:`skyassets.imaging.mosaic`) both mask pixels
with :func:`pixel_masks`, so a pixel quality counts as unusable is one the mosaic leaves out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Saturation from a plateau: the image maximum shared by at least this many pixels.
PLATEAU_PIXELS = 3

# JWST pixel DQ bits (jwst / stdatamodels ``dqflags.pixel``): bit value -> (name, meaning).
JWST_DQ: dict[int, tuple[str, str]] = {
    1 << 0: ("DO_NOT_USE", "bad pixel, do not use"),
    1 << 1: ("SATURATED", "saturated during the exposure"),
    1 << 2: ("JUMP_DET", "jump (cosmic ray) detected in the ramp"),
    1 << 3: ("DROPOUT", "data lost in transmission"),
    1 << 4: ("OUTLIER", "flagged by outlier detection (cosmic ray, artefact)"),
    1 << 5: ("PERSISTENCE", "high persistence"),
    1 << 6: ("AD_FLOOR", "below the A/D floor"),
    1 << 7: ("CHARGELOSS", "charge migration"),
    1 << 8: ("UNRELIABLE_ERROR", "uncertainty exceeds the quoted error"),
    1 << 9: ("NON_SCIENCE", "not on the science portion of the detector"),
    1 << 10: ("DEAD", "dead pixel"),
    1 << 11: ("HOT", "hot pixel"),
    1 << 12: ("WARM", "warm pixel"),
    1 << 13: ("LOW_QE", "low quantum efficiency"),
    1 << 14: ("RC", "RC pixel"),
    1 << 15: ("TELEGRAPH", "telegraph pixel"),
    1 << 16: ("NONLINEAR", "highly nonlinear"),
    1 << 17: ("BAD_REF_PIXEL", "reference pixel cannot be used"),
    1 << 18: ("NO_FLAT_FIELD", "flat field cannot be measured"),
    1 << 19: ("NO_GAIN_VALUE", "gain cannot be measured"),
    1 << 20: ("NO_LIN_CORR", "linearity correction not available"),
    1 << 21: ("NO_SAT_CHECK", "saturation check not available"),
    1 << 22: ("UNRELIABLE_BIAS", "bias variance large"),
    1 << 23: ("UNRELIABLE_DARK", "dark variance large"),
    1 << 24: ("UNRELIABLE_SLOPE", "slope variance large"),
    1 << 25: ("UNRELIABLE_FLAT", "flat variance large"),
    1 << 26: ("OPEN", "open pixel"),
    1 << 27: ("ADJ_OPEN", "adjacent to an open pixel"),
    1 << 28: ("FLUX_ESTIMATED", "flux estimated from neighbours"),
    1 << 29: ("MSA_FAILED_OPEN", "NIRSpec MSA shutter failed open"),
    1 << 30: ("OTHER_BAD_PIXEL", "other bad pixel type"),
    1 << 31: ("REFERENCE_PIXEL", "reference pixel"),
}
# HST DQ bits of ACS, WFC3 and STIS (CALACS acsdq.h, CALWF3 wf3dq.h; ACS and WFC3 Data Handbooks, DQ
# flag tables). WFC3/IR gives some bits other meanings (second text of the description).
HST_DQ: dict[int, tuple[str, str]] = {
    1: ("SOFTERR", "Reed-Solomon decoding error"),
    2: ("DATALOST", "data replaced by fill value"),
    4: ("DETECTORPROB", "bad detector pixel or beyond the aperture"),
    8: ("DATAMASKED", "masked by an aperture feature (IR: deviant zero read)"),
    16: ("HOTPIX", "hot pixel"),
    32: ("CTETAIL", "CTE tail of a hot pixel (IR: unstable response)"),
    64: ("WARMPIX", "warm pixel"),
    128: ("BADBIAS", "bias structure, bad column (IR: bad reference pixel)"),
    256: ("SATPIXEL", "full-well saturation"),
    512: ("BADFLAT", "bad pixel in a reference file (IR: blob, non-nominal flat)"),
    1024: ("TRAP", "charge trap, sink pixel (IR: reserved)"),
    2048: ("ATODSAT", "A-to-D saturation (IR: signal in the zero read, corrected)"),
    4096: ("CRDRIZ", "cosmic ray rejected by AstroDrizzle"),
    8192: ("DATAREJECT", "cosmic ray rejected when combining CR-SPLITs (IR: jump removed by the ramp fit)"),
    16384: ("CROSSTALK", "ghost or crosstalk (IR: high curvature in the ramp)"),
}
# WFPC2 DQ bits (WFPC2 Data Handbook, data quality flags of c0f/c1f and c0m/c1m files).
WFPC2_DQ: dict[int, tuple[str, str]] = {
    1: ("SOFTERR", "Reed-Solomon decoding error"),
    2: ("CALIBDEFECT", "defect in a calibration file"),
    4: ("STATICDEFECT", "permanent camera defect"),
    8: ("ATODSAT", "A-to-D converter saturation (signal above 4095 DN)"),
    16: ("DATALOST", "missing data, lost in readout or transmission"),
    32: ("BADPIXEL", "bad pixel of no other category"),
    128: ("TRAP", "permanent charge trap"),
    256: ("QUESTIONABLE", "up the column from a charge trap"),
    512: ("WARMPIX", "unrepaired warm pixel"),
    1024: ("REPAIRED", "repaired warm pixel"),
}


def _bits(table: Mapping[int, tuple[str, str]], *names: str) -> int:
    """The mask of the bits of ``table`` with these names."""
    return sum(value for value, (name, _) in table.items() if name in names)


# Which bits make a pixel's value unusable, saturated or a cosmic-ray hit still in the value, per
# DQ convention. Bits that say a value was measured and corrected are left out: its value is good.
# JWST: the pipeline sets DO_NOT_USE on every pixel it will not use, and resample uses all pixels
# but DO_NOT_USE and NON_SCIENCE; JUMP_DET pixels were corrected in the ramp fit (the jump left out),
# so they are good. OUTLIER pixels (outlier_detection, with DO_NOT_USE) still hold the cosmic ray.
# ACS, WFC3/UVIS, STIS ("hst"): every bit but hot (16) and warm (64) pixels, good after dark
# subtraction, and full well (256), which AstroDrizzle's final_bits (336) also accept; 4096 and 8192
# in an FLT/FLC mark a cosmic ray that is still in the value.
# WFC3/IR ("wfc3_ir"): the ramp fit removes jumps (8192) and corrects the zero read (2048), and blobs
# (512) are flat-fielded, so those values are good (AstroDrizzle's IR final_bits, 768, accept 512);
# hot (16) and unstable (32) pixels are not. Saturated pixels (256), whose rate comes from the few
# reads before saturation, are counted and left out like saturated pixels everywhere.
# WFPC2: defects, traps, missing data and unrepaired warm pixels; repaired warm pixels (1024) and
# those merely up the column from a trap (256) keep their value.
DQ_BITS: dict[str, dict[str, int]] = {
    "jwst": {"bad": _bits(JWST_DQ, "DO_NOT_USE", "NON_SCIENCE"), "saturated": _bits(JWST_DQ, "SATURATED"),
             "cosmic_ray": _bits(JWST_DQ, "OUTLIER")},
    "hst": {"bad": sum(HST_DQ) - _bits(HST_DQ, "HOTPIX", "WARMPIX", "SATPIXEL"),
            "saturated": _bits(HST_DQ, "SATPIXEL", "ATODSAT"), "cosmic_ray": _bits(HST_DQ, "CRDRIZ", "DATAREJECT")},
    "wfc3_ir": {"bad": _bits(HST_DQ, "SOFTERR", "DATALOST", "DETECTORPROB", "DATAMASKED", "HOTPIX", "CTETAIL",
                             "BADBIAS", "TRAP", "CROSSTALK"),
                "saturated": _bits(HST_DQ, "SATPIXEL"), "cosmic_ray": _bits(HST_DQ, "CRDRIZ")},
    "wfpc2": {"bad": _bits(WFPC2_DQ, "SOFTERR", "CALIBDEFECT", "STATICDEFECT", "DATALOST", "BADPIXEL", "TRAP",
                           "WARMPIX"),
              "saturated": _bits(WFPC2_DQ, "ATODSAT"), "cosmic_ray": 0},
}


def dq_kind_of(header: Mapping[str, Any] | None) -> str | None:
    """The DQ convention (a key of :data:`DQ_BITS`) of the instrument that wrote ``header``, from
    TELESCOP, INSTRUME and DETECTOR; None when its DQ bits are not interpreted (NICMOS, ground)."""
    if header is None:
        return None
    telescope = str(header.get("TELESCOP") or "").strip().upper()
    instrument = str(header.get("INSTRUME") or "").strip().upper()
    detector = str(header.get("DETECTOR") or "").strip().upper()
    if telescope == "JWST":
        return "jwst"
    if telescope != "HST":
        return None
    if instrument == "WFC3" and detector == "IR":
        return "wfc3_ir"
    if instrument == "WFPC2":
        return "wfpc2"
    return "hst" if instrument in ("ACS", "WFC3", "STIS") else None


def saturation_level(saturation: float | None, header: Mapping[str, Any] | None) -> float | None:
    """The saturation level passed, else the header's (SATURATE and its variants), else None.
    Public so that the mosaic masks saturated pixels at the level quality measures them at."""
    if saturation is not None or header is None:
        return saturation
    for key in ("SATURATE", "SATURATN", "SATLEVEL"):
        value = header.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


@dataclass
class PixelMasks:
    """Per-pixel masks of one image and the bad-pixel fractions they give (see :func:`pixel_masks`)."""

    fill: np.ndarray  # NaN, infinite or exactly 0
    mask: np.ndarray  # not to be used: fill, saturated or DQ-flagged
    saturated: np.ndarray
    cosmic_ray: np.ndarray | None
    n_good: int
    fractions: dict[str, float | None]


def pixel_masks(image: np.ndarray, dq: np.ndarray | None, dq_kind: str | None,
                saturation: float | None) -> PixelMasks:
    """Masks and fractions of bad pixels. The exposed footprint is each row's span from its first
    to its last finite non-zero pixel: fill outside it (chip edges, the rotated border of a
    resampled mosaic, reference pixels) is not lost data; NaN or zero inside it is.

    Public so that the mosaic leaves out exactly the pixels quality counts as unusable.
    """
    finite = np.isfinite(image)
    zero = image == 0
    fill = ~finite | zero
    good = ~fill
    n = image.size
    bits = DQ_BITS.get(dq_kind or "")
    saturated = np.zeros(image.shape, bool)
    flagged = None
    cosmic_ray = None
    if dq is not None and bits is not None:
        flagged = (dq & bits["bad"]) != 0
        saturated |= (dq & bits["saturated"]) != 0
        cosmic_ray = (dq & bits["cosmic_ray"]) != 0
    if saturation is not None:
        saturated |= image >= saturation
    elif flagged is None and good.any():
        top = np.max(image, where=good, initial=-np.inf)
        sample = image[::7, ::7]
        sample = sample[np.isfinite(sample) & (sample != 0)]
        if np.count_nonzero(image == top) >= PLATEAU_PIXELS and (not sample.size or top > np.median(sample)):
            saturated |= image == top
    mask = fill | saturated if flagged is None else fill | saturated | flagged
    rows = good.any(axis=1)
    first = good.argmax(axis=1)
    last = image.shape[1] - 1 - good[:, ::-1].argmax(axis=1)
    footprint = int(np.where(rows, last - first + 1, 0).sum())
    n_good = int(np.count_nonzero(good))
    lost = footprint - n_good + int(np.count_nonzero(good & (mask & ~fill)))
    fractions = {
        "frac_nan": 1.0 - int(np.count_nonzero(finite)) / n,
        "frac_zero": int(np.count_nonzero(zero)) / n,
        "frac_saturated": int(np.count_nonzero(saturated)) / n,
        "frac_dq_flagged": None if flagged is None else int(np.count_nonzero(flagged)) / n,
        "frac_unusable": lost / footprint if footprint else 1.0,
    }
    return PixelMasks(fill, mask, saturated, cosmic_ray, n_good, fractions)
