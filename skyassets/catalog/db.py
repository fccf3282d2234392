"""The catalog: the Parquet lake as DuckDB tables, with sky, time and instrument questions as SQL macros.

Parquet stays the source of truth. ``connect()`` gives an in-memory DuckDB holding a snapshot of the
lake, read through pyarrow one open file at a time: a partition replaced by a run (temp file +
rename) is read whole, old or new, and nothing in the lake is ever locked. DuckDB's own
``read_parquet`` is not used on the live lake because it opens a file again between planning and
scanning, and a rename in between makes the query fail (measured: about half the queries fail while
one partition is rewritten in a loop). ``refresh()`` brings the snapshot up to date, re-reading only
the partition files that changed; every query helper here calls it first.

``publish()`` writes the same tables, sorted for zone-map pruning, to ``catalog.duckdb``, with a
``lake_index`` schema recording what they were built from: the partition files with their
(mtime_ns, size, inode), the partition file of every row, and the raw image rows before
deduplication. ``connect()`` starts from that file (attached read-only) and applies only the
partition files that differ from it: the base's rows from changed or removed files are hidden, the
changed and new files are read into memory, and the images they touch are deduplicated again from
all their rows, so the result is the one a full read of the lake gives.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from skyassets.lake.home import Home
from skyassets.lake.schemas import home_relative_columns
from skyassets.lake.tables import TABLES

# catalog table -> lake table (a folder of partitions, or a single file), as the lake declares them
SOURCES: dict[str, str] = {t.catalog: t.name for t in TABLES.values() if t.catalogued}

RENAMED: dict[str, dict[str, str]] = {
    "files": {"partition": "obs_id", "filename": "file_name"},
    "landing": {"partition": "obs_id", "filename": "file_name"},
    "products": {"obs_id": "product_obs_id", "partition": "obs_id"},
}
"""Lake columns the catalog shows under the names its other tables give the same things, so that
tables join on ``obs_id`` (the observation, as everywhere else; MAST's own id of a product, which
differs for the exposures of a combined observation, is ``product_obs_id``) and ``file_name``."""
COPIED: dict[str, dict[str, str]] = {"products": {"productFilename": "file_name"}}
"""MAST's own columns kept under MAST's name, and shown again under the catalog's."""


def absolute_column(column: str) -> str:
    """The catalog column holding the full location of a home-relative path column: ``abs_path`` for
    ``path``, ``<column>_abs_path`` for the others (a composite's ``png`` and ``cube``)."""
    return "abs_path" if column == "path" else f"{column}_abs_path"


ABSOLUTE: dict[str, list[str]] = {t.catalog: home_relative_columns(t.schema) for t in TABLES.values()}
"""Per catalog table, its home-relative path columns, each shown with its full location too."""

# Columns that exist even before any file does, so notebooks and helpers can be written first.
DUCKDB_TYPES: dict[str, str] = {
    "string": "VARCHAR", "double": "DOUBLE", "bool": "BOOLEAN",
    "int64": "BIGINT", "int32": "INTEGER", "int16": "SMALLINT",
}
DECLARED: dict[str, list[tuple[str, str]]] = {
    t.catalog: [(RENAMED.get(t.catalog, {}).get(f.name, f.name), DUCKDB_TYPES[str(f.type)]) for f in t.schema]
    + [(new, DUCKDB_TYPES[str(t.schema.field(old).type)]) for old, new in COPIED.get(t.catalog, {}).items()]
    + [(absolute_column(c), "VARCHAR") for c in ABSOLUTE[t.catalog]]
    for t in TABLES.values()
    if t.shown_empty
}

SCHEMA_COLUMNS: dict[str, set[str]] = {
    t.catalog: {RENAMED.get(t.catalog, {}).get(f.name, f.name) for f in t.schema}
    | set(COPIED.get(t.catalog, {}).values()) | {absolute_column(c) for c in ABSOLUTE[t.catalog]}
    for t in TABLES.values()
}
"""The columns of each catalog table that its lake schema declares: every write casts them to one type."""

ZONE_DEG = 0.5
"""Height of the declination zones that published tables are sorted by (then RA, then t_min)."""
_SPATIAL_ORDER = f"floor((s_dec + 90) / {ZONE_DEG}), s_ra, t_min"

CATALOG_FILE = "catalog.duckdb"

_WORK = "_skyassets"
"""Schema of a connection's own bookkeeping (its settings, the partition files it read, the raw rows
and work tables its views are built from): ``SHOW TABLES`` lists the catalog's tables only. Its name
starts with ``_`` so that no database a notebook attaches (named after its file) shares it, which
would make every name in it ambiguous."""
_SETTINGS, _READ, _STALE = f"{_WORK}.settings", f"{_WORK}.files_read", f"{_WORK}.stale"
"""A connection's settings (its home, tables, base), the partition files it has read and the base's
partition files the lake no longer holds as they were."""
_CHANGED, _ROWS, _KEYS, _WORKING, _DELTA = (
    f"{_WORK}.images_{name}" for name in ("changed", "rows", "keys", "work", "delta"))
"""The work tables of ``images`` over a base: see ``_expose_images_over_base``."""


def _raw(table: str) -> str:
    """A table's rows as read from the lake, with the partition file and mtime of each."""
    return f"{_WORK}.raw_{table}"


def _drop(table: str) -> str:
    """The rowids of a published table's rows that the lake's changes hide."""
    return f"{_WORK}.drop_{table}"


class CatalogError(RuntimeError):
    """A question the catalog cannot answer yet (a missing table, an unreadable partition)."""


# --------------------------------------------------------------------------------------------- SQL

