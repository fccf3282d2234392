"""Targets: the catalogued observations grouped by where their footprints overlap on the sky.

Composites and mosaics are made per target. A target is a set of observations joined by
overlapping footprints (the ``s_region`` polygons of their images, not field-of-view radii) whose
target names agree; it is keyed by the target name made safe, with a short hash when one name
covers separate fields. Overlap is decided in the tangent plane at the pair's mid-point, so RA
wrap and the poles need nothing special.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from shapely import Polygon, unary_union
from shapely.geometry.base import BaseGeometry

from skyassets.imaging.mosaic import calibration_rank, exposure_name, is_data_quality
from skyassets.lake.names import validate_obs_id
from skyassets.landing.keys import LANDED_PREFIX

_log = logging.getLogger(__name__)

_SEPARATORS = re.compile(r"[^A-Z0-9+.]+")
_KEY_UNSAFE = re.compile(r"[^A-Z0-9.]+")
# Target keys' readable part, leaving room in a partition key for the hashes added to it.
TARGET_KEY_MAX = 64
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_NUMBER_LIKE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)(?:inity)?", re.IGNORECASE)


def polygons(s_region: str | None) -> list[np.ndarray]:
    """The (N, 2) RA/Dec vertex arrays of the POLYGONs of an STC-S region (CIRCLEs left out)."""
    if not isinstance(s_region, str):
        return []
    out = []
    for part in re.split(r"(?i)polygon", s_region)[1:]:
        numbers = [float(x) for x in _NUMBER.findall(part)]
        if len(numbers) >= 6:
            vertices = np.array(numbers[: len(numbers) // 2 * 2]).reshape(-1, 2)
            # a NaN or inf is not a number to _NUMBER and would shift every pair after it
            if len(numbers) == len(_NUMBER_LIKE.findall(part)) and (np.abs(vertices[:, 1]) <= 90).all():
                out.append(vertices)
    return out


def normalise_name(name: str | None) -> str:
    """``NGC 3132``, ``NGC-3132`` and ``ngc3132`` alike: upper case, letters, digits, ``+`` and ``.``."""
    return _SEPARATORS.sub("", name.upper()) if isinstance(name, str) else ""


def _key_name(name: str) -> str:
    """A target name as a partition key, whatever the header said; ``""`` for a name with nothing in it.

    Upper case, letters, digits and ``.``, separators as single dashes (``NGC 3132`` -> ``NGC-3132``).
    A name that loses more than separators on the way (``+``, ``..``, a leading or trailing dot, or
    length past ``TARGET_KEY_MAX``) gets ``_`` and 8 hex digits of its normalised name: a readable
    key without ``_`` stands for exactly one normalised name, and a hashed one for the name it hashes,
    so distinct names keep distinct keys, and a name keeps its key from run to run.
    """
    normal = normalise_name(name)
    if not normal:
        return ""
    readable = re.sub(r"\.{2,}", ".", _KEY_UNSAFE.sub("-", name.upper())).strip("-.")
    readable = readable[:TARGET_KEY_MAX].rstrip("-.")
    if readable.replace("-", "") == normal:
        return readable
    return f"{readable or 'TARGET'}_{hashlib.sha256(normal.encode()).hexdigest()[:8]}"


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _tangent(vertices: np.ndarray, centre: np.ndarray) -> Polygon | None:
    """A polygon projected gnomonically about ``centre`` (a unit vector); None if it reaches the far side."""
    east = np.cross([0.0, 0.0, 1.0], centre)
    if np.linalg.norm(east) < 1e-12:  # at a pole any east will do
        east = np.array([0.0, 1.0, 0.0])
    east /= np.linalg.norm(east)
    north = np.cross(centre, east)
    v = _unit(vertices[:, 0], vertices[:, 1])
    c = v @ centre
    if (c <= 0).any():
        return None
    shape = Polygon(np.column_stack([(v @ east) / c, (v @ north) / c]))
    return shape if shape.is_valid else shape.buffer(0)


def _cap(points: np.ndarray) -> tuple[np.ndarray, float]:
    """The centre (unit vector) and angular radius of a cap holding ``points`` (unit vectors)."""
    centre = points.sum(axis=0)
    centre /= np.linalg.norm(centre)
    return centre, float(np.arccos(np.clip(points @ centre, -1, 1)).max())


class _Footprint:
    """An observation's image polygons, with a bounding cap to skip pairs far apart, and one cap per
    polygon to skip, without projecting anything, pairs whose images lie side by side."""

    def __init__(self, regions: Iterable[str | None]):
        self.vertices = [p for region in regions for p in polygons(region)]
        caps = [_cap(_unit(v[:, 0], v[:, 1])) for v in self.vertices]
        self.centres = np.array([c for c, _ in caps]).reshape(-1, 3)
        self.radii = np.array([r for _, r in caps])
        points = _unit(*np.vstack(self.vertices).T) if self.vertices else np.empty((0, 3))
        self.centre, self.radius = _cap(points) if len(points) else (None, 0.0)

    def near(self, other: _Footprint) -> bool:
        if self.centre is None or other.centre is None:
            return False
        return float(np.arccos(np.clip(self.centre @ other.centre, -1, 1))) <= self.radius + other.radius

    def shape(self, centre: np.ndarray) -> BaseGeometry | None:
        shapes = [s for s in (_tangent(v, centre) for v in self.vertices) if s is not None]
        return unary_union(shapes) if shapes else None

    def overlaps(self, other: _Footprint) -> bool:
        if not self.near(other):
            return False
        apart = np.arccos(np.clip(self.centres @ other.centres.T, -1, 1))
        if not (apart <= self.radii[:, None] + other.radii[None, :]).any():
            return False  # no image's cap touches one of the other's: the polygons cannot meet
        middle = self.centre + other.centre
        middle /= np.linalg.norm(middle)
        mine, theirs = self.shape(middle), other.shape(middle)
        return mine is not None and theirs is not None and mine.intersection(theirs).area > 0


def _candidate_pairs(footprints: list[_Footprint]) -> set[tuple[int, int]]:
    """Index pairs whose bounding caps may touch, from a k-d tree of the centres (chord distances)."""
    if len(footprints) < 2:
        return set()
    centres = np.array([f.centre for f in footprints])
    widest = max(f.radius for f in footprints)
    reach = 2 * np.sin(min(np.pi, 2 * widest) / 2)
    return {(i, j) for i, j in cKDTree(centres).query_pairs(reach) if footprints[i].near(footprints[j])}


def group_targets(images: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per observation (``obs_id``) with its ``target`` key and the ``target_name`` it shows.

    A target keeps the key it had in ``previous`` (the last grouping's rows) while it keeps
    observations it had then: a field named like another elsewhere has a key naming its members,
    and a new observation of it, or a second field of the name, must not rename it (its products,
    tiles and the name people use for it would all be made anew). Of two targets claiming one key,
    the one holding more of its observations keeps it.

    ``images`` has ``obs_id``, ``target_name`` and ``s_region`` (one row per image, as the catalog's
    ``images``). Observations without a footprint are left out: they cannot be placed on the sky; so
    are images with a ``wcs_problem`` (when the column is given), whose footprint cannot be trusted.
    """
    if "wcs_problem" in images:
        images = images[images["wcs_problem"].isna()]
    names: dict[str, Counter[str]] = defaultdict(Counter)
    shown: dict[str, str] = {}
    regions: dict[str, list[str | None]] = defaultdict(list)
    for obs_id, name, region in images[["obs_id", "target_name", "s_region"]].itertuples(index=False):
        normal = normalise_name(name)
        names[obs_id][normal] += 1
        key = _key_name(name) if isinstance(name, str) else ""
        shown[normal] = min(shown.get(normal, key), key)  # one spelling per name, whatever the row order
        regions[obs_id].append(region)
    footprints = {o: _Footprint(r) for o, r in regions.items()}
    obs_ids = sorted(o for o, f in footprints.items() if f.vertices)
    name_of = {o: names[o].most_common(1)[0][0] for o in obs_ids}
    parent = {o: o for o in obs_ids}

    def root(o: str) -> str:
        while parent[o] != o:
            parent[o] = parent[parent[o]]
            o = parent[o]
        return o

    for i, j in sorted(_candidate_pairs([footprints[o] for o in obs_ids])):
        a, b = obs_ids[i], obs_ids[j]
        same_name = name_of[a] == name_of[b] or not name_of[a] or not name_of[b]
        if same_name and root(a) != root(b) and footprints[a].overlaps(footprints[b]):
            parent[root(b)] = root(a)
    groups: dict[str, list[str]] = defaultdict(list)
    for o in obs_ids:
        groups[root(o)].append(o)
    label = {g: Counter(name_of[o] for o in members if name_of[o]).most_common(1) for g, members in groups.items()}
    per_name = Counter(v[0][0] if v else "" for v in label.values())
    base = {g: shown.get(label[g][0][0] if label[g] else "") or "FIELD" for g in groups}
    kept = _keys_kept(groups, base, previous)
    taken = set(kept.values())
    rows = []
    for g, members in groups.items():
        name = label[g][0][0] if label[g] else ""
        key = kept.get(g) or base[g]
        if g not in kept and (per_name[name] > 1 or not name or key in taken):
            key = f"{key}-{hashlib.sha256(';'.join(sorted(members)).encode()).hexdigest()[:6]}"
        taken.add(key)
        rows += [(o, validate_obs_id(key), shown.get(name, "")) for o in members]
    frame = pd.DataFrame(rows, columns=["obs_id", "target", "target_name"])
    return frame.sort_values(["target", "obs_id"], ignore_index=True)


