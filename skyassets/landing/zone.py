"""The landing zone: FITS files that observatories drop into a folder or an S3 prefix.

A sensor calls ``tick`` once per evaluation. Each tick examines a bounded slice of the zone
(``max_files`` entries, or ``max_keys_per_tick`` keys), records what it saw in a SQLite state file
and returns at most ``max_ready`` files that are ready: seen with the same size and signature
(mtime in nanoseconds, or ETag) in two different ticks, and not already taken in that version.
A slice continues where the previous one stopped; once the whole zone has been examined (a pass),
files that were not seen in that pass are dropped from the state.

Files are marked taken inside ``tick``, tagged with the tick's generation. The returned cursor
names that generation; a later tick given an older cursor (the sensor evaluation that received
the files failed, so Dagster kept the old cursor) un-takes them, and they are offered again. So
the sensor must store exactly the cursor each tick returns, and nothing else is needed to confirm.
The partition key of a landed file comes from :mod:`skyassets.landing.keys`. A landed file is
read only through :func:`open_regular`, which follows no link.

Plain Python, no Dagster.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.bz2", ".fit.bz2", ".fts.bz2", ".fz")
# FITS compressed in a way that is not read (gzip, bzip2 and tile compression are): such a file is
# reported with the reason, not passed over as if it were not FITS.
UNREAD_COMPRESSIONS = (".xz", ".zst", ".lz4", ".z", ".zip", ".7z")
TEMP_SUFFIX = ".part"
LINKED_FOLDER = "a symbolic link to a folder: links are not followed (name the folder itself to take its files)"
# Positions of older generations kept so a cursor a few ticks old still resumes where it was.
_KEEP_POSITIONS = 64
_CURSOR_VERSION = 1
# Where the kernel says which file a descriptor is (Linux); elsewhere paths are walked.
_PROC_FD = os.path.isdir("/proc/self/fd")


@dataclass(frozen=True)
class LandedFile:
    """One ready file. ``signature`` is the mtime in ns (local) or the ETag without quotes (s3)."""

    source: str  # "local" | "s3"
    location: str  # absolute path, or s3://bucket/key
    size: int
    signature: str
    relative: str  # below the landing root or prefix, "/"-separated, for display


@dataclass(frozen=True)
class Tick:
    """What one tick found. ``pending`` counts known files not yet taken in their current version."""

    ready: list[LandedFile]
    cursor: str
    scanned: int
    pending: int
    seconds: float
    # FITS-named entries the zone will not take, first met in this tick: (printable path, why)
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Seen:
    rel: str
    size: int
    signature: str


def open_regular(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of the regular file at ``path``, opened without following any link.

    The file is opened with ``O_NOFOLLOW`` (a link in its place fails the open) and the path the
    kernel gives for the descriptor must be the path asked for, so a folder on the way swapped for a
    link after the zone was scanned is refused too (without ``/proc``, each component is opened
    below the previous one with ``O_NOFOLLOW`` instead); then the descriptor must be a regular file.
    Callers read (header, copy) from this descriptor only, so what was checked is what is read.
    Landing roots and ``ingest`` paths are resolved first, so their own paths hold no link. Raises
    ``OSError`` naming the path and the reason.
    """
    absolute = os.path.abspath(path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: a FIFO cannot hang the open
    try:
        if _PROC_FD:
            fd = os.open(absolute, flags)
            if os.readlink(f"/proc/self/fd/{fd}") != absolute:
                os.close(fd)
                raise OSError(errno.ELOOP, "the path leads elsewhere")
        else:
            fd = _open_below(absolute, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(exc.errno, "a symbolic link on its path (links are not followed)", str(path)) from exc
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def _open_below(absolute: str, flags: int) -> int:
    """``absolute`` opened one component at a time, each below the last, following no link."""
    parts = Path(absolute).parts
    walk = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    folder = os.open(parts[0], walk)
    try:
        for name in parts[1:-1]:
            below = os.open(name, walk, dir_fd=folder)
            os.close(folder)
            folder = below
        return os.open(parts[-1], flags, dir_fd=folder)
    finally:
        os.close(folder)


def links_to_folder(entry: os.DirEntry[str]) -> bool:
    """Whether a link leads to a folder (a loop or a dangling link leads nowhere)."""
    try:
        return entry.is_symlink() and entry.is_dir()
    except OSError:
        return False


def unread_compression(name: str) -> str | None:
    """Why a file named as compressed FITS is not taken (``x.fits.bz2``), None for any other name."""
    lower = name.lower()
    for compressed in UNREAD_COMPRESSIONS:
        if lower.endswith(tuple(f"{plain}{compressed}" for plain in (".fits", ".fit", ".fts"))):
            return (f"FITS compressed as {compressed}, which is not read (gzip .gz, bzip2 .bz2 and "
                    "tile-compressed .fz are): decompress it, or recompress it with gzip")
    return None


def is_landing_name(name: str) -> bool:
    """A FITS file name we take: not hidden, not one of our ``.part`` temp files."""
    lower = name.lower()
    return not name.startswith(".") and not lower.endswith(TEMP_SUFFIX) and lower.endswith(FITS_SUFFIXES)


class _Zone:
    """The state file, generations and the ready selection shared by folder and S3 zones."""

    source = ""

    def __init__(self, state_path: Path, identity: str, max_ready: int):
        if max_ready < 1:
            raise ValueError("max_ready must be at least 1")
        self._skipped: list[tuple[str, str]] = []  # filled by a scan: FITS-named entries not taken, and why
        self.state_path = Path(state_path)
        self.max_ready = max_ready
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            con.executescript(
                """
                CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS files (
                    rel TEXT PRIMARY KEY, size INTEGER NOT NULL, sig TEXT NOT NULL,
                    first_seen REAL NOT NULL, stable INTEGER NOT NULL, seen_pass INTEGER NOT NULL,
                    taken_size INTEGER, taken_sig TEXT, taken_gen INTEGER
                ) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS positions (
                    gen INTEGER PRIMARY KEY, pass INTEGER NOT NULL, after TEXT
                );
                CREATE TABLE IF NOT EXISTS skipped (
                    rel TEXT PRIMARY KEY, seen_pass INTEGER NOT NULL
                ) WITHOUT ROWID;
                """
            )
            meta = dict(con.execute("SELECT k, v FROM meta"))
            if not meta:
                con.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("state_id", secrets.token_hex(4)), ("zone", identity), ("gen", "0")],
                )
            elif meta["zone"] != identity:
                con.rollback()
                raise ValueError(
                    f"landing state {self.state_path} belongs to {meta['zone']!r}, not {identity!r}"
                )
            con.commit()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.state_path, timeout=30, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    def tick(self, cursor: str | None) -> Tick:
        """Examine the next slice, and take and return the files that are ready."""
        started = time.monotonic()
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                state_id, gen, pass_no, after = self._begin(con, cursor)
                self._skipped = []
                seen, keep_prefixes, after, pass_done, scanned = self._scan(after)
                now = time.time()
                self._record(con, seen, keep_prefixes, pass_no, now)
                skipped = self._note_skipped(con, pass_no)
                if pass_done:
                    con.execute("DELETE FROM files WHERE seen_pass != ?", (pass_no,))
                    con.execute("DELETE FROM skipped WHERE seen_pass != ?", (pass_no,))
                    pass_no, after = pass_no + 1, None
                ready = self._take(con, gen, now)
                pending = con.execute(
                    "SELECT COUNT(*) FROM files WHERE taken_sig IS NULL OR taken_sig != sig"
                    " OR taken_size != size"
                ).fetchone()[0]
                con.execute(
                    "INSERT OR REPLACE INTO positions VALUES (?, ?, ?)",
                    (gen, pass_no, None if after is None else json.dumps(after)),
                )
                con.execute(
                    "DELETE FROM positions WHERE gen > ? OR gen <= ?", (gen, gen - _KEEP_POSITIONS)
                )
                con.execute("UPDATE meta SET v = ? WHERE k = 'gen'", (str(gen),))
                con.commit()
            except BaseException:
                con.rollback()
                raise
        new_cursor = json.dumps(
            {"v": _CURSOR_VERSION, "state": state_id, "gen": gen, "pass": pass_no},
            separators=(",", ":"),
        )
        return Tick(ready, new_cursor, scanned, pending, time.monotonic() - started, skipped)

    def _note_skipped(self, con: sqlite3.Connection, pass_no: int) -> list[tuple[str, str]]:
        """The entries of this slice the zone will not take that no earlier tick reported: each is
        said once (while it stays), not every tick."""
        new = []
        for rel, why in self._skipped:
            known = con.execute("SELECT 1 FROM skipped WHERE rel = ?", (rel,)).fetchone()
            con.execute("INSERT OR REPLACE INTO skipped VALUES (?, ?)", (rel, pass_no))
            if not known:
                new.append((rel, why))
        return new

    def release(self, files: list[LandedFile]) -> None:
        """Offer ``files``, taken by the last tick, again on a later one: they could not be handed on
        (their landing record could not be written, their headers not read in the tick's time)."""
        with closing(self._connect()) as con:
            con.executemany(
                "UPDATE files SET taken_size = NULL, taken_sig = NULL, taken_gen = NULL WHERE rel = ?",
                ((f.relative,) for f in files),
            )

    def _begin(self, con: sqlite3.Connection, cursor: str | None) -> tuple[str, int, int, Any]:
        """The new generation and the position to resume from; un-take what a lost tick took.

        A cursor from this state file and not newer than it is trusted: files taken after its
        generation were handed to an evaluation whose result Dagster discarded. Without such a
        cursor (first tick, reset or foreign cursor) the state file's own last position is used.
        """
        meta = dict(con.execute("SELECT k, v FROM meta"))
        state_id, last_gen = meta["state_id"], int(meta["gen"])
        parsed = _parse_cursor(cursor)
        if parsed is not None and parsed["state"] == state_id and 0 <= parsed["gen"] <= last_gen:
            base = parsed["gen"]
            con.execute(
                "UPDATE files SET taken_size = NULL, taken_sig = NULL, taken_gen = NULL"
                " WHERE taken_gen > ?",
                (base,),
            )
        else:
            base = last_gen
        row = con.execute("SELECT pass, after FROM positions WHERE gen = ?", (base,)).fetchone()
        if row is None:
            start = con.execute("SELECT COALESCE(MAX(seen_pass), 0) + 1 FROM files").fetchone()[0]
            return state_id, base + 1, start, None
        return state_id, base + 1, row[0], None if row[1] is None else json.loads(row[1])

    def _record(
        self, con: sqlite3.Connection, seen: list[_Seen], keep_prefixes: list[str], pass_no: int,
        now: float,
    ) -> None:
        """Upsert observations: same size and signature as last time makes a file stable."""
        con.executemany(
            """
            INSERT INTO files (rel, size, sig, first_seen, stable, seen_pass)
            VALUES (?, ?, ?, ?, 0, ?)
            ON CONFLICT (rel) DO UPDATE SET
                stable = (files.size = excluded.size AND files.sig = excluded.sig),
                first_seen = CASE WHEN files.size = excluded.size AND files.sig = excluded.sig
                             THEN files.first_seen ELSE excluded.first_seen END,
                size = excluded.size, sig = excluded.sig, seen_pass = excluded.seen_pass
            """,
            ((s.rel, s.size, s.signature, now, pass_no) for s in seen),
        )
        # Files below a folder that could not be listed this time are kept, not dropped.
        for prefix in keep_prefixes:
            con.execute(
                "UPDATE files SET seen_pass = ? WHERE substr(rel, 1, ?) = ?",
                (pass_no, len(prefix), prefix),
            )

    def _take(self, con: sqlite3.Connection, gen: int, now: float) -> list[LandedFile]:
        rows = con.execute(
            "SELECT rel, size, sig FROM files WHERE stable AND"
            " (taken_sig IS NULL OR taken_sig != sig OR taken_size != size)"
            " ORDER BY first_seen, rel LIMIT ?",
            (self.max_ready,),
        ).fetchall()
        ready: list[LandedFile] = []
        for row in rows:
            rel, size, sig = row
            current = self._recheck(_Seen(*row))
            if current is None:
                con.execute("DELETE FROM files WHERE rel = ?", (rel,))
            elif (current.size, current.signature) != (size, sig):
                con.execute(
                    "UPDATE files SET size = ?, sig = ?, stable = 0, first_seen = ? WHERE rel = ?",
                    (current.size, current.signature, now, rel),
                )
            else:
                ready.append(self._landed(current))
        con.executemany(
            "UPDATE files SET taken_size = ?, taken_sig = ?, taken_gen = ? WHERE rel = ?",
            ((f.size, f.signature, gen, f.relative) for f in ready),
        )
        return ready

    def _scan(self, after: Any) -> tuple[list[_Seen], list[str], Any, bool, int]:
        """(files seen, folder prefixes to keep, new position, pass finished, entries examined)."""
        raise NotImplementedError

    def _recheck(self, seen: _Seen) -> _Seen | None:
        """The file's current size and signature just before it is offered; None if gone."""
        raise NotImplementedError

    def _landed(self, seen: _Seen) -> LandedFile:
        raise NotImplementedError


