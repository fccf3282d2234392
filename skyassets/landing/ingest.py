"""How files from outside the archive (a landing zone, the command line) become partitions.

Each file gets a partition key (``landed-`` and its header's observation id, else a sanitised stem
and a short hash); what each partition holds is recorded in ``lake/landing/<key>.parquet``, so the
copy step, a retry or a backfill always knows where the files came from. One file's trouble stays
its own: a name that cannot be recorded is refused with the reason, a stored name is chosen so
every name derived from it fits, and a landed file that fails cataloguing in any way is
quarantined. Plain Python, no Dagster.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from skyassets.archive.download import (
    CORRUPT_SUFFIX,
    LOCK_SUFFIX,
    PART_SUFFIX,
    SHA256_SUFFIX,
    STATE_SUFFIX,
    TMP_SUFFIX,
    VERIFIED_SUFFIX,
    FileRequest,
)
from skyassets.lake.home import Home
from skyassets.lake.lease import Waiting
from skyassets.lake.names import MAX_FILENAME_LENGTH, UNSAFE_CATEGORIES, InvalidNameError, safe_filename
from skyassets.landing.keys import partition_key
from skyassets.landing.zone import FITS_SUFFIXES, LINKED_FOLDER, LandedFile, links_to_folder, unread_compression

if TYPE_CHECKING:
    from skyassets.fits.meta import Failure

LANDING_COLLECTION = "local"
# How long a writer of landing records waits for the landing lock: the command line waits out a tick
# or another machine's batch; the sensor passes less, so that its tick gives up instead of hanging.
RECORDING_WAIT = 600.0
# How a landing run's log says a landed file was not copied: this, its location, ": " and why.
NOT_COPIED = "could not copy "


def derived_names(name: str) -> list[str]:
    """Every name made from a stored file's name: the downloader's working files and lock, the
    quarantine's copy and note (numbered ``-<n>`` when the name is taken there), the previews."""
    corrupt = name + CORRUPT_SUFFIX
    return [
        name, f".{name}{LOCK_SUFFIX}", f".{name}{VERIFIED_SUFFIX}{TMP_SUFFIX}", name + PART_SUFFIX,
        name + STATE_SUFFIX + TMP_SUFFIX, name + SHA256_SUFFIX, corrupt, f"{corrupt}-999999.json",
        f"{name}-999999.json", f"{name}.9999.png",
    ]


# The longest stored name whose derived names all fit in one path component.
STORED_NAME_MAX = MAX_FILENAME_LENGTH - max(len(n) for n in derived_names(""))


def printable(path: str | os.PathLike[str]) -> str:
    """A path as text that can always be printed and stored, undecodable bytes as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


HOME_REFUSED = "inside the skyassets home, whose files are the catalog's own copies (only its landing folder is taken)"


def _in_home(path: Path, home: Path | None, landing: Path | None) -> bool:
    """Whether ``path`` is one of the home's own files or folders (its landing folder is not)."""
    return home is not None and path.is_relative_to(home) and path != home and not (
        landing is not None and (path.is_relative_to(landing) or landing.is_relative_to(path)))


def _below(root: Path, refused: dict[str, str], home: Path | None = None,
           landing: Path | None = None) -> Iterator[Path]:
    """Files below ``root``, never through a link (a link is refused, with the reason, if it looks
    like FITS) and never into the home's own folders (said once, for the home)."""
    folders = [root]
    while folders:
        folder = folders.pop()
        if _in_home(folder, home, landing):
            refused[printable(home)] = f"its own folders were passed over: {HOME_REFUSED}"
            continue
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            refused[printable(folder)] = f"folder cannot be listed: {exc.strerror}"
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if why := unread_compression(entry.name):
                refused[printable(entry.path)] = why
            elif entry.is_symlink():
                if links_to_folder(entry):  # a whole folder passed over would go unseen: said, like a file's link
                    refused[printable(entry.path)] = LINKED_FOLDER
                elif entry.name.lower().endswith(FITS_SUFFIXES):
                    refused[printable(entry.path)] = "a symbolic link: links are not followed"
            elif entry.is_dir(follow_symlinks=False):
                folders.append(Path(entry.path))
            else:
                yield Path(entry.path)