def _keys_kept(groups: dict[str, list[str]], base: dict[str, str], previous: pd.DataFrame | None) -> dict[str, str]:
    """Group -> the key it keeps from ``previous``: a key of its own name (``base``, or ``base-<6 hex>``)
    that its observations had, the key shared by most of them first; a key goes to one group only."""
    if previous is None or previous.empty:
        return {}
    had = dict(zip(previous["obs_id"], previous["target"], strict=True))
    claims, taken = [], set()
    for g, members in groups.items():
        own = re.compile(re.escape(base[g]) + r"(-[0-9a-f]{6})?")
        for key, count in Counter(had[o] for o in members if o in had).items():
            if isinstance(key, str) and own.fullmatch(key):
                claims.append((-count, key, g))
    kept: dict[str, str] = {}
    for _, key, g in sorted(claims):
        if g not in kept and key not in taken:
            kept[g] = key
            taken.add(key)
    return kept


# The images a target's products are made from, with what mosaics and composites need of them.
INPUT_COLUMNS = [
    "target", "obs_id", "file_name", "path", "hdu_index", "sha256", "instrument_name", "filter",
    "calib_level", "proposal_id", "asn_id", "t_exptime", "score", "flag",
]


def target_inputs(groups: pd.DataFrame, images: pd.DataFrame, quality: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """Per target of ``groups`` (``target_groups``): its catalogued ``images`` that ``quality`` found
    usable and did not reject, as ``INPUT_COLUMNS``. A target whose images are not measured yet, or
    all rejected, has an empty table: its products wait for usable data rather than use bad data.
    """
    columns = [c for c in INPUT_COLUMNS if c not in ("target", "score", "flag")]
    if quality is None or quality.empty:
        usable = pd.DataFrame(columns=INPUT_COLUMNS)
    else:
        verdict = quality[["sha256", "hdu_index", "usable", "flag", "score"]].drop_duplicates(["sha256", "hdu_index"])
        verdict = verdict[verdict["usable"].astype(bool) & (verdict["flag"] != "reject")]
        usable = images[columns].merge(verdict.drop(columns="usable"), on=["sha256", "hdu_index"])
        usable = usable.merge(groups[["obs_id", "target"]], on="obs_id")[INPUT_COLUMNS]
        usable = one_file_per_exposure(usable)
    # sorted once, then split: a target's rows keep that order (a sort per target cost a second per
    # thousand targets, most of them with no usable image yet)
    order = ["target", "instrument_name", "filter", "obs_id", "file_name", "hdu_index"]
    usable = usable.sort_values(order, ignore_index=True)
    by_target = {target: rows.reset_index(drop=True) for target, rows in usable.groupby("target", sort=False)}
    return {target: by_target.get(target, usable.iloc[:0]) for target in sorted(groups["target"].unique())}


def one_file_per_exposure(inputs: pd.DataFrame) -> pd.DataFrame:
    """``inputs`` with one file per exposure, HDU and target: of an HST FLT and FLC of one exposure the
    FLC, of a JWST cal and rate the cal, of a JWST cal catalogued under two products one, so no
    exposure is co-added with itself; WFPC2 data-quality files (c1m, c1f) are no image at all.
    The most calibrated file is kept (``mosaic.SUFFIX_RANK``); of equally calibrated ones a landed
    file whose bytes the archive's copies do not hold (one's own reduction of the exposure) over
    the archive's, then the earliest observation id. Each file left out is logged with the one kept
    (another version of the exposure at INFO, so that it shows in the run's log), and
    ``build_mosaic`` records such choices for the copies it is given in its header (HISTORY)."""
    if inputs.empty:
        return inputs
    quality_flags = inputs["file_name"].map(is_data_quality)
    for row in inputs[quality_flags].itertuples(index=False):
        _log.debug("%s: %s[%s] (%s) left out, a data-quality file", row.target, row.file_name, row.hdu_index,
                   row.obs_id)
    inputs = inputs[~quality_flags]
    rank = inputs["file_name"].map(calibration_rank)
    # a file name of no known convention says nothing of its exposure: only the same content is the same
    key = inputs["file_name"].map(exposure_name).where(rank > 0, "sha256:" + inputs["sha256"].astype(str))
    landed = inputs["obs_id"].astype(str).str.startswith(LANDED_PREFIX)
    archived = set(zip(key[~landed], inputs["hdu_index"][~landed], inputs["sha256"][~landed], strict=True))
    own = landed & pd.Series([(k, h, d) not in archived for k, h, d in zip(
        key, inputs["hdu_index"], inputs["sha256"], strict=True)], index=inputs.index, dtype=bool)
    keyed = inputs.assign(exposure_key=key, calibration=rank, own=own)
    keyed = keyed.sort_values(["calibration", "own", "obs_id", "file_name"], ascending=[False, False, True, True],
                              kind="stable")
    first = ~keyed.duplicated(["target", "exposure_key", "hdu_index"])
    kept = keyed[first]
    for row in keyed[~first].itertuples(index=False):
        chosen = kept[(kept["target"] == row.target) & (kept["exposure_key"] == row.exposure_key)
                      & (kept["hdu_index"] == row.hdu_index)].iloc[0]
        other_version = row.sha256 != chosen["sha256"] and row.calibration == chosen["calibration"]
        _log.log(logging.INFO if other_version else logging.DEBUG,
                 "%s: %s[%s] (%s) left out, %s exposure as %s (%s)", row.target, row.file_name, row.hdu_index,
                 row.obs_id, "another version of the same" if other_version else "the same", chosen["file_name"],
                 chosen["obs_id"])
    return kept.drop(columns=["exposure_key", "calibration", "own"]).sort_index()


# The programme observation (JWST) or visit (HST) a file belongs to, from its name: a level-3
# ``jw02733-o001_t001_nircam_clear-f090w_i2d`` and the level-2 ``jw02733001001_02101_00001_nrcb1_cal``
# are both programme 02733 observation 001; HST ``j8pu01010_drz`` and ``j8pu01abq_flc`` visit j8pu01.
# The Hubble Legacy Archive's and HAP's products (``hst_10402_01_acs_wfc_f435w_drz``) name the
# proposal and the visit number instead: an exposure's name (ipppssoot) holds a program code
# (``8pu``), not the proposal, so only its proposal_id links it to such a product.
_JWST_COMBINED = re.compile(r"^jw(\d{5})-o(\d{3})_", re.IGNORECASE)
_JWST_EXPOSURE = re.compile(r"^jw(\d{5})(\d{3})\d{3}_", re.IGNORECASE)
_HST_ROOTNAME = re.compile(r"^([a-z][a-z0-9]{5})[a-z0-9]{3}_[a-z0-9]+(?:\.fits(?:\.gz|\.bz2)?)?$", re.IGNORECASE)
_HST_PROPOSAL_VISIT = re.compile(r"^hst_(\d{1,5})_([a-z0-9]{2})_", re.IGNORECASE)


def visit_of(file_name: str) -> str | None:
    """The JWST programme observation or HST visit a file is part of, from its name; None when the
    name follows no convention. An HLA/HAP name gives ``hst_<proposal>_<visit>`` (proposal
    without leading zeros), a key an HST exposure of known proposal also has (:func:`_visits`)."""
    if match := _JWST_COMBINED.match(file_name) or _JWST_EXPOSURE.match(file_name):
        return f"jw{match[1]}-o{match[2]}".lower()
    if match := _HST_PROPOSAL_VISIT.match(file_name):
        return _proposal_visit(match[1], match[2])
    if match := _HST_ROOTNAME.match(file_name):
        return match[1].lower()
    return None


def _proposal_visit(proposal: object, visit: str) -> str | None:
    """``hst_<proposal>_<visit>`` for an HST proposal id (text or number) and visit number."""
    text = "" if proposal is None or pd.isna(proposal) else str(proposal).strip()
    text = text.removesuffix(".0")  # a number column read back as floats
    return f"hst_{int(text)}_{visit.lower()}" if text.isdigit() else None


def _named_visit(row: dict) -> str | None:
    """:func:`visit_of` the row's file name, else of its ``obs_id`` where that is a JWST level-3 or
    HLA observation id (``jw02733-o001_t001_...``, ``hst_10402_01_acs_wfc_f435w``), which name
    their visit as their files do, else of its association (``asn_id``: HST's ipppssoot of the
    visit's association, JWST's association table): a file landed under a name of its owner's
    choosing still says in its header which visit it belongs to."""
    obs_id = row.get("obs_id")
    if visit := visit_of(row["file_name"]):
        return visit
    if isinstance(obs_id, str):
        obs_id = obs_id.removeprefix(LANDED_PREFIX)
        if _JWST_COMBINED.match(f"{obs_id}_") or _HST_PROPOSAL_VISIT.match(f"{obs_id}_"):
            return visit_of(f"{obs_id}_")
    asn_id = row.get("asn_id")
    if isinstance(asn_id, str) and asn_id.strip().upper() != "NONE":
        return visit_of(asn_id.strip()) or visit_of(f"{asn_id.strip()}_asn")
    return None


def _visits(row: dict) -> set[str]:
    """The visits a row's image belongs to (:func:`_named_visit`); for an HST exposure of known
    ``proposal_id`` also ``hst_<proposal>_<visit>``, which HLA products give."""
    name = row["file_name"]
    visit = _named_visit(row)
    found = {visit} if visit else set()
    if (match := _HST_ROOTNAME.match(name)) and (key := _proposal_visit(row.get("proposal_id"), match[1][-2:])):
        found.add(key)
    return found


def _visit_numbers(images: pd.DataFrame) -> set[str]:
    """The visit numbers (``ss`` of ipppssoot) of the HST files among ``images`` of no known proposal."""
    unknown = images["proposal_id"].isna() if "proposal_id" in images else pd.Series(True, index=images.index)
    return {m[1][-2:].lower() for name in images.loc[unknown, "file_name"] if (m := _HST_ROOTNAME.match(name))}


def without_combined_duplicates(images: pd.DataFrame) -> pd.DataFrame:
    """``images`` (of one instrument and filter) without the combined (level-3) products whose own
    exposures are among them: an i2d or drz is made from its visit's level-2 exposures, so co-adding
    both would count that light twice, and the exposures are kept as they carry each one's outliers.
    A combined product of a visit with no exposure here is kept, and so is every other image
    (exposures, and files without a calibration level such as landed ones). A combined product whose
    name (or ``obs_id``) gives no visit is left out only when exposures of no known visit are here too.

    An HLA or HAP product (``hst_<proposal>_<visit>_..._drz``) is made from the exposures of that
    proposal and visit number, which an exposure's ``proposal_id`` (when the column is given) tells:
    an exposure of unknown proposal with the same visit number may be one of them, and leaves it
    out as well. Where none of its exposures is here, it gives way to the pipeline's combined
    product of the visit (an ipppssoot ``_drz``), made from the same exposures, on the same terms."""
    level = images["calib_level"]
    combined = level == 3
    if not combined.any():
        return images
    visits = pd.Series([_visits(r) for r in images.to_dict("records")], index=images.index, dtype=object)
    exposures = level == 2
    exposed = set().union(*visits[exposures])
    unnamed_exposures = bool((visits[exposures].map(len) == 0).any())
    reasons: dict[object, str] = {}
    for i in images.index[combined]:
        if visits[i] & exposed or (not visits[i] and unnamed_exposures):
            reasons[i] = "the exposures it was combined from are co-added instead"
    rootname = images["file_name"].map(lambda n: _HST_ROOTNAME.match(n) is not None)
    waiting = combined & ~images.index.isin(list(reasons))
    hla = waiting & ~rootname & visits.map(lambda v: any(k.startswith("hst_") for k in v))
    if hla.any():
        pipeline = waiting & rootname
        guessed = _visit_numbers(images[exposures])
        made, made_guessed = set().union(*visits[pipeline]), _visit_numbers(images[pipeline])
        for i in images.index[hla]:
            number = next(k for k in visits[i] if k.startswith("hst_")).rsplit("_", 1)[1]
            if number in guessed:
                reasons[i] = f"exposures of visit {number} (proposal not known) are co-added instead"
            elif visits[i] & made or number in made_guessed:
                reasons[i] = f"the pipeline's combined product of visit {number} is co-added instead"
    for i, reason in reasons.items():
        _log.debug("%s left out: %s", images.at[i, "file_name"], reason)
    return images[~images.index.isin(list(reasons))]


def inputs_digest(inputs: pd.DataFrame) -> str:
    """Which images (file content and HDU) a target's products are made from: same digest, same inputs.
    A re-measured score that keeps the same images keeps the digest, so nothing is remade for it."""
    keys = sorted(f"{sha}:{int(hdu)}" for sha, hdu in zip(inputs["sha256"], inputs["hdu_index"], strict=True))
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
