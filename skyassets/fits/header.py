"""FITS headers read straight from their bytes, as astropy reads them, and the HDUs of a file.

Astropy parses every card of a header into objects, which costs more than the whole of the rest of
cataloguing a file with a few hundred cards. Plain headers (printable ASCII, keyword fields of
upper-case letters, digits, ``_`` and ``-``, plain string, logical and number values) are read here
instead; a card astropy reads in its own way (CONTINUE, HIERARCH, record-valued, lower-case) is
given to astropy's ``Card`` alone. Anything else raises ``NotPlainFits`` and the caller falls back
to astropy. :class:`FitsHeader` is one HDU's header either way, and :func:`walk_hdus` finds the HDUs
of a plain file (offsets, sizes, shapes) reading only their headers. The tests compare both
readings on crafted and random headers.

A header read stops after :data:`MAX_HEADER_BYTES`: a file that starts like FITS but has no END
card (junk, or a download cut short in its first header) raises :class:`HeaderTooLong` instead of
being read to its end, as astropy would.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

# Astropy is imported only where a card needs it: checksums and downloads use the constants alone.
if TYPE_CHECKING:
    from astropy.io import fits

BLOCK = 2880  # bytes of a FITS block: headers and data are padded to whole blocks
CARD = 80  # bytes of a header card
# Bytes of one HDU's header read at most while looking for its END card: 4 MiB (about 52,000
# cards), twenty times the largest JWST and HST headers (< 200 kB), little to hold in memory.
MAX_HEADER_BYTES = 4 << 20


class NotPlainFits(Exception):
    """Header bytes that only astropy reads right: compression, unusual cards, truncation."""


class HeaderTooLong(Exception):
    """A header without an END card in its first :data:`MAX_HEADER_BYTES`: not FITS, or a header
    astropy would read to the end of the file (so the caller must not fall back to astropy)."""


# What keyword lookups are made with: ``get``, ``in`` and ``[]`` with standard keywords. Astropy's
# Header is registered as a Mapping.
HeaderLookup = Mapping[str, Any]

_END_CARD = b"END" + b" " * 77
_SIMPLE_T = b"SIMPLE  =                    T"
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
# Keyword fields whose cards astropy reads in its own way, even when they look plain.
_ASTROPY_FIELDS = frozenset((b"HIERARCH", b"CONTINUE"))
_COMMENTARY_FIELDS = frozenset((b"        ", b"COMMENT ", b"HISTORY "))


def header_end(header: bytes) -> int:
    """Where the END card of header blocks starts, or -1.

    Astropy also ends a header at a card that starts with END and a character that cannot be
    part of a keyword; such a card raises ``NotPlainFits``.
    """
    match = _END_RE.match(header)
    while match is not None:
        at = match.end() - 3
        if header[at:at + CARD] == _END_CARD:
            return at
        if header[at + 3] not in _KEYWORD_CHARS:
            raise NotPlainFits("END card with more on it")
        match = _END_RE.match(header, at + CARD)
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


_UNPRINTABLE_RE = re.compile(r"[^\x20-\x7e]")


def card_text(value: str) -> str:
    """``value`` as a FITS card can hold it (printable ASCII): any other character written as a
    Python escape (``ü`` as ``\\xfc``), so a file's own name, whatever its script, still reads
    back exactly in a product's header."""
    return _UNPRINTABLE_RE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), value)


def named_card(name: str, comment: str) -> tuple[str, str]:
    """A card's (value, comment) naming a file: the name as :func:`card_text` writes it, and the
    comment only where the card holds it whole. Otherwise astropy would cut the comment, with a
    warning in the log of every run that writes the card (for "input file[hdu]", names of 52 to 68
    characters). A name longer than a card is written on CONTINUE cards, which keep the comment."""
    text = card_text(name)
    quoted = "'" + text.replace("'", "''").ljust(8) + "'"
    fits_whole = len(quoted) > 70 or 10 + len(quoted) + 3 + len(comment) <= 80
    return text, comment if fits_whole else ""


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