MACROS: tuple[str, ...] = (
    # Great-circle distance in degrees (haversine: accurate at small separations, where cones live).
    """ang_sep(ra1, dec1, ra2, dec2) AS degrees(2 * asin(least(1.0, sqrt(
        pow(sin(radians(dec2 - dec1) / 2), 2)
        + cos(radians(dec1)) * cos(radians(dec2)) * pow(sin(radians(ra2 - ra1) / 2), 2)))))""",
    # |ra1 - ra2| folded into [0, 180], so 359.99 and 0.01 are 0.02 apart.
    "ra_diff(ra1, ra2) AS abs(((ra1 - ra2) % 360 + 540) % 360 - 180)",
    # Largest RA offset of a cone's points: asin(sin r / cos dec); all RA when the cone reaches a pole.
    """ra_halfwidth(dec, radius) AS CASE WHEN abs(dec) + radius >= 90 THEN 180.0
        ELSE degrees(asin(least(1.0, sin(radians(radius)) / cos(radians(dec))))) * (1 + 1e-9) + 1e-12 END""",
    # Dec band and RA window first (the dec band is a constant range, so zone maps skip row groups),
    # then the exact distance.
    """in_cone(ra_col, dec_col, ra, dec, radius) AS dec_col BETWEEN dec - radius AND dec + radius
        AND ra_diff(ra_col, ra) <= ra_halfwidth(dec, radius)
        AND ang_sep(ra, dec, ra_col, dec_col) <= radius""",
    # True for a cone on the sky, else an error saying which of its numbers is off (see Query.cone).
    """cone_checked(ra, dec, radius) AS CASE
        WHEN NOT isfinite(ra) THEN error(format('cone: ra is a number of degrees, not {}', ra))
        WHEN NOT dec BETWEEN -90 AND 90 THEN error(format('cone: dec is between -90 and +90 degrees, not {}', dec))
        WHEN NOT radius > 0 OR isnan(radius) THEN
            error(format('cone: the radius is more than 0 degrees, not {}', radius))
        ELSE true END""",
    # The numbers of an STC-S region string, whatever frame words it carries ("POLYGON ICRS 1 2 ...").
    """region_numbers(region) AS list_transform(
        list_filter(string_split_regex(trim(region), '\\s+'), lambda t: TRY_CAST(t AS DOUBLE) IS NOT NULL),
        lambda t: CAST(t AS DOUBLE))""",
    # Gnomonic projection about (ra0, dec0): c > 0 is the near hemisphere, where (x, y) are valid.
    """tangent_xy(ra, dec, ra0, dec0) AS {
        'c': sin(radians(dec0)) * sin(radians(dec)) + cos(radians(dec0)) * cos(radians(dec)) * cos(radians(ra - ra0)),
        'x': cos(radians(dec)) * sin(radians(ra - ra0)),
        'y': cos(radians(dec0)) * sin(radians(dec))
            - sin(radians(dec0)) * cos(radians(dec)) * cos(radians(ra - ra0))}""",
    # Vertices [ra1, dec1, ra2, dec2, ...] projected about the test point.
    """polygon_xy(v, ra, dec) AS list_transform(range(1, len(v) // 2 + 1),
        lambda k: tangent_xy(v[2 * k - 1], v[2 * k], ra, dec))""",
    # Crossing number of a ray from the origin along +x; x/c and y/c are the tangent-plane coordinates
    # (c > 0 on every vertex, so signs and the crossing test can use x, y scaled by 1/c).
    """origin_inside(p) AS len(p) >= 3
        AND list_bool_and(list_transform(p, lambda q: q.c > 0))
        AND len(list_filter(range(1, len(p) + 1), lambda i:
            (p[i].y / p[i].c > 0) != (p[i % len(p) + 1].y / p[i % len(p) + 1].c > 0)
            AND p[i].x / p[i].c - (p[i].y / p[i].c)
                * (p[i % len(p) + 1].x / p[i % len(p) + 1].c - p[i].x / p[i].c)
                / (p[i % len(p) + 1].y / p[i % len(p) + 1].c - p[i].y / p[i].c) > 0)) % 2 = 1""",
    # Point in an s_region: POLYGON (one or several, tested in the tangent plane at the point) or CIRCLE.
    """contains_point(region, ra, dec) AS CASE
        WHEN region IS NULL THEN NULL
        WHEN upper(trim(region)) LIKE 'CIRCLE%' THEN
            ang_sep(region_numbers(region)[1], region_numbers(region)[2], ra, dec) <= region_numbers(region)[3]
        ELSE coalesce(list_bool_or(list_transform(
            list_filter(list_transform(string_split_regex(region, '(?i)polygon'), lambda s: region_numbers(s)),
                        lambda v: len(v) >= 6),
            lambda v: origin_inside(polygon_xy(v, ra, dec)))), false) END""",
    # Modified Julian Date of a timestamp (UTC, no leap seconds), to compare with t_min / t_max.
    "mjd(ts) AS epoch(CAST(ts AS TIMESTAMP)) / 86400.0 + 40587",
    "overlaps_time(t_min, t_max, start_mjd, stop_mjd) AS t_min <= stop_mjd AND coalesce(t_max, t_min) >= start_mjd",
    # "NIRCAM" matches NIRCAM and NIRCAM/IMAGE, in any case.
    """instrument_is(instrument_col, name) AS lower(instrument_col) = lower(name)
        OR starts_with(lower(instrument_col), lower(name) || '/')""",
    # A filter name against a value that may list several ("F090W;CLEAR", "F444W/F405N"), in any case.
    """filter_matches(value, name) AS list_contains(string_split_regex(upper(value), '[;,/+ ]+'), upper(name))""",
    # A target name as imaging.targets.normalise_name writes it: NGC 628, NGC-628 and ngc628 alike.
    "target_name_key(name) AS regexp_replace(upper(name), '[^A-Z0-9+.]+', '', 'g')",
    # Names holding ``text`` in any case and whatever the separators between its letters and digits;
    # a number in it is whole: NGC 628 is not NGC 6284. One pattern from ``text``, matched against the
    # names as they are, rather than every name written anew for each row.
    """target_like(target_col, text) AS regexp_matches(target_col, '(?i)'
        || CASE WHEN regexp_matches(target_name_key(text), '^[0-9]') THEN '(^|[^0-9])' ELSE '' END
        || array_to_string(list_transform(string_split(target_name_key(text), ''), lambda c: regexp_escape(c)),
                           '[^A-Za-z0-9+.]*')
        || CASE WHEN regexp_matches(target_name_key(text), '[0-9]$') THEN '($|[^0-9])' ELSE '' END)""",
)

TABLE_MACROS: tuple[str, ...] = (
    # An image with a wcs_problem has no trustworthy position: never found by where it is. A cone off
    # the sky is refused (a slip would find nothing, which reads as an empty sky): the check is an
    # uncorrelated subquery, made even when no image is left to test, and the dec band is never
    # empty (a negative radius would make it so), which would answer no rows before the check.
    """cone(ra, dec, radius) AS TABLE SELECT *, ang_sep(ra, dec, s_ra, s_dec) AS distance FROM images
        WHERE in_cone(s_ra, s_dec, ra, dec, greatest(radius, 0)) AND wcs_problem IS NULL
        AND (SELECT cone_checked(ra, dec, radius)) ORDER BY distance""",
    """footprint(ra, dec) AS TABLE SELECT * FROM images
        WHERE ang_sep(s_ra, s_dec, ra, dec) <= coalesce(2 * s_fov, 180) AND contains_point(s_region, ra, dec)
        AND wcs_problem IS NULL""",
    # a range given backwards would answer no rows, as if nothing had been observed in it: an error
    """during(start_mjd, stop_mjd) AS TABLE SELECT * FROM images WHERE overlaps_time(t_min, t_max, start_mjd, stop_mjd)
        AND (SELECT CASE WHEN start_mjd > stop_mjd THEN error(format(
            'during: the start {} is after the stop {}; give the earlier MJD first', start_mjd, stop_mjd))
            ELSE true END)""",
    """observed_on(day) AS TABLE SELECT * FROM images
        WHERE overlaps_time(t_min, t_max, mjd(CAST(day AS DATE)), mjd(CAST(day AS DATE)) + 1)""",
)


def _install_macros(con: duckdb.DuckDBPyConnection) -> None:
    """The scalar macros always; the table macros, which read ``images``, where it is a table (a
    connection asked for other tables only has none)."""
    try:
        con.execute("SELECT * FROM images LIMIT 0")
        images = True
    except duckdb.CatalogException:
        images = False
    for body in MACROS + (TABLE_MACROS if images else ()):
        con.execute(f"CREATE OR REPLACE MACRO {body}")


_IMAGE_KEY = (
    "coalesce(fits_sha256, sha256, 'path:' || coalesce(path, _file)) || '#' || coalesce(CAST(hdu_index AS VARCHAR), '')"
)
"""The image an ``image_metadata`` row describes: its FITS bytes (inflated, for a compressed file)
and HDU (or, without a hash, its path or file)."""
_HASHES = f"hash({_IMAGE_KEY}) AS _hkey, CASE WHEN path IS NOT NULL THEN hash(path) END AS _hpath"
"""64-bit hashes of an image row's key and path: the published catalog's index of its raw rows.

A collision only adds an image to those deduplicated again after a change, never leaves one out."""


def _images_sql(raw: str, *, keys: str | None = None, with_key: bool = False) -> str:
    """Current rows of ``image_metadata``, one per image (its FITS bytes and HDU) with every path holding it.

    A path's current bytes are those of the newest partition file that lists it, so a file changed
    in place shows its new row only, even while another partition still lists the old hash. The
    choice runs on narrow columns and picks rows by rowid, which halves the time on wide rows.
    ``keys`` (a table of ``_hkey``, hashes of ``_key``) limits the result to the images whose key
    hashes are listed; ``raw`` must then hold every row of those images and every row sharing a path
    with them. ``with_key`` adds the ``_key``.
    """
    only = f"WHERE hash(_key) IN (SELECT _hkey FROM {keys})" if keys else ""
    return f"""
        WITH cur AS (
            SELECT rowid AS _rid, path, obs_id, {_IMAGE_KEY} AS _key
            FROM {raw}
            QUALIFY path IS NULL OR sha256 IS NOT DISTINCT FROM
                first_value(sha256) OVER (PARTITION BY path ORDER BY _mtime DESC, _file DESC)
        ), pick AS (
            SELECT arg_min(_rid, (path, obs_id)) AS _rid,{" _key," if with_key else ""}
                   coalesce(list(DISTINCT path ORDER BY path) FILTER (WHERE path IS NOT NULL), []) AS locations,
                   coalesce(list(DISTINCT obs_id ORDER BY obs_id) FILTER (WHERE obs_id IS NOT NULL), []) AS obs_ids
            FROM cur {only} GROUP BY _key
        )
        SELECT r.* EXCLUDE (_file, _mtime), p.locations, p.obs_ids{", p._key" if with_key else ""}
        FROM {raw} AS r JOIN pick AS p ON r.rowid = p._rid
        ORDER BY {_SPATIAL_ORDER}"""


