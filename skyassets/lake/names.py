"""Validation of names that come from outside (MAST rows, S3 listings, file headers).

Nothing from the archive is ever used as a path or a Dagster partition key until it has passed
through one of these functions.
"""

from __future__ import annotations

import re
import unicodedata

MAX_KEY_LENGTH = 128
MAX_FILENAME_LENGTH = 255

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
# Unicode categories no file name may hold: control, format, surrogate, private, unassigned, separators.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class InvalidNameError(ValueError):
    """A name from outside that is unsafe as a partition key or a file name."""


def validate_obs_id(key: str) -> str:
    """Return ``key`` if it is a valid observation partition key, else raise.

    Keys hold letters, digits, ``_``, ``-`` and ``.``, start with a letter or digit, are at most
    ``MAX_KEY_LENGTH`` characters, and are never ``.``-only (so they cannot climb a path).
    """
    if not isinstance(key, str) or not key:
        raise InvalidNameError(f"observation id {key!r} is empty or not a string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidNameError(
            f"observation id {key[:40]!r}... is {len(key)} characters long (at most {MAX_KEY_LENGTH})"
        )
    if not _KEY_RE.match(key) or ".." in key:
        raise InvalidNameError(
            f"observation id {key!r} may hold only letters, digits, '_', '-' and '.', "
            "must start with a letter or digit and may not contain '..'"
        )
    return key


def safe_filename(name: str) -> str:
    """Return ``name`` if it is safe as a single path component, else raise.

    Refused: empty names, ``.`` and ``..``, any ``/`` or ``\\``, a drive prefix (``C:``), control or
    other non-printing characters, and names longer than ``MAX_FILENAME_LENGTH``.
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"file name {name!r} is empty or not a string")
    if name in (".", "..") or name.startswith(".."):
        raise InvalidNameError(f"file name {name!r} would leave its folder")
    if "/" in name or "\\" in name:
        raise InvalidNameError(f"file name {name!r} contains a path separator")
    if _DRIVE_RE.match(name):
        raise InvalidNameError(f"file name {name!r} starts with a drive letter")
    for ch in name:
        if unicodedata.category(ch) in UNSAFE_CATEGORIES:
            raise InvalidNameError(f"file name {name!r} contains the control character {ch!r}")
    if len(name.encode("utf-8")) > MAX_FILENAME_LENGTH:
        raise InvalidNameError(f"file name {name[:40]!r}... is longer than {MAX_FILENAME_LENGTH} bytes")
    return name