def _parse_cursor(cursor: str | None) -> dict[str, Any] | None:
    if not cursor:
        return None
    try:
        parsed = json.loads(cursor)
        if parsed.get("v") != _CURSOR_VERSION:
            return None
        return {"state": str(parsed["state"]), "gen": int(parsed["gen"])}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


class LandingZone(_Zone):
    """A folder (and by default its subfolders) on this machine.

    The walk is depth-first in sorted name order, so a slice can resume after the last entry it
    examined (its path components, kept in the state file). Symbolic links are skipped: a link
    could point anywhere on the machine, and a linked folder could loop.
    """

    source = "local"

    def __init__(
        self, root: Path, state_path: Path, *, recursive: bool = True, max_files: int = 20000,
        max_ready: int = 500,
    ):
        if max_files < 1:
            raise ValueError("max_files must be at least 1")
        self.root = Path(root).expanduser().resolve()
        self.recursive = recursive
        self.max_files = max_files
        super().__init__(state_path, f"local:{self.root}", max_ready)

    def _scan(self, after: Any) -> tuple[list[_Seen], list[str], Any, bool, int]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"landing folder {self.root} does not exist")
        seen: list[_Seen] = []
        unreadable: list[str] = []
        position = after
        scanned = 0
        walk = self._walk(str(self.root), (), tuple(after or ()), unreadable)
        for parts, entry in walk:
            scanned += 1
            position = list(parts)
            if not entry.is_dir(follow_symlinks=False):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone since the listing
                seen.append(_Seen("/".join(parts), st.st_size, str(st.st_mtime_ns)))
            if scanned >= self.max_files:
                break
        # One look ahead tells whether the pass ends here, so it never needs an empty slice.
        done = next(walk, None) is None
        walk.close()
        return seen, unreadable, position, done, scanned

    def _walk(
        self, directory: str, parts: tuple[str, ...], resume: tuple[str, ...], unreadable: list[str]
    ) -> Iterator[tuple[tuple[str, ...], os.DirEntry[str]]]:
        """Entries below ``directory`` in pre-order, starting after the position ``resume``.

        A stack of listings rather than recursion: a chain of folders deeper than Python's recursion
        limit is walked like any other instead of failing every tick."""
        stack: list[tuple[Iterator[os.DirEntry[str]], tuple[str, ...], tuple[str, ...]]] = []
        listing = self._listing(directory, parts, unreadable)
        if listing is not None:
            stack.append((listing, parts, resume))
        while stack:
            entries, parts, resume = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            here = parts + (entry.name,)
            is_dir = entry.is_dir(follow_symlinks=False)
            if resume:
                if entry.name < resume[0]:
                    continue
                stack[-1] = (entries, parts, ())
                if entry.name == resume[0]:
                    # Examined in an earlier slice; a folder's contents continue after resume[1:].
                    if is_dir and (below := self._listing(entry.path, here, unreadable)) is not None:
                        stack.append((below, here, resume[1:]))
                    continue
            yield here, entry
            if is_dir and (below := self._listing(entry.path, here, unreadable)) is not None:
                stack.append((below, here, ()))

    def _listing(
        self, directory: str, parts: tuple[str, ...], unreadable: list[str]
    ) -> Iterator[os.DirEntry[str]] | None:
        """The wanted entries of ``directory`` in name order; None (noted) if it cannot be listed."""
        try:
            with os.scandir(directory) as it:
                return iter(sorted((e for e in it if self._wanted(e, parts)), key=lambda e: e.name))
        except OSError:
            if not parts:
                raise
            unreadable.append("/".join(parts) + "/")
            return None

    def _wanted(self, entry: os.DirEntry[str], parts: tuple[str, ...]) -> bool:
        """Whether the walk takes ``entry``; a FITS-named entry it does not take is noted with why."""
        name = entry.name
        if name.startswith("."):
            return False
        fits_named = is_landing_name(os.fsencode(name).decode("utf-8", "replace"))
        why = None
        if entry.is_symlink():
            why = "a symbolic link: links are not followed"
            if self.recursive and links_to_folder(entry):  # a folder of files passed over is said, like a file's link
                why, fits_named = LINKED_FOLDER, True
        else:
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:  # not representable in the state file or a partition key's source
                why = "the name is not valid UTF-8 and cannot be recorded; rename the file"
        if why is None and entry.is_dir(follow_symlinks=False):
            return self.recursive
        if why is None and fits_named and not entry.is_file(follow_symlinks=False):
            why = "not a regular file"
        if why is None and not fits_named:
            why = unread_compression(name)
            fits_named = why is not None
        if why is not None:
            if fits_named:
                shown = "/".join((*parts, name))
                self._skipped.append((os.fsencode(shown).decode("utf-8", "backslashreplace"), why))
            return False
        return fits_named

    def _recheck(self, seen: _Seen) -> _Seen | None:
        try:
            st = os.lstat(self.root / seen.rel)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return _Seen(seen.rel, st.st_size, str(st.st_mtime_ns))

    def _landed(self, seen: _Seen) -> LandedFile:
        return LandedFile("local", str(self.root / seen.rel), seen.size, seen.signature, seen.rel)


