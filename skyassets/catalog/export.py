"""Copying the files a catalogue query selects, with a manifest and a record of the query.

Only what skyassets keeps for users leaves the home: catalogued files (``files/``) and products
(``products/``), never the Dagster run database, landing records or anything a link points at.
The export is a folder or, with ``as_zip=True``, one ZIP archive written as it streams (each file read
once: copied and hashed together), with the manifest inside either way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import stat
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import pandas as pd

from skyassets.archive.download import RESERVED_SUFFIXES
from skyassets.lake.home import Home, StorageError
from skyassets.lake.names import InvalidNameError, safe_filename, validate_obs_id
from skyassets.lake.quarantine import notes as quarantine_notes
from skyassets.lake.schemas import home_relative_columns
from skyassets.lake.tables import TABLES

CHUNK = 8 << 20
EXPORTABLE = ("files", "products")  # the home's folders an export may read from
SUMS = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` checks an export
RECORDS = (SUMS, "manifest.csv", "README.md")  # written beside the exported files
# Columns other than ``path`` that name a file of the home (a composite's PNG and TIFF cube).
LOCATED = sorted({c for t in TABLES.values() for c in home_relative_columns(t.schema)} - {"path"})


class ExportError(ValueError):
    """A selection that cannot be exported as asked; the message names the file and the reason."""


class NothingExported(ExportError):
    """Files were selected and none of them can be shipped: each with its reason, as an export that
    ships some of them says of the others."""

    def __init__(self, skipped: dict[str, str], missing: dict[str, str]):
        first, why = next(iter({**skipped, **missing}.items()))
        super().__init__(f"none of the {len(skipped) + len(missing)} selected files can be exported "
                         f"({first}: {why}); nothing exported")
        self.skipped, self.missing = skipped, missing


@dataclass(frozen=True)
class Exported:
    """What an export wrote."""

    dest: Path
    files: int
    bytes: int
    # selected files not in the home (removed, quarantined, never stored): path -> why
    missing: dict[str, str] = field(default_factory=dict)
    # selected paths that are not files to ship (a folder, a download's working file, an unsafe name): path -> why
    skipped: dict[str, str] = field(default_factory=dict)
    # files of an earlier export into the same folder (its manifest's) that this one did not write, removed
    removed: list[str] = field(default_factory=list)


def _place(source: Path, home: Home) -> PurePosixPath | None:
    """Where ``source`` (resolved) is in the home, e.g. ``files/JWST/<obs_id>/<name>``, if it is in a
    folder an export reads from (which may be a link to another disk)."""
    for folder in EXPORTABLE:
        top = (home.root / folder).resolve()
        if source.is_relative_to(top):
            return PurePosixPath(folder, source.relative_to(top).as_posix())
    return None


def _sources(selection: pd.DataFrame, home: Home) -> Iterator[tuple[str, Path]]:
    """(catalogue path, resolved file) of each distinct file, refusing anything outside the exportable
    folders: a path of the catalogue is never trusted to stay in the home (``..``, an absolute path, a link)."""
    seen: set[Path] = set()
    for path in dict.fromkeys(p for p in selection["path"] if isinstance(p, str) and p):
        source = (home.root / path).resolve()
        if _place(source, home) is None:
            raise ExportError(f"{path}: not a catalogued file or product of the skyassets home {home.root}")
        if source not in seen:  # two spellings of one file: exported once
            seen.add(source)
            yield path, source


def _names(sources: list[tuple[str, Path]], home: Home) -> list[str]:
    """Each file's name in the export: its folder and name in the home, ``<obs_id>/<file_name>`` (a
    product: ``<target>/<file_name>``), so that files of the same name from different observations
    never clash and a file's name does not depend on what else was selected. Files that would still
    share one (an observation and a target of the same name) keep their whole path in the home."""
    places = [_place(source, home) for _, source in sources]
    short = [PurePosixPath(*place.parts[-2:]).as_posix() for place in places]
    counts = Counter(short)
    return [name if counts[name] == 1 and name.split("/")[0] not in RECORDS else place.as_posix()
            for name, place in zip(short, places, strict=True)]


def _check_folders(dest: Path, names: list[str]) -> None:
    """Refuse, before anything is written, a folder of the export that a forced export finds taken by
    a link or a file: a file renamed through a link would land outside ``dest``."""
    for name in names:
        for folder in list(PurePosixPath(name).parents)[-2::-1]:  # outermost first, without "."
            there = dest / folder
            if there.is_symlink() or (there.exists() and not there.is_dir()):
                raise ExportError(f"{there}: is in the way of the export's folder {folder}/ "
                                  "(a link or a file); move it, or export to a new folder")


def _present(
    sources: list[tuple[str, Path]], selection: pd.DataFrame, home: Home, expected: dict[str, str]
) -> tuple[list[tuple[str, Path]], dict[str, str], dict[str, str]]:
    """The sources whose file is in the home (on a store home, fetched into the working copy), those
    skipped and those missing, each with why, so an export either has every file it copies or never
    starts copying."""
    present, absent, unfetched, skipped = [], [], {}, {}
    for path, source in sources:
        if source.is_dir():  # a query over folders: there, but not a file to copy
            skipped[path] = "is a folder, not a file"
            continue
        # a query over a folder's listing or a glob selects these beside the data
        if suffix := next((s for s in RESERVED_SUFFIXES if source.name.endswith(s)), None):
            skipped[path] = f"is a {suffix} file the downloads keep beside the data, not data"
            continue
        try:  # a name that would break SHA256SUMS, or mean another folder in an archive unpacked elsewhere
            for part in _place(source, home).parts:
                safe_filename(part)
        except InvalidNameError as exc:
            skipped[path] = f"cannot be named in an export: {exc}"
            continue
        if home.remote and not source.is_file():
            try:
                home.local(path, expected.get(path))
            except (StorageError, ValueError) as exc:
                unfetched[path] = f"not in the store ({exc})"
        if source.is_file():
            present.append((path, source))
        else:
            absent.append(path)
    status = ({p: s for p, s in zip(selection["path"], selection["status"], strict=True)}
              if "status" in selection.columns else _manifest_status(home, absent))
    quarantined = _quarantined(home, absent) if absent else {}
    missing, unsaid = {}, []
    for path in absent:
        said = status.get(path)
        # a quarantine note speaks of a file its manifest does not list as stored since (an old note
        # of a file fetched again and catalogued does not)
        if path in quarantined and said in ("quarantined", _NEVER, "failed", None):
            missing[path] = f"quarantined: {quarantined[path]} (see the home's quarantine folder)"
        elif said == "quarantined":
            missing[path] = "quarantined when it was catalogued (see the home's quarantine folder)"
        elif said in (_NEVER, "failed"):  # a landing or products row whose file never arrived
            missing[path] = "never stored in the home (not fetched or copied yet, or refused)"
        else:
            unsaid.append(path)
    catalogued = _catalogued(home, unsaid) if unsaid else set()
    for path in unsaid:  # one no table names was written by hand, or is of another home
        missing[path] = (unfetched.get(path, "no longer in the home (removed since it was catalogued)")
                         if path in catalogued else "not a catalogued file (no table of the catalog names it)")
    return present, skipped, {path: missing[path] for path in absent}


_NEVER = "never stored"


def _catalogued(home: Home, paths: list[str]) -> set[str]:
    """Those of ``paths`` a table of the catalog names as a file of the home (in any of its path
    columns): a file missing from the home that none names was never catalogued, not removed since."""
    from skyassets.catalog.db import ABSOLUTE, SOURCES, connect

    located = {table: columns for table, columns in ABSOLUTE.items() if columns and table in SOURCES}
    con = connect(home, tables=list(located))
    try:
        held = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables "
                                              "WHERE table_schema = 'main'").fetchall()}  # views too
        con.register("wanted", pd.DataFrame({"path": paths}))
        named = " UNION ".join(f'SELECT "{column}" AS path FROM {table}'
                               for table, columns in located.items() if table in held for column in columns)
        return {row[0] for row in con.execute(f"SELECT path FROM wanted WHERE path IN ({named})").fetchall()}
    finally:
        con.close()


def _quarantined(home: Home, paths: list[str]) -> dict[str, str]:
    """Why each of ``paths`` that was moved to the quarantine (its copy refused on arrival or when
    catalogued) was moved, from the newest note of it."""
    wanted, why = set(paths), {}
    roots = {home.root.absolute(), home.root.resolve()}
    for _, note in quarantine_notes(home.quarantine):
        moved_from = Path(str(note.get("original_path", "")))
        for root in roots:
            if moved_from.is_relative_to(root):
                path = moved_from.relative_to(root).as_posix().removesuffix(".corrupt")
                if path in wanted:
                    why[path] = str(note.get("reason") or "no reason noted")
    return why


def _manifest_status(home: Home, paths: list[str]) -> dict[str, str]:
    """The ``fits_files`` status of each of ``paths`` (``files/<collection>/<obs_id>/<name>``) its
    observation's manifest lists, and ``_NEVER`` for those it leaves out or whose observation has
    no manifest (a file listed or landed, never fetched). Other paths have no status."""
    keyed = {}
    for path in paths:
        parts = path.split("/")
        if len(parts) == 4 and parts[0] == "files":
            try:
                keyed[path] = validate_obs_id(parts[2])
            except InvalidNameError:  # no observation's folder: nothing to say of it
                continue
    manifests = home.tables.read_partitions("fits_files", sorted(set(keyed.values())), columns=["path", "status"])
    listed = {p: s for table in manifests.values()
              for p, s in zip(table.column("path").to_pylist(), table.column("status").to_pylist(), strict=True)}
    return {p: listed.get(p, _NEVER) for p in keyed}


def _check_dest(dest: Path, home: Home, *, as_zip: bool, force: bool) -> None:
    """Refuse, before anything is written, a destination that could overwrite the home's files or the user's.

    Writing into the home could truncate the very file being copied; a non-empty folder may hold the
    user's own README.md or manifest.csv, and older files that the new SHA256SUMS would not list.
    """
    root = home.root.resolve()
    if dest.resolve().is_relative_to(root):
        raise ExportError(f"{dest}: inside the skyassets home {root}; export to a folder outside it")
    if as_zip:
        if dest.is_dir():
            raise ExportError(f"{dest}: is a folder, not an archive")
        if dest.exists() and not force:
            raise ExportError(f"{dest}: already exists; choose a new name, or force (--force) to replace it")
    elif dest.exists() or dest.is_symlink():
        if not dest.is_dir():
            raise ExportError(f"{dest}: exists and is not a folder")
        if any(dest.iterdir()) and not force:
            raise ExportError(f"{dest}: the folder is not empty; choose a new or empty one, "
                              "or force (--force) to write into it")


def _create(path: Path) -> io.BufferedWriter:
    """``path`` opened for writing as a new file: a link or second name already there is replaced, never
    written through (it may point at the file being copied)."""
    path.unlink(missing_ok=True)
    return open(path, "xb")


def _open_regular(source: Path, path: str) -> io.BufferedReader:
    """The file opened once, without following a final link, and checked to be a regular file."""
    try:
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ExportError(f"{path}: cannot be read ({exc.strerror})") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ExportError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb")


def _copy(handle: io.BufferedReader, out: io.RawIOBase | io.BufferedIOBase) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
        out.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _readme(home: Home, query: str, count: int, left_out: int) -> str:
    """What the export holds, and of what query: the files it holds, and how many it selected but
    could not ship (missing from the home, not files), which the command named with their reasons."""
    left = f" ({left_out} more selected but not exported: missing from the home, or not files)" if left_out else ""
    return (
        f"# skyassets export\n\n{count} files exported{left} from the catalogue of `{home.root}` "
        f"on {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}, selected by:\n\n```sql\n{query}\n```\n\n"
        "Each file is in a folder named after its observation (a mosaic or composite: its target), "
        "as it is in the home.\n\n"
        f"`{SUMS}` lists each file's SHA-256: `sha256sum -c {SUMS}` checks them. `manifest.csv` says "
        "where each file came from.\n"
    )


def _zip_entry(name: str, mtime: float) -> zipfile.ZipInfo:
    """An archive member dated as its file (a zip cannot date before 1980), compressed."""
    entry = zipfile.ZipInfo(name, date_time=max(time.localtime(mtime)[:6], (1980, 1, 1, 0, 0, 0)))
    entry.compress_type = zipfile.ZIP_DEFLATED
    return entry


def _earlier_export(dest: Path) -> list[Path]:
    """The files an earlier export wrote into ``dest``, as its ``manifest.csv`` names them and as
    they still are: regular files under ``dest`` reached through no link. A name that leads
    elsewhere (``..``, an absolute path, a link on the way) is never taken: the folder is the
    user's, its manifest may have been edited."""
    try:
        with open(dest / "manifest.csv", newline="", encoding="utf-8") as handle:
            names = [row.get("name") or "" for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error):  # none, or not one an export wrote
        return []
    found = []
    for name in names:
        relative = PurePosixPath(name)
        if not name or relative.is_absolute() or ".." in relative.parts or relative.as_posix() in RECORDS:
            continue
        steps = [dest.joinpath(*relative.parts[:i]) for i in range(1, len(relative.parts) + 1)]
        if any(step.is_symlink() for step in steps) or not stat.S_ISREG(_mode(steps[-1])):
            continue
        found.append(steps[-1])
    return found


