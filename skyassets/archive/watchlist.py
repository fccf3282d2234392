"""The watchlist: which parts of MAST skyassets keeps fresh.

A YAML file of entries, each searching MAST one way (target name, coordinates and radius,
observation id or program id) with optional criteria, plus which products of the observations
found are downloaded. Errors name the file and the entry, so a typo never turns into a silent
empty query.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

# astropy.coordinates takes most of a second to import: it is loaded when a watchlist is parsed.
if TYPE_CHECKING:
    from astropy.coordinates import Angle, SkyCoord

DEFAULT_WATCHLIST = "packaged:watchlist.yaml"
WATCHLIST_ENV = "SKYASSETS_WATCHLIST"

SEARCH_KEYS = ("target", "coordinates", "obs_id", "program")
CRITERIA_KEYS = {
    # watchlist key -> CAOM column
    "collection": "obs_collection",
    "instrument": "instrument_name",
    "filters": "filters",
    "calib_level": "calib_level",
    "product_type": "dataproduct_type",
    "exposure": "t_exptime",
}
ENTRY_KEYS = {"name", "radius", "products", *SEARCH_KEYS, *CRITERIA_KEYS}
PRODUCT_KEYS = {"product_type", "subgroups", "extensions", "calib_level", "recommended"}
MINIMUM_RECOMMENDED = "Minimum Recommended Products"


class WatchlistError(ValueError):
    """The watchlist file cannot be used as written."""


@dataclass(frozen=True)
class ProductSpec:
    """Which products of an observation to download (MAST product-list columns).

    By default MAST's own choice, for every mission: the science products it recommends
    (productGroupDescription "Minimum Recommended Products") and every calibrated science product
    (calib_level 2 and 3: JWST cal and i2d, HST flt/flc/drz, WFPC2 c0m/c1m, STIS x1d/crj...), as
    FITS, compressed or not. ``product_type``, ``subgroups`` and ``extensions`` narrow the list when
    given; ``recommended`` and ``calib_level`` each add what they choose.
    """

    product_type: tuple[str, ...] = ("SCIENCE",)
    subgroups: tuple[str, ...] = ()
    extensions: tuple[str, ...] = (".fits", ".fits.gz")
    calib_level: tuple[int, ...] = (2, 3)
    recommended: bool = True

    @property
    def text(self) -> str:
        """The choice as JSON, the same for the same choice however it was written."""
        return json.dumps({k: sorted(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()},
                          sort_keys=True)


@dataclass(frozen=True)
class WatchlistEntry:
    name: str
    target: str | None = None
    coordinates: SkyCoord | None = None
    radius: Angle = field(default_factory=lambda: _default_radius())
    obs_id: tuple[str, ...] = ()
    program: tuple[str, ...] = ()
    criteria: dict[str, Any] = field(default_factory=dict)
    products: ProductSpec = ProductSpec()

    @property
    def kind(self) -> str:
        for key in SEARCH_KEYS:
            if getattr(self, key) not in (None, ()):
                return key
        raise AssertionError("validated entries always have a search key")


@dataclass(frozen=True)
class Watchlist:
    """The entries to search, and those that could not be read: ``invalid`` holds (entry name, why);
    a query reports them failed, as an entry whose search fails, and the others go on."""

    path: str
    entries: tuple[WatchlistEntry, ...]
    invalid: tuple[tuple[str, str], ...] = ()
    defaults: ProductSpec = ProductSpec()  # the product choice of an entry that says none (or cannot be read)

    def doubts(self) -> list[str]:
        """Names in the entries that may be slips, each with its file and entry (see :func:`unknown_filters`)."""
        return [f"{self.path}: entry {entry.name!r}: {why}" for entry in self.entries for why in unknown_filters(entry)]

    def entry(self, name: str) -> WatchlistEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(f"{self.path}: no watchlist entry named {name!r}")

    def products_for(self, entries: str | None) -> ProductSpec:
        """The product choice of the first of ``entries`` (the comma-separated names of the entries
        that found an observation) that the watchlist has; its defaults when it has none of them."""
        for name in str(entries or "").split(","):
            try:
                return self.entry(name).products
            except KeyError:
                continue
        return self.defaults


def _as_tuple(value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def _texts(value: Any, key: str, where: str) -> tuple[str, ...]:
    """``value`` as names: one, or a list of them (a mapping or a nested list is a mistake)."""
    values = _as_tuple(value)
    if any(isinstance(v, (dict, list, tuple, bool)) or v is None for v in values):
        raise WatchlistError(f"{where}: '{key}' takes a name or a list of names, not {value!r}")
    return tuple(str(v) for v in values)


def _one_target(value: Any, where: str) -> str:
    """The one name an entry's ``target`` search resolves (a list is several entries)."""
    names = _texts(value, "target", where)
    if len(names) != 1:
        raise WatchlistError(f"{where}: 'target' is one name (make an entry per target), not {value!r}")
    return names[0]


