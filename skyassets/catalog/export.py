"""Copying the files a catalogue query selects, with a manifest and a record of the query."""

from __future__ import annotations

import csv
import hashlib
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from skyassets.archive.download import sha256_file
from skyassets.lake.home import Home


def export_files(selection: pd.DataFrame, home: Home, dest: Path, query: str) -> Path:
    """Copy the files of ``selection`` (a ``path`` column, relative to the home) into ``dest``.

    Each file is copied once and its SHA-256 checked against the catalogue's where it has one;
    ``manifest.csv`` lists them and ``README.md`` records the query, so the export explains itself.
    """
    if "path" not in selection.columns:
        raise ValueError("the query must return a 'path' column (e.g. SELECT * FROM images WHERE ...)")
    dest.mkdir(parents=True, exist_ok=True)
    wanted = selection.drop_duplicates("path")
    rows = []
    for record in wanted.to_dict("records"):
        source = (home.root / record["path"]).resolve()
        if not source.is_relative_to(home.root):
            raise ValueError(f"{record['path']}: not a file of the skyassets home {home.root}")
        target = dest / source.name
        if target.exists():
            target = dest / f"{hashlib.sha256(record['path'].encode()).hexdigest()[:8]}-{source.name}"
        shutil.copyfile(source, target)
        digest = sha256_file(target)
        expected = record.get("sha256")
        if isinstance(expected, str) and expected != digest:
            raise ValueError(f"{source}: SHA-256 {digest} differs from the catalogue's {expected}")
        rows.append({"path": target.name, "sha256": digest, "source": record["path"]})
    with (dest / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "sha256", "source"])
        writer.writeheader()
        writer.writerows(rows)
    (dest / "README.md").write_text(
        f"# skyassets export\n\n{len(rows)} files selected from the catalogue of `{home.root}` "
        f"on {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by:\n\n```sql\n{query}\n```\n\n"
        "`manifest.csv` lists each file with its SHA-256 (`sha256sum` can check them).\n"
    )
    return dest