class S3LandingZone(_Zone):
    """Objects below a prefix of an S3 bucket, listed through the boto3 ``client`` given.

    The position is the last key examined, passed as ``StartAfter`` to resume: unlike a
    continuation token it stays valid for any time and across clients. The signature is the ETag,
    so re-uploading identical bytes is not a change. An object is not fetched again before it is
    offered (a HEAD per object would cost more than the tick may take on a remote store); the copy
    step should pass ``IfMatch=<signature>`` so a replaced object fails there and is re-offered by
    a later pass.
    """

    source = "s3"

    def __init__(
        self, client: Any, bucket: str, prefix: str, state_path: Path, *, recursive: bool = True,
        max_keys_per_tick: int = 20000, max_ready: int = 500,
    ):
        if max_keys_per_tick < 1:
            raise ValueError("max_keys_per_tick must be at least 1")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.recursive = recursive
        self.max_keys_per_tick = max_keys_per_tick
        super().__init__(state_path, f"s3://{bucket}/{prefix}", max_ready)

    def _scan(self, after: Any) -> tuple[list[_Seen], list[str], Any, bool, int]:
        seen: list[_Seen] = []
        scanned = 0
        position = after
        while True:
            kwargs: dict[str, Any] = {
                "Bucket": self.bucket, "Prefix": self.prefix,
                "MaxKeys": min(1000, self.max_keys_per_tick - scanned),
            }
            if position:
                kwargs["StartAfter"] = position
            page = self.client.list_objects_v2(**kwargs)
            for obj in page.get("Contents", []):
                scanned += 1
                position = obj["Key"]
                rel = position[len(self.prefix):]
                if self._wanted(rel.lstrip("/")):
                    seen.append(_Seen(rel, int(obj["Size"]), obj.get("ETag", "").strip('"')))
            if not page.get("IsTruncated"):
                return seen, [], position, True, scanned
            if scanned >= self.max_keys_per_tick:
                return seen, [], position, False, scanned

    def _wanted(self, rel: str) -> bool:
        parts = rel.split("/")
        if not rel or (len(parts) > 1 and not self.recursive):
            return False
        if not all(p and not p.startswith(".") for p in parts):
            return False
        why = unread_compression(parts[-1])
        if why is not None:
            self._skipped.append((rel, why))
        return is_landing_name(parts[-1])

    def _recheck(self, seen: _Seen) -> _Seen | None:
        return seen  # the listing is trusted; see the class docstring

    def _landed(self, seen: _Seen) -> LandedFile:
        key = self.prefix + seen.rel
        return LandedFile("s3", f"s3://{self.bucket}/{key}", seen.size, seen.signature, seen.rel)
