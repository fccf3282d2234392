"""The lake: every table of :mod:`skyassets.lake.tables` read and written in one place.

A :class:`Lake` is rooted at a local folder or a URL (``s3://bucket/prefix``) and reaches its
files through ``pyarrow.fs``, so the same callers work on either. Table ``T`` lives in
``<root>/T.parquet`` when unpartitioned, else one file per partition in ``<root>/T/<key>.parquet``.

Every write is cast to the table's declared schema, so every partition of a table has the same
column types whatever its rows hold: a declared column missing from the data is written as typed
nulls, and a column null in every row keeps its declared type (pandas would otherwise write an
all-null string column as Parquet null or double, and the catalog could not put partitions
together). Columns the declaration does not name are kept after the declared ones, as the data
has them: MAST adds columns over time and they are worth keeping; one that holds no value at all
has no type to keep and is left out, so it cannot disagree with a partition that has values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from skyassets.lake.names import validate_obs_id
from skyassets.lake.parquet import read_parquet_table, write_parquet
from skyassets.lake.tables import Table, table

SUFFIX = ".parquet"
_NULLABLE_INTEGERS = {pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}


def to_frame(data: pa.Table) -> pd.DataFrame:
    """``data`` as pandas with its integer columns whole beside a NULL (a landed file's calib_level is
    ``3`` and ``<NA>``, not ``3.0`` and ``NaN``)."""
    return data.to_pandas(types_mapper=_NULLABLE_INTEGERS.get)


_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)

Data = pd.DataFrame | pa.Table | Sequence[Mapping[str, Any]]


class SchemaMismatch(ValueError):
    """Data that cannot be cast to its table's declared schema; the message names table, partition, column."""


def _where(spec: Table, partition: str | None) -> str:
    return spec.name if partition is None else f"{spec.name} partition {partition}"


def _columns(data: Data) -> tuple[dict[str, Any], int]:
    """The data's columns by name (pandas Series, Arrow arrays or Python lists) and its row count."""
    if isinstance(data, pa.Table):
        return {name: data.column(name) for name in data.column_names}, data.num_rows
    if isinstance(data, pd.DataFrame):
        return {str(name): data[name] for name in data.columns}, len(data)
    names = list(dict.fromkeys(k for row in data for k in row))
    return {name: [row.get(name) for row in data] for name in names}, len(data)