def read_header_blocks(f: BinaryIO, limit: int = MAX_HEADER_BYTES) -> bytes:
    """The blocks of the header at the file position, up to the one with its END card.

    ``NotPlainFits`` when the first block does not start a FITS header (SIMPLE or XTENSION) or
    the file ends inside the header; :class:`HeaderTooLong` after ``limit`` bytes without END.
    """
    start = f.tell()
    block = f.read(BLOCK)
    if not block.startswith((b"SIMPLE  =", b"XTENSION=")):
        raise NotPlainFits("no SIMPLE or XTENSION card where a header starts")
    blocks = []
    while True:
        if len(block) != BLOCK:
            raise NotPlainFits("file ends inside a header")
        blocks.append(block)
        if header_end(block) >= 0:
            return b"".join(blocks)
        if len(blocks) * BLOCK >= limit:
            raise HeaderTooLong(f"no END card in the first {limit} bytes of the header at byte {start}")
        block = f.read(BLOCK)


def _json_value(v: Any) -> Any:
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    from astropy.io import fits

    return None if isinstance(v, fits.card.Undefined) else str(v)


def header_dict(h: fits.Header) -> dict[str, Any]:
    """A header as a JSON-able dict; COMMENT and HISTORY cards become lists of lines, and a card
    astropy cannot parse keeps its raw 80 characters."""
    from astropy.io import fits

    out: dict[str, Any] = {}
    for card in h.cards:
        key = card.keyword
        if not key:
            continue
        try:
            value = card.value
        except fits.VerifyError:
            value = card.image
        _add_card(out, key, value)
    return out


def _add_card(out: dict[str, Any], key: str, value: Any) -> None:
    if key in ("COMMENT", "HISTORY"):
        out.setdefault(key, []).append(str(value))
    else:
        out[key] = _json_value(value)


class _Cards(NamedTuple):
    """Every card of a plain header, read as astropy reads them."""

    json: dict[str, Any]  # as header_dict gives it
    values: dict[str, Any]  # Header.get's value of each keyword but commentary ones, None if undefined
    count: int  # as astropy counts cards: one with the CONTINUE cards after it is one
    by_astropy: set[str]  # keywords of the cards given to astropy's Card


def _read_cards(cards: bytes) -> _Cards:
    """Plain cards read directly, the others (CONTINUE, HIERARCH, record-valued ...) with
    astropy's ``Card``, one by one: parsing every card's value with astropy costs more than all
    the rest of a catalogue row."""
    out = _Cards({}, {}, 0, set())
    # Header.get of a record-valued card's own keyword (DP1 of DP1.AXIS.1) gives its raw value
    # when no card has that keyword.
    raw_values: dict[str, Any] = {}
    count, at, size = 0, 0, len(cards)
    while at < size:
        stop = at + CARD
        while cards.startswith(b"CONTINUE", stop):
            stop += CARD
        count += 1
        image = cards[at:stop]
        at = stop
        field = image[:8]
        if len(image) == CARD and plain_keyword(field) and field not in _ASTROPY_FIELDS:
            if field in _COMMENTARY_FIELDS:
                key = field.rstrip().decode("ascii")
                if key:
                    out.json.setdefault(key, []).append(image[8:].rstrip().decode("ascii"))
                continue
            if image[8:10] == b"= ":
                try:
                    value = plain_value(image)
                except NotPlainFits:
                    pass
                else:
                    key = field.rstrip().decode("ascii")
                    out.json[key] = _json_value(value)
                    out.values.setdefault(key, value)
                    continue
        _add_with_astropy(out, image, raw_values)
    for key, value in raw_values.items():
        out.values.setdefault(key, value)
    return out._replace(count=count)


