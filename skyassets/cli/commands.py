"""The ``skyassets`` commands: run the pipeline end to end, query the catalogue, or open it in the Dagster UI.

Loaded by :mod:`skyassets.cli.main`, which answers an interrupt while this loads (Dagster, pandas, astropy)
as it answers one later."""

from __future__ import annotations

import argparse
import fcntl
import itertools
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import IO, TYPE_CHECKING

from skyassets.cli.output import counted, one_line, write_frame
from skyassets.cli.sky import SkyError, add_sky_command
from skyassets.lake.home import HOME_ENV, STORAGE_ENV, Home, StorageError
from skyassets.lake.lease import LockBusy

if TYPE_CHECKING:
    import pandas as pd
    from dagster import DagsterInstance

# A new instance keeps its runs and events in this PostgreSQL database when the variable is set
# (postgresql+psycopg2://user:password@host/db); SQLite under $DAGSTER_HOME otherwise.
POSTGRES_ENV = "SKYASSETS_POSTGRES_URL"
# Dagster stores a ranged run's materialisations of an asset in one write when this is set in the process
# that runs the run: one INSERT on PostgreSQL instead of a round trip per partition. SQLite stores a batch
# one event at a time, as without it. The commands set it for themselves and every process they start.
EVENT_BATCH_ENV, EVENT_BATCH_SIZE = "DAGSTER_EVENT_BATCH_SIZE", "1000"
MAX_BATCH = 250  # partitions in one `skyassets ingest` run, at most
COMMAND_WAIT = 12 * 3600.0  # seconds a command waits for another on its home before it gives up
COMMAND_LOCK = "skyassets-command"  # the home's lock (and, on a store, lease) a command holds