# ------------------------------------------------------------------------------------ reading the lake


Listing = dict[str, tuple[int, int, int]]


def _listing(lake: Path, source: str) -> Listing:
    """The Parquet files of an asset (``<source>.parquet`` and ``<source>/*.parquet``) and their stat."""
    found: Listing = {}
    candidates: list[tuple[str, str]] = [(f"{source}.parquet", str(lake / f"{source}.parquet"))]
    try:
        with os.scandir(lake / source) as entries:
            candidates += [
                (f"{source}/{e.name}", e.path)
                for e in entries
                if e.name.endswith(".parquet") and not e.name.startswith(".")
            ]
    except (FileNotFoundError, NotADirectoryError):
        pass
    for name, path in candidates:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        if st.st_size:
            found[name] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return found


def _read(lake: Path, name: str) -> tuple[pa.Table, int] | None:
    """One partition file and its mtime, read from a single open handle (so a concurrent rename
    cannot tear it)."""
    try:
        with open(lake / name, "rb") as handle:
            mtime = os.fstat(handle.fileno()).st_mtime_ns
            return _parquet(handle), mtime
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as error:
        raise CatalogError(f"cannot read {lake / name}: {error}") from error


class LakeFiles:
    """The lake's partition files as the catalog reads them: in the home's folder, or with the home
    on a store straight from it (one listing of ``lake/`` per look, each file one GET)."""

    def __init__(self, home: Home):
        self.home = home
        self._stored: dict[str, Listing] | None = None

    def listing(self, source: str) -> Listing:
        """The Parquet files of an asset and their (mtime_ns, size, inode or ETag tag)."""
        if not self.home.remote:
            return _listing(self.home.lake, source)
        if self._stored is None:
            self._stored = {}
            for name, stat in self.home.stored_files("lake").items():
                folder, _, base = name.rpartition("/")
                if base.endswith(".parquet") and not base.startswith(".") and "/" not in folder:
                    self._stored.setdefault(folder or base.removesuffix(".parquet"), {})[name] = stat
        return self._stored.get(source, {})

    def read(self, name: str) -> tuple[pa.Table, int] | None:
        """One partition file, whole as it was at one moment, and its mtime; None when it went meanwhile."""
        if not self.home.remote:
            return _read(self.home.lake, name)
        got = self.home.get_bytes(f"lake/{name}")
        if got is None:
            return None
        try:
            table = _parquet(pa.BufferReader(got[0]))
        except pa.ArrowException as error:
            raise CatalogError(f"cannot read {self.home.url(f'lake/{name}')}: {error}") from error
        return table, got[1]


def _parquet(source: Any) -> pa.Table:
    """One Parquet file from an open handle or buffer, in this thread: the lake's files are small,
    and ``pq.read_table``'s dataset layer cost twice the read itself on a partition file."""
    with pq.ParquetFile(source) as file:
        return file.read(use_threads=False)


def home_prefix(home: Home) -> str:
    """What a home-relative path is joined to for its full location: the home's folder, or its
    store's URL."""
    return home.url("x").removesuffix("x")


def _renamed(catalog: str, table: pa.Table) -> pa.Table:
    """One partition file's rows under the catalog's column names (file by file, so that what a
    row shows never depends on which files were read with it). A column the file already holds
    under a new name keeps it, and the column that would have taken the name keeps its own."""
    if renamed := RENAMED.get(catalog):
        staying = {n for n in table.column_names if n not in renamed}
        table = table.rename_columns(
            [renamed[n] if n in renamed and renamed[n] not in staying else n for n in table.column_names]
        )
    for column, copy in COPIED.get(catalog, {}).items():
        if column in table.column_names and copy not in table.column_names:
            table = table.append_column(copy, table[column])
    return table


def _located(catalog: str, table: pa.Table, prefix: str) -> pa.Table:
    """Rows with every home-relative path's full location beside it (a path already absolute or a
    URL is kept as it is)."""
    for column in ABSOLUTE[catalog]:
        if column not in table.column_names:
            continue
        relative = table[column].cast(pa.string())
        kept = pc.or_(pc.starts_with(relative, "/"), pc.match_substring(relative, "://"))
        joined = pc.binary_join_element_wise(pa.scalar(prefix), relative, "")
        full = pc.if_else(kept, relative, joined) if pc.any(kept).as_py() else joined  # if_else copies every string
        table = table.append_column(absolute_column(column), full)
    return table


def _text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column's values as text (nested values as Python writes them)."""
    try:
        return column.cast(pa.string())
    except pa.ArrowException:
        return pa.chunked_array([pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())])


_INTEGER_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"})
_NUMBER_TYPES = _INTEGER_TYPES | {"FLOAT", "DOUBLE", "UBIGINT", "HUGEINT"}


def common_type(kinds: Iterable[str]) -> str:
    """The DuckDB type that holds values of all these types: BIGINT for integers, DOUBLE for
    numbers, else VARCHAR (DECIMAL(p,s) counts as a number)."""
    kinds = {"DOUBLE" if k.startswith("DECIMAL") else k for k in kinds}
    if kinds <= _INTEGER_TYPES:
        return "BIGINT"
    return "DOUBLE" if kinds <= _NUMBER_TYPES else "VARCHAR"


def _retyped(table: str, now: dict[str, str], before: dict[str, str]) -> dict[str, str]:
    """The undeclared columns of ``table`` that ``now`` gives another type than ``before`` (DuckDB
    types by column), each with the one type that holds both (``common_type``)."""
    declared = SCHEMA_COLUMNS.get(table, set())
    return {c: common_type((kind, before[c])) for c, kind in now.items()
            if c in before and kind != before[c] and "NULL" not in (kind, before[c]) and c not in declared}


def _unified_where_types_differ(catalog: str, tables: list[pa.Table]) -> list[pa.Table]:
    """The tables with every column they give different types, and the catalog does not declare, in
    one type (``common_type``'s: a number where all are numbers, else text): a column MAST added to
    its answers, a number in one partition's rows and text in another's, must not keep the whole
    table from being read."""
    types: dict[str, set[pa.DataType]] = {}
    for t in tables:
        for f in t.schema:
            if not pa.types.is_null(f.type):
                types.setdefault(f.name, set()).add(f.type)
    declared = SCHEMA_COLUMNS.get(catalog, set())
    mixed = {name: kinds for name, kinds in types.items() if len(kinds) > 1 and name not in declared}
    out = []
    for t in tables:
        for name in mixed.keys() & set(t.column_names):
            kinds = mixed[name]
            if all(pa.types.is_integer(k) for k in kinds):
                column = t[name].cast(pa.int64())
            elif all(pa.types.is_integer(k) or pa.types.is_floating(k) for k in kinds):
                column = t[name].cast(pa.float64())
            else:
                column = _text(t[name])
            t = t.set_column(t.schema.get_field_index(name), name, column)
        out.append(t)
    return out


def _labelled(catalog: str, tables: list[pa.Table], files: list[str], mtimes: list[int], prefix: str) -> pa.Table:
    """Partitions' rows in one table, each row with its file and that file's mtime, for the snapshot
    to track them by; labelled once for all of them, as a label per file cost as much as its read."""
    tables = [_renamed(catalog, t) for t in tables]
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException:
        table = pa.concat_tables(_unified_where_types_differ(catalog, tables), promote_options="permissive")
    # Columns with no values in any of these files get a string type rather than DuckDB's NULL type.
    for i, field in enumerate(table.schema):
        if pa.types.is_null(field.type):
            table = table.set_column(i, field.name, pa.nulls(table.num_rows, pa.string()))
    table = _located(catalog, table, prefix)
    rows = [t.num_rows for t in tables]
    table = table.append_column("_file", pa.array(np.repeat(np.array(files, dtype=object), rows), pa.string()))
    return table.append_column("_mtime", pa.array(np.repeat(np.array(mtimes, dtype=np.int64), rows)))


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    return {row[0]: row[1] for row in con.execute(f"DESCRIBE {relation}").fetchall()}


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """The single value of a query (fetched to the end, which this DuckDB requires before the next)."""
    rows = con.execute(sql, params).fetchall()
    return rows[0][0] if rows else None