def _add_with_astropy(out: _Cards, image: bytes, raw_values: dict[str, Any]) -> None:
    from astropy.io import fits

    try:
        card = fits.Card.fromstring(image.decode("ascii"))
        key, value = card.keyword, card.value
    except Exception as exc:  # astropy's Header then raises where it used to, if at all
        raise NotPlainFits(f"card {image[:8]!r} astropy cannot parse") from exc
    if not key:
        return
    normalized = fits.Card.normalize_keyword(key)
    out.by_astropy.add(normalized)
    _add_card(out.json, key, value)
    if card.field_specifier is not None:
        out.by_astropy.add(card.rawkeyword)
        raw_values.setdefault(card.rawkeyword, card.rawvalue)
    if key not in ("COMMENT", "HISTORY"):
        out.values.setdefault(normalized, None if value == fits.card.UNDEFINED else value)


class ParsedCards(Mapping[str, Any]):
    """Astropy's Header for keyword lookups, where a card astropy cannot parse (a byte that is not
    ASCII, a value such as ``NaN``) gives None instead of raising ``VerifyError``: one odd card
    must not make a whole file unreadable, and its raw text stays in :attr:`FitsHeader.json`.
    Callers that need the keyword (a WCS) see it present with no value."""

    def __init__(self, header: fits.Header):
        self.header = header

    def __getitem__(self, keyword: str) -> Any:
        from astropy.io import fits

        try:
            return self.header[keyword]
        except fits.VerifyError:
            return None

    def get(self, keyword: str, default: Any = None) -> Any:
        return self[keyword] if keyword in self.header else default

    def __contains__(self, keyword: object) -> bool:
        return keyword in self.header

    def __iter__(self) -> Iterator[str]:
        return iter(self.header)

    def __len__(self) -> int:
        return len(self.header)


class _Index(NamedTuple):
    """Which card holds each keyword field, for looking a few keywords up without reading every
    card; repeated fields and ``odd`` ones (commentary, continued, also written as HIERARCH) are
    left to the full reading."""

    fields: list[bytes]  # the keyword field of each card
    last: dict[bytes, int]  # field -> number of its last card
    odd: set[bytes]


_FIELDS: dict[str, bytes] = {}  # keyword -> its 8-byte field, for the keywords looked up so far


def _field(keyword: str) -> bytes:
    field = keyword.upper().ljust(8).encode("ascii", "replace")  # astropy's keywords ignore case
    if len(_FIELDS) < _PLAIN_FIELDS_MAX:
        _FIELDS[keyword] = field
    return field