def local_files(paths: Iterable[str | Path], refused: dict[str, str] | None = None,
                home: Path | None = None, landing: Path | None = None) -> list[LandedFile]:
    """The FITS files named, or found below the folders named, as landed local files.

    Nothing in ``home`` (resolved) but its ``landing`` folder (resolved; ``home/landing`` if not
    given) is taken: the home's files are copies the lake already holds, and taking them again would
    copy them over themselves.

    Links below a folder are not followed (a named path is the caller's choice and is resolved).
    A FITS file that cannot be taken (a link, a FIFO or device, a name that is not UTF-8 and so
    cannot be recorded, FITS compressed in a way that is not read) is left out and, when ``refused``
    is given, put there (printable path -> reason); so is a file named on its own that is not taken
    for its name. Other files below a folder (notes, previews, hidden files) are passed over.
    """
    refused = {} if refused is None else refused
    landing = landing if landing is not None or home is None else home / "landing"
    found, seen = [], set()
    for item in paths:
        # a named path is reported as given (made absolute, as a folder's listing names it: a loop
        # named and found in its folder is one entry), with where it leads when that is elsewhere
        given = os.fsdecode(os.path.abspath(os.path.expanduser(item)))
        try:
            root = Path(item).expanduser().resolve()
        except (OSError, RuntimeError) as exc:  # a loop of links (RuntimeError before Python 3.13)
            refused[printable(given)] = f"cannot be resolved: {getattr(exc, 'strerror', None) or exc}"
            continue
        leads = "" if str(root) == given else f" (a link to {printable(root)})"
        if _in_home(root, home, landing):
            refused[printable(given)] = HOME_REFUSED + leads
            continue
        named = not root.is_dir()
        for path in [root] if named else sorted(_below(root, refused, home, landing)):
            shown, more = (printable(given), leads) if named else (printable(path), "")
            if named and (why := _not_taken(path.name)):
                refused[shown] = why + more
                continue
            if not path.name.lower().endswith(FITS_SUFFIXES) or path.name.startswith(".") or path in seen:
                continue  # a file named twice (itself and its folder, or two spellings) is one file
            seen.add(path)
            try:
                str(path).encode("utf-8")
            except UnicodeEncodeError:
                refused[shown] = "the path is not valid UTF-8 and cannot be recorded; rename the file" + more
                continue
            try:
                st = path.lstat()
            except OSError as exc:
                refused[shown] = f"cannot be read: {exc.strerror}{more}"
                continue
            if not stat.S_ISREG(st.st_mode):
                refused[shown] = "not a regular file" + more
                continue
            relative = str(path.relative_to(root.parent))
            found.append(LandedFile("local", str(path), st.st_size, str(st.st_mtime_ns), relative))
    return found


def _not_taken(name: str) -> str | None:
    """Why a file named on its own is not taken for its name, None if it is."""
    if name.startswith("."):
        return "a hidden file (its name starts with '.'): rename it to take it"
    if name.lower().endswith(FITS_SUFFIXES):
        return None
    return unread_compression(name) or f"not named as FITS ({', '.join(FITS_SUFFIXES)})"


def group_by_partition(files: Iterable[LandedFile], *, client: Any = None) -> dict[str, list[LandedFile]]:
    """The files by partition key; ``client`` (boto3) reads the headers of ``s3://`` files."""
    groups, _ = group_within(list(files), None, client=client)
    return groups


def group_within(
    files: Sequence[LandedFile], seconds: float | None, *, client: Any = None
) -> tuple[dict[str, list[LandedFile]], list[LandedFile]]:
    """:func:`group_by_partition` of as many ``files`` as their headers let be read in ``seconds``
    (at least one), and the files left over. A sensor tick must end in time whatever the headers
    cost (megabytes of HIERARCH cards take seconds each); the rest waits for the next tick."""
    started = time.monotonic()
    groups: dict[str, list[LandedFile]] = defaultdict(list)
    for done, landed in enumerate(files):
        if done and seconds is not None and time.monotonic() - started > seconds:
            return dict(groups), list(files[done:])
        groups[partition_key(landed, client=client)].append(landed)
    return dict(groups), []


def _stored_name(landed: LandedFile, taken: set[str]) -> str:
    """The file's own name if usable and unused in its partition, else a safe one with a short hash.

    Usable means every one of its ``derived_names`` is a safe file name. A name holding characters
    no file name may (control characters, a newline, a drive prefix) has each replaced by ``_``; one
    too long keeps its start and its kind (``.fits.gz``, ``.fz`` ...) around the hash; any other
    becomes ``file`` and its kind.
    """
    name = _cleaned(landed.location.rsplit("/", 1)[-1])
    suffix = next((x for x in sorted(FITS_SUFFIXES, key=len, reverse=True) if name.lower().endswith(x)), ".fits")
    digest = hashlib.sha256(landed.location.encode()).hexdigest()[:8]
    if name in taken:
        name = f"{digest}-{name}"
    if len(name.encode()) > STORED_NAME_MAX:
        room = STORED_NAME_MAX - len(f"-{digest}{suffix}".encode())
        stem = name[: -len(suffix)].encode()[:room].decode("utf-8", "ignore")
        name = f"{stem}-{digest}{suffix}"
    if not _usable(name):
        name = "file" + suffix
        if name in taken:
            name = f"{digest}-{name}"
    return name


