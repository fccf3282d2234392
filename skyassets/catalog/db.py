"""The catalog: the Parquet lake as DuckDB tables, with sky, time and instrument questions as SQL macros.

Parquet stays the source of truth. ``connect()`` gives an in-memory DuckDB holding a snapshot of the
lake, read through pyarrow one open file at a time: a partition replaced by a run (temp file +
rename) is read whole, old or new, and nothing in the lake is ever locked. DuckDB's own
``read_parquet`` is not used on the live lake because it opens a file again between planning and
scanning, and a rename in between makes the query fail (measured: about half the queries fail while
one partition is rewritten in a loop). ``refresh()`` brings the snapshot up to date, re-reading only
the partition files that changed; every query helper here calls it first.

``publish()`` writes the same tables, sorted for zone-map pruning, to ``catalog.duckdb``.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from skyassets.lake.home import Home, default_home

# catalog table -> asset folder (or single file) in the lake
SOURCES: dict[str, str] = {
    "observations": "mast_observations",
    "products": "mast_products",
    "files": "fits_files",
    "images": "image_metadata",
    "quality": "image_quality",
    "sources": "source_catalogs",
    "targets": "target_groups",
    "composites": "composites",
    "recipes": "recipes",
    "mosaics": "mosaics",
}

# Columns that exist even before any file does, so notebooks and helpers can be written first.
_STR, _F64, _I64 = "VARCHAR", "DOUBLE", "BIGINT"
DECLARED: dict[str, list[tuple[str, str]]] = {
    "observations": [
        *[(c, _STR) for c in ("obs_id", "obsid", "obs_collection", "instrument_name", "filters", "target_name")],
        *[(c, _F64) for c in ("s_ra", "s_dec", "t_min", "t_max", "t_exptime", "em_min", "em_max")],
        *[(c, _STR) for c in ("s_region", "proposal_id", "watchlist_entry")],
    ],
    "products": [
        *[(c, _STR) for c in ("partition", "obsID", "dataURI", "productFilename", "productSubGroupDescription")],
        ("size", _I64),
        *[(c, _STR) for c in ("s3_key", "http_url")],
    ],
    "files": [
        *[(c, _STR) for c in ("partition", "dataURI", "filename", "path")],
        ("size", _I64),
        *[(c, _STR) for c in ("sha256", "source", "status", "fits_checksum")],
    ],
    "images": [
        *[(c, _STR) for c in ("obs_id", "obs_collection", "target_name")],
        *[(c, _F64) for c in ("s_ra", "s_dec", "s_fov")],
        ("s_region", _STR),
        *[(c, _F64) for c in ("s_resolution", "t_min", "t_max", "t_exptime", "em_min", "em_max")],
        *[(c, _STR) for c in ("instrument_name", "facility_name", "dataproduct_type")],
        ("calib_level", _I64),
        *[(c, _STR) for c in ("access_url", "filter", "pupil", "detector", "proposal_id", "bunit")],
        ("pixel_scale", _F64),
        ("sha256", _STR),
        ("size", _I64),
        *[(c, _STR) for c in ("filename", "path")],
        ("hdu_index", _I64),
        *[(c, _STR) for c in ("hdu_name", "header", "wcs_problem")],
    ],
}

ZONE_DEG = 0.5
"""Height of the declination zones that published tables are sorted by (then RA, then t_min)."""
_SPATIAL_ORDER = f"floor((s_dec + 90) / {ZONE_DEG}), s_ra, t_min"

CATALOG_FILE = "catalog.duckdb"


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
    # The numbers of an STC-S region string, whatever frame words it carries ("POLYGON ICRS 1 2 ...").
    """region_numbers(region) AS list_transform(
        list_filter(string_split_regex(trim(region), '\\s+'), lambda t: TRY_CAST(t AS DOUBLE) IS NOT NULL),
        lambda t: CAST(t AS DOUBLE))""",
    # Gnomonic projection about (ra0, dec0): c > 0 is the near hemisphere, where (x, y) are valid.
    """tangent_xy(ra, dec, ra0, dec0) AS {
        'c': sin(radians(dec0)) * sin(radians(dec)) + cos(radians(dec0)) * cos(radians(dec)) * cos(radians(ra - ra0)),
        'x': cos(radians(dec)) * sin(radians(ra - ra0)),
        'y': cos(radians(dec0)) * sin(radians(dec)) - sin(radians(dec0)) * cos(radians(dec)) * cos(radians(ra - ra0))}""",
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
    "target_like(target_col, text) AS contains(lower(target_col), lower(text))",
)

TABLE_MACROS: tuple[str, ...] = (
    """cone(ra, dec, radius) AS TABLE SELECT *, ang_sep(ra, dec, s_ra, s_dec) AS distance FROM images
        WHERE in_cone(s_ra, s_dec, ra, dec, radius) ORDER BY distance""",
    """footprint(ra, dec) AS TABLE SELECT * FROM images
        WHERE ang_sep(s_ra, s_dec, ra, dec) <= coalesce(2 * s_fov, 180) AND contains_point(s_region, ra, dec)""",
    "during(start_mjd, stop_mjd) AS TABLE SELECT * FROM images WHERE overlaps_time(t_min, t_max, start_mjd, stop_mjd)",
    """observed_on(day) AS TABLE SELECT * FROM images
        WHERE overlaps_time(t_min, t_max, mjd(CAST(day AS DATE)), mjd(CAST(day AS DATE)) + 1)""",
)


def _install_macros(con: duckdb.DuckDBPyConnection) -> None:
    for body in MACROS + TABLE_MACROS:
        con.execute(f"CREATE OR REPLACE MACRO {body}")


def _images_sql(raw: str) -> str:
    """Current rows of ``image_metadata``, one per (sha256, hdu) with every path holding those bytes.

    A path's current bytes are those of the newest partition file that lists it, so a file changed
    in place shows its new row only, even while another partition still lists the old hash. The
    choice runs on narrow columns and picks rows by rowid, which halves the time on wide rows.
    """
    return f"""
        WITH cur AS (
            SELECT rowid AS _rid, path, obs_id,
                   coalesce(sha256, 'path:' || coalesce(path, _file)) || '#'
                   || coalesce(CAST(hdu_index AS VARCHAR), '') AS _key
            FROM {raw}
            QUALIFY path IS NULL OR sha256 IS NOT DISTINCT FROM
                first_value(sha256) OVER (PARTITION BY path ORDER BY _mtime DESC, _file DESC)
        ), pick AS (
            SELECT arg_min(_rid, (path, obs_id)) AS _rid,
                   coalesce(list(DISTINCT path ORDER BY path) FILTER (WHERE path IS NOT NULL), []) AS locations,
                   coalesce(list(DISTINCT obs_id ORDER BY obs_id) FILTER (WHERE obs_id IS NOT NULL), []) AS obs_ids
            FROM cur GROUP BY _key
        )
        SELECT r.* EXCLUDE (_file, _mtime), p.locations, p.obs_ids
        FROM {raw} AS r JOIN pick AS p ON r.rowid = p._rid
        ORDER BY {_SPATIAL_ORDER}"""


# ------------------------------------------------------------------------------------ reading the lake


def _listing(lake: Path, source: str) -> dict[str, tuple[int, int, int]]:
    """The Parquet files of an asset (``<source>.parquet`` and ``<source>/*.parquet``) and their stat."""
    found: dict[str, tuple[int, int, int]] = {}
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


def _read(lake: Path, name: str) -> pa.Table | None:
    """One partition file, read from a single open handle (so a concurrent rename cannot tear it)."""
    try:
        with open(lake / name, "rb") as handle:
            mtime = os.fstat(handle.fileno()).st_mtime_ns
            table = pq.read_table(handle)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as error:
        raise CatalogError(f"cannot read {lake / name}: {error}") from error
    # Columns with no values in this file get a string type rather than DuckDB's NULL type.
    for i, field in enumerate(table.schema):
        if pa.types.is_null(field.type):
            table = table.set_column(i, field.name, pa.nulls(table.num_rows, pa.string()))
    n = table.num_rows
    table = table.append_column("_file", pa.array([name] * n, pa.string()))
    return table.append_column("_mtime", pa.array(np.full(n, mtime, dtype=np.int64)))


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    return {row[0]: row[1] for row in con.execute(f"DESCRIBE {relation}").fetchall()}


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """The single value of a query (fetched to the end, which this DuckDB requires before the next)."""
    rows = con.execute(sql, params).fetchall()
    return rows[0][0] if rows else None


def _exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(
        _one(con, "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name])
        + _one(con, "SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name])
    )


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _names_in(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Tables and views of the connection, in one query (each query costs about half a millisecond)."""
    return {
        row[0]
        for row in con.execute(
            "SELECT table_name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views()"
        ).fetchall()
    }


def _state(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, tuple[int, int, int]]]:
    """The partition files each table was last read from, with their (mtime_ns, size, inode)."""
    state: dict[str, dict[str, tuple[int, int, int]]] = {t: {} for t in SOURCES}
    for table, name, mtime, size, ino in con.execute(
        "SELECT tbl, file, mtime_ns, size, ino FROM _skyassets_files"
    ).fetchall():
        state[table][name] = (mtime, size, ino)
    return state


def _sync_table(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    table: str,
    before: dict[str, tuple[int, int, int]],
    names: set[str],
) -> bool:
    """Bring ``_raw_<table>`` up to date with the lake; True if anything changed."""
    raw = f"_raw_{table}"
    now = _listing(lake, SOURCES[table])
    gone = [f for f in before if before[f] != now.get(f)]
    fresh = [f for f in now if before.get(f) != now[f]]
    if not gone and not fresh and (raw in names or table not in DECLARED):
        return False
    loaded = {f: t for f in sorted(fresh) if (t := _read(lake, f)) is not None}
    tables = list(loaded.values())
    con.execute("BEGIN")
    try:
        if gone and raw in names:
            con.execute(f"DELETE FROM {raw} WHERE _file IN (SELECT unnest(?))", [gone])
        con.execute("DELETE FROM _skyassets_files WHERE tbl = ? AND file IN (SELECT unnest(?))", [table, gone])
        empty = raw not in names or _one(con, f"SELECT count(*) = 0 FROM {raw}")
        if tables:
            try:
                arrow = pa.concat_tables(tables, promote_options="permissive")
            except pa.ArrowException as error:
                raise CatalogError(f"partitions of {SOURCES[table]} disagree on column types: {error}") from error
            view = f"_arrow_{uuid.uuid4().hex}"
            con.register(view, arrow)
            try:
                if empty:
                    con.execute(f"CREATE OR REPLACE TABLE {raw} AS SELECT * FROM {view}")
                else:
                    have = _columns(con, raw)
                    for column, kind in _columns(con, view).items():
                        if column not in have:
                            con.execute(f"ALTER TABLE {raw} ADD COLUMN {_q(column)} {kind}")
                    con.execute(f"INSERT INTO {raw} BY NAME SELECT * FROM {view}")
            finally:
                con.unregister(view)
        elif raw not in names and table in DECLARED:
            columns = ", ".join(f"{_q(c)} {t}" for c, t in DECLARED[table])
            con.execute(f"CREATE TABLE {raw} ({columns}, _file VARCHAR, _mtime BIGINT)")
        if tables or raw in names or table in DECLARED:
            have = _columns(con, raw)
            for column, kind in DECLARED.get(table, []):
                if column not in have:
                    con.execute(f"ALTER TABLE {raw} ADD COLUMN {_q(column)} {kind}")
        read = {f: now[f] for f in loaded}
        if read:
            con.execute(
                "INSERT INTO _skyassets_files SELECT ?, unnest(?), unnest(?), unnest(?), unnest(?)",
                [table, list(read), *[[v[k] for v in read.values()] for k in range(3)]],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return True


def _expose(con: duckdb.DuckDBPyConnection, table: str, *, publish: bool) -> None:
    """Make ``table`` from ``_raw_<table>``: images deduplicated; published tables materialised and sorted."""
    raw = f"_raw_{table}"
    names = _names_in(con)
    if raw not in names:
        return
    if table == "images":
        con.execute(f"CREATE OR REPLACE TABLE images AS {_images_sql(raw)}")
    elif publish:
        spatial = {"s_ra", "s_dec", "t_min"} <= set(_columns(con, raw))
        order = f" ORDER BY {_SPATIAL_ORDER}" if spatial else ""
        con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * EXCLUDE (_file, _mtime) FROM {raw}{order}")
    elif table not in names:  # a view binds its columns on every query, so it is made once
        con.execute(f"CREATE VIEW {table} AS SELECT * EXCLUDE (_file, _mtime) FROM {raw}")


def _home(home: str | Path | None) -> Home:
    return Home(Path(home).expanduser().resolve() if home is not None else default_home())


# ------------------------------------------------------------------------------------------- public


def connect(home: str | Path | None = None, *, published: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake as tables and the catalog's SQL macros.

    Tables: ``observations``, ``products``, ``files``, ``images`` (always, empty with their columns
    when the lake has nothing yet) and ``quality``, ``sources``, ``targets``, ``mosaics``, ``composites``, ``recipes`` once
    their folders hold Parquet. The data are a snapshot taken on connect (7–10 s per million
    image rows on two cores, see ``bench/catalog.py``); ``refresh(con)`` re-reads the partitions that changed and
    the helpers in this module call it before every query. Nothing in the lake is locked, so runs
    and notebooks never wait for each other.

    ``published=True`` opens ``catalog.duckdb`` (from ``publish()``) read-only instead.
    """
    root = _home(home)
    if published:
        path = root.root / CATALOG_FILE
        if not path.exists():
            raise CatalogError(f"{path} does not exist yet: publish() writes it")
        # Attached to a fresh in-memory database rather than connected by path: duckdb.connect reuses
        # an instance already open on the same path in this process, which after a publish would
        # still be the replaced file.
        con = duckdb.connect(":memory:")
        con.execute(f"ATTACH {_lit(str(path))} AS catalog (READ_ONLY)")
        con.execute("USE catalog")
        return con
    con = duckdb.connect(":memory:")
    con.execute("CREATE TABLE _skyassets (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO _skyassets VALUES ('home', ?)", [str(root.root)])
    con.execute("CREATE TABLE _skyassets_files (tbl VARCHAR, file VARCHAR, mtime_ns BIGINT, size BIGINT, ino BIGINT)")
    refresh(con)
    _install_macros(con)
    return con


def refresh(con: duckdb.DuckDBPyConnection) -> bool:
    """Re-read the partition files changed since the last look; True if any table changed.

    A no-op on a published catalog. Costs one ``stat`` per partition file when nothing changed.
    """
    try:
        home = _one(con, "SELECT value FROM _skyassets WHERE key = 'home'")
    except duckdb.CatalogException:
        return False
    lake = Home(Path(home)).lake
    state, names = _state(con), _names_in(con)
    changed = False
    for table in SOURCES:
        if _sync_table(con, lake, table, state[table], names):
            _expose(con, table, publish=False)
            changed = True
    if changed:
        _fill_resolution(con)
    return changed


def _fill_resolution(con: duckdb.DuckDBPyConnection) -> None:
    """``images.s_resolution`` (ObsCore: the PSF FWHM) from the FWHM that ``image_quality`` measured."""
    names = _names_in(con)
    if "images" in names and "quality" in names and "fwhm_arcsec" in _columns(con, "quality"):
        con.execute(
            "UPDATE images SET s_resolution = q.fwhm_arcsec FROM quality AS q "
            "WHERE images.sha256 = q.sha256 AND images.hdu_index = q.hdu_index"
        )


def publish(home: str | Path | None = None, dest: str | Path | None = None) -> Path:
    """Write ``catalog.duckdb``: the lake's tables, sorted by dec zone, RA and t_min, with the macros.

    The file is built under a temporary name in the destination folder and renamed over the old
    one, so a reader of the old file keeps reading it undisturbed and the next ``connect`` sees the
    new one. Returns the path written.
    """
    root = _home(home)
    target = Path(dest) if dest is not None else root.root / CATALOG_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        con = duckdb.connect(str(tmp))
        try:
            con.execute(
                "CREATE TEMP TABLE _skyassets_files (tbl VARCHAR, file VARCHAR, mtime_ns BIGINT, size BIGINT, ino BIGINT)"
            )
            for table in SOURCES:
                _sync_table(con, root.lake, table, {}, set())
                _expose(con, table, publish=True)
                con.execute(f"DROP TABLE IF EXISTS _raw_{table}")
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
    ``footprint`` → ``contains_point(s_region, ra, dec)``, ``time`` / ``date`` →
    ``overlaps_time(t_min, t_max, start_mjd, stop_mjd)``, ``instrument`` → ``instrument_is``,
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
        """Centres within ``radius`` degrees (true angular distance) of (ra, dec), ICRS degrees."""
        if not -90 <= dec <= 90 or radius < 0:
            raise ValueError(f"bad cone: dec={dec} radius={radius}")
        ra = float(ra) % 360.0
        return self._with(
            f"in_cone(s_ra, s_dec, {_lit(ra)}, {_lit(dec)}, {_lit(radius)})", center=(ra, float(dec))
        )

    def footprint(self, ra: float, dec: float) -> Query:
        """Images whose s_region contains the point (with a centre-distance prefilter when s_fov is known)."""
        ra, dec = _lit(float(ra) % 360.0), _lit(dec)
        near = f"ang_sep(s_ra, s_dec, {ra}, {dec}) <= coalesce(2 * s_fov, 180) AND " if self.table == "images" else ""
        return self._with(f"{near}contains_point(s_region, {ra}, {dec})")

    def time(self, start: TimeLike, stop: TimeLike | None = None) -> Query:
        """Exposures overlapping [start, stop] (an instant when ``stop`` is omitted)."""
        lo = to_mjd(start)
        hi = to_mjd(stop) if stop is not None else lo
        if hi < lo:
            raise ValueError(f"time range ends before it starts: {start!r} .. {stop!r}")
        return self._with(f"overlaps_time(t_min, t_max, {_lit(lo)}, {_lit(hi)})")

    def date(self, day: str | dt.date) -> Query:
        """Exposures overlapping one UTC calendar day (space observatories have no local night)."""
        start = dt.date.fromisoformat(day) if isinstance(day, str) else day
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
        """Target names containing ``text``, case-insensitive."""
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
            raise CatalogError(f"no {self.table!r} table yet: its asset has written no Parquet to the lake")
        return con.sql(self.sql(con))

    def df(self, con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
        return self.relation(con).df()


def _quality_join(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """``table`` joined with ``quality`` on the image (file hash and HDU), as a subquery."""
    if not _exists(con, "quality"):
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
