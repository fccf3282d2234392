"""The lake's Parquet files: atomic writes, and reads that give what pandas and DuckDB see."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skyassets.lake.parquet import read_parquet, write_parquet


def _frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame({
        "partition": [f"obs{i % 3}" for i in range(rows)],
        "filename": [f"f{i}.fits" for i in range(rows)],
        "signature": [None if i % 2 else str(i) for i in range(rows)],
        "size": np.arange(rows, dtype="int64"),
        "attempts": pd.array([None if i % 4 == 0 else i for i in range(rows)], dtype="Int16"),
        "seconds": [0.5 * i if i % 5 else np.nan for i in range(rows)],
        "ok": [bool(i % 2) for i in range(rows)],
    })


def _table(rows: int) -> pa.Table:
    schema = pa.schema([
        pa.field("obs_id", pa.string(), metadata={b"description": b"observation"}),
        pa.field("s_ra", pa.float64(), metadata={b"unit": b"deg"}),
        pa.field("hdu_index", pa.int32()),
        pa.field("header_json", pa.string()),
    ])
    return pa.Table.from_pylist(
        [{"obs_id": f"o{i}", "s_ra": None if i == 1 else 10.0 + i, "hdu_index": i, "header_json": "{}" * i}
         for i in range(rows)], schema=schema)


@pytest.mark.parametrize("data", [_frame(10), _frame(0), _frame(3000), _table(10), _table(0)],
                         ids=["frame", "empty frame", "large frame", "table", "empty table"])
def test_read_gives_what_pyarrow_and_pandas_give(tmp_path: Path, data: pd.DataFrame | pa.Table) -> None:
    path = write_parquet(data, tmp_path / "run=1" / "lake" / "t.parquet")  # key=value folders too
    expected = pq.read_table(path).to_pandas()
    for source in (path, str(path)):
        frame = read_parquet(source)
        pd.testing.assert_frame_equal(frame, expected, check_exact=True)
        assert list(frame.dtypes) == list(expected.dtypes)
    pd.testing.assert_frame_equal(read_parquet(path), pd.read_parquet(path), check_exact=True)


def test_schema_metadata_and_duckdb_types_are_kept(tmp_path: Path) -> None:
    table = _table(5)
    path = write_parquet(table, tmp_path / "images.parquet")
    assert pq.read_schema(path).equals(table.schema, check_metadata=True)
    con = duckdb.connect(":memory:")
    described = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()
    assert {row[0]: row[1] for row in described} == {
        "obs_id": "VARCHAR", "s_ra": "DOUBLE", "hdu_index": "INTEGER", "header_json": "VARCHAR"}
    assert con.execute(f"SELECT count(*), sum(hdu_index) FROM read_parquet('{path}')").fetchall() == [(5, 10)]


def test_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "lake" / "t.parquet"
    write_parquet(_frame(4), path)
    write_parquet(_frame(2), path)
    assert len(read_parquet(path)) == 2
    assert [p.name for p in path.parent.iterdir()] == ["t.parquet"]
