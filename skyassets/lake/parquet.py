"""Parquet files written atomically: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet(data: pd.DataFrame | pa.Table, path: Path) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Pass a ``pyarrow.Table`` to keep a schema of its own (units in the field metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_parquet(path: Path) -> pd.DataFrame:
    """The table in ``path`` as a frame.

    Read with ``ParquetFile`` in one thread: ``pq.read_table``'s dataset layer and thread hand-offs
    cost more than reading the lake's small files, and the result is the same.
    """
    with pq.ParquetFile(path) as f:
        return f.read(use_threads=False).to_pandas(use_threads=False)