def _numbers(value: Any, key: str, where: str, kind: type[int] | type[float]) -> list:
    """``value`` as finite numbers (whole ones for ``int``), one or a list of them."""
    out = []
    for v in _as_tuple(value):
        try:
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise ValueError
            number = float(v)
            if not math.isfinite(number) or (kind is int and not number.is_integer()):
                raise ValueError
            number = kind(number)
        except ValueError:
            said = "whole numbers" if kind is int else "numbers"
            raise WatchlistError(f"{where}: '{key}' takes {said}, not {v!r}") from None
        out.append(number)
    return out


def _default_radius() -> Angle:
    import astropy.units as u
    from astropy.coordinates import Angle

    return Angle(0.2, u.deg)


def _parse_coordinates(value: Any) -> SkyCoord:
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    if isinstance(value, dict) or isinstance(value, (list, tuple)):
        pair = [value.get("ra"), value.get("dec")] if isinstance(value, dict) else list(value)
        if len(pair) != 2 or None in pair or (isinstance(value, dict) and set(value) != {"ra", "dec"}):
            raise ValueError(f"coordinates are {{ra: ..., dec: ...}} or [ra, dec] in degrees, or text; not {value!r}")
        try:
            ra, dec = (float(v) for v in pair)
        except (TypeError, ValueError):
            ra = dec = math.nan
        if isinstance(pair[0], bool) or isinstance(pair[1], bool) or not (math.isfinite(ra) and math.isfinite(dec)):
            raise ValueError(f"coordinates are two finite numbers of degrees, not {value!r}")
        return _on_the_sky(ra, dec)
    text = str(value)
    try:  # "ra dec" in degrees: checked as a pair is, where astropy would wrap an RA of 400 to 40
        ra, dec = (float(v) for v in text.replace(",", " ").split())
    except ValueError:
        unit = (u.deg, u.deg) if ":" not in text and "h" not in text else (u.hourangle, u.deg)
        try:
            coord = SkyCoord(text, unit=unit, frame="icrs")
        except ValueError as err:
            raise ValueError(f"cannot read the coordinates {text!r} ({err})") from err
        _ra_as_written(text, unit[0])
        return coord
    return _on_the_sky(ra, dec)