class FitsHeader:
    """One HDU's header, looked up as astropy's ``Header.get`` would (undefined values as None).

    Plain header bytes are read directly: a few keywords from their cards alone (what the HDU
    walk and a partition key need), every card on first use of :attr:`lookup`, :attr:`json` or
    :attr:`count`, which raises ``NotPlainFits`` for a card astropy cannot parse. A header that is
    not plain is astropy's ``Header`` (:meth:`opened`).
    """

    def __init__(self, raw: bytes | None, header: fits.Header | None = None):
        """``raw``: header blocks up to END, ``NotPlainFits`` unless they are plain; ``header``:
        astropy's, when astropy opened the HDU (the only source when ``raw`` is None)."""
        if raw is None and header is None:
            raise ValueError("a FitsHeader needs its bytes or astropy's Header")
        self.raw = raw
        self._header = header
        self._cards = None if raw is None else plain_cards(raw)
        self._all: _Cards | None = None

    @classmethod
    def opened(cls, header: fits.Header, raw: bytes | None = None) -> FitsHeader:
        """The header of an HDU astropy opened; its bytes serve the lookups unless they are not
        plain or astropy changed the header (EXTEND set in a primary header with extensions)."""
        if raw is not None:
            try:
                plain = cls(raw, header)
                if plain.count == len(header) and plain.json.get("EXTEND", True) is True:
                    return plain
            except NotPlainFits:
                pass
        return cls(None, header)

    @property
    def plain(self) -> bool:
        """Whether the header is read from its bytes rather than through astropy."""
        return self._cards is not None

    @property
    def astropy(self) -> fits.Header:
        """Astropy's Header, built from the bytes when first needed (for a WCS)."""
        if self._header is None:
            from astropy.io import fits

            assert self.raw is not None
            self._header = fits.Header.fromstring(self.raw)
        return self._header

    def _read(self) -> _Cards:
        if self._all is None:
            assert self._cards is not None
            self._all = _read_cards(self._cards)
        return self._all

    def read_all(self) -> None:
        """Read every card now: ``NotPlainFits`` here rather than at the first lookup."""
        if self.plain:
            self._read()

    @property
    def lookup(self) -> HeaderLookup:
        """For keyword lookups: a dict of the values astropy's Header gives, when plain; else
        astropy's Header, a card it cannot parse reading as None (see :class:`ParsedCards`)."""
        return self._read().values if self.plain else ParsedCards(self.astropy)

    @property
    def count(self) -> int:
        """Cards as astropy counts them."""
        return self._read().count if self.plain else len(self.astropy)

    @cached_property
    def json(self) -> dict[str, Any]:
        """The header as a JSON-able dict (see :func:`header_dict`)."""
        return self._read().json if self.plain else header_dict(self.astropy)

    @cached_property
    def _index(self) -> _Index | None:
        """None when a keyword field is not plain: astropy could read it as any keyword. Built
        with dicts over all fields at once, as a loop over the cards costs more than the lookups."""
        cards = self._cards
        assert cards is not None
        fields = [cards[at:at + 8] for at in range(0, len(cards), CARD)]
        last = dict(zip(fields, range(len(fields)), strict=True))
        if not _PLAIN_FIELDS.issuperset(last) and not all(map(plain_keyword, last)):
            return None
        odd = {*_ASTROPY_FIELDS, *_COMMENTARY_FIELDS}
        if b"CONTINUE" in last or b"HIERARCH" in last:
            before = b""
            for n, field in enumerate(fields):
                if field == b"CONTINUE":
                    odd.add(before)
                    continue
                if field == b"HIERARCH":
                    at = n * CARD
                    odd.add(cards[at + 9:at + CARD].partition(b"=")[0].strip().upper().ljust(8))
                before = field
        return _Index(fields, last, odd)

    def _card(self, keyword: str) -> bytes | None:
        """The ``KEYWORD = value`` card of ``keyword`` when its value alone is astropy's, b"" when
        the header has no such keyword; None when only reading every card can tell."""
        if self._all is not None or len(keyword) > 8:
            return None
        field = _FIELDS.get(keyword) or _field(keyword)
        index = self._index
        if index is None or field in index.odd:
            return None
        n = index.last.get(field)
        if n is None:
            return b""
        if index.fields.index(field) != n:
            return None  # given twice: astropy looks values up in the first card, sizes HDUs from the last
        assert self._cards is not None
        card = self._cards[n * CARD:(n + 1) * CARD]
        return card if card[8:10] == b"= " else None

    def get(self, keyword: str) -> Any:
        """The value astropy's ``Header.get`` gives, None when absent or undefined."""
        if self.plain:
            card = self._card(keyword)
            if card is not None:
                try:
                    return plain_value(card) if card else None
                except NotPlainFits:
                    pass
            return self._read().values.get(keyword)
        return self.lookup.get(keyword)

    def __contains__(self, keyword: str) -> bool:
        """Whether astropy's Header has the keyword."""
        if self.plain:
            card = self._card(keyword)
            if card is not None:
                return bool(card)
        return keyword in self.lookup

    def integer(self, keyword: str, low: int = 0, high: int = 1 << 62) -> int:
        """A keyword that sizes the HDU, as astropy reads it; ``NotPlainFits`` unless it is a plain
        integer from ``low`` to ``high`` (astropy sizes HDUs from the last card of a keyword,
        looks values up in the first)."""
        value = None
        if self.plain:
            card = self._card(keyword)
            if card:
                try:
                    value = plain_value(card)
                except NotPlainFits:
                    card = None
            if card is None:
                cards = self._read()
                value, last = cards.values.get(keyword), cards.json.get(keyword)
                if keyword in cards.by_astropy or type(last) is not int or last != value:
                    value = None
        if type(value) is not int or not low <= value <= high:
            raise NotPlainFits(f"{keyword} = {value!r}")
        return value


