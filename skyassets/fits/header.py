"""FITS header cards read straight from their bytes, for the headers where that gives what astropy gives.

Astropy parses every card of a header into objects, which costs more than the whole of the rest of
cataloguing a file with a few hundred cards. Plain headers (printable ASCII, upper-case keywords,
plain string, logical and number values) are read here instead; anything else raises
``NotPlainFits`` and the caller falls back to astropy. The tests compare both on crafted and
random headers.
"""

from __future__ import annotations

import re
from typing import Any, BinaryIO

_BLOCK = 2880
_CARD = 80
class NotPlainFits(Exception):
    """Header bytes that only astropy reads right: compression, unusual cards, truncation."""


_BLOCK = 2880
_CARD = 80
_END_CARD = b"END" + b" " * 77
_PRINTABLE = bytes(range(0x20, 0x7F))
_KEYWORD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_END_RE = re.compile(rb"(?:.{80})*?END", re.DOTALL)  # the first card that starts with END
# Fields of plain keywords seen so far: most recur in every file.
_PLAIN_FIELD_RE = re.compile(rb"[A-Z0-9_-]* *")
_PLAIN_FIELDS: set[bytes] = set()
_PLAIN_FIELDS_MAX = 10000
# The value field after "= ": a quoted string ('' for a quote), T or F, an integer or a real in
# the fixed format, or nothing (undefined); then an optional comment. Complex values are left out.
_VALUE_RE = re.compile(
    rb" *(?:'([^']*(?:''[^']*)*)'|([TF])"
    rb"|([+-]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[DE][+-]?[0-9]+)?))? *(?:/.*)?"
)
_INT_RE = re.compile(rb"[+-]?[0-9]+")


def header_end(header: bytes) -> int:
    """Where the END card of header blocks starts, or -1.

    Astropy also ends a header at a card that starts with END and a character that cannot be
    part of a keyword; such a card raises ``NotPlainFits``.
    """
    match = _END_RE.match(header)
    while match is not None:
        at = match.end() - 3
        if header[at:at + _CARD] == _END_CARD:
            return at
        if header[at + 3] not in _KEYWORD_CHARS:
            raise NotPlainFits("END card with more on it")
        match = _END_RE.match(header, at + _CARD)
    return -1


def plain_cards(header: bytes) -> bytes:
    """The cards before the END card of header blocks, checked to be printable ASCII."""
    end = header_end(header)
    if end < 0:
        raise NotPlainFits("no END card")
    return _printable(header[:end])


def _printable(cards: bytes) -> bytes:
    """``cards`` unchanged if they are printable ASCII, else ``NotPlainFits``."""
    if cards.translate(None, _PRINTABLE):
        raise NotPlainFits("bytes that are not printable ASCII")
    return cards


def plain_keyword(field: bytes) -> bool:
    """Whether a card's 8-byte keyword field is upper-case letters, digits, "_" and "-" padded
    with spaces: then astropy's keyword for the card is the field stripped."""
    if field in _PLAIN_FIELDS:
        return True
    if not _PLAIN_FIELD_RE.fullmatch(field):
        return False
    if len(_PLAIN_FIELDS) < _PLAIN_FIELDS_MAX:
        _PLAIN_FIELDS.add(field)
    return True


def plain_value(card: bytes) -> Any:
    """The value astropy's ``Header.get`` gives for a printable ``KEYWORD = value`` card (None
    when undefined); ``NotPlainFits`` where astropy's reading may differ (complex values, strings
    that may be record-valued keyword cards or whose '' could end the string early)."""
    match = _VALUE_RE.fullmatch(card, 10)
    if match is None:
        raise NotPlainFits(f"value of {card[:8]!r}")
    string, logical, number = match.groups()
    if string is not None:
        if b": " in string or (b"''" in string and b"/" in string):
            raise NotPlainFits(f"string value of {card[:8]!r}")
        return string.replace(b"''", b"'").decode("ascii").rstrip()
    if logical is not None:
        return logical == b"T"
    if number is not None:
        if _INT_RE.fullmatch(number):
            return int(number)
        return float(number.replace(b"D", b"E"))
    return None


def read_header_blocks(f: BinaryIO) -> bytes:
    """The blocks of the header at the file position, up to the one with its END card."""
    blocks = []
    while True:
        block = f.read(_BLOCK)
        if len(block) != _BLOCK:
            raise NotPlainFits("file ends inside a header")
        blocks.append(block)
        if header_end(block) >= 0:
            return b"".join(blocks)
