"""FITS ``CHECKSUM``/``DATASUM`` verification of every HDU of a file on disk.

The archive writes both keywords into its FITS products; checking them after a download catches
corruption that a size check cannot, per HDU, so the error can say where the damage is. The header
is parsed here directly (not with astropy) so that a file of any size is summed in bounded memory
with numpy, without building HDU objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BLOCK = 2880
CARD = 80
_SUM_CHUNK = 64 << 20  # bytes summed per numpy call; multiple of 4, bounds memory on big files


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


def _parse_value(raw: str) -> str:
    """The value field of a card (after ``= ``), without comment or string quotes."""
    raw = raw.strip()
    if raw.startswith("'"):
        end = raw.find("'", 1)
        while end != -1 and raw[end + 1 : end + 2] == "'":
            end = raw.find("'", end + 2)
        return raw[1:end if end != -1 else None].replace("''", "'").rstrip()
    return raw.split("/", 1)[0].strip()


def _read_header(mm: np.ndarray, offset: int) -> tuple[dict[str, str], int]:
    """Parse the header starting at ``offset``; return its keywords and the header length."""
    cards: dict[str, str] = {}
    pos = offset
    size = len(mm)
    while True:
        if pos + BLOCK > size:
            raise FitsFormatError(f"header at byte {offset} has no END card before the end of the file")
        block = mm[pos : pos + BLOCK].tobytes().decode("ascii", errors="replace")
        pos += BLOCK
        for i in range(0, BLOCK, CARD):
            card = block[i : i + CARD]
            key = card[:8].rstrip()
            if key == "END":
                return cards, pos - offset
            if card[8:10] == "= " and key not in cards:
                cards[key] = _parse_value(card[10:])


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
    if naxis == 0:
        return 0
    if primary and axes[0] == 0 and cards.get("GROUPS") == "T":
        axes = axes[1:]  # random groups: NAXIS1 = 0 is a placeholder
    elements = 1
    for n in axes:
        elements *= n
    return abs(bitpix) // 8 * gcount * (pcount + elements)


def _sum_range(mm: np.ndarray, start: int, length: int) -> int:
    total = 0
    for pos in range(start, start + length, _SUM_CHUNK):
        total = ones_complement_sum(mm[pos : min(pos + _SUM_CHUNK, start + length)], total)
    return total


def verify_fits(path: Path | str, name: str | None = None) -> FitsCheck:
    """Verify ``CHECKSUM`` and ``DATASUM`` of every HDU of ``path`` that carries them.

    "ok": at least one HDU carries a checksum and all that do are right; "absent": no HDU carries
    one; "bad": a sum is wrong or the file is truncated (``problems`` names the file and HDU);
    "not-fits": the file does not begin with a FITS primary header. ``name`` is the file name used
    in messages (a file verified under a temporary name reports its final one).
    """
    path = Path(path)
    name = name or path.name
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(CARD)
    if size < BLOCK or not head.startswith(b"SIMPLE  =") or head[29:30] != b"T":
        return FitsCheck("not-fits")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    problems: list[str] = []
    hdus = checked = 0
    offset = 0
    try:
        while offset < size:
            if hdus and not mm[offset : offset + 8].tobytes().startswith(b"XTENSION"):
                if mm[offset:].any():  # zero padding after the last HDU is tolerated, not other bytes
                    problems.append(
                        f"{name}: {size - offset} bytes after HDU {hdus - 1} are not an extension"
                    )
                break
            where = f"{name} HDU {hdus}"
            try:
                cards, header_len = _read_header(mm, offset)
                data_len = _data_size(cards, primary=hdus == 0)
            except FitsFormatError as exc:
                problems.append(f"{where}: {exc}")
                break
            if extname := cards.get("EXTNAME"):
                where += f" ({extname})"
            padded = -(-data_len // BLOCK) * BLOCK
            data_start = offset + header_len
            if data_start + padded > size:
                problems.append(
                    f"{where}: truncated, data unit needs {padded} bytes at offset {data_start} "
                    f"but the file is {size} bytes"
                )
                hdus += 1
                break
            if "CHECKSUM" in cards or "DATASUM" in cards:
                checked += 1
                data_sum = _sum_range(mm, data_start, padded)
                if "DATASUM" in cards and cards["DATASUM"].strip() != str(data_sum):
                    problems.append(
                        f"{where}: DATASUM is {cards['DATASUM']!r} but the data sum to {data_sum}"
                    )
                if "CHECKSUM" in cards:
                    header_sum = _sum_range(mm, offset, header_len)
                    if _fold_add(header_sum, data_sum) != 0xFFFFFFFF:
                        problems.append(f"{where}: CHECKSUM {cards['CHECKSUM']!r} does not match")
            hdus += 1
            offset = data_start + padded
    finally:
        del mm
    if problems:
        return FitsCheck("bad", hdus, checked, problems)
    return FitsCheck("ok" if checked else "absent", hdus, checked)