def _mode(path: Path) -> int:
    try:
        return path.lstat().st_mode
    except OSError:
        return 0


def _remove_earlier(dest: Path, earlier: list[Path], written: set[Path]) -> list[str]:
    """Remove the files of an earlier export that this one did not write, and the folders that held
    only them: the folder then holds what its new manifest lists, as an export into a new one would."""
    removed = []
    for path in earlier:
        if path in written:
            continue
        try:
            path.unlink()
        except OSError:
            continue
        removed.append(path.relative_to(dest).as_posix())
        for folder in path.parents:
            if folder == dest:
                break
            try:
                folder.rmdir()  # only an empty one
            except OSError:
                break
    return removed


def _manifests(rows: list[dict[str, str]]) -> tuple[str, str]:
    sums = "".join(f"{r['sha256']}  {r['name']}\n" for r in rows)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=["name", "sha256", "size", "source"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return sums, table.getvalue()


def export_files(
    selection: pd.DataFrame, home: Home, dest: Path, query: str, *, as_zip: bool = False, force: bool = False
) -> Exported:
    """Copy the files of ``selection`` (a ``path`` column, relative to the home) into ``dest``.

    Each file is read once, its SHA-256 computed as it is copied and checked against the
    catalogue's where the selection has one. ``dest`` is a new or empty folder (any folder with
    ``force``), or with ``as_zip`` a ``.zip`` file written under a temporary name and renamed when
    complete (an existing one replaced only with ``force``). ``dest`` is never inside the home.
    """
    if "path" not in selection.columns:
        returned = ", ".join(map(str, selection.columns)) or "none"
        located = [c for c in selection.columns if c in LOCATED]
        hint = f"; name the files to export as path, e.g. SELECT {located[0]} AS path ..." if located else ""
        raise ExportError("the query must return a 'path' column (e.g. SELECT * FROM images WHERE ...); "
                          f"it returned: {returned}{hint}")
    dest = Path(os.path.abspath(dest))
    if as_zip and dest.suffix != ".zip":
        dest = dest.with_name(dest.name + ".zip")
    tmp = dest.with_name(f".{dest.name}.tmp")  # the archive as it is written
    expected = {}
    if "sha256" in selection.columns:
        expected = {p: s for p, s in zip(selection["path"], selection["sha256"], strict=True) if isinstance(s, str)}
    rows: list[dict[str, str]] = []
    total = 0

    def add(path: str, source: Path, name: str, write: Callable[[str, io.BufferedReader], tuple[str, int]]) -> None:
        nonlocal total
        with _open_regular(source, path) as handle:
            digest, size = write(name, handle)
        if path in expected and expected[path] != digest:
            raise ExportError(f"{path}: SHA-256 {digest} differs from the catalogue's {expected[path]}")
        rows.append({"name": name, "sha256": digest, "size": str(size), "source": path})
        total += size

    try:
        _check_dest(dest, home, as_zip=as_zip, force=force)
        sources = list(_sources(selection, home))
        if not sources:  # an empty SHA256SUMS is one that sha256sum -c refuses
            raise ExportError(f"the query selected no files ({len(selection)} rows, none with a path); "
                              "nothing exported")
        sources, skipped, missing = _present(sources, selection, home, expected)
        if not sources:
            raise NothingExported(skipped, missing)
        names = _names(sources, home)
        if as_zip:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)  # a link left there is replaced, never written through
            try:
                with zipfile.ZipFile(tmp, "x", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
                    top = dest.stem  # one folder inside, so that unzipping never scatters files

                    def into_zip(name: str, handle: io.BufferedReader) -> tuple[str, int]:
                        entry = _zip_entry(f"{top}/{name}", os.fstat(handle.fileno()).st_mtime)
                        with archive.open(entry, "w", force_zip64=True) as out:
                            return _copy(handle, out)

                    for (path, source), name in zip(sources, names, strict=True):
                        add(path, source, name, into_zip)
                    now, readme = time.time(), _readme(home, query, len(rows), len(missing) + len(skipped))
                    for name, text in zip(RECORDS, (*_manifests(rows), readme), strict=True):
                        archive.writestr(_zip_entry(f"{top}/{name}", now), text)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            return Exported(dest, len(rows), total, missing, skipped)

        _check_folders(dest, names)
        earlier = _earlier_export(dest) if force else []
        dest.mkdir(parents=True, exist_ok=True)
        # Every file is written under a temporary name and renamed into place once all are written:
        # an export that stops leaves none of its files, and (with --force) the files it would have
        # replaced stay as they were, not a manifest naming files that are gone.
        staged: list[tuple[Path, Path]] = []

        def staged_file(name: str) -> io.BufferedWriter:
            staged.append((dest / f".skyassets-export-{len(staged)}.part", dest / name))
            return _create(staged[-1][0])

        def into_folder(name: str, handle: io.BufferedReader) -> tuple[str, int]:
            with staged_file(name) as out:
                return _copy(handle, out)

        try:
            for (path, source), name in zip(sources, names, strict=True):
                add(path, source, name, into_folder)
            readme = _readme(home, query, len(rows), len(missing) + len(skipped))
            for name, text in zip(RECORDS, (*_manifests(rows), readme), strict=True):
                with staged_file(name) as out:
                    out.write(text.encode())
        except BaseException:
            for temporary, _ in staged:
                temporary.unlink(missing_ok=True)
            raise
        for temporary, final in staged:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temporary, final)  # a link already at ``final`` is replaced, never written through
        removed = _remove_earlier(dest, earlier, {final for _, final in staged})
    except OSError as exc:
        where = dest if exc.filename in (None, str(tmp)) else exc.filename
        raise ExportError(f"{where}: cannot be written ({exc.strerror or exc})") from exc
    return Exported(dest, len(rows), total, missing, skipped, removed)