class CommandError(Exception):
    """What a command tells its user in one line on stderr, with the exit status to end on."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def prepare_dagster_home(home: Home) -> Path:
    """Use ``$DAGSTER_HOME`` or ``<home>/dagster``, giving it skyassets' instance settings if it has none
    (with PostgreSQL storage when ``SKYASSETS_POSTGRES_URL`` is set), and batch event writes unless
    ``DAGSTER_EVENT_BATCH_SIZE`` says otherwise.

    The instance's storage is created under a lock: two commands started at once on a new home would
    otherwise both try to create the same SQLite tables, and one of them would fail. A home that
    cannot be written (a read-only mount, a file) is a ``CommandError`` naming it.
    """
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home.dagster).resolve()
    try:
        dagster_home.mkdir(parents=True, exist_ok=True)
        lock = open(dagster_home / ".skyassets-init.lock", "w")
    except OSError as exc:
        ours = dagster_home.is_relative_to(home.root.resolve())
        where = f"the skyassets home {home.root}" if ours else f"the Dagster home {dagster_home}"
        if ours and home.root.is_file():
            raise CommandError(f"{where} is a file, not a folder", 1) from exc
        raise CommandError(f"{where} cannot be written: {exc.filename}: {exc.strerror}", 1) from exc
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ.setdefault(HOME_ENV, str(home.root))
    os.environ.setdefault(EVENT_BATCH_ENV, EVENT_BATCH_SIZE)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        settings = dagster_home / "dagster.yaml"
        if not settings.exists():
            with resources.as_file(resources.files("skyassets").joinpath("dagster.yaml")) as packaged:
                text = packaged.read_text()
            if os.environ.get(POSTGRES_ENV):
                # the URL stays in the environment: the file names the variable, never the password
                text += f"\nstorage:\n  postgres:\n    postgres_url:\n      env: {POSTGRES_ENV}\n"
            settings.write_text(text)
        elif os.environ.get(POSTGRES_ENV) and POSTGRES_ENV not in settings.read_text():
            print(f"skyassets: warning: {POSTGRES_ENV} is set, but {settings} names no PostgreSQL storage: the "
                  "runs stay in this home's own storage; copy deploy/dagster.yaml there (or remove the file, "
                  "and the next command writes one with PostgreSQL) to use the database", file=sys.stderr)
        from dagster import DagsterInstance

        with DagsterInstance.get():
            pass
    return dagster_home


def _check_watchlist(command: str) -> None:
    """Refuse, before a webserver or an emulator is started for nothing, a watchlist the demo could not
    query as written: not there, not YAML (said with its line and column), or an entry that cannot be
    read (said with the entry and its key). The daemon's query goes on past such an entry; a person
    running the demo is better told at once. A name that may be a slip (a filter no known instrument
    has) is warned of on stderr and searched as written."""
    from skyassets.archive.watchlist import DEFAULT_WATCHLIST, WATCHLIST_ENV, WatchlistError, load_watchlist

    try:
        watchlist = load_watchlist(os.environ.get(WATCHLIST_ENV) or DEFAULT_WATCHLIST)
    except WatchlistError as exc:
        raise CommandError(one_line(str(exc))) from exc
    if watchlist.invalid:
        raise CommandError("; ".join(one_line(why) for _, why in watchlist.invalid))
    for doubt in watchlist.doubts():
        print(f"skyassets {command}: warning: {one_line(doubt)}; searched as written", file=sys.stderr)


@contextmanager
def one_command_at_a_time(home: Home) -> Iterator[None]:
    """Hold the home for a command that launches runs, waiting (and saying so) while another does,
    on this machine or, with the home on a store, on any machine sharing it. Two at once would
    fetch, measure and remake the same partitions side by side, each reading what the other half
    wrote; one after the other, the second finds the work done."""
    def waiting(held: str) -> None:
        print(f"waiting for another skyassets command on this home to end ({held})", file=sys.stderr, flush=True)

    taken = False
    try:
        with home.lock(COMMAND_LOCK, COMMAND_WAIT, waiting):
            taken = True
            yield
    except LockBusy as exc:
        if taken:  # a lock the command itself met (the landing lock): its own to say
            raise
        raise CommandError(f"another skyassets command still holds this home: {exc}", 1) from exc


def _demo(args: argparse.Namespace) -> int:
    from skyassets.defs.resources import check_settings

    check_settings()
    _check_watchlist("demo")
    home = Home.from_env()
    dagster_home = prepare_dagster_home(home)
    from skyassets.cli.demo import run_demo

    with one_command_at_a_time(home):
        return run_demo(home, dagster_home)


def _ingest(args: argparse.Namespace) -> int:
    # a link counts as there (a loop or a dangling link is refused later, with the reason)
    missing = [p for p in args.paths if not os.path.lexists(os.path.expanduser(p))]
    if len(missing) == len(args.paths):  # said before a webserver is started for nothing
        raise CommandError("; ".join(f"{p} does not exist" for p in missing), 1)
    from skyassets.defs.resources import check_settings

    check_settings()
    # the others are taken, and the missing refused with the reason, as other paths that cannot be
    paths = [p for p in args.paths if p not in missing]
    home = Home.from_env()
    dagster_home = prepare_dagster_home(home)
    from dagster import DagsterInstance

    from skyassets.cli.launch import Launcher
    from skyassets.cli.runs import (
        bring_up_to_date,
        home_run_config,
        ingest,
        latest_storage_id,
        text_progress,
        unusable_images,
        without_images,
    )

    instance = DagsterInstance.get()
    with one_command_at_a_time(home), Launcher(dagster_home, instance) as launcher:
        try:
            report = ingest(paths, home, launcher, batch=args.batch, progress=text_progress,
                            waiting=lambda held: print(f"waiting for the landing lock: {held}", file=sys.stderr))
        except LockBusy as exc:
            raise CommandError(f"landing lock not free: {exc}", 1) from exc
        report.refused.update({os.path.abspath(os.path.expanduser(p)): "does not exist" for p in missing})
        print(f"{counted(report.files, 'files')} in {counted(len(report.partitions), 'partitions')} "
              f"({counted(report.runs, 'runs')}): "
              f"{len(report.catalogued)} catalogued, {len(report.quarantined)} quarantined, "
              f"{len(report.failed)} failed, {len(report.refused) - len(report.folders_refused)} refused"
              + (f"; {counted(len(report.folders_refused), 'folders')} not read" if report.folders_refused else ""))
        if report.unchanged:
            print(f"{report.unchanged} of them unchanged since an earlier ingest: not taken again")
        if imageless := without_images(home, report):
            print(f"{counted(len(imageless), 'catalogued files')} with no image HDU (spectra or tables): "
                  "in the catalog's files table, not in images")
            for location in imageless[:20]:
                print(f"  no image: {one_line(location)}")
            if len(imageless) > 20:
                print(f"  ... and {len(imageless) - 20} more")
        for location, name in list(report.renamed.items())[:20]:
            print(f"  stored as {one_line(name)}: {one_line(location)} (its own name is unsafe, too long, or "
                  "taken by another file of its observation)")
        if len(report.renamed) > 20:
            print(f"  ... and {len(report.renamed) - 20} more stored under another name (the files table's "
                  "file_name and path)")
        for key, locations in report.left.items():
            print(f"{counted(len(locations), 'files')} left {key} for another partition (the observation id in "
                  f"the header changed, or there is none and the file is now keyed by its path): {key} catalogued "
                  "again without them")
            for location in locations[:20]:
                print(f"  left {key}: {one_line(location)}")
            if len(locations) > 20:
                print(f"  ... and {len(locations) - 20} more")
        for what, files in (("quarantined", report.quarantined), ("failed", report.failed),
                            ("refused", report.refused)):
            for location, reason in list(files.items())[:20]:
                print(f"  {what}: {one_line(location)}: {one_line(reason)}", file=sys.stderr)
            if len(files) > 20:
                print(f"  ... and {len(files) - 20} more {what} (see {home.quarantine})", file=sys.stderr)
        if not report.partitions and not report.left:  # nothing taken: nothing downstream to bring up to date
            print(("no FITS file taken from " if report.refused else "no FITS files found in ")
                  + ", ".join(paths), file=sys.stderr)
            return 1
        if args.catalog_only:
            print("quality, targets, products and catalog.duckdb follow when the daemon runs (skyassets dev)")
            return 0 if report.ok else 1
        ready = home.tables.written("image_metadata", list(dict.fromkeys([*report.partitions, *report.left])))
        run_config = home_run_config(home)
        published_before = latest_storage_id(instance, "catalog")
        downstream = bring_up_to_date(launcher, home, ready, run_config)
        republished = latest_storage_id(instance, "catalog") != published_before
    unusable = unusable_images(home, ready)
    for image, reason in list(unusable.items())[:20]:
        print(f"  not usable: {one_line(image)}: {one_line(reason)}", file=sys.stderr)
    if len(unusable) > 20:
        print(f"  ... and {len(unusable) - 20} more not usable (skyassets catalog \"SELECT * FROM quality "
              "WHERE NOT usable\")", file=sys.stderr)
    if unusable:
        print(f"{counted(len(unusable), 'images')} catalogued but not usable: left out of targets and products",
              file=sys.stderr)
    if downstream is None or downstream:
        failed = "the catalog could not be published" if downstream is None else f"{counted(downstream, 'runs')} failed"
        print(f"{failed}; see them in the Dagster UI (skyassets dev)", file=sys.stderr)
        return 1
    print(f"catalog {'published' if republished else 'up to date'}: {home.url('catalog.duckdb')}")
    return 0 if report.ok and not unusable else 1


def _catalogued_home() -> Home:
    """The home of a command that reads the catalogue; one that holds none is said to be empty,
    not read as a catalogue of nothing (a command run outside the project folder)."""
    home = Home.from_env()
    if not home.holds_catalogue():
        where = home.storage or home.root
        raise CommandError(f"no catalogue in {where}: run skyassets demo or ingest there first, "
                           f"or point {STORAGE_ENV if home.storage else HOME_ENV} at the home", 1)
    return home


def _store_trouble(exc: BaseException) -> str | None:
    """A store that cannot be reached or read (down, a wrong endpoint, no such bucket, refused
    credentials), in one line; None for any other error."""
    storage = os.environ.get(STORAGE_ENV)
    botocore = sys.modules.get("botocore.exceptions")
    kinds: tuple[type[BaseException], ...] = (StorageError,)
    if botocore is not None:
        kinds += (botocore.BotoCoreError, botocore.ClientError)
    # pyarrow's S3 filesystem raises plain OSErrors, each naming the bucket it could not read
    if isinstance(exc, kinds) or (storage and isinstance(exc, OSError) and " bucket " in str(exc)):
        return f"the store {storage} cannot be read: {one_line(str(exc))}" if storage else one_line(str(exc))
    return None


READING_PRAGMAS = frozenset({"version", "platform", "show_tables", "show_tables_expanded", "show_databases",
                             "table_info", "database_list", "database_size", "storage_info", "metadata_info",
                             "functions", "collations", "user_agent"})
"""The PRAGMAs a query may be: those that only describe the catalogue or DuckDB."""
QUERIES = "SELECT, WITH, VALUES, FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN, or a PRAGMA that reads"


def _only_a_query(sql: str) -> None:
    """Refuse SQL that is not one statement reading the catalogue: a COPY or EXPORT would write into
    the home (or anywhere), a SET or ATTACH change what later statements read, and of several
    statements only the last one's answer would be shown."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise _query_failed(exc) from exc
    if not statements:  # only blanks, comments or semicolons
        raise CommandError("the query is empty")
    if len(statements) > 1:
        raise CommandError(f"only queries, one at a time: this is {len(statements)} statements")
    (statement,) = statements
    text = statement.query
    tokens = duckdb.tokenize(text)
    ends = [start for start, _ in tokens[1:]] + [len(text)]
    words = [text[start:end].strip().lower() for (start, kind), end in zip(tokens, ends, strict=True)
             if kind != duckdb.token_type.comment]
    kind = statement.type
    if kind == duckdb.StatementType.SELECT:
        return
    if kind == duckdb.StatementType.EXPLAIN:
        if not {"analyze", "analyse"} & set(words):  # EXPLAIN ANALYZE runs the statement it explains
            return
        what = "EXPLAIN ANALYZE"
    elif kind == duckdb.StatementType.PRAGMA:
        if words[1:2] and words[1] in READING_PRAGMAS:
            return
        what = f"PRAGMA {words[1] if words[1:2] else ''}".strip()
    elif kind == duckdb.StatementType.LOAD:  # DuckDB's one type for INSTALL, FORCE INSTALL and LOAD
        what = " ".join(words[:2] if words[:2] == ["force", "install"] else words[:1]).upper()
    else:
        what = kind.name
    raise CommandError(f"only queries ({QUERIES}), not {what}")


