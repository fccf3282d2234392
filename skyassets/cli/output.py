"""Query results as a person or another program reads them: a table, CSV or JSON lines.

Every format keeps values whole and says NULL the same way: an empty CSV field, JSON ``null``, and
``NULL`` in the table (NaN too, which DuckDB hands over for a NULL of a float column; an infinity
is ``inf`` or ``-inf``, and ``null`` in JSON, which has no infinities). Lists (an image's
``locations``) are JSON arrays in CSV and JSON, so a spreadsheet or ``jq`` reads them without
Python's quoting; numbers keep their full precision.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, TextIO

import numpy as np
import pandas as pd


def one_line(text: str) -> str:
    """``text`` with its control characters (a newline or an escape sequence in a file name) written
    as Python escapes, so that it stays on its line of a table or a summary and cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def counted(n: int, noun: str) -> str:
    """``n`` and the noun, singular for one: "1 file", "3 files" (``noun`` is the plural)."""
    return f"{n} {noun.removesuffix('s') if n == 1 else noun}"


def plain(value: Any) -> Any:
    """A cell as JSON has it: None for NULL and NaN, lists for arrays, ISO text for times, Python
    numbers for NumPy ones."""
    if value is None or value is pd.NaT or value is pd.NA:  # pd.NA: a NULL of an integer or boolean column
        return None
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dt.datetime, dt.date, dt.time, pd.Timestamp)):
        return value.isoformat()
    if isinstance(value, (dt.timedelta, pd.Timedelta)):
        return str(value)
    if isinstance(value, Decimal):  # a DECIMAL: exact in a table or CSV, a number in JSON
        return int(value) if value == value.to_integral_value() and value.is_finite() else float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _cell(value: Any, null: str) -> str:
    """A cell as text: ``null`` for NULL, JSON for lists and structs."""
    if isinstance(value, Decimal) and value.is_finite():
        return format(value, "f")
    if isinstance(value, (float, np.floating)) and math.isinf(value):  # a value, not a NULL; JSON has none
        return "inf" if value > 0 else "-inf"
    value = plain(value)
    if value is None:
        return null
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def write_frame(frame: pd.DataFrame, fmt: str, out: TextIO, *, numeric: Sequence[bool] | None = None) -> None:
    """Write ``frame`` as ``table``, ``csv`` or ``json`` (one object per line) to ``out``; ``numeric``
    says which columns a table aligns right (by default, those of a numeric dtype)."""
    columns = [str(c) for c in frame.columns]
    rows = frame.itertuples(index=False, name=None)
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(v, "") for v in row] for row in rows)
    elif fmt == "json":
        for row in rows:
            out.write(json.dumps(dict(zip(columns, map(plain, row), strict=True)), ensure_ascii=False) + "\n")
    elif not columns:
        out.write("(no columns)\n")
    elif frame.empty:  # the header and a count, as a database shell prints no rows
        out.write("  ".join(columns) + "\n(0 rows)\n")
    else:
        cells = [[one_line(_cell(v, "NULL")) for v in row] for row in rows]
        if numeric is None:
            numeric = [pd.api.types.is_numeric_dtype(frame.iloc[:, i]) for i in range(len(columns))]
        widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
        for row in [columns, *cells]:
            cells_out = (v.rjust(w) if n else v.ljust(w) for v, w, n in zip(row, widths, numeric, strict=True))
            out.write("  ".join(cells_out).rstrip() + "\n")
