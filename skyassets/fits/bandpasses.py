"""Filter bandpasses: the wavelength range (em_min, em_max) an image covers, from its filter names.

The table (``data/bandpasses.csv``) holds, per instrument and filter, the pivot wavelength and the
half-maximum edges of the total throughput; the file's header says where each value comes from.
Ground images name their filters loosely ("V", "Rc", "r'", "SDSS g", "Ks"), so names that no
instrument row matches are tried against the standard photometric systems.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources

NM = 1e-9


@dataclass(frozen=True)
class Bandpass:
    """One filter of one instrument; wavelengths in metres."""

    facility: str
    instrument: str
    filter: str
    pivot: float
    em_min: float
    em_max: float
    source: str


@cache
def table() -> dict[tuple[str, str], Bandpass]:
    """The bandpass table keyed by (INSTRUMENT, FILTER), both upper case."""
    text = resources.files("skyassets").joinpath("data/bandpasses.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    out = {}
    for r in rows:
        bp = Bandpass(r["facility"], r["instrument"], r["filter"], float(r["pivot_nm"]) * NM,
                      float(r["em_min_nm"]) * NM, float(r["em_max_nm"]) * NM, r["source"])
        out[(bp.instrument.upper(), bp.filter.upper())] = bp
    return out


_SYSTEM_WORDS = re.compile(r"^(johnson|bessell|cousins|sdss|sloan|2mass|mko|ukidss)[\s_-]*", re.I)


def _standard(name: str) -> tuple[str, str] | None:
    """(system, filter) of a loosely written standard filter name, or None.

    Case decides between systems: lower-case u g r i z (or primed) are SDSS, upper-case U B V R I
    (with Cousins Rc/Ic) are Johnson-Cousins; J H K Ks are 2MASS (K read as Ks).
    """
    text = _SYSTEM_WORDS.sub("", name.strip())
    primed = text.endswith("'")
    text = text.rstrip("'").replace("_", "").replace(" ", "")
    if text in ("u", "g", "r", "i", "z") or (primed and text.lower() in "ugriz" and len(text) == 1):
        return "SDSS", text.lower()
    if text in ("G", "Z"):
        return "SDSS", text.lower()
    upper = text.upper()
    if upper in ("U", "B", "V", "R", "I", "RC", "IC"):
        return "JOHNSON", upper[0]
    if upper in ("J", "H"):
        return "2MASS", upper
    if upper in ("K", "KS", "KSHORT"):
        return "2MASS", "Ks"
    return None


def lookup(instrument: str | None, name: str) -> Bandpass | None:
    """The bandpass of filter ``name`` on ``instrument`` (INSTRUME, or INSTRUME/DETECTOR)."""
    rows = table()
    inst = (instrument or "").upper()
    for key in (inst, inst.split("/")[0]):
        if (key, name.upper()) in rows:
            return rows[(key, name.upper())]
    std = _standard(name)
    return rows.get((std[0], std[1].upper())) if std else None


@cache
def filter_names() -> dict[str, str]:
    """Every filter name of the table, upper case, to the name as the table writes it."""
    return {bp.filter.upper(): bp.filter for bp in table().values()}


def known_filter(name: str) -> bool:
    """Whether ``name`` is a filter of some instrument or photometric system of the table."""
    return name.upper() in filter_names() or _standard(name) is not None


def effective_range(instrument: str | None, names: Iterable[str]) -> tuple[float, float] | None:
    """(em_min, em_max) in metres passed by all of ``names`` together (filters in series).

    Elements the table does not know (polarisers, grisms) are ignored; None when no element is
    known or the known ones do not overlap.
    """
    known = [bp for bp in (lookup(instrument, n) for n in names) if bp is not None]
    if not known:
        return None
    lo, hi = max(bp.em_min for bp in known), min(bp.em_max for bp in known)
    return (lo, hi) if lo < hi else None