def _query(home: Home, sql: str):
    """The frame a SQL query on the catalogue returns; a bad query is a ``CommandError`` naming the problem."""
    import duckdb

    from skyassets.catalog.db import connect

    _only_a_query(sql)
    try:
        return connect(home).execute(sql).df()
    except duckdb.Error as exc:
        raise _query_failed(exc) from exc


def _query_failed(exc: Exception) -> CommandError:
    """A query DuckDB refused, in one line: the first of its message."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CommandError(f"the query failed: {first}")


_NUMBERS = frozenset({"tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint", "usmallint", "uinteger",
                      "ubigint", "uhugeint", "float", "double", "decimal"})
_AS_TEXT = frozenset({"date", "time", "time with time zone", "time_ns", "timestamp", "timestamp with time zone",
                      "timestamp_s", "timestamp_ms", "timestamp_ns", "interval"})
"""Types printed in DuckDB's own words: Python's would lose a TIMESTAMP_NS's nanoseconds, an
INTERVAL's months, and turn an infinite date into a year 9999."""
FETCH_ROWS = 10_000
"""Rows a query's answer is streamed by: those past ``--max-rows`` are counted, then dropped."""


def _unique(names: Sequence[str]) -> list[str]:
    """Column names made distinct as DuckDB's own data frames make them: ``a``, ``a_1``, ``a_2``."""
    taken: set[str] = set()
    out = []
    for name in names:
        new, k = name, 0
        while new in taken:
            k += 1
            new = f"{name}_{k}"
        taken.add(new)
        out.append(new)
    return out


