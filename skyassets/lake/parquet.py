"""Parquet files written atomically: a reader sees the old file or the new one, never half of one.

Files are reached through a ``pyarrow.fs`` filesystem, local by default. On a local filesystem a
file is written under a temporary name in its folder and renamed over the old one; an object store
(S3) has no rename, and needs none: an object appears whole when its upload completes.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

LOCAL = pafs.LocalFileSystem()


def write_parquet(data: pd.DataFrame | pa.Table, path: Path | str, filesystem: pafs.FileSystem = LOCAL) -> Path | str:
    """Write ``data`` to ``path`` (atomically, see the module) and return ``path``.

    Pass a ``pyarrow.Table`` to keep a schema of its own (units in the field metadata)."""
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    if not isinstance(filesystem, pafs.LocalFileSystem):
        pq.write_table(table, str(path), filesystem=filesystem)
        return path
    target = Path(path).absolute()
    filesystem.create_dir(str(target.parent), recursive=True)
    tmp = str(target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp"))
    try:
        pq.write_table(table, tmp, filesystem=filesystem)
        filesystem.move(tmp, str(target))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_parquet_table(
    path: Path | str, filesystem: pafs.FileSystem = LOCAL, columns: list[str] | None = None
) -> pa.Table:
    """The table in ``path``, read from a single open handle (a concurrent rename cannot tear it).

    Read with ``ParquetFile`` in one thread: ``pq.read_table``'s dataset layer and thread hand-offs
    cost more than reading the lake's small files, and the result is the same.
    """
    with filesystem.open_input_file(str(path)) as handle, pq.ParquetFile(handle) as f:
        return f.read(columns=columns, use_threads=False)


def read_parquet(
    path: Path | str, filesystem: pafs.FileSystem = LOCAL, columns: list[str] | None = None
) -> pd.DataFrame:
    """The table in ``path`` as a frame."""
    return read_parquet_table(path, filesystem, columns).to_pandas(use_threads=False)