def _exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return name in _names_in(con)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _names_in(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Tables and views of the connection's own database (not of an attached base), in one query:
    the catalog's by name, the others (``skyassets.*``, ``lake_index.*``) with their schema."""
    return {
        name if schema == "main" else f"{schema}.{name}"
        for schema, name in con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "UNION ALL SELECT schema_name, view_name FROM duckdb_views() WHERE database_name = current_database()"
        ).fetchall()
    }


def _state(con: duckdb.DuckDBPyConnection, files: str = _READ) -> dict[str, Listing]:
    """The partition files each table was last read from, with their (mtime_ns, size, inode)."""
    state: dict[str, Listing] = {t: {} for t in SOURCES}
    for table, name, mtime, size, ino in con.execute(f"SELECT tbl, file, mtime_ns, size, ino FROM {files}").fetchall():
        state.setdefault(table, {})[name] = (mtime, size, ino)
    return state


def _stale(con: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    """The base's partition files that the lake no longer holds as they were, per table."""
    stale: dict[str, set[str]] = {t: set() for t in SOURCES}
    for table, name in con.execute(f"SELECT tbl, file FROM {_STALE}").fetchall():
        stale.setdefault(table, set()).add(name)
    return stale


_CHUNK_ROWS = 500_000
"""Rows read from the lake before they go into DuckDB: bounds the memory of a first read of a large lake."""
_CHUNK_BYTES = 256 * 2**20
"""Bytes read from the lake before they go into DuckDB: a chunk of wide rows (headers) is bounded too,
and stays far below Arrow's 2 GB limit on one string array when its files are joined into one."""


def _sync_table(
    con: duckdb.DuckDBPyConnection,
    lake: LakeFiles,
    table: str,
    before: Listing,
    names: set[str],
    base: Listing | None = None,
    stale: set[str] | None = None,
) -> bool:
    """Bring ``_skyassets.raw_<table>`` up to date with the lake; True if anything changed.

    With a ``base`` (the partition files a published catalog was built from), only the files that
    differ from the base are read, and the base's files that changed or went are kept in
    ``_skyassets.stale`` (``stale`` is what it held before).
    """
    raw = _raw(table)
    listing = lake.listing(SOURCES[table])
    base = base or {}
    now = {f: s for f, s in listing.items() if base.get(f) != s}
    outdated = {f for f in base if base[f] != listing.get(f)}
    gone = [f for f in before if before[f] != now.get(f)]
    fresh = sorted(f for f in now if before.get(f) != now[f])
    if not gone and not fresh and outdated == (stale or set()) and (raw in names or table not in DECLARED):
        return False
    con.execute("BEGIN")
    try:
        if gone and raw in names:
            con.execute(f"DELETE FROM {raw} WHERE _file IN (SELECT unnest(?))", [gone])
        con.execute(f"DELETE FROM {_READ} WHERE tbl = ? AND file IN (SELECT unnest(?))", [table, gone])
        if stale is not None:
            con.execute(f"DELETE FROM {_STALE} WHERE tbl = ?", [table])
            con.execute(f"INSERT INTO {_STALE} SELECT ?, unnest(?)", [table, sorted(outdated)])
        empty = raw not in names or _one(con, f"SELECT count(*) = 0 FROM {raw}")
        read: Listing = {}
        tables: list[pa.Table] = []
        files: list[str] = []
        mtimes: list[int] = []
        rows = size = 0
        for k, name in enumerate(fresh):
            if (got := lake.read(name)) is not None:
                tables.append(got[0])
                files.append(name)
                mtimes.append(got[1])
                rows, size = rows + got[0].num_rows, size + got[0].nbytes
                read[name] = now[name]
            if not tables or (rows < _CHUNK_ROWS and size < _CHUNK_BYTES and k < len(fresh) - 1):
                continue
            try:
                # one chunk per column: DuckDB takes in a table of a thousand one-row chunks ten times slower
                arrow = _labelled(table, tables, files, mtimes, home_prefix(lake.home)).combine_chunks()
            except pa.ArrowException as error:
                raise CatalogError(f"partitions of {SOURCES[table]} disagree on column types: {error}") from error
            tables, files, mtimes, rows, size = [], [], [], 0, 0
            view = f"_arrow_{uuid.uuid4().hex}"
            con.register(view, arrow)
            try:
                if empty:
                    con.execute(f"CREATE OR REPLACE TABLE {raw} AS SELECT * FROM {view}")
                    names.add(raw)
                    empty = False
                else:
                    have, incoming = _columns(con, raw), _columns(con, view)
                    for column, kind in incoming.items():
                        if column not in have:
                            con.execute(f"ALTER TABLE {raw} ADD COLUMN {_q(column)} {kind}")
                    for column, common in _retyped(table, incoming, have).items():  # read earlier as another type
                        if common != have[column]:
                            con.execute(f"ALTER TABLE {raw} ALTER COLUMN {_q(column)} SET DATA TYPE {common}")
                    con.execute(f"INSERT INTO {raw} BY NAME SELECT * FROM {view}")
            finally:
                con.unregister(view)
            del arrow
        if raw not in names and table in DECLARED:
            columns = ", ".join(f"{_q(c)} {t}" for c, t in DECLARED[table])
            con.execute(f"CREATE TABLE {raw} ({columns}, _file VARCHAR, _mtime BIGINT)")
            names.add(raw)
        if raw in names:
            have = _columns(con, raw)
            for column, kind in DECLARED.get(table, []):
                if column not in have:
                    con.execute(f"ALTER TABLE {raw} ADD COLUMN {_q(column)} {kind}")
        if read:
            con.execute(
                f"INSERT INTO {_READ} SELECT ?, unnest(?), unnest(?), unnest(?), unnest(?)",
                [table, list(read), *[[v[k] for v in read.values()] for k in range(3)]],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return True


def _expose(con: duckdb.DuckDBPyConnection, table: str, *, publish: bool) -> None:
    """Make ``table`` from ``_skyassets.raw_<table>``: images deduplicated; published tables materialised and sorted.

    Publishing also writes what a later ``connect`` needs to start from the published tables: the
    raw image rows with hashes of their image key and path and the rowid of their image in
    ``images``, and for each other table the partition file of every row, in
    ``lake_index.rows_<table>`` with the same row order as the table.
    """
    raw = _raw(table)
    names = _names_in(con)
    if not publish and table in _base_tables(con):
        if table == "images":
            _expose_images_over_base(con, names)
        else:
            _expose_over_base(con, table, names)
        return
    if raw not in names:
        return
    if table == "images" and publish:
        con.execute(f"CREATE OR REPLACE TABLE images AS {_images_sql(raw, with_key=True)}")
        # every raw row with the rowid of its image's row in ``images``, in the raw rows' order
        con.execute(
            f"""CREATE TEMP TABLE _image_rows AS SELECT r.rowid AS rid, i.irow
                FROM (SELECT rowid, {_IMAGE_KEY} AS _key FROM {raw}) AS r
                LEFT JOIN (SELECT rowid AS irow, _key FROM images) AS i ON r._key = i._key"""
        )
        con.execute(
            f"""CREATE TABLE {_INDEX}.raw_images AS SELECT r.*, {_HASHES}, m.irow AS _irow
                FROM {raw} AS r POSITIONAL JOIN (SELECT irow FROM _image_rows ORDER BY rid) AS m"""
        )
        con.execute("DROP TABLE _image_rows")
        con.execute("ALTER TABLE images DROP COLUMN _key")
    elif table == "images":
        con.execute(f"CREATE OR REPLACE TABLE images AS {_images_sql(raw)}")
    elif publish:
        spatial = {"s_ra", "s_dec", "t_min"} <= set(_columns(con, raw))
        order = f" ORDER BY {_SPATIAL_ORDER}" if spatial else ""
        con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * EXCLUDE (_mtime) FROM {raw}{order}")
        con.execute(f"CREATE TABLE {_INDEX}.rows_{table} AS SELECT _file FROM {table} ORDER BY rowid")
        con.execute(f"ALTER TABLE {table} DROP COLUMN _file")
    elif table not in names:  # a view binds its columns on every query, so it is made once
        con.execute(f"CREATE VIEW {table} AS SELECT * EXCLUDE (_file, _mtime) FROM {raw}")


# ------------------------------------------------------------------------- starting from the published file

_BASE = "_base"
"""Name under which ``connect`` attaches the published ``catalog.duckdb`` it starts from."""
_INDEX = "lake_index"
"""Schema of ``catalog.duckdb`` holding what a connection needs to apply the lake's later changes."""


def _base_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The published tables of the attached base (none when the connection has no base)."""
    return {
        row[0]
        for row in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main'", [_BASE]
        ).fetchall()
    }


def _file_id(path: Path) -> str:
    """Which file is at ``path`` now (inode and mtime), or "" when none is."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return ""
    return f"{st.st_ino}:{st.st_mtime_ns}"


def _attach_base(con: duckdb.DuckDBPyConnection, path: Path) -> bool:
    """Attach a published catalog to start from, if it is one that records its partition files.

    Which file was looked at is kept either way, so ``refresh`` can tell when a newer one appears.
    """
    con.execute(f"INSERT OR REPLACE INTO {_SETTINGS} VALUES ('catalog', ?)", [_file_id(path)])
    if not path.exists():
        return False
    try:
        con.execute(f"ATTACH {_lit(str(path))} AS {_BASE} (READ_ONLY)")
    except duckdb.Error:  # replaced or removed meanwhile, or not a DuckDB file
        return False
    found = _one(
        con,
        "SELECT count(*) FROM duckdb_tables() "
        "WHERE database_name = ? AND schema_name = ? AND table_name = 'layout'",
        [_BASE, _INDEX],
    )
    # raw image rows without ``fits_sha256``: published before images were keyed by it
    unkeyed = _one(
        con,
        "SELECT count(*) = 1 AND count(*) FILTER (WHERE column_name = 'fits_sha256') = 0 FROM duckdb_columns() "
        "WHERE database_name = ? AND schema_name = ? AND table_name = 'raw_images' AND column_name IN "
        "('sha256', 'fits_sha256')",
        [_BASE, _INDEX],
    )
    # published before a column its tables declare was added (landing's and products' path): a
    # full read of the lake shows the column, so the base would hide it until the next publish
    published: dict[str, set[str]] = {}
    for table, column in con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = ? AND schema_name = 'main'",
        [_BASE],
    ).fetchall():
        published.setdefault(table, set()).add(column)
    older = any(not {c for c, _ in DECLARED[t]} <= columns for t, columns in published.items() if t in DECLARED)
    # published before catalogs recorded their layout (an older set of columns), or from the home's
    # files in another place (a folder since moved): its rows' full locations would be wrong
    moved = found and _one(con, f"SELECT value FROM {_BASE}.{_INDEX}.layout WHERE key = 'prefix'") != _one(
        con, f"SELECT value FROM {_SETTINGS} WHERE key = 'prefix'")
    if not found or unkeyed or older or moved:
        con.execute(f"DETACH {_BASE}")
        return False
    con.execute(f"INSERT INTO {_SETTINGS} VALUES ('base', ?)", [str(path)])
    return True


def _rebase(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Start again from the catalog now published at ``path``: the snapshot built so far is dropped."""
    kept = {name.split(".")[1] for name in (_SETTINGS, _READ, _STALE)}
    for kind, column, listing in (("VIEW", "view_name", "duckdb_views()"), ("TABLE", "table_name", "duckdb_tables()")):
        for schema, name in con.execute(
            f"SELECT schema_name, {column} FROM {listing} WHERE database_name = current_database() AND NOT internal"
        ).fetchall():
            if not (schema == _WORK and name in kept):
                con.execute(f"DROP {kind} {_q(schema)}.{_q(name)}")
    con.execute(f"DELETE FROM {_READ}")
    con.execute(f"DELETE FROM {_STALE}")
    if _one(con, f"SELECT count(*) FROM {_SETTINGS} WHERE key = 'base'"):
        con.execute(f"DELETE FROM {_SETTINGS} WHERE key = 'base'")
        con.execute(f"DETACH {_BASE}")
    _attach_base(con, path)


def _aligned(con: duckdb.DuckDBPyConnection, source: str, like: str, exclude: Sequence[str] = (),
             types: Mapping[str, str] | None = None) -> str:
    """A select list of ``source``'s columns, cast to the types ``like`` has for the same names (or
    to those ``types`` gives)."""
    types = {**_columns(con, like), **(types or {})}
    return ", ".join(
        f"CAST({_q(c)} AS {types[c]}) AS {_q(c)}" if c in types and types[c] != kind else _q(c)
        for c, kind in _columns(con, source).items()
        if c not in exclude
    )


def _stale_in(con: duckdb.DuckDBPyConnection, table: str) -> str | None:
    """``IN (...)`` of the base's stale partition files of ``table`` (None if none): a constant list,
    so DuckDB checks it in the scan, against the zone maps of ``_file``."""
    files = [row[0] for row in con.execute(f"SELECT file FROM {_STALE} WHERE tbl = ?", [table]).fetchall()]
    return f"IN ({', '.join(_lit(f) for f in files)})" if files else None


def _expose_over_base(con: duckdb.DuckDBPyConnection, table: str, names: set[str]) -> None:
    """``table`` as the base's rows from unchanged partition files plus the rows read since."""
    raw, drop, stale = _raw(table), _drop(table), _stale_in(con, table)
    con.execute(
        f"CREATE OR REPLACE TABLE {drop} AS SELECT rowid AS rid FROM {_BASE}.{_INDEX}.rows_{table} "
        f"WHERE {f'_file {stale}' if stale else 'false'}"
    )
    fresh = raw in names and _one(con, f"SELECT count(*) FROM {raw}")
    base, now = _columns(con, f"{_BASE}.{table}"), _columns(con, raw) if fresh else {}
    # undeclared columns read as another type since the publish: one type on both sides, as a full read gives
    unified = _retyped(table, now, base)
    recast = {c: t for c, t in unified.items() if t != base[c]}
    replace = (f" REPLACE ({', '.join(f'CAST({_q(c)} AS {t}) AS {_q(c)}' for c, t in recast.items())})"
               if recast else "")
    parts = [f"SELECT *{replace} FROM {_BASE}.{table}"]
    if stale:
        parts[0] += f" WHERE rowid NOT IN (SELECT rid FROM {drop})"
    if fresh:
        parts.append(f"SELECT {_aligned(con, raw, f'{_BASE}.{table}', ('_file', '_mtime'), unified)} FROM {raw}")
    con.execute(f"CREATE OR REPLACE VIEW {table} AS {' UNION ALL BY NAME '.join(parts)}")


def _expose_images_over_base(con: duckdb.DuckDBPyConnection, names: set[str]) -> None:
    """``images`` as the base's deduplicated rows plus those of the images the lake's changes touch.

    The touched images are those with a row in a changed partition file (old or new), those sharing
    a path with such a row (a path's newest row decides its current bytes), and those whose quality
    changed (their ``s_resolution``). They are deduplicated again from every row they have, in the
    base's unchanged files and in the files read since; the base's rows for them are hidden. The
    search runs on hashes of the rows' image keys and paths; wide rows are fetched by rowid.
    """
    base_raw, stale = f"{_BASE}.{_INDEX}.raw_images", _stale_in(con, "images")
    raw, drop, raw_quality, drop_quality = _raw("images"), _drop("images"), _raw("quality"), _drop("quality")
    narrow = [f"SELECT rowid AS rid, _hkey, _hpath, true AS published FROM {base_raw}"]
    changed = []
    if stale:
        narrow[0] += f" WHERE _file NOT {stale}"
        changed.append(f"SELECT _hkey, _hpath, _irow FROM {base_raw} WHERE _file {stale}")
    fresh = raw in names and _one(con, f"SELECT count(*) FROM {raw}")
    if fresh:
        narrow.append(f"SELECT rowid, {_HASHES}, false FROM {raw}")
        changed.append(f"SELECT {_HASHES}, NULL::BIGINT AS _irow FROM {raw}")
    if "quality" in names and {"sha256", "hdu_index"} <= set(_columns(con, "quality")):
        quality = (
            "CASE WHEN sha256 IS NOT NULL THEN hash(sha256 || '#' || coalesce(CAST(hdu_index AS VARCHAR), '')) END"
            " AS _hkey, NULL::UBIGINT AS _hpath, NULL::BIGINT AS _irow"
        )
        measured = []
        if raw_quality in names:
            changed.append(f"SELECT {quality} FROM {raw_quality}")
            measured.append(f"SELECT sha256 FROM {raw_quality}")
        if drop_quality in names:
            changed.append(f"SELECT {quality} FROM {_BASE}.quality WHERE rowid IN (SELECT rid FROM {drop_quality})")
            measured.append(f"SELECT sha256 FROM {_BASE}.quality WHERE rowid IN (SELECT rid FROM {drop_quality})")
        # a compressed copy's quality row names its file's bytes, not its image: find its image's key
        if measured:
            changed.append(
                f"SELECT _hkey, NULL::UBIGINT, NULL::BIGINT FROM {base_raw} WHERE fits_sha256 <> sha256 "
                f"AND sha256 IN ({' UNION ALL '.join(measured)})"
            )
    if not changed:
        con.execute(f"CREATE OR REPLACE TABLE {_DELTA} AS SELECT * FROM {_BASE}.images LIMIT 0")
        con.execute(f"CREATE OR REPLACE VIEW images AS SELECT * FROM {_BASE}.images")
        return
    every = " UNION ALL ".join(narrow)
    con.execute(f"CREATE OR REPLACE TABLE {_CHANGED} AS {' UNION ALL '.join(changed)}")
    keys = f"SELECT _hkey FROM {_CHANGED} WHERE _hkey IS NOT NULL"
    paths = f"SELECT _hpath FROM {_CHANGED} WHERE _hpath IS NOT NULL"
    # One scan finds the rows with a changed image or path. The images to redo are the changed ones and
    # those of rows on a changed path; a second scan fetches the rest of the latter's rows and a third
    # the rows on their other paths; both are needed only where bytes are listed under several paths.
    con.execute(
        f"CREATE OR REPLACE TABLE {_ROWS} AS SELECT * FROM ({every}) "
        f"WHERE _hkey IN ({keys}) OR _hpath IN ({paths})"
    )
    con.execute(
        f"CREATE OR REPLACE TABLE {_KEYS} AS {keys} "
        f"UNION SELECT _hkey FROM {_ROWS} WHERE _hpath IN ({paths})"
    )
    more_keys = f"SELECT _hkey FROM {_KEYS} EXCEPT {keys}"
    if _one(con, f"SELECT count(*) FROM ({more_keys})"):
        con.execute(f"INSERT INTO {_ROWS} SELECT * FROM ({every}) WHERE _hkey IN ({more_keys})")
    more_paths = (
        f"SELECT _hpath FROM {_ROWS} WHERE _hkey IN (SELECT _hkey FROM {_KEYS}) AND _hpath IS NOT NULL "
        f"EXCEPT {paths}"
    )
    if _one(con, f"SELECT count(*) FROM ({more_paths})"):
        con.execute(f"INSERT INTO {_ROWS} SELECT * FROM ({every}) WHERE _hpath IN ({more_paths})")
    if _one(con, f"SELECT count(*) FROM {_ROWS} WHERE published"):
        work = (
            f"SELECT * EXCLUDE (_hkey, _hpath, _irow) FROM {base_raw} "
            f"WHERE rowid IN (SELECT rid FROM {_ROWS} WHERE published)"
        )
        if fresh:
            work += (
                f" UNION ALL BY NAME SELECT {_aligned(con, raw, base_raw)} FROM {raw}"
                f" WHERE rowid IN (SELECT rid FROM {_ROWS} WHERE NOT published)"
            )
        con.execute(f"CREATE OR REPLACE TABLE {_WORKING} AS {work}")
        con.execute(f"CREATE OR REPLACE TABLE {_DELTA} AS {_images_sql(_WORKING, keys=_KEYS)}")
        con.execute(f"DROP TABLE {_WORKING}")
    elif fresh:  # no published row is needed: the rows read since hold them all (more rows do no harm)
        delta = f"({_images_sql(raw, keys=_KEYS)})"
        aligned = _aligned(con, delta, f"{_BASE}.images")
        con.execute(f"CREATE OR REPLACE TABLE {_DELTA} AS SELECT {aligned} FROM {delta}")
    else:
        con.execute(f"CREATE OR REPLACE TABLE {_DELTA} AS SELECT * FROM {_BASE}.images LIMIT 0")
    con.execute(
        f"""CREATE OR REPLACE TABLE {drop} AS
            SELECT _irow AS rid FROM {_CHANGED} WHERE _irow IS NOT NULL
            UNION SELECT _irow FROM {base_raw} WHERE _irow IS NOT NULL AND rowid IN (
                SELECT rid FROM {_ROWS} WHERE published AND _hkey IN (SELECT _hkey FROM {_KEYS}))"""
    )
    con.execute(
        f"CREATE OR REPLACE VIEW images AS SELECT * FROM {_BASE}.images WHERE rowid NOT IN "
        f"(SELECT rid FROM {drop}) UNION ALL BY NAME SELECT * FROM {_DELTA}"
    )


def _home(home: str | Path | Home | None) -> Home:
    """The home to read: a :class:`Home`, a URL of a store (the working copy in the default home),
    or a folder (``None``: the default), on the store ``SKYASSETS_STORAGE`` names if any."""
    if isinstance(home, Home):
        return home
    if isinstance(home, str) and home.startswith("s3://"):
        stored = Home.from_env()
        return Home(stored.root, storage=home, endpoint=stored.endpoint, cache_bytes=stored.cache_bytes)
    return Home.from_env(Path(home).expanduser().resolve() if home is not None else None)


@functools.lru_cache(maxsize=16)
def _stored_home(root: str, storage: str | None, endpoint: str | None) -> Home:
    """One :class:`Home` per place, so a connection's refreshes share its store client."""
    return Home(Path(root), storage=storage, endpoint=endpoint)


def home_of(con: duckdb.DuckDBPyConnection) -> Home:
    """The home a connection from :func:`connect` reads (the default home for any other)."""
    try:
        settings = dict(con.execute(f"SELECT key, value FROM {_SETTINGS}").fetchall())
    except duckdb.Error:
        return Home.from_env()
    return _home_from(settings)


def _home_from(settings: dict[str, str]) -> Home:
    """The home a connection's ``_skyassets.settings`` name."""
    return _stored_home(settings["home"], settings.get("storage"), settings.get("endpoint"))


def _published(root: Home) -> Path:
    """The published ``catalog.duckdb`` to start from: with a store, a working copy of the stored
    one, fetched again when another machine has published since."""
    return root.fresh_copy(CATALOG_FILE) or root.root / CATALOG_FILE


# ------------------------------------------------------------------------------------------- public


def connect(
    home: str | Path | Home | None = None, *, published: bool = False, tables: Iterable[str] | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake as tables and the catalog's SQL macros.

    Tables: ``observations``, ``products``, ``files``, ``images`` (always, empty with their columns
    when the lake has nothing yet) and ``quality``, ``sources``, ``targets``, ``mosaics``,
    ``composites``, ``recipes`` once their folders hold Parquet. The data are a snapshot of the lake
    taken on connect; ``refresh(con)`` re-reads the partitions that changed and the helpers in this
    module call it before every query. Nothing in the lake is locked, so runs and notebooks never
    wait for each other.

    The snapshot starts from the published ``catalog.duckdb`` when there is one (attached
    read-only: a later publish renames a new file over it and this connection keeps the old one),
    and reads only the partition files that differ from those it was built from; so connecting
    costs a listing of the lake plus the runs finished since the last publish (under a second for a
    million image rows and a few changed partitions, see ``bench/catalog.py``). Without it the whole
    lake is read (about 7 s per million image rows on two cores).

    ``published=True`` opens ``catalog.duckdb`` (from ``publish()``) read-only instead.

    ``tables`` names the catalog tables to hold (default: all of them), for a caller that asks about
    a few: every table it leaves out is never read, here or on refresh, which on a first read of a
    lake of many observations is most of the cost. ``images`` brings ``quality`` with it, which
    gives its ``s_resolution``.

    With the home on a store (``SKYASSETS_STORAGE``, or ``home`` given as ``s3://bucket/prefix``)
    the partition files are listed and read from the store itself and the published catalog is a
    working copy of the stored one, so a notebook on any machine sees what the runs wrote.
    """
    root = _home(home)
    if published:
        path = _published(root)
        if not path.exists():
            raise CatalogError(f"{path} does not exist yet: publish() writes it")
        # Attached to a fresh in-memory database rather than connected by path: duckdb.connect reuses
        # an instance already open on the same path in this process, which after a publish would
        # still be the replaced file.
        con = duckdb.connect(":memory:")
        con.execute(f"ATTACH {_lit(str(path))} AS catalog (READ_ONLY)")
        con.execute("USE catalog")
        return con
    if not root.remote and not root.root.is_dir():  # a mistyped SKYASSETS_HOME would look like an empty catalog
        warnings.warn(f"{root.root} does not exist: the catalog is empty until a run writes there (is "
                      "SKYASSETS_HOME, or the folder given to connect(), the home's?)", stacklevel=2)
    con = duckdb.connect(":memory:")
    con.execute(f"CREATE SCHEMA {_WORK}")
    con.execute(f"CREATE TABLE {_SETTINGS} (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute(f"INSERT INTO {_SETTINGS} VALUES ('home', ?), ('prefix', ?)", [str(root.root), home_prefix(root)])
    if tables is not None:
        wanted = set(tables) | ({"quality"} if "images" in tables else set())
        if unknown := sorted(wanted - set(SOURCES)):
            raise ValueError(f"no catalog tables {unknown}: the catalog has {sorted(SOURCES)}")
        con.execute(f"INSERT INTO {_SETTINGS} VALUES ('tables', ?)", [",".join(t for t in SOURCES if t in wanted)])
    if root.remote:
        con.execute(f"INSERT INTO {_SETTINGS} VALUES ('storage', ?), ('endpoint', ?)", [root.storage, root.endpoint])
    con.execute(f"CREATE TABLE {_READ} (tbl VARCHAR, file VARCHAR, mtime_ns BIGINT, size BIGINT, ino BIGINT)")
    con.execute(f"CREATE TABLE {_STALE} (tbl VARCHAR, file VARCHAR)")
    _attach_base(con, _published(root))
    refresh(con)
    _install_macros(con)
    return con


def refresh(con: duckdb.DuckDBPyConnection) -> bool:
    """Re-read the partition files changed since the last look; True if any table changed.

    A no-op on a published catalog. Costs one ``stat`` per partition file when nothing changed.
    When a newer ``catalog.duckdb`` has been published since, the snapshot starts again from it, so
    the changes kept in memory stay those since the last publish.
    """
    try:
        settings = dict(con.execute(f"SELECT key, value FROM {_SETTINGS}").fetchall())
    except duckdb.CatalogException:
        return False
    root = _home_from(settings)
    published = _published(root)
    if _file_id(published) != settings.get("catalog"):
        _rebase(con, published)
        settings = dict(con.execute(f"SELECT key, value FROM {_SETTINGS}").fetchall())
    lake = LakeFiles(root)
    state, names = _state(con), _names_in(con)
    wanted = settings["tables"].split(",") if "tables" in settings else list(SOURCES)
    changed: list[str] = []
    if "base" in settings:
        base, stale, tables = _state(con, f"{_BASE}.{_INDEX}.partitions"), _stale(con), _base_tables(con)
        for table in wanted:
            new = table in tables and table not in names  # the first look: every base table is shown
            if _sync_table(con, lake, table, state[table], names, base.get(table, {}), stale[table]) or new:
                changed.append(table)
        if "quality" in changed and "images" in wanted and "images" not in changed:  # s_resolution from quality
            changed.append("images")
    else:
        changed = [table for table in wanted if _sync_table(con, lake, table, state[table], names)]
    for table in sorted(changed, key=lambda t: t == "images"):
        _expose(con, table, publish=False)
    if changed:
        _fill_resolution(con)
    return bool(changed)


def _fill_resolution(con: duckdb.DuckDBPyConnection) -> None:
    """``images.s_resolution`` (ObsCore: the PSF FWHM) from the FWHM that ``image_quality`` measured."""
    names = _names_in(con)
    images = _DELTA if _DELTA in names else "images"  # over a base, only the rows redone
    if images in names and "quality" in names and "fwhm_arcsec" in _columns(con, "quality"):
        con.execute(
            f"UPDATE {images} SET s_resolution = q.fwhm_arcsec FROM quality AS q "
            f"WHERE {images}.sha256 = q.sha256 AND {images}.hdu_index = q.hdu_index"
        )


def publish(
    home: str | Path | Home | None = None, dest: str | Path | None = None, *, memory_limit: str | None = None
) -> Path:
    """Write ``catalog.duckdb``: the lake's tables, sorted by dec zone, RA and t_min, with the macros.

    The file is built under a temporary name in the destination folder and renamed over the old
    one, so a reader of the old file keeps reading it undisturbed and the next ``connect`` sees the
    new one. Returns the path written. ``memory_limit`` (e.g. ``"4GB"``) caps DuckDB's memory, which
    otherwise grows to 80 % of the machine's on a lake of ten million image rows; above it DuckDB
    spills to a temporary folder beside the file. With the home on a store, the lake is read from
    it and (without ``dest``) the catalog is stored there too, verified, for every machine to start from.
    """
    root = _home(home)
    target = Path(dest) if dest is not None else root.root / CATALOG_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        con = duckdb.connect(str(tmp))
        try:
            if memory_limit is not None:
                con.execute(f"SET memory_limit = {_lit(memory_limit)}")
            con.execute(f"CREATE SCHEMA {_INDEX}")
            con.execute(f"CREATE SCHEMA {_WORK}")
            con.execute(
                f"CREATE TABLE {_READ} (tbl VARCHAR, file VARCHAR, mtime_ns BIGINT, size BIGINT, ino BIGINT)"
            )
            lake = LakeFiles(root)
            for table in SOURCES:
                _sync_table(con, lake, table, {}, set())
                _expose(con, table, publish=True)
                con.execute(f"DROP TABLE IF EXISTS {_raw(table)}")
            # the partition files this catalog was built from, for connect() to start from it
            con.execute(f"CREATE TABLE {_INDEX}.partitions AS SELECT * FROM {_READ}")
            con.execute(f"CREATE TABLE {_INDEX}.layout (key VARCHAR PRIMARY KEY, value VARCHAR)")
            con.execute(f"INSERT INTO {_INDEX}.layout VALUES ('prefix', ?)", [home_prefix(root)])
            con.execute(f"DROP SCHEMA {_WORK} CASCADE")
            _fill_resolution(con)
            _install_macros(con)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.wal").unlink(missing_ok=True)
    if dest is None and root.remote:
        root.commit(CATALOG_FILE, stamped=True)
    return target


# --------------------------------------------------------------------------------------- questions

TimeLike = Any  # astropy Time, ISO string, datetime/date, numpy datetime64, or MJD number


def to_mjd(value: TimeLike) -> float:
    """MJD (UTC) of a time given as astropy Time, ISO string, datetime/date, datetime64 or MJD number."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    from astropy.time import Time

    if isinstance(value, Time):
        return float(value.utc.mjd)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if isinstance(value, np.datetime64):
        value = pd.Timestamp(value).to_pydatetime()
    return float(Time(value, scale="utc").mjd)


def _lit(value: Any) -> str:
    """A SQL literal for a number or string (the helpers show their SQL, so values are inlined)."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return repr(number)


def _names(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


@dataclass(frozen=True)
class Query:
    """Composable filters on a catalog table; ``sql()`` is the plain SQL it runs.

    >>> Query().cone(83.82, -5.39, 0.1).instrument("NIRCAM").time("2024-01-01", "2024-02-01").df(con)

    Each method adds one condition, written with the catalog's SQL macros:
    ``cone`` → ``in_cone(s_ra, s_dec, ra, dec, radius)`` (and a ``distance`` column, nearest first),
    ``footprint`` → ``contains_point(s_region, ra, dec)`` (both leave out images with a ``wcs_problem``),
    ``time`` / ``date`` → ``overlaps_time(t_min, t_max, start_mjd, stop_mjd)``, ``instrument`` → ``instrument_is``,
    ``filter`` → ``filter_matches`` on ``filter`` or ``pupil`` (``filters`` for observations),
    ``target`` → ``target_like``, ``exposure`` → ``t_exptime BETWEEN``, ``quality`` → a join on
    ``quality`` and ``quality_score >= min``.
    """

    table: str = "images"
    conditions: tuple[str, ...] = ()
    center: tuple[float, float] | None = None
    min_quality: float | None = None

    def _with(self, condition: str, **changes: Any) -> Query:
        return replace(self, conditions=(*self.conditions, condition), **changes)

    def cone(self, ra: float, dec: float, radius: float) -> Query:
        """Centres within ``radius`` degrees (true angular distance) of (ra, dec), ICRS degrees.

        RA is taken modulo 360 (-0.5 is 359.5). A cone off the sky is refused, as the ``cone`` macro
        refuses it: a slip (dec 100, a negative radius) would otherwise find nothing, which reads as
        an empty sky."""
        if not math.isfinite(ra):
            raise ValueError(f"cone: ra is a number of degrees, not {ra:g}")
        if not -90 <= dec <= 90:
            raise ValueError(f"cone: dec is between -90 and +90 degrees, not {dec:g}")
        if not radius > 0:
            raise ValueError(f"cone: the radius is more than 0 degrees, not {radius:g}")
        ra = float(ra) % 360.0
        trusted = " AND wcs_problem IS NULL" if self.table == "images" else ""  # see the cone macro
        return self._with(
            f"in_cone(s_ra, s_dec, {_lit(ra)}, {_lit(dec)}, {_lit(radius)}){trusted}", center=(ra, float(dec))
        )

    def footprint(self, ra: float, dec: float) -> Query:
        """Images whose s_region contains the point (with a centre-distance prefilter when s_fov is known)."""
        ra, dec = _lit(float(ra) % 360.0), _lit(dec)
        near = f"ang_sep(s_ra, s_dec, {ra}, {dec}) <= coalesce(2 * s_fov, 180) AND " if self.table == "images" else ""
        trusted = " AND wcs_problem IS NULL" if self.table == "images" else ""
        return self._with(f"{near}contains_point(s_region, {ra}, {dec}){trusted}")

    def time(self, start: TimeLike, stop: TimeLike | None = None) -> Query:
        """Exposures overlapping [start, stop] (an instant when ``stop`` is omitted)."""
        lo = to_mjd(start)
        hi = to_mjd(stop) if stop is not None else lo
        if hi < lo:
            raise ValueError(f"time range ends before it starts: {start!r} .. {stop!r}")
        return self._with(f"overlaps_time(t_min, t_max, {_lit(lo)}, {_lit(hi)})")

    def date(self, day: str | dt.date) -> Query:
        """Exposures overlapping one UTC calendar day (space observatories have no local night)."""
        try:
            start = dt.date.fromisoformat(day) if isinstance(day, str) else day
        except ValueError as exc:
            raise ValueError(f"date {day!r} is not a day written YYYY-MM-DD ({exc})") from None
        if isinstance(start, dt.datetime):
            start = start.date()
        lo = to_mjd(start)
        return self._with(f"overlaps_time(t_min, t_max, {_lit(lo)}, {_lit(lo + 1)})")

    def instrument(self, names: str | Iterable[str]) -> Query:
        """Any of the instruments, case-insensitive; "NIRCAM" also matches "NIRCAM/IMAGE"."""
        return self._with(" OR ".join(f"instrument_is(instrument_name, {_lit(n)})" for n in _names(names)))

    def filter(self, names: str | Iterable[str]) -> Query:
        """Any of the filters, case-insensitive, in the filter or the pupil wheel."""
        columns = ["filters"] if self.table == "observations" else ['"filter"', "pupil"]
        return self._with(" OR ".join(f"filter_matches({c}, {_lit(n)})" for n in _names(names) for c in columns))

    def target(self, text: str) -> Query:
        """Target names containing ``text`` in any case and whatever the separators (``NGC 628`` finds
        ``NGC-628`` and ``NGC628``, not ``NGC-6284``)."""
        return self._with(f"target_like(target_name, {_lit(text)})")

    def exposure(self, low: float | None = None, high: float | None = None) -> Query:
        """Exposure time in seconds within [low, high]; either bound may be omitted."""
        parts = ([f"t_exptime >= {_lit(low)}"] if low is not None else []) + (
            [f"t_exptime <= {_lit(high)}"] if high is not None else []
        )
        return self._with(" AND ".join(parts)) if parts else self

    def quality(self, min_score: float) -> Query:
        """Images whose quality score (0–100) is at least ``min_score``; adds ``quality_score``."""
        return replace(self, min_quality=float(min_score))

    def sql(self, con: duckdb.DuckDBPyConnection | None = None) -> str:
        """The SQL of this query; ``con`` is needed only for ``quality`` (to find the join keys)."""
        source = self.table
        conditions = list(self.conditions)
        if self.min_quality is not None:
            if con is None:
                raise ValueError("the SQL of a quality query depends on the quality table: pass con")
            source = _quality_join(con, self.table)
            conditions.append(f"quality_score >= {_lit(self.min_quality)}")
        if self.center is not None:
            select = f"*, ang_sep({_lit(self.center[0])}, {_lit(self.center[1])}, s_ra, s_dec) AS distance"
        else:
            select = "*"
        where = " AND ".join(f"({c})" for c in conditions) or "true"
        order = " ORDER BY distance" if self.center is not None else ""
        return f"SELECT {select} FROM {source} WHERE {where}{order}"

    def relation(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyRelation:
        """The rows, as a DuckDB relation, after refreshing the snapshot."""
        refresh(con)
        if self.table not in _names_in(con):
            raise CatalogError(_absent(con, self.table) or
                               f"no {self.table!r} table yet: its asset has written no Parquet to the lake")
        return con.sql(self.sql(con))

    def df(self, con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
        return self.relation(con).df()


def _absent(con: duckdb.DuckDBPyConnection, table: str) -> str | None:
    """Why ``table`` is not in a connection opened with ``connect(tables=[...])`` that left it out,
    or None (it is in the lake's tables asked for, or every table was)."""
    try:
        held = dict(con.execute(f"SELECT key, value FROM {_SETTINGS}").fetchall()).get("tables")
    except duckdb.CatalogException:  # a published catalog: every table
        return None
    if held is None or table in held.split(","):
        return None
    return (f"this connection holds only the tables {held.replace(',', ', ')}: connect(..., tables=[...]) "
            f"with {table!r} among them to search it")


def _quality_join(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """``table`` joined with ``quality`` on the image (file hash and HDU), as a subquery."""
    if not _exists(con, "quality"):
        if why := _absent(con, "quality"):
            raise CatalogError(why)
        raise CatalogError(
            "no quality table yet: image_quality has written nothing to lake/image_quality/, "
            "so a quality threshold cannot be applied"
        )
    return (
        f"(SELECT t.*, q.score AS quality_score FROM {table} AS t JOIN quality AS q "
        "ON t.sha256 = q.sha256 AND t.hdu_index = q.hdu_index)"
    )


def search(
    con: duckdb.DuckDBPyConnection,
    *,
    table: str = "images",
    cone: tuple[float, float, float] | None = None,
    footprint: tuple[float, float] | None = None,
    time: TimeLike | Sequence[TimeLike] | None = None,
    date: str | dt.date | None = None,
    instrument: str | Iterable[str] | None = None,
    filter: str | Iterable[str] | None = None,  # noqa: A002 - the astronomer's word
    target: str | None = None,
    exposure: tuple[float | None, float | None] | None = None,
    min_quality: float | None = None,
) -> duckdb.DuckDBPyRelation:
    """All the given conditions together (see ``Query`` for each, and ``Query.sql`` for the SQL).

    ``cone=(ra, dec, radius_deg)``, ``footprint=(ra, dec)``, ``time=(start, stop)`` or an instant,
    ``exposure=(low_s, high_s)``. ``.df()`` on the result gives pandas.
    """
    query = Query(table=table)
    if cone is not None:
        query = query.cone(*cone)
    if footprint is not None:
        query = query.footprint(*footprint)
    if time is not None:
        query = query.time(*time) if isinstance(time, (tuple, list)) else query.time(time)
    if date is not None:
        query = query.date(date)
    if instrument is not None:
        query = query.instrument(instrument)
    if filter is not None:
        query = query.filter(filter)
    if target is not None:
        query = query.target(target)
    if exposure is not None:
        query = query.exposure(*exposure)
    if min_quality is not None:
        query = query.quality(min_quality)
    return query.relation(con)