def _fetched(home: Home, sql: str, limit: int, *, unless_named: Sequence[str] = ()
             ) -> tuple[pd.DataFrame, list[bool], int]:
    """The first ``limit`` rows of a query (0: all) with DuckDB's own values (a HUGEINT whole, a
    DECIMAL exact, dates and times in DuckDB's words), whether each column holds numbers, and how
    many rows it gave. Columns named in ``unless_named`` are left out unless the query names them.

    Rows past the limit are counted a chunk at a time, never held: a query of millions of sources
    shows its first rows in the memory they take."""
    import duckdb
    import pandas as pd

    from skyassets.catalog.db import connect

    _only_a_query(sql)
    left_out = {c for c in unless_named if c not in sql.lower()}
    try:
        relation = connect(home).sql(sql)
        names, kinds = _unique(relation.columns), [t.id for t in relation.types]
        kept = [i for i, name in enumerate(relation.columns) if name not in left_out]
        rows: list[tuple] = []
        if kept:
            shown = relation.project(", ".join(
                (f"CAST(#{i + 1} AS VARCHAR)" if kinds[i] in _AS_TEXT else f"#{i + 1}") + ' AS "'
                + names[i].replace('"', '""') + '"' for i in kept))
            stream = shown.iter_rows(batch_size=FETCH_ROWS)
            rows = list(itertools.islice(stream, min(limit, sys.maxsize) or None))  # past maxsize: all
            total = len(rows) + sum(1 for _ in stream)
        else:
            total = 0
    except duckdb.Error as exc:
        raise _query_failed(exc) from exc
    frame = pd.DataFrame(rows, columns=[names[i] for i in kept], dtype=object)
    return frame, [kinds[i] in _NUMBERS for i in kept], total


def _catalog(args: argparse.Namespace) -> int:
    # a whole FITS header per row, shown only when asked for by name
    frame, numeric, total = _fetched(_catalogued_home(), args.sql, args.max_rows, unless_named=["header_json"])
    write_frame(frame, args.format, sys.stdout, numeric=numeric)
    if args.max_rows and total > args.max_rows:
        print(f"({total} rows, {args.max_rows} shown; --max-rows 0 shows all)", file=sys.stderr)
    return 0


def _resolver_server(home: Home) -> str:
    """The name resolver of the archive the watchlist is searched in (``SKYASSETS_MAST_URL``): the
    emulator's for the emulator, so that ``--resolve`` places names offline as the watchlist's
    target searches do; MAST's own for MAST."""
    from skyassets.archive.client import is_real_mast
    from skyassets.catalog.find import MAST_RESOLVER
    from skyassets.defs.resources import archive_resource

    server = archive_resource().endpoints(home)[0]
    return MAST_RESOLVER if is_real_mast(server) else server


def _resolver_named() -> str:
    """The resolver ``--resolve`` would ask, named without starting the emulator for it."""
    from skyassets.archive.client import is_real_mast
    from skyassets.defs.resources import EMULATOR, archive_resource

    url = archive_resource().url
    if url == EMULATOR:
        return "the built-in archive emulator's name resolver (SKYASSETS_MAST_URL names another archive)"
    return "MAST's name resolver" if is_real_mast(url) else f"the name resolver of {url}"