def _cleaned(name: str) -> str:
    """``name`` with each character no file name may hold as ``_`` (and no drive prefix, no leading dot)."""
    kept = "".join("_" if unicodedata.category(ch) in UNSAFE_CATEGORIES or ch == "\\" else ch for ch in name)
    if len(kept) > 1 and kept[1] == ":":
        kept = kept[0] + "_" + kept[2:]
    return "_" + kept[1:] if kept.startswith(".") else kept


def _usable(name: str) -> bool:
    try:
        for derived in derived_names(name):
            safe_filename(derived)
    except InvalidNameError:
        return False
    return True


def record_landed(home: Home, key: str, files: list[LandedFile]) -> str:
    """Merge ``files`` into the partition's landing record (a file seen again replaces its row); return its path."""
    lake = home.tables
    rows = lake.read("landing", key).to_dict("records") if lake.exists("landing", key) else []
    replaced = {f.location for f in files}
    rows = [r for r in rows if r["location"] not in replaced]
    for row in rows:  # recorded before records named where the copy goes
        row["path"] = row.get("path") or home.stored_at(LANDING_COLLECTION, key, row["filename"])
    taken = {r["filename"] for r in rows}
    for landed in files:
        name = _stored_name(landed, taken)
        taken.add(name)
        rows.append(
            {
                "partition": key,
                "source": landed.source,
                "location": landed.location,
                "relative": landed.relative,
                "size": landed.size,
                "signature": landed.signature,
                "filename": name,
                "path": home.stored_at(LANDING_COLLECTION, key, name),
            }
        )
    return lake.write("landing", rows, partition=key)  # rows, not a frame: pandas costs more than the write


@contextmanager
def recording(home: Home, wait: float = RECORDING_WAIT, on_wait: Waiting | None = None) -> Iterator[None]:
    """Hold the home's landing lock while landing records and the ``landing_index`` are read and
    rewritten: the sensor and ``skyassets ingest`` each rewrite the whole index, and one must not
    write it without the other's rows, on this machine or another sharing the home's store.
    Raises :class:`~skyassets.lake.lease.LockBusy` when another holds it for over ``wait`` seconds."""
    with home.lock("landing", wait, on_wait):
        yield


def relocate_landed(home: Home, groups: Mapping[str, Sequence[LandedFile]]) -> dict[str, list[str]]:
    """Take landed files out of the partitions that held them before, where their header now names
    another observation (the owner rewrote OBS_ID): a location has one current version, as a file
    changed within its partition replaces its row. Returns old partition -> locations taken out; the
    caller runs those partitions again, so they stop cataloguing the old versions.

    Call before :func:`record_landed` of ``groups``, both within :func:`recording`. The lake's
    ``landing_index`` (location -> partition) says where each file is, so this reads one table
    rather than every partition's record; a home without it has it built from the records once (a
    new home has none to read).
    """
    if not any(groups.values()):
        return {}
    lake = home.tables
    indexed = lake.exists("landing_index")
    if indexed:
        index = lake.read_arrow("landing_index")
    else:  # every record as it is now: a location may be in several
        records = lake.read_partitions("landing", lake.partitions("landing"), columns=["location", "partition"])
        index = pa.concat_tables([r.select(["location", "partition"]) for r in records.values()]
                                 or [pa.table({"location": pa.array([], pa.string()),
                                               "partition": pa.array([], pa.string())})])
    now = [(landed.location, key) for key, files in groups.items() for landed in files]
    mentioned = pc.is_in(index.column("location"), value_set=pa.array([location for location, _ in now], pa.string()))
    before = index.filter(mentioned)
    holders: dict[str, set[str]] = defaultdict(set)
    for location, key in zip(before.column("location").to_pylist(), before.column("partition").to_pylist(),
                             strict=True):
        holders[location].add(key)
    moved: dict[str, list[str]] = defaultdict(list)
    for location, key in now:
        for other in sorted(holders[location] - {key}):
            moved[other].append(location)
    for key, locations in moved.items():
        if lake.exists("landing", key):
            gone = set(locations)
            record = lake.read_arrow("landing", key)
            kept = [location not in gone for location in record.column("location").to_pylist()]
            lake.write("landing", record.filter(kept), partition=key)
    if not indexed or moved or any(holders[location] != {key} for location, key in now):
        after = pa.table({"location": pa.array([location for location, _ in now], pa.string()),
                          "partition": pa.array([key for _, key in now], pa.string())})
        lake.write("landing_index", pa.concat_tables([index.filter(pc.invert(mentioned)), after]))
    return dict(moved)


