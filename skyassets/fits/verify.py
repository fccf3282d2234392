"""FITS ``CHECKSUM``/``DATASUM`` verification of every HDU of a file, on disk or as it streams in.

The archive writes both keywords into its FITS products; checking them after a download catches
corruption that a size check cannot, per HDU, so the error can say where the damage is. The header
is parsed here directly (not with astropy) so that a file of any size is summed in bounded memory
with numpy, without building HDU objects. One parser serves both uses: :func:`verify_fits` feeds a
file on disk to the :class:`StreamingFitsVerifier` that a download feeds as the bytes arrive, so
the file is not read a second time once complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skyassets.fits.header import BLOCK, CARD
from skyassets.fits.limits import MAX_NAXIS, VALID_BITPIX

_SUM_CHUNK = 64 << 20  # bytes summed per numpy call; multiple of 4, keeps the uint64 sum from overflowing
_READ_CHUNK = 8 << 20  # bytes read per call by verify_fits


class FitsFormatError(ValueError):
    """The file starts like FITS but its structure is broken (truncated, bad header)."""


@dataclass(frozen=True)
class FitsCheck:
    """Outcome of verifying one file: ``status`` is "ok", "absent", "bad" or "not-fits"."""

    status: str
    hdus: int = 0
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        return "; ".join(self.problems)


def ones_complement_sum(data: bytes | memoryview | np.ndarray, start: int = 0) -> int:
    """32-bit ones' complement sum of big-endian words (FITS checksum arithmetic), added to ``start``.

    ``data`` must have a length that is a multiple of 4 (FITS blocks always do).
    """
    words = np.frombuffer(data, dtype=">u4")
    total = start + int(words.sum(dtype=np.uint64))
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def _fold_add(a: int, b: int) -> int:
    total = a + b
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


# The only keywords the verifier reads (with NAXISn): parsing the values of the rest of a header
# (hundreds of cards in a JWST primary) would cost more than summing its bytes.
_KEYS_READ = frozenset({"BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "GROUPS", "EXTNAME", "CHECKSUM", "DATASUM"})


def _parse_value(raw: str) -> str:
    """The value field of a card (after ``= ``), without comment or string quotes."""
    raw = raw.strip()
    if raw.startswith("'"):
        end = raw.find("'", 1)
        while end != -1 and raw[end + 1 : end + 2] == "'":
            end = raw.find("'", end + 2)
        return raw[1:end if end != -1 else None].replace("''", "'").rstrip()
    return raw.split("/", 1)[0].strip()


def _data_size(cards: dict[str, str], primary: bool) -> int:
    """Size in bytes of the data unit, before padding to a whole block."""
    try:
        bitpix = int(cards["BITPIX"])
        naxis = int(cards["NAXIS"])
        axes = [int(cards[f"NAXIS{i}"]) for i in range(1, naxis + 1)]
        pcount = int(cards.get("PCOUNT", "0"))
        gcount = int(cards.get("GCOUNT", "1"))
    except (KeyError, ValueError) as exc:
        raise FitsFormatError(f"header keyword missing or not an integer: {exc}") from exc
    if bitpix not in VALID_BITPIX:
        raise FitsFormatError(f"BITPIX = {bitpix} is not one of {sorted(VALID_BITPIX)}")
    if not 0 <= naxis <= MAX_NAXIS or any(n < 0 for n in axes):
        raise FitsFormatError(f"NAXIS = {naxis} or an axis length out of range: {axes}")
    if naxis == 0:
        return 0
    if primary and axes[0] == 0 and cards.get("GROUPS") == "T":
        axes = axes[1:]  # random groups: NAXIS1 = 0 is a placeholder
    elements = 1
    for n in axes:
        elements *= n
    size = abs(bitpix) // 8 * gcount * (pcount + elements)
    if size < 0:
        raise FitsFormatError(f"header gives a negative data size ({size} bytes)")
    return size


_HEADER = "header"  # expecting (the rest of) a header block
_DATA = "data"  # inside a data unit
_TRAILING = "trailing"  # after the last HDU: bytes that do not start an extension
_STOPPED = "stopped"  # a header could not be parsed; the rest cannot be located
_NOT_FITS = "not-fits"


class StreamingFitsVerifier:
    """``CHECKSUM``/``DATASUM`` verification of a byte stream fed in order, in chunks of any size.

    A download checks the file as it arrives instead of reading it again once complete. Between
    chunks only a partial header block and a partial 4-byte data word are carried, so memory stays
    bounded whatever the size of the data units; data is summed in large numpy slices, which
    release the GIL, so a feeding thread runs beside the network and the disk.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.size = 0  # bytes fed (or skipped) so far
        self._state = _HEADER
        self._problems: list[str] = []
        self._hdus = 0  # complete HDUs
        self._checked = 0
        self._block = bytearray()  # the start of a header block split across chunks
        self._garbage = False  # trailing bytes that are not zero padding
        # The HDU being read:
        self._hdu_start = 0
        self._header_blocks = 0
        self._header_sum = 0
        self._cards: dict[str, str] = {}
        self._where = ""
        self._data_start = 0
        self._padded = 0
        self._remaining = 0
        self._summing = False
        self._data_sum = 0
        self._word = bytearray()  # the start of a data word split across chunks

    @property
    def settled(self) -> bool:
        """Whether further bytes can no longer change the outcome (only how many there are)."""
        return self._state in (_NOT_FITS, _STOPPED) or (self._state == _TRAILING and self._garbage)

    def update(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Feed the next bytes of the stream."""
        view = memoryview(data).cast("B")
        while view:
            if self._state == _HEADER:
                used = self._feed_header(view)
            elif self._state == _DATA:
                used = self._feed_data(view)
            else:
                if self._state == _TRAILING and not self._garbage:
                    self._garbage = bool(np.frombuffer(view, dtype=np.uint8).any())
                used = len(view)
            self.size += used
            view = view[used:]

    def skip(self, n: int) -> None:
        """Count ``n`` more bytes without reading them, which only a settled verifier may do."""
        if n and not self.settled:
            raise ValueError("bytes can be skipped only once the outcome is settled")
        self.size += n

    def result(self) -> FitsCheck:
        """The outcome for the bytes fed so far, taken as the whole file."""
        if self._state == _NOT_FITS or (self._hdus == 0 and self._header_blocks == 0):
            return FitsCheck("not-fits")
        problems = list(self._problems)
        hdus = self._hdus
        if self._state == _HEADER and (self._header_blocks or self._block):
            if self._header_blocks == 0 and not self._block.startswith(b"XTENSION"):
                if any(self._block):
                    problems.append(self._trailing_problem())
            else:
                problems.append(
                    f"{self.name} HDU {hdus}: header at byte {self._hdu_start} has no END card "
                    "before the end of the file"
                )
        elif self._state == _DATA:
            problems.append(
                f"{self._where}: truncated, data unit needs {self._padded} bytes at offset "
                f"{self._data_start} but the file is {self.size} bytes"
            )
            hdus += 1
        elif self._state == _TRAILING and self._garbage:
            problems.append(self._trailing_problem())
        if problems:
            return FitsCheck("bad", hdus, self._checked, problems)
        return FitsCheck("ok" if self._checked else "absent", hdus, self._checked)

    def _trailing_problem(self) -> str:
        return f"{self.name}: {self.size - self._hdu_start} bytes after HDU {self._hdus - 1} are not an extension"

    def _feed_header(self, view: memoryview) -> int:
        """Take header bytes up to the end of one block; parse the block once it is whole."""
        if not self._block and len(view) >= BLOCK:
            self._header_block(view[:BLOCK].tobytes())
            return BLOCK
        used = min(BLOCK - len(self._block), len(view))
        self._block += view[:used]
        if len(self._block) == BLOCK:
            block = bytes(self._block)
            self._block.clear()
            self._header_block(block)
        return used

    def _header_block(self, block: bytes) -> None:
        if self._header_blocks == 0:
            if self._hdus == 0:
                if not block.startswith(b"SIMPLE  =") or block[29:30] != b"T":
                    self._state = _NOT_FITS
                    return
            elif not block.startswith(b"XTENSION"):
                # zero padding after the last HDU is tolerated, not other bytes
                self._state = _TRAILING
                self._garbage = any(block)
                return
        self._header_blocks += 1
        self._header_sum = ones_complement_sum(block, self._header_sum)
        text = block.decode("ascii", errors="replace")
        for i in range(0, BLOCK, CARD):
            card = text[i : i + CARD]
            key = card[:8].rstrip()
            if key == "END":
                self._end_header()
                return
            if card[8:10] == "= " and (key in _KEYS_READ or key.startswith("NAXIS")) and key not in self._cards:
                self._cards[key] = _parse_value(card[10:])

    def _end_header(self) -> None:
        where = f"{self.name} HDU {self._hdus}"
        try:
            data_len = _data_size(self._cards, primary=self._hdus == 0)
        except FitsFormatError as exc:
            self._problems.append(f"{where}: {exc}")
            self._state = _STOPPED
            return
        if extname := self._cards.get("EXTNAME"):
            where += f" ({extname})"
        self._where = where
        self._padded = self._remaining = -(-data_len // BLOCK) * BLOCK
        self._data_start = self._hdu_start + self._header_blocks * BLOCK
        self._summing = "CHECKSUM" in self._cards or "DATASUM" in self._cards
        self._data_sum = 0
        self._state = _DATA
        if not self._remaining:
            self._end_data()

    def _feed_data(self, view: memoryview) -> int:
        used = min(self._remaining, len(view))
        if self._summing:
            self._sum_data(view[:used])
        self._remaining -= used
        if not self._remaining:
            self._end_data()
        return used

    def _sum_data(self, view: memoryview) -> None:
        """Add whole words to the data sum; keep a word split across chunks for the next one."""
        total = self._data_sum
        if self._word:
            used = min(4 - len(self._word), len(view))
            self._word += view[:used]
            view = view[used:]
            if len(self._word) < 4:
                return
            total = _fold_add(total, int.from_bytes(self._word, "big"))
            self._word.clear()
        whole = len(view) - len(view) % 4
        for pos in range(0, whole, _SUM_CHUNK):
            total = ones_complement_sum(view[pos : min(pos + _SUM_CHUNK, whole)], total)
        self._word += view[whole:]
        self._data_sum = total

    def _end_data(self) -> None:
        cards = self._cards
        if self._summing:
            self._checked += 1
            if "DATASUM" in cards and cards["DATASUM"].strip() != str(self._data_sum):
                self._problems.append(
                    f"{self._where}: DATASUM is {cards['DATASUM']!r} but the data sum to {self._data_sum}"
                )
            if "CHECKSUM" in cards and _fold_add(self._header_sum, self._data_sum) != 0xFFFFFFFF:
                self._problems.append(f"{self._where}: CHECKSUM {cards['CHECKSUM']!r} does not match")
        self._hdus += 1
        self._hdu_start = self._data_start + self._padded
        self._header_blocks = 0
        self._header_sum = 0
        self._cards = {}
        self._state = _HEADER


def verify_fits(path: Path | str, name: str | None = None) -> FitsCheck:
    """Verify ``CHECKSUM`` and ``DATASUM`` of every HDU of ``path`` that carries them.

    "ok": at least one HDU carries a checksum and all that do are right; "absent": no HDU carries
    one; "bad": a sum is wrong or the file is truncated (``problems`` names the file and HDU);
    "not-fits": the file does not begin with a FITS primary header. ``name`` is the file name used
    in messages (a file verified under a temporary name reports its final one). Reading stops as
    soon as the rest of the file cannot change the outcome (a large non-FITS file costs one block).
    """
    path = Path(path)
    verifier = StreamingFitsVerifier(name or path.name)
    with path.open("rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buffer = bytearray(min(size, _READ_CHUNK))
        view = memoryview(buffer)
        while not verifier.settled and (n := f.readinto(buffer)):
            verifier.update(view[:n])
    if verifier.settled:
        verifier.skip(size - verifier.size)
    return verifier.result()
