"""How files from outside the archive (a landing zone, the command line) become partitions.

Each file gets a partition key (its header's observation id, else a sanitised stem and a short
hash); what each partition holds is recorded in ``lake/landing/<key>.parquet``, so the copy step,
a retry or a backfill always knows where the files came from. Plain Python, no Dagster.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from skyassets.archive.download import FileRequest
from skyassets.lake.home import Home
from skyassets.lake.names import InvalidNameError, safe_filename
from skyassets.landing.keys import partition_key
from skyassets.landing.zone import FITS_SUFFIXES, LandedFile

LANDING_COLLECTION = "local"


def local_files(paths: Iterable[str | Path]) -> list[LandedFile]:
    """The FITS files named, or found below the folders named, as landed local files."""
    found = []
    for item in paths:
        root = Path(item).expanduser().resolve()
        candidates = sorted(root.rglob("*")) if root.is_dir() else [root]
        for path in candidates:
            if path.is_file() and path.name.lower().endswith(FITS_SUFFIXES) and not path.name.startswith("."):
                stat = path.stat()
                relative = str(path.relative_to(root.parent))
                found.append(LandedFile("local", str(path), stat.st_size, str(stat.st_mtime_ns), relative))
    return found


def group_by_partition(files: Iterable[LandedFile], *, client: Any = None) -> dict[str, list[LandedFile]]:
    """The files by partition key; ``client`` (boto3) reads the headers of ``s3://`` files."""
    groups: dict[str, list[LandedFile]] = defaultdict(list)
    for landed in files:
        groups[partition_key(landed, client=client)].append(landed)
    return dict(groups)


def _stored_name(landed: LandedFile, taken: set[str]) -> str:
    """The file's own name if safe and unused in its partition, else a safe one with a short hash."""
    name = landed.location.rsplit("/", 1)[-1]
    try:
        safe_filename(name)
    except InvalidNameError:  # keep the kind of file (.fits.gz, .fz ...) under a plain name
        name = "file" + next((x for x in FITS_SUFFIXES if name.lower().endswith(x)), ".fits")
    if name in taken:
        digest = hashlib.sha256(landed.location.encode()).hexdigest()[:8]
        name = f"{digest}-{name}"
    return name


def record_landed(home: Home, key: str, files: list[LandedFile]) -> str:
    """Merge ``files`` into the partition's landing record (a file seen again replaces its row); return its path."""
    lake = home.tables
    rows = lake.read("landing", key).to_dict("records") if lake.exists("landing", key) else []
    replaced = {f.location for f in files}
    rows = [r for r in rows if r["location"] not in replaced]
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
            }
        )
    return lake.write("landing", rows, partition=key)  # rows, not a frame: pandas costs more than the write


def landed_requests(home: Home, key: str) -> list[tuple[dict, FileRequest]] | None:
    """Copy requests for a landing partition, or ``None`` if the partition came from MAST."""
    lake = home.tables
    if not lake.exists("landing", key):
        return None
    dest = home.observation_dir(LANDING_COLLECTION, key)
    requests = []
    for row in lake.read("landing", key).to_dict("records"):
        local = row["source"] == "local"
        requests.append(
            (
                row,
                FileRequest(
                    filename=row["filename"],
                    dest_dir=dest,
                    local_path=Path(row["location"]) if local else None,
                    s3_key=None if local else row["location"],
                    expected_size=int(row["size"]),
                ),
            )
        )
    return requests
