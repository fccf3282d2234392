"""The lake's declared tables: every write keeps the declared types, whatever the rows hold."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from skyassets.catalog import db as catalog
from skyassets.fits.meta import IMAGE_SCHEMA
from skyassets.imaging.composite import RECIPE_COLUMNS
from skyassets.imaging.quality import QUALITY_SCHEMA, SOURCE_SCHEMA
from skyassets.imaging.targets import INPUT_COLUMNS
from skyassets.lake import parquet
from skyassets.lake.home import Home
from skyassets.lake.names import InvalidNameError
from skyassets.lake.store import Lake, SchemaMismatch
from skyassets.lake.tables import TABLES, Partitioning, partitioned_by, table

SAMPLE = {"string": "x", "double": 1.5, "int64": 7, "int32": 7, "int16": 7, "bool": True}


def partition_of(spec) -> str | None:
    return "obs-1" if spec.partitioned else None


def all_null(spec, rows: int = 3) -> pd.DataFrame:
    """Every declared column present and null in every row, as pandas holds such columns: object Nones."""
    return pd.DataFrame({name: pd.Series([None] * rows, dtype=object) for name in spec.schema.names})


def with_values(spec, rows: int = 3) -> pd.DataFrame:
    """Every other declared column filled, the rest missing (NaN), as a frame from real rows would be."""
    columns = {}
    for i, field in enumerate(spec.schema):
        value = SAMPLE[str(field.type)] if i % 2 == 0 else None
        columns[field.name] = [value] * rows
    return pd.DataFrame(columns)


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Home(tmp_path).tables


@pytest.mark.parametrize("name", list(TABLES))
def test_all_null_columns_keep_their_declared_type(lake, name):
    spec = table(name)
    lake.write(name, all_null(spec), partition=partition_of(spec))
    written = lake.read_arrow(name, partition_of(spec))
    assert written.schema.equals(spec.schema, check_metadata=True)
    assert written.num_rows == 3 and all(written.column(c).null_count == 3 for c in spec.schema.names)


@pytest.mark.parametrize("name", list(TABLES))
def test_partitions_with_other_null_patterns_read_back_alike(lake, name):
    spec = table(name)
    first, second = ("obs-1", "obs-2") if spec.partitioned else (None, None)
    lake.write(name, all_null(spec), partition=first)
    one = lake.read_arrow(name, first).schema
    lake.write(name, with_values(spec), partition=second)
    other = lake.read_arrow(name, second).schema
    assert one.equals(other, check_metadata=True) and one.equals(spec.schema, check_metadata=True)
    if spec.partitioned:
        assert lake.partitions(name) == ["obs-1", "obs-2"]
        assert lake.read_arrow(name).num_rows == 6


def test_the_catalog_reads_partitions_that_differ_in_their_nulls(tmp_path):
    lake = Home(tmp_path).tables
    # What pandas makes of MAST's rows: a column null in every row of one observation is an object
    # column of Nones (Parquet null), or NaN floats after a merge (Parquet double).
    lake.write("mast_products", pd.DataFrame({
        "partition": ["obsA"] * 2, "productFilename": ["a1.fits", "a2.fits"], "size": [10, 20],
        "s3_key": [None, None], "calib_level": [np.nan, np.nan],
    }), partition="obsA")
    lake.write("mast_products", pd.DataFrame({
        "partition": ["obsB"], "productFilename": ["b1.fits"], "size": [30], "s3_key": ["jwst/b1.fits"],
        "calib_level": [2],
    }), partition="obsB")
    lake.write("mast_products", pd.DataFrame({
        "partition": ["obsC"], "productFilename": ["c1.fits"], "size": [40.0], "s3_key": [np.nan], "calib_level": [3.0],
    }), partition="obsC")
    for name, spec in TABLES.items():
        if spec.partitioned and name != "mast_products":
            lake.write(name, all_null(spec, 1), partition="p1")
            lake.write(name, with_values(spec, 2), partition="p2")
        elif not spec.partitioned:
            lake.write(name, with_values(spec, 2))
    con = catalog.connect(tmp_path)
    columns = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE products)").fetchall())
    assert columns["s3_key"] == "VARCHAR" and columns["calib_level"] == "SMALLINT" and columns["size"] == "BIGINT"
    assert con.execute("SELECT count(*), count(s3_key), sum(size) FROM products").fetchone() == (4, 1, 100)
    for spec in TABLES.values():
        if spec.catalogued and spec.name not in ("mast_products", "image_metadata"):  # images: one per image
            expected = 3 if spec.partitioned else 2
            assert con.execute(f'SELECT count(*) FROM "{spec.catalog}"').fetchone()[0] == expected, spec.name


def test_a_value_that_cannot_be_cast_names_table_partition_and_column(lake):
    with pytest.raises(SchemaMismatch, match=r"mast_products partition obsA: column 'size'"):
        lake.write("mast_products", pd.DataFrame({"size": ["big"]}), partition="obsA")
    with pytest.raises(SchemaMismatch, match=r"image_quality partition obsB: column 'n_sources'"):
        lake.write("image_quality", pd.DataFrame({"n_sources": [1.5]}), partition="obsB")
    with pytest.raises(SchemaMismatch, match=r"target_groups: column 'extra'"):
        lake.write("target_groups", pd.DataFrame({"extra": [1, "mixed"]}))
    assert not lake.exists("mast_products", "obsA") and not lake.exists("target_groups")


def test_declared_columns_first_missing_ones_typed_extras_kept(lake):
    path = lake.write("target_groups", pd.DataFrame({"extra": [1, 2], "target": ["T", "T"], "empty": [None, None]}))
    written = lake.read_arrow("target_groups")
    spec = table("target_groups")
    assert written.schema.names == [*spec.schema.names, "extra"]  # the all-null extra has no type to keep
    assert written.schema.field("extra").type == pa.int64() and written.column("obs_id").null_count == 2
    assert path == lake.path("target_groups") == str(Path(lake.root) / "target_groups.parquet")


def test_rows_and_arrow_tables_are_cast_too(lake):
    lake.write("landing", [{"partition": "k", "size": 3, "location": "/d/a.fits"}], partition="k")
    lake.write("mosaics", pa.table({"n_inputs": pa.array([2], pa.int64()), "s_ra": pa.array([None], pa.null())}),
               partition="T")
    assert lake.read_arrow("landing", "k").schema.equals(table("landing").schema, check_metadata=True)
    assert lake.read_arrow("mosaics", "T").schema.equals(table("mosaics").schema, check_metadata=True)
    assert lake.read("mosaics", "T")["n_inputs"].tolist() == [2]


def test_paths_partitions_exists_and_delete(lake):
    assert lake.path("mast_observations") == f"{lake.root}/mast_observations.parquet"
    assert lake.path("mosaics") == f"{lake.root}/mosaics"
    assert lake.path("mosaics", "NGC-3132") == f"{lake.root}/mosaics/NGC-3132.parquet"
    for bad in ("../escape", "a/b", ".hidden", ""):
        with pytest.raises(InvalidNameError):
            lake.path("fits_files", bad)
    with pytest.raises(ValueError, match="not partitioned"):
        lake.path("target_groups", "obs1")
    with pytest.raises(KeyError, match="no lake table"):
        lake.path("nonsense")
    with pytest.raises(ValueError, match="name the partition"):
        lake.write("fits_files", pd.DataFrame())
    assert not lake.exists("fits_files") and lake.partitions("fits_files") == []
    assert list(lake.read("fits_files", "obs1", missing_ok=True).columns) == table("fits_files").schema.names
    with pytest.raises(FileNotFoundError):
        lake.read("fits_files", "obs1")
    lake.write("fits_files", pd.DataFrame({"filename": ["a.fits"]}), partition="obs1")
    (Path(lake.root) / "fits_files" / ".obs2.parquet.123.tmp").write_bytes(b"half")  # a write under way
    assert lake.exists("fits_files") and lake.exists("fits_files", "obs1") and lake.partitions("fits_files") == ["obs1"]
    assert lake.delete("fits_files", "obs1") and not lake.delete("fits_files", "obs1")
    assert not lake.exists("fits_files", "obs1")


def manifest(keys: list[str], **columns) -> pd.DataFrame:
    """fits_files rows, two per key, as a run of several partitions holds them."""
    rows = [
        {"partition": k, "filename": f"{k}_{i}.fits", "size": 10 * i, "signature": None} for k in keys for i in (1, 2)
    ]
    return pd.DataFrame(rows).assign(**columns)


@pytest.mark.parametrize("form", ["frame", "arrow"])
def test_partitions_written_in_one_pass_are_the_files_written_one_by_one(tmp_path, form):
    keys = ["obs1", "obs2", "obs3"]
    frame = manifest(["obs2", "obs1"])  # obs3 has no rows: its file is written, empty
    data = frame if form == "frame" else pa.Table.from_pandas(frame, preserve_index=False)
    one_pass, one_by_one = Lake(tmp_path / "a"), Lake(tmp_path / "b")
    one_pass.write_partitions("fits_files", data, by="partition", partitions=keys)
    for key in keys:
        one_by_one.write("fits_files", frame[frame.partition == key], partition=key)
    assert one_pass.partitions("fits_files") == keys
    for key in keys:
        alone = one_by_one.read_arrow("fits_files", key)
        assert one_pass.read_arrow("fits_files", key).equals(alone, check_metadata=True)
    assert one_pass.read("fits_files", "obs1")["filename"].tolist() == ["obs1_1.fits", "obs1_2.fits"]
    assert one_pass.read_arrow("fits_files", "obs3").num_rows == 0


def test_partitions_written_in_one_pass_keep_their_own_extra_columns(lake):
    extra = pd.Series(["a", "b", None, None], dtype=object)  # undeclared, with values in obs1 only
    frame = manifest(["obs1", "obs2"], extra=extra)
    lake.write_partitions("fits_files", frame, by="partition", partitions=["obs1", "obs2"])
    assert lake.read("fits_files", "obs1")["extra"].tolist() == ["a", "b"]
    assert "extra" not in lake.read_arrow("fits_files", "obs2").schema.names  # as if written alone


def test_a_value_that_cannot_be_cast_in_one_pass_names_its_partition_and_writes_nothing(lake):
    frame = manifest(["obs1", "obs2"], size=[1, 2, 3, "big"])
    with pytest.raises(SchemaMismatch, match=r"fits_files partition obs2: column 'size'"):
        lake.write_partitions("fits_files", frame, by="partition", partitions=["obs1", "obs2"])
    assert lake.partitions("fits_files") == []
    with pytest.raises(ValueError, match="not partitioned"):
        lake.write_partitions("target_groups", pd.DataFrame({"target": ["T"]}), by="target", partitions=["T"])
    with pytest.raises(InvalidNameError):
        lake.write_partitions("fits_files", manifest(["../up"]), by="partition", partitions=["../up"])


def test_partitions_read_in_one_pass_leave_out_those_not_written(lake):
    lake.write_partitions("fits_files", manifest(["obs1", "obs3"]), by="partition", partitions=["obs1", "obs3"])
    found = lake.read_partitions("fits_files", ["obs1", "obs2", "obs3"], columns=["filename"])
    assert list(found) == ["obs1", "obs3"] and found["obs3"].schema.names == ["filename"]
    assert found["obs1"].equals(lake.read_arrow("fits_files", "obs1", columns=["filename"]))
    assert lake.read_partitions("fits_files", []) == {}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(lake, monkeypatch):
    lake.write("recipes", pd.DataFrame({"recipe": ["a", "b"]}), partition="T")

    def broken(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(parquet.pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        lake.write("recipes", pd.DataFrame({"recipe": ["c"]}), partition="T")
    monkeypatch.undo()
    assert lake.read("recipes", "T")["recipe"].tolist() == ["a", "b"]
    assert [p.name for p in (Path(lake.root) / "recipes").iterdir()] == ["T.parquet"]


def test_readers_see_the_old_partition_or_the_new_one_never_half(lake):
    frames = [pd.DataFrame({"obs_id": [f"o{i}"] * n, "sha256": ["s"] * n}) for i, n in enumerate((500, 2000))]
    lake.write("source_catalogs", frames[0], partition="obs1")
    stop = threading.Event()

    def rewrite() -> None:
        k = 0
        while not stop.is_set():
            lake.write("source_catalogs", frames[k % 2], partition="obs1")
            k += 1

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        seen = {len(lake.read("source_catalogs", "obs1", columns=["obs_id"])) for _ in range(100)}
    finally:
        stop.set()
        writer.join()
    assert seen <= {500, 2000}


def test_an_object_store_lake(tmp_path, monkeypatch):
    from skyassets.emulator.s3 import BUCKET, S3Server

    server = S3Server()
    try:
        server.client()  # creates the bucket
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "emulator")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "emulator")
        host = server.endpoint.split("://", 1)[1]
        lake = Lake(f"s3://{BUCKET}/lake?endpoint_override={host}&scheme=http&region=us-east-1")
        assert lake.write("mosaics", [{"target": "T", "n_inputs": 3}], partition="T") == f"s3://{BUCKET}/lake/mosaics/T.parquet"
        assert lake.partitions("mosaics") == ["T"] and lake.exists("mosaics", "T")
        assert lake.read_arrow("mosaics", "T").schema.equals(table("mosaics").schema, check_metadata=True)
        lake.write_partitions("mosaics", pd.DataFrame({"target": ["U", "V"], "n_inputs": [1, 2]}), "target", ["U", "V"])
        found = lake.read_partitions("mosaics", ["T", "U", "V", "W"], columns=["n_inputs"])
        assert {k: t.column("n_inputs").to_pylist() for k, t in found.items()} == {"T": [3], "U": [1], "V": [2]}
        assert lake.delete("mosaics", "T") and lake.delete("mosaics", "U") and lake.delete("mosaics", "V")
        assert not lake.exists("mosaics")
    finally:
        server.close()


def test_the_declarations_match_the_code_that_makes_the_rows():
    assert table("image_metadata").schema is IMAGE_SCHEMA
    assert table("image_quality").schema is QUALITY_SCHEMA and table("source_catalogs").schema is SOURCE_SCHEMA
    assert table("target_images").schema.names == INPUT_COLUMNS
    assert table("recipes").schema.names == [*RECIPE_COLUMNS, "made", "note", "target"]
    assert partitioned_by(Partitioning.TARGET) == ("target_images", "mosaics", "composites", "recipes")
    assert catalog.SOURCES == {t.catalog: t.name for t in TABLES.values() if t.catalogued}
    assert set(catalog.DECLARED) == {"observations", "products", "files", "images"}
    for spec in TABLES.values():
        assert all(f.metadata and b"description" in f.metadata for f in spec.schema), spec.name