def _find(args: argparse.Namespace) -> int:
    from skyassets.catalog.db import CatalogError, connect
    from skyassets.catalog.find import UnknownTarget, find, mast_resolver

    home = _catalogued_home()
    try:
        frame = find(connect(home), args.question, args.k, by=args.by, mode=args.mode,
                     resolve=mast_resolver(_resolver_server(home)) if args.resolve else None)
    except UnknownTarget as exc:
        raise CommandError(exc.said("--resolve", _resolver_named()), 1) from exc
    except (CatalogError, ValueError) as exc:
        raise CommandError(str(exc).strip().splitlines()[0]) from exc
    if frame.empty:
        print(f"nothing in the catalog matches {args.question!r}", file=sys.stderr)
        return 1
    if args.format in ("csv", "json"):
        write_frame(frame, args.format, sys.stdout)
    else:
        why = frame.pop("why")
        write_frame(frame.drop(columns=["path"], errors="ignore").round({"score": 6}), "table", sys.stdout)
        print(f"\nwhy #1: {why.iloc[0]}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from skyassets.catalog.export import ExportError, NothingExported, export_files

    home = _catalogued_home()
    selection = _query(home, args.sql)
    try:
        done = export_files(selection, home, Path(args.dest), args.sql, as_zip=args.zip, force=args.force)
    except NothingExported as exc:  # each file named with its reason, as when some are exported
        _not_exported(exc.skipped, exc.missing)
        print("nothing exported", file=sys.stderr)
        return 1
    except ExportError as exc:
        raise CommandError(str(exc)) from exc
    what = "one archive" if args.zip else "a folder"
    print(f"{counted(done.files, 'files')} ({done.bytes / 1e6:.1f} MB) exported to {what}: {done.dest}")
    if done.removed:
        print(f"{counted(len(done.removed), 'files')} of the earlier export there, not selected now, removed "
              f"(e.g. {done.removed[0]})")
    _not_exported(done.skipped, done.missing)
    if args.zip:
        print(f"check them with: cd {shlex.quote(str(done.dest.parent))} && unzip {shlex.quote(done.dest.name)} && "
              f"cd {shlex.quote(done.dest.stem)} && sha256sum -c SHA256SUMS")
    else:
        print(f"check them with: cd {shlex.quote(str(done.dest))} && sha256sum -c SHA256SUMS")
    return 1 if done.skipped or done.missing else 0


def _not_exported(skipped: dict[str, str], missing: dict[str, str]) -> None:
    """Name each file an export left out, with its reason, on stderr, then count them."""
    for kind, said in (("skipped", skipped), ("missing", missing)):
        for path, why in list(said.items())[:20]:
            print(f"  {kind}: {one_line(path)}: {one_line(why)}", file=sys.stderr)
        if len(said) > 20:
            print(f"  ... and {len(said) - 20} more {kind}", file=sys.stderr)
    if skipped or missing:
        print(f"not exported: {len(skipped)} skipped (not files to ship), "
              f"{len(missing)} missing from the home (named on stderr)")


def _bounded(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``, so a nonsensical count is a usage error."""

    def number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{value} is not {f'from {low} to {high}' if high is not None else f'{low} or more'}")
        return value

    return number


def _known(names: list[str], what: str) -> str:
    """A short list of the known ``what`` for an error message."""
    if not names:
        return f"no {what} yet"
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    return f"known {what}: {shown}"


def _quality(args: argparse.Namespace) -> int:
    from skyassets.imaging.quality import SCORE_COLUMNS
    from skyassets.lake.names import InvalidNameError

    lake = _catalogued_home().tables
    try:
        path = lake.path("image_quality", args.obs_id)
    except InvalidNameError as exc:
        raise CommandError(f"not an observation id: {exc}") from exc
    known = sorted(set(lake.partitions("image_metadata")) | set(lake.partitions("mast_products")))
    if args.obs_id not in known:
        found = (lake.read("mast_observations", columns=["obs_id"])["obs_id"].tolist()
                 if lake.exists("mast_observations") else [])
        same = [o for o in dict.fromkeys([*known, *found]) if o.casefold() == args.obs_id.casefold()]
        if len(same) == 1 and same[0] != args.obs_id:  # HST ids are upper case, their files lower case
            args.obs_id = same[0]
            return _quality(args)
        if args.obs_id in found:
            raise CommandError(f"observation {args.obs_id} was found by the watchlist but has no product list or "
                               "files here yet: its run has not run or failed (see observation_job's runs in the "
                               "Dagster UI; skyassets demo tries failed observations again)", 1)
        raise CommandError(f"observation {args.obs_id} does not exist in this home; {_known(known, 'observations')}", 1)
    if not lake.exists("image_quality", args.obs_id) and lake.exists("image_metadata", args.obs_id) and not len(
            lake.read("image_metadata", args.obs_id, columns=["obs_id"])):
        print(f"{args.obs_id}: no images to measure (its files were quarantined, hold no image HDU, or now belong "
              "to another observation; the files table lists them)")
        return 0
    if not lake.exists("image_quality", args.obs_id):
        print(
            f"no quality measured for {args.obs_id} yet ({path} is missing): materialise image_quality for "
            "this partition in the Dagster UI, or run quality_job",
            file=sys.stderr,
        )
        return 1
    # worst first, as one reads a report to find what to look at: no score at all, then the lowest;
    # ties in file and HDU order, so that the same images are always listed the same way
    rows = lake.read("image_quality", args.obs_id).sort_values(
        ["score", "file_name", "hdu_index"], na_position="first", kind="stable")
    catalogued = (len(lake.read("image_metadata", args.obs_id, columns=["obs_id"]))
                  if lake.exists("image_metadata", args.obs_id) else 0)
    if len(rows) < catalogued:  # images catalogued since it was measured
        print(f"{args.obs_id}: {counted(catalogued - len(rows), 'images')} catalogued since its quality was measured: "
              "materialise image_quality for this partition in the Dagster UI, or run quality_job", file=sys.stderr)
        if rows.empty:
            return 1
    if rows.empty:
        print(f"{args.obs_id}: no images (its files were quarantined, hold no image HDU, or now belong to another "
              "observation; the files table lists them)")
        return 0
    counts = sorted(rows["flag"].value_counts().items(), key=lambda flag_n: (-flag_n[1], flag_n[0]))
    flags = ", ".join(f"{n} {flag}" for flag, n in counts)
    print(f"{args.obs_id}: {counted(len(rows), 'images')}, {flags}")
    for r in rows.to_dict("records"):
        v = {k: _shown(x) for k, x in r.items()}
        subs = "  ".join(
            f"{c.removeprefix('score_')} {_shown(r[c], '.0f')}" for c in SCORE_COLUMNS if c.startswith("score_")
        )
        print(f"\n{v['file_name']}[{v['hdu_index']}]  {v['instrument_name']} {v['filter']}")
        reason = "; " + v["flag_reason"] if v["flag_reason"] != "-" else ""
        print(f"  score {_shown(r['score'], '.0f')} ({v['flag']}{reason})  {subs}")
        if v["problem"] != "-":
            print(f"  problem: {v['problem']}")
        print(
            f"  background {_shown(r['background'], '.4g')} ± {_shown(r['background_rms'], '.3g')} "
            f"({v['background_method']}), "
            f"{v['n_sources']} sources ({v['n_cosmic_rays']} cosmic rays), {v['n_stars_fitted']} stars fitted"
        )
        print(
            f"  FWHM {_shown(r['fwhm_arcsec'], '.3f')}\" ({_shown(r['fwhm_pix'], '.2f')} px), "
            f"ellipticity {_shown(r['ellipticity'], '.3f')}, 5σ depth {_shown(r['depth_5sigma_ab'], '.2f')} AB"
        )
        print(
            f"  NaN {_shown(r['frac_nan'], '.2%')}  zero {_shown(r['frac_zero'], '.2%')}  "
            f"saturated {_shown(r['frac_saturated'], '.2%')}  DQ-flagged {_shown(r['frac_dq_flagged'], '.2%')}  "
            f"pixel scale {_shown(r['pixel_scale'], '.4f')}\" (nominal {_shown(r['pixel_scale_nominal'], '.4f')}\")"
            + (f"  header {v['header_flags']}" if v["header_flags"] != "-" else "")
        )
    return 0


def _shown(value: object, spec: str = "") -> str:
    """A value for the report; missing ones (None, NaN, empty) as a dash."""
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec)


def _folded(name: str) -> str:
    """A target name as a person may type it: case, spaces and punctuation aside ("ngc 3132")."""
    return "".join(c for c in name.casefold() if c.isalnum())


def _named_in_index(home: Home, name: str, targets: list[str]) -> list[str]:
    """The targets of ``targets`` that ``name`` names by another name the catalog holds for them (a
    watchlist entry's "M74", the observer's "NGC628"), as ``find`` reads a target's name."""
    from skyassets.catalog.db import CatalogError
    from skyassets.catalog.find import load_index, targets_named

    try:
        index = load_index(home.search, with_vectors=False) if name.strip() else None
    except (CatalogError, OSError, ValueError):  # no usable index: the target's own names only
        index = None
    if index is None:
        return []
    groups = {_folded(t): t for t in targets}
    found = {groups.get(_folded(target)) for target in targets_named(index, name)}
    return sorted(t for t in found if t is not None)


def _show(args: argparse.Namespace) -> int:
    home = _catalogued_home()
    lake = home.tables
    args.target = " ".join(args.target)  # show ngc 628: the words of one name
    targets = sorted(lake.read("target_groups")["target"].unique()) if lake.exists("target_groups") else []
    if args.target not in targets:  # only a known target's name reaches a path
        matches = [t for t in targets if _folded(t) == _folded(args.target)] or _named_in_index(home, args.target,
                                                                                               targets)
        if len(matches) > 1:
            raise CommandError(f"{args.target!r} names {len(matches)} targets of this home: {', '.join(matches)}; "
                               "show one of them", 1)
        if not matches:
            raise CommandError(f"target {args.target!r} does not exist in this home; "
                               f"{_known(targets, 'targets')}", 1)
        args.target = matches[0]
    if not lake.exists("mosaics", args.target):
        print(f"no products for {args.target} yet: materialise mosaics and composites for it (products_job)",
              file=sys.stderr)
        return 1
    # where the products are stored, as the catalog's abs_path gives them: a URL with a store
    print(f"{args.target}: {home.url(home.target_dir(args.target).relative_to(home.root))}")
    for row in lake.read("mosaics", args.target).to_dict("records"):
        print(f"  mosaic    {row['instrument_name']} {row['filter']}: "
              f"{home.url(row['path'])} ({counted(row['n_inputs'], 'images')})")
    pictures = []
    if lake.exists("composites", args.target):
        for row in lake.read("composites", args.target).to_dict("records"):
            pictures.append(row["png"])
            print(f"  composite {row['recipe']} ({row['filters']}; {row['method']}, {row['stretch']}): "
                  f"{home.url(row['png'])}, {home.url(row['cube'])}")
    if lake.exists("recipes", args.target):
        for row in lake.read("recipes", args.target).to_dict("records"):
            if not row["made"]:
                print(f"  not made  {row['recipe']} ({row['filters']}): {row['note']}")
    if args.open and not pictures:
        raise CommandError(f"--open: {args.target} has no composite to open (only mosaics, listed above)", 1)
    if args.open:
        import webbrowser

        picture = home.local(pictures[0])  # a working copy when the home is on a store
        if not webbrowser.open(picture.as_uri()):  # no display and no BROWSER: said, not passed over
            raise CommandError(f"--open: no browser could be opened (no display, or set BROWSER); open {picture} "
                               "yourself", 1)
    return 0


def _port_free(host: str, port: int) -> None:
    """Say at once that the UI's address is taken or not this machine's: `dagster dev` would
    announce it as served, then go on with its daemon and no UI."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CommandError(f"--host {host}: not an address of this machine ({exc.strerror})", 2) from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the webserver binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise CommandError(f"cannot serve the UI on {host}:{port}: {exc.strerror}; choose another with -p PORT "
                               "(or -h HOST)", 1) from exc


# The daemon that runs again a run whose process died (run_retries) keeps, in the instance, the last
# event it read of each of these types; on its first start it has none, starts from the latest and
# says so in a warning nobody can act on. `skyassets dev` sets them to the same place beforehand.
RUN_RETRY_EVENTS = ("RUN_FAILURE", "RUN_SUCCESS")


def run_retry_cursor(event_type: str) -> str:
    """The name under which the run-retry daemon keeps its cursor of ``event_type`` (a member name)."""
    from dagster import DagsterEventType

    return f"EVENT_LOG_CONSUMER_CURSOR-{DagsterEventType[event_type].value}"


def start_run_retries_from_now(instance: DagsterInstance) -> None:
    """The run-retry daemon's cursors, where it would put them itself: past every run end recorded so
    far (a run that failed before it ever ran is not retried), unless it has its own already."""
    from dagster import DagsterEventType

    storage = instance.daemon_cursor_storage
    keys = {event_type: run_retry_cursor(event_type) for event_type in RUN_RETRY_EVENTS}
    have = storage.get_cursor_values(set(keys.values()))
    seeds = {}
    for event_type, key in keys.items():
        if have.get(key) is None:
            latest = instance.fetch_run_status_changes(DagsterEventType[event_type], limit=1).records
            seeds[key] = str(latest[0].storage_id if latest else 0)
    if seeds:
        storage.set_cursor_values(seeds)


def _dev(args: argparse.Namespace) -> int:
    """``dagster dev`` on this home's instance, started from ``$DAGSTER_HOME`` (a ``dagster.yaml`` in
    the folder it is started from would otherwise draw a warning), the code location working in the
    user's folder; ``dagster dev``'s notice that ``dg dev`` supersedes it is left out."""
    from dagster import DagsterInstance

    from skyassets.cli.launch import code_location_workspace
    from skyassets.defs.resources import check_settings

    _port_free(args.host, args.port)
    check_settings()  # else a code location that fails to load, seen only in the UI
    try:  # the UI starts even so: its runs say the same, and the watchlist can be mended while it runs
        _check_watchlist("dev")
    except CommandError as exc:
        print(f"skyassets dev: warning: {exc} (the watchlist query says so until it is mended)", file=sys.stderr)
    home = Home.from_env()
    dagster_home = prepare_dagster_home(home)
    held = _one_dev_per_home(dagster_home, f"http://{args.host}:{args.port}")
    with DagsterInstance.get() as instance:
        start_run_retries_from_now(instance)
    os.environ[HOME_ENV] = str(home.root)
    extra = list(args.dagster_args)
    if "--" in extra:  # the end of skyassets' options; dagster dev would read what follows as arguments
        extra.remove("--")
    where = ["--host", args.host, "--port", str(args.port)]
    workspace = code_location_workspace(dagster_home, working_directory=os.getcwd())
    command = [sys.executable, "-W", "ignore:Function `dev_command` is superseded", "-m", "dagster", "dev",
               "-w", str(workspace), *where, *extra]
    os.chdir(dagster_home)
    # Started in the background by a script, SIGINT arrives ignored, and dagster dev maps SIGTERM to
    # SIGINT's handler: it would then ignore `kill` too. With the default, both stop it and its children.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(sys.executable, command)
    held.close()  # reached only where execv does not replace this process
    return 0


DEV_LOCK = ".skyassets-dev.lock"


def _one_dev_per_home(dagster_home: Path, url: str) -> IO[str]:
    """Take the home's ``dev`` lock for as long as ``dagster dev`` runs (its handle is kept open across
    the exec, and the lock goes with the process): a second ``skyassets dev`` on the home would start
    a second daemon, whose sensors and automation would launch every run twice."""
    from datetime import UTC, datetime

    handle = open(dagster_home / DEV_LOCK, "a+")  # noqa: SIM115 - kept open for dagster dev's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise CommandError(f"already running on this home ({holder}); open it, or stop it first", 1) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, {url}, since {datetime.now(UTC).isoformat(timespec='seconds')}\n")
    handle.flush()
    os.set_inheritable(handle.fileno(), True)
    return handle


def run(argv: list[str]) -> int:
    """Parse the command line and run its command; its errors are one line on stderr and an exit status."""
    import warnings

    from dagster import BetaWarning

    from skyassets.settings import SettingError

    warnings.filterwarnings("ignore", category=BetaWarning)  # backfill policies; nothing a user can act on
    parser = argparse.ArgumentParser(prog="skyassets", description="run the pipeline end to end, query the "
                                     "catalogue, or open it in the Dagster UI")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "demo", help="run the whole pipeline once, offline, on the built-in archive emulator"
    ).set_defaults(func=_demo)
    ingest = commands.add_parser(
        "ingest", help="catalogue local FITS files or folders, then measure, group and publish as the daemon would; "
        "exits 1 if no FITS file was found, any file was refused, quarantined or failed, or an image is not usable",
    )
    ingest.add_argument("paths", nargs="+", help="FITS files or folders (searched recursively)")
    ingest.add_argument("--batch", type=_bounded(1, MAX_BATCH), default=MAX_BATCH,
                        help=f"at most this many partitions per run (1 to {MAX_BATCH}, default {MAX_BATCH})")
    ingest.add_argument("--catalog-only", action="store_true",
                        help="only copy and catalogue; leave quality, targets, products and the catalog to the daemon")
    ingest.set_defaults(func=_ingest)
    query = commands.add_parser("catalog", help="print the result of a SQL query on the catalogue")
    query.add_argument("sql", help='one query, e.g. "SELECT obs_id, filter, s_ra, s_dec FROM images" (images\' '
                                   'whole FITS header, header_json, is shown only when the query names it); '
                                   f'only {QUERIES}')
    query.add_argument("--format", choices=("table", "csv", "json"), default="table",
                       help="table (default, full-width values), csv, or json (one object per line)")
    query.add_argument("--max-rows", type=_bounded(0), default=100, help="rows shown at most (default 100; 0: all)")
    query.set_defaults(func=_catalog)
    quality = commands.add_parser("quality", help="print the quality report of an observation: its images worst "
                                  "first (unmeasured, then lowest score), ties by file name and HDU")
    quality.add_argument("obs_id", help="the observation (partition) id")
    quality.set_defaults(func=_quality)
    show = commands.add_parser("show", help="list (or open) the mosaics and composites of a target")
    show.add_argument("target", nargs="+", help="the target (partition) key, e.g. NGC-3132, or any name find "
                                                "takes (ngc 628, quoted or not)")
    show.add_argument("--open", action="store_true", help="open the best-ranked composite in the browser "
                      "(exits 1, naming the file to open, if there is none or no browser can be opened)")
    show.set_defaults(func=_show)
    found = commands.add_parser("find", help="the catalogue's best images for a question in words")
    found.add_argument("question", help='e.g. "deep NIRCam images of NGC 3132 in the reddest filter"')
    found.add_argument("-k", type=int, default=20, help="results shown (default 20)")
    found.add_argument("--by", choices=("images", "observations", "targets", "products"), default="images",
                       help="one row per image (default), observation, product file, or target (its observations "
                       "and images counted, their instruments, filters and dates)")
    found.add_argument("--mode", choices=("fusion", "lexical", "embedding"), default="fusion",
                       help="ranking: BM25 fused with embeddings when a model is installed (default), or one alone")
    found.add_argument("--resolve", action="store_true",
                       help="ask the name resolver of the archive SKYASSETS_MAST_URL names (the emulator's by "
                            "default, MAST's for MAST) for targets the catalogue does not name")
    found.add_argument("--format", choices=("table", "csv", "json"), default="table",
                       help="table (default), csv, or json (one object per line)")
    found.set_defaults(func=_find)
    export = commands.add_parser("export", help="copy the files a SQL query selects, with a manifest")
    export.add_argument("sql", help="a query returning a 'path' column, e.g. SELECT * FROM cone(83.6, 22.0, 0.1)")
    export.add_argument("dest", help="a new or empty folder outside the skyassets home to copy into "
                        "(with --zip: the archive to write, .zip added)")
    export.add_argument("--zip", action="store_true", help="write one ZIP archive, the manifest inside")
    export.add_argument("--force", action="store_true",
                        help="write into a folder that is not empty (files of the same names are replaced, "
                        "others left beside the export), or replace an existing archive")
    export.set_defaults(func=_export)
    add_sky_command(commands)
    dev = commands.add_parser(
        "dev", help="open the pipeline in the Dagster UI (dagster dev)", add_help=False,
        usage="%(prog)s [--help] [-h HOST] [-p PORT] [DAGSTER DEV OPTIONS ...]",
        description="dagster dev on this home's instance",
        epilog="Any other option goes on to `dagster dev` as given (e.g. --log-level debug), "
        "and so does everything after --.",
    )
    dev.add_argument("--help", action="help", help="show this help and exit")
    dev.add_argument("-h", "--host", default="127.0.0.1", help="address the UI listens on (default 127.0.0.1)")
    dev.add_argument("-p", "--port", type=_bounded(1, 65535), default=3000,
                     help="port the UI listens on (default 3000)")
    dev.set_defaults(func=_dev)
    args, rest = parser.parse_known_args(argv)
    if args.command == "dev":
        args.dagster_args = rest
    elif rest:  # as parse_args says it
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except CommandError as exc:
        print(f"skyassets {args.command}: {exc}", file=sys.stderr)
        return exc.status
    except SettingError as exc:  # a setting mistyped: as a usage error
        print(f"skyassets {args.command}: {exc}", file=sys.stderr)
        return 2
    except SkyError as exc:
        print(f"skyassets {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (``| head``): the rest of the output has nowhere to go
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if (trouble := _store_trouble(exc)) is not None:
            print(f"skyassets {args.command}: {trouble}", file=sys.stderr)
            return 1
        launch = sys.modules.get("skyassets.cli.launch")  # imported by the commands that launch runs only
        if launch is None or not isinstance(exc, launch.LaunchError):
            raise
        print(f"skyassets {args.command}: {exc}", file=sys.stderr)
        return 1

