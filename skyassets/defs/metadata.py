"""Materialisation metadata that renders in the Dagster UI: schema, row count, preview table.

A run of many partitions stores one materialisation per partition: each gets its own figures and
preview, and the run's totals; the column schema is declared once on the asset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
from dagster import AssetExecutionContext, MetadataValue, TableColumn, TableRecord, TableSchema

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


def column_schema(schema: pa.Schema) -> dict[str, TableSchema]:
    """Definition metadata for an asset whose Parquet files share ``schema``; units go with the descriptions."""
    columns = []
    for field in schema:
        meta = field.metadata or {}
        description = meta.get(b"description", b"").decode()
        if b"unit" in meta:
            description = f"{description} [{meta[b'unit'].decode()}]".strip()
        columns.append(TableColumn(name=field.name, type=str(field.type), description=description or None))
    return {"dagster/column_schema": TableSchema(columns=columns)}


def preview(frame: pd.DataFrame, columns: Sequence[str] | None = None, rows: int = 10) -> MetadataValue:
    """The first ``rows`` rows of ``frame`` as a table the UI renders."""
    head = frame[[c for c in (columns or list(frame.columns)) if c in frame.columns]].head(rows)
    records = [TableRecord({str(k): _cell(v) for k, v in row.items()}) for row in head.to_dict("records")]
    return MetadataValue.table(records=records, schema=table_schema(head))


def frame_metadata(frame: pd.DataFrame, *, preview_columns: list[str] | None = None, rows: int = 10) -> dict[str, Any]:
    """Row count, column schema and a preview of the first ``rows`` rows (for unpartitioned assets)."""
    return {
        "dagster/row_count": len(frame),
        "dagster/column_schema": table_schema(frame),
        "preview": preview(frame, preview_columns, rows),
    }


# Dagster checks every per-partition metadata call against the run's key range by reading all the
# keys of the dynamic partitions definition from the instance: about 15 ms a call with 200 keys on
# SQLite, more with more keys, plus the preview. At 200 partitions that was 8 s of a 1,000-file run
# (`bench/ingest.py`), so runs of more partitions than this keep to the run's totals, but for as many
# partitions that have a bad file to name.
PER_PARTITION_LIMIT = 25


def run_figures(partitions: int, figures: dict[str, Any]) -> dict[str, Any]:
    """A run's own figures for the metadata Dagster gives every partition it materialises: as they
    are on a run of one partition; on a run of several, named ``<figure>_in_run``, so that no
    partition shows the run's figures as its own."""
    return figures if partitions <= 1 else {f"{name}_in_run": value for name, value in figures.items()}


def partition_metadata(
    context: AssetExecutionContext,
    frame: pd.DataFrame,
    *,
    preview_columns: list[str],
    by: str,
    figures: Callable[[pd.DataFrame], dict[str, Any]] | None = None,
    per_key: Mapping[str, dict[str, Any]] | None = None,
    run: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata of a run's materialisations, each partition's own first and the ``run``'s figures after.

    A run of one partition: its row count, schema, preview, ``figures`` and ``run``. A run of up to
    ``PER_PARTITION_LIMIT``: each partition's own row count, preview and ``figures`` (its rows are
    those whose ``by`` column holds its key) on its own materialisation, then the run's totals
    (``<figure>_in_run``, as :func:`run_figures` names them). ``per_key`` adds what a partition's
    rows do not say (the files of it that were quarantined) to that partition's. A larger run: the
    run's totals on every partition, and their own figures on the first ``PER_PARTITION_LIMIT``
    partitions that ``per_key`` has something to say of (a count that is not zero), so that the
    partition a bad file belongs to names it on its own page. Returns the metadata for the run's
    output (what every partition shares); the rest is given to Dagster per partition."""
    keys = context.partition_keys  # Dagster reads every key of the partitions definition on each access
    per_key = per_key or {}
    if len(keys) == 1:
        return {**frame_metadata(frame, preview_columns=preview_columns), **(figures(frame) if figures else {}),
                **per_key.get(keys[0], {}), **(run or {})}
    totals = {"partitions_in_run": len(keys), "rows_in_run": len(frame), **run_figures(len(keys), dict(run or {}))}
    every = len(keys) <= PER_PARTITION_LIMIT
    own = keys if every else [key for key in keys if any(per_key.get(key, {}).values())][:PER_PARTITION_LIMIT]
    parts = dict(iter(frame.groupby(by, sort=False))) if own and len(frame) else {}
    for key in own:
        part = parts.get(key, frame.iloc[0:0])
        context.add_asset_metadata(
            {"dagster/row_count": len(part), "preview": preview(part, preview_columns),
             **(figures(part) if figures else {}), **per_key.get(key, {}), **(totals if every else {})},
            partition_key=key,
        )
    # Dagster puts a run's output metadata before a partition's own: given so only when it must
    # reach partitions that have none of their own
    return {} if every else totals
