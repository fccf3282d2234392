"""Materialisation metadata that renders in the Dagster UI: schema, row count, preview table."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

_TYPES = {"i": "int", "u": "int", "f": "float", "b": "bool", "M": "datetime"}


def _cell(value: Any) -> str | int | float | bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def table_schema(frame: pd.DataFrame) -> TableSchema:
    return TableSchema(
        columns=[TableColumn(name=str(c), type=_TYPES.get(frame[c].dtype.kind, "string")) for c in frame.columns]
    )


def frame_metadata(frame: pd.DataFrame, *, preview_columns: list[str] | None = None, rows: int = 10) -> dict[str, Any]:
    """Row count, column schema and a preview of the first ``rows`` rows."""
    preview = frame[[c for c in (preview_columns or list(frame.columns)) if c in frame.columns]].head(rows)
    records = [TableRecord({str(k): _cell(v) for k, v in row.items()}) for row in preview.to_dict("records")]
    return {
        "dagster/row_count": len(frame),
        "dagster/column_schema": table_schema(frame),
        "preview": MetadataValue.table(records=records, schema=table_schema(preview)),
    }