def _convert(values: Any, typ: pa.DataType | None) -> pa.ChunkedArray:
    """``values`` as Arrow of type ``typ`` (inferred when None): direct, else inferred then safely cast."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        converted = values if typ is None else values.cast(typ)
    else:
        try:
            converted = pa.array(values, type=typ, from_pandas=True)
        except _CAST_ERRORS:
            if typ is None:
                raise
            converted = pa.array(values, from_pandas=True).cast(typ)
    return converted if isinstance(converted, pa.ChunkedArray) else pa.chunked_array([converted], converted.type)


def cast_to_schema(spec: Table, data: Data, partition: str | None = None) -> pa.Table:
    """``data`` (a frame, an Arrow table or a list of row dicts) with ``spec``'s declared schema.

    Declared columns come first, in declared order, with their units; missing ones are typed nulls.
    Other columns follow as they are, except those without a single value. A value that does not
    fit (a fraction in an integer column, text in a number column) raises :class:`SchemaMismatch`.
    """
    columns, rows = _columns(data)
    fields, arrays = [], []
    for field in spec.schema:
        if field.name not in columns:
            arrays.append(pa.chunked_array([pa.nulls(rows, field.type)], field.type))
        else:
            try:
                arrays.append(_convert(columns.pop(field.name), field.type))
            except _CAST_ERRORS as error:
                raise SchemaMismatch(
                    f"{_where(spec, partition)}: column {field.name!r} cannot be written as {field.type}: {error}"
                ) from error
        fields.append(field)
    for name, values in columns.items():
        try:
            array = _convert(values, None)
        except _CAST_ERRORS as error:
            raise SchemaMismatch(f"{_where(spec, partition)}: column {name!r} has no single type: {error}") from error
        if not pa.types.is_null(array.type):
            fields.append(pa.field(name, array.type))
            arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


class Lake:
    """The lake's tables under ``location``: a local folder (``Path`` or plain path) or a URL.

    A URL may carry ``pyarrow.fs`` options as its query (``s3://bucket/lake?region=eu-west-1``);
    paths shown to people leave them out.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        filesystem: pafs.FileSystem | None = None,
        put: Callable[[str, bytes], object] | None = None,
    ):
        """``filesystem`` reaches a URL's store (else made from the URL); ``put(relative, data)``
        stores one whole file (``relative`` to the lake's root), verified, in an object store (else
        files are written through the filesystem): see :meth:`skyassets.lake.home.Home.put_bytes`."""
        text = os.fspath(location)
        self._put = put
        if "://" in text:
            scheme, netloc, path, _, _ = urlsplit(text)
            if filesystem is None:
                filesystem, root = pafs.FileSystem.from_uri(text)
            else:
                root = f"{netloc}{path}"
            self.filesystem = filesystem
            self.url = urlunsplit((scheme, netloc, path.rstrip("/"), "", ""))
        else:
            self.filesystem, root = pafs.LocalFileSystem(), str(Path(text).absolute())
            self.url = root
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"Lake({self.url!r})"

    # ----------------------------------------------------------------------------------- paths
    def _relative(self, spec: Table, partition: str | None) -> str:
        if not spec.partitioned:
            if partition is not None:
                raise ValueError(f"{spec.name} is not partitioned, yet partition {partition!r} was given")
            return spec.name + SUFFIX
        if partition is None:
            return spec.name
        return f"{spec.name}/{validate_obs_id(partition)}{SUFFIX}"

    def _file(self, name: str, partition: str | None) -> str:
        """The filesystem path of one file: a partition of a partitioned table, else the table."""
        spec = table(name)
        if spec.partitioned and partition is None:
            raise ValueError(f"{name} is partitioned by {spec.partitioning.value}: name the partition")
        return f"{self.root}/{self._relative(spec, partition)}"

    def path(self, name: str, partition: str | None = None) -> str:
        """Where a table is: its file, a partition's file, or a partitioned table's folder (no partition).

        A local path for a local lake, a URL otherwise. Partition keys are validated names."""
        return f"{self.url}/{self._relative(table(name), partition)}"

    # ------------------------------------------------------------------------------ inspection
    def exists(self, name: str, partition: str | None = None) -> bool:
        """Whether the table (or the partition) has been written; a partitioned table: any partition."""
        if table(name).partitioned and partition is None:
            return bool(self.partitions(name))
        return self.filesystem.get_file_info(self._file(name, partition)).type == pafs.FileType.File

    def partitions(self, name: str) -> list[str]:
        """The partition keys a partitioned table has files for, sorted (temporary files left out)."""
        spec = table(name)
        if not spec.partitioned:
            raise ValueError(f"{name} is not partitioned")
        selector = pafs.FileSelector(f"{self.root}/{spec.name}", allow_not_found=True)
        keys = []
        for info in self.filesystem.get_file_info(selector):
            name = info.base_name
            if info.type == pafs.FileType.File and name.endswith(SUFFIX) and not name.startswith("."):
                keys.append(name[: -len(SUFFIX)])
        return sorted(keys)

    # ------------------------------------------------------------------------------ read/write
    def write(self, name: str, data: Data, partition: str | None = None) -> str:
        """Write a table (or one partition) cast to its declared schema, atomically; return its path."""
        spec = table(name)
        self._file(name, partition)  # a partitioned table's partition must be named, before the cast
        self._write_cast(spec, cast_to_schema(spec, data, partition), partition)
        return self.path(name, partition)

    def holds(self, name: str, data: Data, partition: str | None = None) -> bool:
        """Whether the table (or partition) holds exactly what :meth:`write` of ``data`` would write:
        then writing it again would change nothing."""
        if not self.exists(name, partition):
            return False
        try:
            stored = self.read_arrow(name, partition)
        except (OSError, pa.ArrowException):
            return False
        return stored.equals(cast_to_schema(table(name), data, partition))

    def write_partitions(self, name: str, data: pa.Table | pd.DataFrame, by: str, partitions: Sequence[str]) -> None:
        """Write each of ``partitions`` of a partitioned table: the rows of ``data`` whose ``by`` column
        holds its key (none: an empty file), each file as :meth:`write` would write it alone.

        A run of many partitions casts its rows once rather than once per partition (a cast costs
        as much as a small file's write). Every partition is cast before any is written, so a value
        that does not fit raises :class:`SchemaMismatch` naming its partition and nothing is written.
        """
        spec = table(name)
        if not spec.partitioned:
            raise ValueError(f"{name} is not partitioned")
        keys = [validate_obs_id(k) for k in partitions]
        columns = data.column_names if isinstance(data, pa.Table) else [str(c) for c in data.columns]
        cast = None
        if set(columns) <= set(spec.schema.names):  # an undeclared column takes its type from its partition's rows
            try:
                cast = cast_to_schema(spec, data)
            except SchemaMismatch:
                pass  # cast again partition by partition, for the error to name the partition
        if cast is None:
            frame = data.to_pandas() if isinstance(data, pa.Table) else data
            groups = dict(iter(frame.groupby(by, sort=False))) if len(frame) else {}
            parts = {k: cast_to_schema(spec, groups.get(k, frame.iloc[0:0]), k) for k in keys}
        else:
            positions: dict[str, list[int]] = {k: [] for k in keys}
            for i, key in enumerate(cast.column(by).to_pylist()):
                if key in positions:
                    positions[key].append(i)
            parts = {k: cast.take(pa.array(rows, pa.int64())) for k, rows in positions.items()}
        for key, part in parts.items():
            self._write_cast(spec, part, key)

    def _write_cast(self, spec: Table, cast: pa.Table, partition: str | None) -> None:
        """Write rows already cast to ``spec``'s schema: atomically, or in one verified upload."""
        if self._put is None:
            write_parquet(cast, self._file(spec.name, partition), self.filesystem)
        else:  # one verified request: the object appears whole, with the SHA-256 the store checked
            sink = pa.BufferOutputStream()
            pq.write_table(cast, sink)
            self._put(self._relative(spec, partition), sink.getvalue().to_pybytes())

    def read_partitions(
        self, name: str, partitions: Sequence[str], *, columns: list[str] | None = None
    ) -> dict[str, pa.Table]:
        """Each of ``partitions`` written so far, read as :meth:`read_arrow` reads one; the others are
        left out. One look at the filesystem for all of them, then one read per file that is there."""
        found = {}
        for key in self.written(name, partitions):
            try:
                found[key] = read_parquet_table(self._file(name, key), self.filesystem, columns)
            except FileNotFoundError:  # removed since the look: as if it had not been there
                continue
        return found

    def written(self, name: str, partitions: Sequence[str]) -> list[str]:
        """Those of ``partitions`` that have been written: :meth:`exists` for many, in one look."""
        files = [self._file(name, k) for k in partitions]
        infos = self.filesystem.get_file_info(files)
        return [k for k, info in zip(partitions, infos, strict=True) if info.type == pafs.FileType.File]

    def read_arrow(self, name: str, partition: str | None = None, *, columns: list[str] | None = None) -> pa.Table:
        """A table, one partition, or (``partition=None``) all of a partitioned table's partitions.

        Each file is read from one open handle, so a partition being replaced is read whole, old or new.
        """
        spec = table(name)
        if spec.partitioned and partition is None:
            parts = [read_parquet_table(self._file(name, k), self.filesystem, columns) for k in self.partitions(name)]
            if not parts:
                empty = spec.schema.empty_table()
                return empty.select(columns) if columns is not None else empty
            return pa.concat_tables(parts, promote_options="permissive")
        return read_parquet_table(self._file(name, partition), self.filesystem, columns)

    def read(
        self, name: str, partition: str | None = None, *, columns: list[str] | None = None, missing_ok: bool = False
    ) -> pd.DataFrame:
        """:meth:`read_arrow` as a frame; ``missing_ok`` gives an empty frame with the declared
        columns for a table or partition not written yet instead of ``FileNotFoundError``."""
        if missing_ok and not (table(name).partitioned and partition is None) and not self.exists(name, partition):
            empty = table(name).schema.empty_table()
            return (empty.select(columns) if columns is not None else empty).to_pandas()
        return self.read_arrow(name, partition, columns=columns).to_pandas(use_threads=False)

    def delete(self, name: str, partition: str | None = None) -> bool:
        """Remove a table's file or one partition's; False if there was none."""
        file = self._file(name, partition)
        try:
            self.filesystem.delete_file(file)
        except FileNotFoundError:
            return False
        return True