def landed_requests(home: Home, keys: Sequence[str]) -> dict[str, list[tuple[dict, FileRequest]]]:
    """Copy requests for each of ``keys`` that is a landing partition; partitions from MAST are left out.

    A partition with MAST products is the archive's even if a landing record names it (one written
    before landed keys had their own prefix): landed files never replace archive files. The records
    of a run's partitions are read in one pass (:meth:`Lake.read_partitions`).
    """
    lake = home.tables
    records = lake.read_partitions("landing", keys)
    archived = set(lake.written("mast_products", list(records)))
    requests: dict[str, list[tuple[dict, FileRequest]]] = {}
    for key, record in records.items():
        if key in archived:
            continue
        dest = home.observation_dir(LANDING_COLLECTION, key)
        requests[key] = [
            (
                row,
                FileRequest(
                    filename=row["filename"],
                    dest_dir=dest,
                    local_path=Path(row["location"]) if row["source"] == "local" else None,
                    s3_key=None if row["source"] == "local" else row["location"],
                    expected_size=int(row["size"]),
                ),
            )
            for row in record.to_pylist()
        ]
    return requests


def quarantine_landed_failures(home: Home, failures: list[Failure]) -> list[Failure]:
    """``failures`` of cataloguing, with every landed file among them quarantined, whatever the failure.

    A landed file reads the same every time, so any failure to catalogue it (astropy's
    ``VerifyError`` on a non-ASCII card as much as a broken file) is the file's: it is moved to
    the quarantine with the reason and the landed location it came from, and comes back as
    unreadable, so the rest of its run goes on. Archive files keep their rule (only unreadable ones
    are moved; anything else fails the run, as a retry may fetch them again).
    """
    from skyassets.fits.meta import Failure, quarantine, release_quarantined

    landed_root = home.files / LANDING_COLLECTION
    out = []
    versions = {f.path: _landed_version(home, Path(f.path)) for f in failures
                if Path(f.path).is_relative_to(landed_root)}
    replaced = {location: signature for location, signature in versions.values() if signature is not None}
    if replaced and home.quarantine.is_dir():  # earlier broken versions' copies give way to these, in one reading
        release_quarantined(home.quarantine, replaced)
    for failure in failures:
        path = Path(failure.path)
        if failure.unreadable and failure.quarantined and path.is_relative_to(landed_root):
            _note_landed_location(home, path, Path(failure.quarantined))
        if failure.unreadable or not path.is_relative_to(landed_root) or not path.is_file():
            out.append(failure)
            continue
        location, signature = versions[failure.path]
        moved = quarantine(path, home.quarantine, f"{location}: {failure.reason}", landed_location=location,
                           landed_signature=signature)
        out.append(Failure(failure.path, failure.reason, True, str(moved)))
    return out


def _note_landed_location(home: Home, stored: Path, moved: Path) -> None:
    """Name where a landed file came from, and its version, in the note of its quarantined copy
    (the stored copy was quarantined by name only), so the note leads back to the owner's file."""
    sidecar = moved.with_name(moved.name + ".json")
    location, signature = _landed_version(home, stored)
    try:
        note = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return
    if location != str(stored) and not str(note.get("reason", "")).startswith(location):
        note["reason"] = f"{location}: {note.get('reason', '')}"
        note["landed_location"] = location
        if signature is not None:
            note["landed_signature"] = signature
        sidecar.write_text(json.dumps(note, indent=1) + "\n")


def _landed_version(home: Home, stored: Path) -> tuple[str, str | None]:
    """Where a stored landed file came from and its signature there (its landing record), else
    its stored path and no signature."""
    key = stored.parent.name
    try:
        rows = home.tables.read("landing", key, columns=["filename", "location", "signature"]).to_dict("records")
    except Exception:  # no record, or an unreadable one: the stored path still names the file
        return str(stored), None
    return next(((r["location"], r["signature"]) for r in rows if r["filename"] == stored.name), (str(stored), None))