def _ra_as_written(text: str, unit: Any) -> None:
    """Refuse an RA written past a full turn (``400d``, ``25:00:00``), which astropy wraps."""
    from astropy.coordinates import Angle

    parts = text.replace(",", " ").split()
    if len(parts) % 2:  # not an RA and a dec of as many parts each: astropy's reading stands
        return
    try:
        ra = Angle(" ".join(parts[: len(parts) // 2]), unit=unit)
    except ValueError:
        return
    if not 0 <= ra.deg < 360:
        raise ValueError(f"ra is between 0 and 360 degrees (24 hours), not {ra.to_string(unit=unit)}")


def _on_the_sky(ra: float, dec: float) -> SkyCoord:
    """ICRS coordinates of ``ra``, ``dec`` in degrees, refused with a plain reason when off the sky."""
    from astropy.coordinates import SkyCoord

    if not 0 <= ra < 360:
        raise ValueError(f"ra is between 0 and 360 degrees, not {ra:g}")
    if not -90 <= dec <= 90:
        raise ValueError(f"dec is between -90 and +90 degrees, not {dec:g}")
    return SkyCoord(ra, dec, unit="deg", frame="icrs")


def _parse_products(raw: Any, base: ProductSpec, where: str) -> ProductSpec:
    if raw is None:
        return base
    if not isinstance(raw, dict) or not set(raw) <= PRODUCT_KEYS:
        raise WatchlistError(f"{where}: 'products' takes the keys {sorted(PRODUCT_KEYS)}")
    extensions = tuple(e if e.startswith(".") else f".{e}" for e in _texts(raw.get("extensions"), "extensions", where))
    return ProductSpec(
        product_type=tuple(v.upper() for v in _texts(raw.get("product_type"), "product_type", where))
        or base.product_type,
        subgroups=tuple(v.upper() for v in _texts(raw.get("subgroups"), "subgroups", where)) or base.subgroups,
        extensions=extensions or base.extensions,
        calib_level=tuple(_numbers(raw.get("calib_level"), "calib_level", where, int)) or base.calib_level,
        recommended=_as_bool(raw["recommended"], where) if "recommended" in raw else base.recommended,
    )


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise WatchlistError(f"{where}: 'recommended' is true or false, not {value!r}")


def _parse_criteria(raw: dict[str, Any], where: str) -> dict[str, Any]:
    criteria: dict[str, Any] = {}
    for key, column in CRITERIA_KEYS.items():
        if key not in raw:
            continue
        value = raw[key]
        if key == "exposure":
            values = _numbers(value, key, where, float)
            if len(values) != 2 or not 0 <= values[0] <= values[1]:
                raise WatchlistError(f"{where}: 'exposure' is a range [min, max] in seconds, min <= max, not {value!r}")
            criteria[column] = values
        elif key == "calib_level":
            criteria[column] = _numbers(value, key, where, int)
        else:
            criteria[column] = list(_texts(value, key, where))
    return criteria


def _parse_entry(raw: Any, index: int, base_products: ProductSpec, path: str) -> WatchlistEntry:
    where = f"{path}: entry {index + 1}"
    if not isinstance(raw, dict):
        raise WatchlistError(f"{where} is not a mapping")
    if "name" in raw:
        where = f"{path}: entry {raw['name']!r}"
        if isinstance(raw["name"], (dict, list, bool)) or raw["name"] is None:
            raise WatchlistError(f"{where}: 'name' is a text")
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        raise WatchlistError(f"{where}: unknown keys {sorted(unknown)}{_meant(sorted(unknown))}; "
                             f"known keys are {sorted(ENTRY_KEYS)}")
    searches = [key for key in SEARCH_KEYS if raw.get(key) not in (None, "", [])]
    if len(searches) != 1:
        raise WatchlistError(f"{where}: give exactly one of {', '.join(SEARCH_KEYS)} (found {searches or 'none'})")
    kind = searches[0]
    name = str(raw.get("name") or f"{kind}:{raw[kind]}")
    import astropy.units as u
    from astropy.coordinates import Angle

    try:
        radius = Angle(raw.get("radius", "0.2 deg"))
        if radius.unit.physical_type != "angle" or radius.deg <= 0 or radius.deg > 30:
            raise ValueError("radius must be an angle between 0 and 30 degrees")
        coordinates = _parse_coordinates(raw["coordinates"]) if kind == "coordinates" else None
    except (ValueError, KeyError, u.UnitsError) as err:
        raise WatchlistError(f"{where}: {err}") from err
    return WatchlistEntry(
        name=name,
        target=_one_target(raw["target"], where) if kind == "target" else None,
        coordinates=coordinates,
        radius=radius,
        obs_id=_texts(raw.get("obs_id"), "obs_id", where),
        program=tuple(_program(v) for v in _texts(raw.get("program"), "program", where)),
        criteria=_parse_criteria(raw, where),
        products=_parse_products(raw.get("products"), base_products, where),
    )


def _meant(unknown: list[Any]) -> str:
    """The known keys the unknown ones look like misspellings of (``targt``: ``target``), said as a question."""
    close = {key: difflib.get_close_matches(str(key), sorted(ENTRY_KEYS), n=1) for key in unknown}
    said = [f"{match[0]!r}" if len(unknown) == 1 else f"{match[0]!r} for {key!r}"
            for key, match in close.items() if match]
    return f" (did you mean {', '.join(said)}?)" if said else ""


def unknown_filters(entry: WatchlistEntry) -> list[str]:
    """What to say of each filter an entry asks for that no instrument or photometric system of the
    bandpass table has, with the known name it is closest to: a slip (F44W) finds nothing, which
    looks like an empty sky. Said, not refused: MAST has filters the table lacks (grisms, new ones).
    Patterns (``F4*``) and clear positions are not names to check."""
    from skyassets.fits.bandpasses import filter_names, known_filter

    names = filter_names()
    said = []
    for value in entry.criteria.get("filters", []):
        for name in (part.strip() for part in value.split(";")):  # "F150W2;F162M", as CAOM joins them
            if not name or known_filter(name) or "*" in name or "%" in name or name.upper().startswith("CLEAR"):
                continue
            close = difflib.get_close_matches(name.upper(), list(names), n=1)
            said.append(f"filter {name!r} is none skyassets knows" + (f" (did you mean {names[close[0]]}?)"
                                                                      if close else ""))
    return said


class _Loader(yaml.SafeLoader):
    """YAML as the watchlist means it: a number written with leading zeros (JWST's program 02107)
    stays the text written, where YAML 1.1 would read it as octal (02107 as 1095)."""


def _int_or_text(loader: _Loader, node: yaml.ScalarNode) -> int | str:
    text = loader.construct_scalar(node)
    if re.fullmatch(r"[-+]?0[0-9_]+", text):
        return text
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:int", _int_or_text)


def _program(value: object) -> str:
    """A program (proposal) id as MAST's ``proposal_id`` holds it: ``02107`` and ``jw02107`` are 2107."""
    text = str(value).strip()
    numeric = re.fullmatch(r"(?:jw)?0*([0-9]+)", text, re.IGNORECASE)
    return numeric.group(1) if numeric else text


def parse_watchlist(text: str, path: str = "<watchlist>") -> Watchlist:
    try:
        raw = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as err:
        raise WatchlistError(f"{path}: {_yaml_problem(err)}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("entries"), list) or not raw["entries"]:
        raise WatchlistError(f"{path}: expected a mapping with a non-empty 'entries' list")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict) or not set(defaults) <= {"products"}:
        raise WatchlistError(f"{path}: 'defaults' is a mapping with the key 'products', not {defaults!r}")
    base = _parse_products(defaults.get("products"), ProductSpec(), f"{path}: defaults")
    entries, invalid = [], []
    for i, item in enumerate(raw["entries"]):
        try:
            entries.append(_parse_entry(item, i, base, path))
        except WatchlistError as err:  # one entry mistyped: the others are still searched
            invalid.append((_entry_name(item, i), str(err)))
    if not entries:
        raise WatchlistError("; ".join(why for _, why in invalid))
    names = [entry.name for entry in entries] + [name for name, _ in invalid]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise WatchlistError(f"{path}: entry names must be unique; repeated: {duplicates}")
    return Watchlist(path=path, entries=tuple(entries), invalid=tuple(invalid), defaults=base)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML syntax error in one line, where it is first: PyYAML's own message spreads the place
    over several lines, and counts lines and columns from 0."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    if mark is None:
        return f"not valid YAML: {problem}"
    context = getattr(err, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {problem}" + (
        f" ({context})" if context else "")


def _entry_name(raw: Any, index: int) -> str:
    """The name an entry that cannot be read goes by: the one it would have had when it could (its
    ``name``, or ``<kind>:<value>`` of its one search), so that the rows it found before are kept
    under it; else its place in the list."""
    if isinstance(raw, dict):
        if isinstance(raw.get("name"), (str, int, float)) and not isinstance(raw.get("name"), bool):
            return str(raw["name"])
        searches = [key for key in SEARCH_KEYS if raw.get(key) not in (None, "", [])]
        if len(searches) == 1 and "name" not in raw:
            return f"{searches[0]}:{raw[searches[0]]}"
    return f"entry {index + 1}"


def load_watchlist(path: str | Path = DEFAULT_WATCHLIST) -> Watchlist:
    """Read a watchlist file; ``packaged:NAME`` reads one shipped inside skyassets."""
    path = str(path)
    if path.startswith("packaged:"):
        text = resources.files("skyassets").joinpath(path.removeprefix("packaged:")).read_text()
        return parse_watchlist(text, path)
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise WatchlistError(f"{path}: cannot read the watchlist: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise WatchlistError(f"{path}: not a text file (byte {err.start} is not UTF-8)") from err
    return parse_watchlist(text, path)