_XTENSIONS = ("IMAGE", "BINTABLE", "TABLE")
_BITPIX = (8, 16, 32, 64, -32, -64)


@dataclass(frozen=True)
class Hdu:
    """One HDU of a plain file: where it is, its header and the shape of its data."""

    index: int
    kind: str  # PRIMARY, IMAGE, BINTABLE or TABLE
    header: FitsHeader
    offset: int  # of its header
    data_offset: int
    data_size: int  # as its header announces it, without the padding
    shape: tuple[int, ...]  # NAXIS1, NAXIS2, ...

    @property
    def end(self) -> int:
        """Where the next HDU starts; beyond the file's size when the file is truncated."""
        return self.data_offset + self.data_size + -self.data_size % BLOCK


def walk_hdus(f: BinaryIO, size: int, *, read_all: bool = False) -> Iterator[Hdu]:
    """The HDUs of a plain uncompressed FITS file of ``size`` bytes, each read (its header only)
    when the caller asks for the next, as astropy would read them.

    Raises ``NotPlainFits`` where astropy might read the file otherwise: HDUs other than the
    primary, image and table ones, compressed images, random groups, structural keywords that are
    missing, odd or given twice, bytes after the last HDU, and bytes after a primary with data and
    without EXTEND = T (astropy looks for an extension while it opens the file). A truncated HDU
    is given as it is (its ``end`` beyond ``size``) and ends the walk. ``read_all`` reads every
    card of each header first, for callers that will want them all (cheaper than the lookups one
    by one).
    """
    offset = index = 0
    while offset < size:
        f.seek(offset)
        raw = read_header_blocks(f)
        header = FitsHeader(raw)
        if read_all:
            header.read_all()
        if index == 0:
            if not raw.startswith(_SIMPLE_T) or header.get("SIMPLE") is not True:
                raise NotPlainFits("not a plain primary header")
            if any(k in header for k in ("GROUPS", "PCOUNT", "GCOUNT")):
                raise NotPlainFits("GROUPS, PCOUNT or GCOUNT in the primary header")
            kind = "PRIMARY"
        else:
            kind = header.get("XTENSION") if raw.startswith(b"XTENSION= ") else None
            if kind not in _XTENSIONS or "ZIMAGE" in header:
                raise NotPlainFits(f"XTENSION = {kind!r}")
        bitpix = header.integer("BITPIX", -64, 64)
        if bitpix not in _BITPIX:
            raise NotPlainFits(f"BITPIX = {bitpix}")
        naxis = header.integer("NAXIS", 0, 999)
        shape = tuple(header.integer(f"NAXIS{n}") for n in range(1, naxis + 1))
        if kind == "PRIMARY":
            gcount, pcount = 1, 0
        else:
            gcount, pcount = header.integer("GCOUNT"), header.integer("PCOUNT")
        if kind in ("PRIMARY", "IMAGE"):
            for keyword in ("BZERO", "BSCALE", "BLANK"):
                header.get(keyword)  # astropy reads them to build the HDU: NotPlainFits if it could not
        data = abs(bitpix) * gcount * (pcount + math.prod(shape)) // 8 if naxis else 0
        hdu = Hdu(index, kind, header, offset, offset + len(raw), data, shape)
        if index == 0 and naxis and hdu.end < size and header.get("EXTEND") is not True:
            raise NotPlainFits("bytes after a primary HDU with data and without EXTEND = T")
        yield hdu
        offset, index = hdu.end, index + 1
