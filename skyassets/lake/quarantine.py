"""The notes beside the home's quarantined files: what each file was and why it was moved.

Every quarantined file ``<name>`` has ``<name>.json`` beside it (written by
:func:`skyassets.fits.meta.quarantine`). Readers that report a quarantined file, skip it or release
it read the notes through here, oldest first, so that the newest note of a file speaks for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def notes(quarantine_dir: str | os.PathLike[str], since: float = 0.0) -> list[tuple[Path, dict[str, Any]]]:
    """Each note written at or after ``since`` (its path, its content), oldest first; a note that
    cannot be read is passed over."""
    found = []
    for sidecar in Path(quarantine_dir).glob("*.json"):
        try:
            note = json.loads(sidecar.read_text())
            when = sidecar.stat().st_mtime
        except (OSError, ValueError):
            continue
        if isinstance(note, dict) and when >= since:
            found.append((when, sidecar.name, sidecar, note))
    return [(sidecar, note) for _, _, sidecar, note in sorted(found, key=lambda n: n[:2])]


def copy_of(sidecar: Path) -> Path:
    """The quarantined file a note speaks of: its name without ``.json``, in the note's folder."""
    return sidecar.with_name(sidecar.name.removesuffix(".json"))
