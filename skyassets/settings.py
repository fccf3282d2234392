"""Settings read from the environment: a value that cannot be read is an error naming the variable
and its value, never a default taken in its place nor a value read some other way."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["SettingError", "env_number", "env_switch"]


class SettingError(ValueError):
    """An environment setting that cannot be read: the message names the variable and its value."""


def env_number(name: str, default: float, *, kind: type = int, minimum: float = 0) -> Any:
    """``name`` from the environment as a number of ``kind`` (``default`` when unset or empty), at
    least ``minimum``; else a ``SettingError`` naming it, never a value read otherwise."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise SettingError(f"{name}={text!r} is not a {'whole ' if kind is int else ''}number") from None
    if not value >= minimum:  # NaN too
        raise SettingError(f"{name}={text!r}: it must be at least {minimum}")
    return value


def env_switch(name: str, default: bool) -> bool:
    """``name`` from the environment as on (1, true, yes, on) or off (0, false, no, off), any case."""
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"{name}={text!r} is neither on (1, true, yes, on) nor off (0, false, no, off)")
