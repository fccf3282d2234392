"""The command line: its set-up of a Dagster home, its errors, formats and options."""

import csv
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, evaluate_automation_conditions

from skyassets.catalog.db import connect
from skyassets.cli.commands import (
    EVENT_BATCH_ENV,
    prepare_dagster_home,
    run_retry_cursor,
    start_run_retries_from_now,
)
from skyassets.cli.launch import LOCATION
from skyassets.cli.main import main
from skyassets.definitions import defs
from skyassets.lake.home import Home
from skyassets_tests.objectstore import BUCKET, CREDENTIALS, object_store

# Every process waits for the same instant, then creates the instance on the same new home.
_PREPARE = """
import sys, time
from pathlib import Path
from skyassets.cli.commands import prepare_dagster_home
from skyassets.lake.home import Home
start = float(sys.argv[2])
while time.time() < start:
    pass
prepare_dagster_home(Home(Path(sys.argv[1])))
"""


def test_commands_started_together_on_a_new_home_all_get_an_instance(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    home = tmp_path / "home"
    start = time.time() + 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PREPARE, str(home), str(start)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for _ in range(4)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stdout.read()
    assert (home / "dagster" / "dagster.yaml").exists()


def test_an_existing_dagster_yaml_is_kept(tmp_path, monkeypatch):
    dagster_home = tmp_path / "dh"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    assert prepare_dagster_home(Home(tmp_path / "home")) == dagster_home.resolve()
    assert (dagster_home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    assert (dagster_home / "history" / "runs.db").exists()


def test_a_database_url_a_kept_dagster_yaml_does_not_use_is_warned_of(tmp_path, monkeypatch, capsys):
    """With SKYASSETS_POSTGRES_URL set, a home whose dagster.yaml was written before (the demo run
    first) keeps its SQLite storage: said, with what to do, rather than silently."""
    dagster_home = tmp_path / "dh"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("SKYASSETS_POSTGRES_URL", "postgresql+psycopg2://u:secret@db.example.org:5432/sky")
    prepare_dagster_home(Home(tmp_path / "home"))
    err = capsys.readouterr().err
    assert err.startswith("skyassets: warning: SKYASSETS_POSTGRES_URL is set, but ") and "deploy/dagster.yaml" in err
    assert "secret" not in err and (dagster_home / "history" / "runs.db").exists()


def test_the_commands_batch_event_writes_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    monkeypatch.delenv(EVENT_BATCH_ENV, raising=False)  # restored after the test
    prepare_dagster_home(Home(tmp_path / "home"))
    assert int(os.environ[EVENT_BATCH_ENV]) > 1
    monkeypatch.setenv(EVENT_BATCH_ENV, "0")  # a deployment that wants every event written alone
    prepare_dagster_home(Home(tmp_path / "home"))
    assert os.environ[EVENT_BATCH_ENV] == "0"


# ------------------------------------------------------------------ a command line that fits a person's habits


@pytest.fixture
def home(tmp_path, monkeypatch) -> Home:
    """A home with two observations' catalogue rows and one target."""
    monkeypatch.setenv("SKYASSETS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))  # restored after the test
    home = Home(tmp_path / "home")
    for obs_id, name in (("jw01234-o001", "a, b.fits"), ("jw01234-o002", "c.fits")):
        home.tables.write("image_metadata", pd.DataFrame({
            "obs_id": [obs_id], "file_name": [name], "path": [f"files/JWST/{obs_id}/{name}"], "hdu_index": [1],
            "sha256": [obs_id * 2], "target_name": ["NGC 3132 " + "x" * 60], "s_ra": [151.75], "s_dec": [-40.43],
        }), obs_id)
    home.tables.write("target_groups", pd.DataFrame({
        "obs_id": ["jw01234-o001", "jw01234-o002"], "target": ["NGC-3132"] * 2, "target_name": ["NGC 3132"] * 2,
    }))
    return home


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_bad_sql_is_one_line_not_a_traceback(home, capsys):
    status, out, err = _run(capsys, "catalog", "SELECT nothing FROM nowhere")
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("skyassets catalog: the query failed:") and "nowhere" in err


def test_catalog_and_export_take_one_query_that_only_reads(home, capsys, tmp_path):
    written = home.root / "zz.parquet"
    for sql, said in (
        (f"COPY (SELECT 1 AS x) TO '{written}'", "(SELECT, WITH, VALUES, FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN, "
         "or a PRAGMA that reads), not COPY"),
        (f"EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO '{written}'", "not EXPLAIN ANALYZE"),
        ("SET threads = 1", "not SET"),
        (f"ATTACH '{tmp_path / 'other.duckdb'}'", "not ATTACH"),
        ("PRAGMA import_database('x')", "not PRAGMA import_database"),
        ("CREATE TABLE t AS SELECT 1", "not CREATE"),
        ("INSTALL httpfs", "not INSTALL"),  # DuckDB's statement type says LOAD for all three
        ("force  install httpfs", "not FORCE INSTALL"),
        ("LOAD httpfs", "not LOAD"),
        ("SELECT 1; SELECT 2", "only queries, one at a time: this is 2 statements"),
    ):
        for argv in (["catalog", sql], ["export", sql, str(tmp_path / "out")]):
            status, out, err = _run(capsys, *argv)
            assert (status, out) == (2, "") and err.count("\n") == 1 and said in err, err
            assert err.startswith(f"skyassets {argv[0]}: only queries"), err
    assert not written.exists() and not (tmp_path / "other.duckdb").exists() and not (tmp_path / "out").exists()
    for sql in ("WITH a AS (SELECT 1 AS x) SELECT * FROM a", "VALUES (1)", "FROM images", "DESCRIBE images",
                "SHOW TABLES", "SUMMARIZE images", "EXPLAIN SELECT * FROM images", "PRAGMA table_info('images')",
                "/* a note */ PRAGMA version", "SELECT 1;"):
        status, out, err = _run(capsys, "catalog", sql)
        assert status == 0 and out and not err, (sql, err)


def test_catalog_formats_keep_values_whole(home, capsys):
    sql = "SELECT obs_id, file_name, target_name FROM images ORDER BY obs_id"
    _, table, _ = _run(capsys, "catalog", sql)
    assert "NGC 3132 " + "x" * 60 in table and "..." not in table
    _, text, _ = _run(capsys, "catalog", sql, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["file_name"] for r in rows] == ["a, b.fits", "c.fits"]
    _, text, _ = _run(capsys, "catalog", sql, "--format", "json")
    assert [json.loads(line)["obs_id"] for line in text.splitlines()] == ["jw01234-o001", "jw01234-o002"]


def test_the_whole_header_is_shown_only_when_the_query_names_it(home, capsys):
    home.tables.write("image_metadata", pd.DataFrame({
        "obs_id": ["jw01234-o003"], "file_name": ["d.fits"], "path": ["files/JWST/jw01234-o003/d.fits"],
        "hdu_index": [1], "sha256": ["d" * 64], "header_json": ['{"FILTER": "F200W"}'],
    }), "jw01234-o003")
    where = "FROM images WHERE obs_id = 'jw01234-o003'"
    _, text, _ = _run(capsys, "catalog", f"SELECT * {where}", "--format", "json")
    assert "header_json" not in json.loads(text) and json.loads(text)["file_name"] == "d.fits"
    _, text, _ = _run(capsys, "catalog", f"SELECT obs_id, header_json {where}", "--format", "json")
    assert json.loads(text) == {"obs_id": "jw01234-o003", "header_json": '{"FILTER": "F200W"}'}


def test_catalog_formats_say_null_and_lists_the_same_way_and_keep_full_precision(home, capsys):
    sql = ("SELECT obs_id, locations, s_resolution, 59741.812345678901 AS t_min, 'NaN'::DOUBLE AS nan "
           "FROM images ORDER BY obs_id")
    _, text, _ = _run(capsys, "catalog", sql, "--format", "csv")
    first = next(csv.DictReader(io.StringIO(text)))
    assert json.loads(first["locations"]) == ["files/JWST/jw01234-o001/a, b.fits"]
    assert first["s_resolution"] == first["nan"] == "" and float(first["t_min"]) == 59741.812345678901
    _, text, _ = _run(capsys, "catalog", sql, "--format", "json")
    assert "\\/" not in text  # paths as they are, not with escaped slashes
    first = json.loads(text.splitlines()[0])
    assert first["locations"] == ["files/JWST/jw01234-o001/a, b.fits"]
    assert first["s_resolution"] is None and first["nan"] is None and first["t_min"] == 59741.812345678901
    _, table, _ = _run(capsys, "catalog", sql)
    header, row = table.splitlines()[:2]
    assert header.split() == ["obs_id", "locations", "s_resolution", "t_min", "nan"]
    assert row.startswith("jw01234-o001  ") and '["files/JWST/jw01234-o001/a, b.fits"]' in row
    null, t_min, nan = row.split()[-3:]
    assert null == nan == "NULL" and float(t_min) == 59741.812345678901


def test_catalog_prints_duckdbs_values_not_pandas_conversions(home, capsys):
    sql = ("SELECT sum(hdu_index)::HUGEINT * 100000000000000000000 AS big, DATE '2022-07-12' AS day, "
           "0.1234567890123456789 AS exact, INTERVAL 90 MINUTE AS took, "
           "'2022-07-12 10:00:00.123456789'::TIMESTAMP_NS AS ns, 'infinity'::DATE AS never FROM images")
    _, text, _ = _run(capsys, "catalog", sql, "--format", "csv")
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["big"].endswith("00000000000000000000") and len(row["big"]) >= 21  # whole, not 1e+20
    assert row["day"] == "2022-07-12" and row["exact"] == "0.1234567890123456789"
    assert row["took"] == "01:30:00" and row["ns"] == "2022-07-12 10:00:00.123456789" and row["never"] == "infinity"
    _, text, _ = _run(capsys, "catalog", sql, "--format", "json")
    assert json.loads(text)["big"] == int(row["big"]) and json.loads(text)["day"] == "2022-07-12"
    _, table, _ = _run(capsys, "catalog", sql)
    assert table.splitlines()[1].split() == [row["big"], "2022-07-12", "0.1234567890123456789", "01:30:00",
                                             "2022-07-12", "10:00:00.123456789", "infinity"]


def test_columns_of_the_same_name_are_all_printed(home, capsys):
    sql = ("SELECT a.obs_id, a.path, b.path, a.header_json, b.header_json "
           "FROM images AS a JOIN images AS b USING (obs_id)")
    _, text, _ = _run(capsys, "catalog", sql + " LIMIT 1", "--format", "json")
    row = json.loads(text)
    assert row["path"] == row["path_1"] == "files/JWST/jw01234-o001/a, b.fits"
    assert row["header_json"] == row["header_json_1"]
    # a whole header is shown only when the query names it, however many times it comes
    status, table, _ = _run(capsys, "catalog", "SELECT a.*, b.* FROM images AS a JOIN images AS b USING (obs_id)")
    assert status == 0 and "header_json" not in table and "path_1" in table.splitlines()[0]


def test_catalog_counts_the_rows_it_does_not_show(home, capsys, monkeypatch):
    monkeypatch.setattr("skyassets.cli.commands.FETCH_ROWS", 7)  # the rows past the limit, counted in several chunks
    status, text, err = _run(capsys, "catalog", "SELECT range AS n FROM range(100)", "--max-rows", "3")
    assert status == 0 and [int(n) for n in text.split()[1:]] == [0, 1, 2]
    assert err.strip() == "(100 rows, 3 shown; --max-rows 0 shows all)"
    _, text, err = _run(capsys, "catalog", "SELECT range AS n FROM range(100)", "--max-rows", "0")
    assert len(text.splitlines()) == 101 and not err
    _, text, err = _run(capsys, "catalog", "SELECT range AS n FROM range(100)", "--max-rows", "9" * 20)
    assert len(text.splitlines()) == 101 and not err  # more than any answer holds: all of it


def test_an_unknown_target_lists_the_known_ones(home, capsys):
    for name in ("NGC-9999", "NGC 9999"):  # a name with a space is a target name too, not a bad id
        status, _, err = _run(capsys, "show", name)
        assert status == 1 and err.count("\n") == 1
        assert f"target '{name}' does not exist" in err and "known targets: NGC-3132" in err
    status, _, err = _run(capsys, "show", "ngc 3132")  # as a person types it: the one target it can be
    assert "NGC-3132" in err and "does not exist" not in err
    assert _run(capsys, "show", "ngc", "3132") == (status, _, err)  # unquoted, the same name


def test_a_store_that_holds_nothing_or_cannot_be_read_is_said_in_one_line(tmp_path, monkeypatch, capsys):
    """A mistyped prefix is an empty home, not a catalogue of nothing; a bucket that does not exist
    and a store that is down are one line naming the store, not a traceback."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SKYASSETS_HOME", str(tmp_path / "local"))
    with object_store() as store:
        monkeypatch.setenv("SKYASSETS_STORAGE_ENDPOINT", store.endpoint)
        monkeypatch.setenv("SKYASSETS_STORAGE", f"s3://{BUCKET}/mistyped")
        status, out, err = _run(capsys, "catalog", "SELECT 1")
        assert (status, out) == (1, "") and err.count("\n") == 1
        assert f"no catalogue in s3://{BUCKET}/mistyped" in err and "SKYASSETS_STORAGE" in err
        monkeypatch.setenv("SKYASSETS_STORAGE", "s3://no-such-bucket/home")
        for argv in (["catalog", "SELECT 1"], ["quality", "jw01"], ["find", "NGC 628"]):
            status, out, err = _run(capsys, *argv)
            assert (status, out) == (1, "") and err.count("\n") == 1, err
            assert f"skyassets {argv[0]}: the store s3://no-such-bucket/home cannot be read" in err
            assert "NoSuchBucket" in err
    monkeypatch.setenv("SKYASSETS_STORAGE", f"s3://{BUCKET}/home")  # the store is down now
    status, out, err = _run(capsys, "catalog", "SELECT 1")
    assert (status, out) == (1, "") and err.count("\n") == 1
    assert "the store s3://" in err and "cannot be read" in err and store.endpoint in err


def test_commands_on_two_machines_sharing_a_stored_home_take_turns(tmp_path, monkeypatch, capsys):
    """Each machine has its own local folder and Dagster instance; only the store is shared, so only
    the lease beside the stored layout keeps their commands from remaking the same products at once."""
    import skyassets.cli.commands as commands

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    with object_store() as store:
        storage = f"s3://{BUCKET}/shared"
        first, second = (Home(tmp_path / machine, storage=storage, endpoint=store.endpoint) for machine in "ab")
        monkeypatch.setattr(commands, "COMMAND_WAIT", 1.0)
        with commands.one_command_at_a_time(first):
            with pytest.raises(commands.CommandError) as busy:
                with commands.one_command_at_a_time(second):
                    pytest.fail("two machines ran a command on the home at once")
        said = capsys.readouterr().err
        assert said.startswith("waiting for another skyassets command on this home to end "
                               f"({storage}/.skyassets-command.lock: held by ")
        assert f"pid {os.getpid()} since " in said and "another skyassets command still holds this home" in str(
            busy.value)
        with commands.one_command_at_a_time(second):  # the first has ended: taken at once
            assert capsys.readouterr().err == ""


def test_show_names_the_products_where_they_are_stored_as_the_catalog_does(tmp_path, monkeypatch, capsys):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    with object_store() as store:
        home = Home(tmp_path / "local", storage=f"s3://{BUCKET}/show", endpoint=store.endpoint)
        monkeypatch.setenv("SKYASSETS_HOME", str(home.root))
        monkeypatch.setenv("SKYASSETS_STORAGE", home.storage)
        monkeypatch.setenv("SKYASSETS_STORAGE_ENDPOINT", store.endpoint)
        home.tables.write("target_groups", pd.DataFrame({"obs_id": ["jw01"], "target": ["M16"]}))
        home.tables.write("mosaics", pd.DataFrame({"target": ["M16"], "instrument_name": ["NIRCAM"],
                                                   "filter": ["F444W"], "path": ["products/M16/mosaic_f444w.fits"],
                                                   "n_inputs": [1]}), "M16")
        home.tables.write("composites", pd.DataFrame({
            "target": ["M16"], "recipe": ["classic"], "filters": ["F090W;F444W"], "method": ["screen"],
            "stretch": ["asinh"], "png": ["products/M16/c.png"], "cube": ["products/M16/c.tif"]}), "M16")
        status, out, _ = _run(capsys, "show", "M16")
        located = connect().execute("SELECT abs_path FROM mosaics").fetchone()[0]
    assert status == 0 and located == f"s3://{BUCKET}/show/products/M16/mosaic_f444w.fits"
    assert f"M16: s3://{BUCKET}/show/products/M16\n" in out and f"F444W: {located} (1 image)" in out
    assert f"s3://{BUCKET}/show/products/M16/c.png, s3://{BUCKET}/show/products/M16/c.tif" in out
    assert str(tmp_path) not in out  # no local path, where nothing is


def test_a_home_that_holds_no_catalogue_is_said_to_be_empty(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SKYASSETS_HOME", str(tmp_path / "elsewhere" / ".skyassets"))
    for argv in (["catalog", "SELECT count(*) FROM images"], ["show", "NGC-3132"], ["quality", "jw01234-o001"],
                 ["export", "SELECT * FROM images", str(tmp_path / "out")]):
        status, out, err = _run(capsys, *argv)
        assert status == 1 and out == "" and err.count("\n") == 1, argv
        assert f"no catalogue in {tmp_path / 'elsewhere' / '.skyassets'}" in err, argv
    assert not (tmp_path / "elsewhere").exists()  # nothing made where there was nothing


def test_show_open_without_a_browser_names_the_file_to_open_and_exits_1(home, capsys, monkeypatch):
    home.tables.write("mosaics", pd.DataFrame({"target": ["NGC-3132"], "instrument_name": ["NIRCAM"],
                                               "filter": ["F444W"], "path": ["products/NGC-3132/m.fits"],
                                               "n_inputs": [2]}), "NGC-3132")
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) and False)  # as on a headless machine
    status, out, err = _run(capsys, "show", "NGC-3132", "--open")
    assert status == 1 and "mosaic    NIRCAM F444W" in out and not opened
    assert err == "skyassets show: --open: NGC-3132 has no composite to open (only mosaics, listed above)\n"
    home.tables.write("composites", pd.DataFrame({
        "target": ["NGC-3132"], "recipe": ["classic"], "filters": ["F090W;F444W"], "method": ["screen"],
        "stretch": ["asinh"], "png": ["products/NGC-3132/c.png"], "cube": ["products/NGC-3132/c.tif"]}), "NGC-3132")
    picture = home.root / "products" / "NGC-3132" / "c.png"
    status, out, err = _run(capsys, "show", "NGC-3132", "--open")
    assert status == 1 and "composite classic" in out and opened == [picture.as_uri()]
    assert err == (f"skyassets show: --open: no browser could be opened (no display, or set BROWSER); open {picture} "
                   "yourself\n")
    monkeypatch.setattr("webbrowser.open", lambda url: True)
    assert _run(capsys, "show", "NGC-3132", "--open")[::2] == (0, "")


def test_an_unknown_observation_is_said_not_to_exist(home, capsys):
    status, _, err = _run(capsys, "quality", "jw99999-o001")
    assert status == 1 and err.count("\n") == 1
    assert "observation jw99999-o001 does not exist" in err and "jw01234-o001" in err
    status, _, err = _run(capsys, "quality", "jw01234-o001")
    assert status == 1 and "no quality measured for jw01234-o001 yet" in err
    status, _, err = _run(capsys, "quality", "JW01234-O001")  # as typed: HST ids are upper case, files lower
    assert status == 1 and "no quality measured for jw01234-o001 yet" in err
    # found by the watchlist, never fetched (its product list failed): said so, not "does not exist"
    home.tables.write("mast_observations", pd.DataFrame({"obs_id": ["J8PU01010", "jw01234-o001"]}))
    status, _, err = _run(capsys, "quality", "j8pu01010")
    assert status == 1 and err.count("\n") == 1
    assert "observation J8PU01010 was found by the watchlist but has no product list or files here yet" in err
    # measured when it had no image, then an image was catalogued: not measured yet, not "no images"
    home.tables.write("image_quality", pd.DataFrame({"obs_id": pd.Series([], dtype=str)}), "jw01234-o002")
    status, out, err = _run(capsys, "quality", "jw01234-o002")
    assert status == 1 and out == "" and err.startswith("jw01234-o002: 1 image catalogued since its quality was "
                                                        "measured: materialise image_quality")
    # measured once, then every file left it: said in words, not as an empty count
    home.tables.write("image_metadata", pd.DataFrame({"obs_id": pd.Series([], dtype=str)}), "jw01234-o002")
    status, out, _ = _run(capsys, "quality", "jw01234-o002")
    assert status == 0 and out == ("jw01234-o002: no images (its files were quarantined, hold no image HDU, or now "
                                   "belong to another observation; the files table lists them)\n")
    # catalogued without an image (a spectrum alone, every file quarantined): nothing to measure, said so
    home.tables.write("image_metadata", pd.DataFrame({"obs_id": pd.Series([], dtype=str)}), "jw01234-o003")
    status, out, err = _run(capsys, "quality", "jw01234-o003")
    assert status == 0 and err == ""
    assert out.startswith("jw01234-o003: no images to measure (its files were quarantined")


def test_an_export_query_without_a_path_column_is_one_line(home, capsys, tmp_path):
    status, _, err = _run(capsys, "export", "SELECT obs_id FROM images", str(tmp_path / "out"))
    assert status == 2 and err.count("\n") == 1 and "'path' column" in err


def test_an_empty_query_is_one_line_not_a_traceback(home, capsys, tmp_path):
    for sql in ("", "   ", "-- c", ";"):
        status, out, err = _run(capsys, "catalog", sql)
        assert status == 2 and out == "" and err == "skyassets catalog: the query is empty\n"
    status, _, err = _run(capsys, "export", "", str(tmp_path / "out"))
    assert status == 2 and err == "skyassets export: the query is empty\n" and not (tmp_path / "out").exists()


def test_a_table_of_no_rows_is_its_header_and_a_count(home, capsys):
    status, out, _ = _run(capsys, "catalog", "SELECT obs_id, file_name FROM images WHERE false")
    assert status == 0 and out == "obs_id  file_name\n(0 rows)\n"


def test_counts_out_of_range_are_usage_errors(home, capsys, monkeypatch):
    monkeypatch.setattr(os, "execv", lambda exe, command: pytest.fail(f"started {command}"))
    for argv in (["catalog", "SELECT 1", "--max-rows", "-1"], ["ingest", ".", "--batch", "0"],
                 ["ingest", ".", "--batch", "-5"], ["ingest", ".", "--batch", "251"], ["ingest", ".", "--batch", "x"],
                 ["dev", "--port", "99999999"], ["dev", "--port", "0"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert f"{argv[-2]}: " in capsys.readouterr().err  # the option named


def test_ingest_of_a_missing_path_says_so_before_starting_anything(home, capsys, tmp_path, monkeypatch):
    def no_server(home):
        raise AssertionError("a Dagster home was prepared for nothing")

    monkeypatch.setattr("skyassets.cli.commands.prepare_dagster_home", no_server)
    status, _, err = _run(capsys, "ingest", str(tmp_path / "nowhere"), str(tmp_path / "gone.fits"))
    assert status == 1 and err == (f"skyassets ingest: {tmp_path / 'nowhere'} does not exist; "
                                   f"{tmp_path / 'gone.fits'} does not exist\n")
    # beside a path that is there, it is refused and the others taken (test_ingest_brings_the_whole_chain...)
    with pytest.raises(AssertionError, match="prepared for nothing"):
        _run(capsys, "ingest", str(tmp_path), str(tmp_path / "nowhere"))
    # a link loop or a dangling link is there: it is refused later, with the reason
    loop = tmp_path / "loop.fits"
    loop.symlink_to(loop)
    (tmp_path / "dangling.fits").symlink_to(tmp_path / "gone.fits")
    with pytest.raises(AssertionError, match="prepared for nothing"):
        _run(capsys, "ingest", str(loop), str(tmp_path / "dangling.fits"))


def test_export_destinations_that_cannot_be_are_one_line(home, capsys, tmp_path):
    for path in home.tables.read("image_metadata", "jw01234-o002")["path"]:
        (home.root / path).parent.mkdir(parents=True, exist_ok=True)
        (home.root / path).write_bytes(b"fits")
    plain = tmp_path / "plain.txt"
    plain.write_text("mine")
    for sql, dest, said in (
        ("SELECT obs_id, sha256 FROM images", tmp_path / "o", "'path' column (e.g. SELECT * FROM images WHERE ...); "
         "it returned: obs_id, sha256"),
        ("SELECT path FROM images", home.files / "JWST" / "jw01234-o001", "inside the skyassets home"),
        ("SELECT path FROM images", plain, f"{plain}: exists and is not a folder"),
        ("SELECT path FROM images", plain / "sub", f"{plain / 'sub'}: cannot be written (Not a directory)"),
    ):
        status, out, err = _run(capsys, "export", sql, str(dest))
        assert status == 2 and out == "" and err.count("\n") == 1 and said in err, err
    assert plain.read_text() == "mine"


def test_an_export_missing_some_files_writes_the_rest_says_which_and_exits_1(home, capsys, tmp_path):
    kept = home.root / "files" / "JWST" / "jw01234-o002" / "c.fits"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"c")  # a, b.fits is not in the home, though its observation's manifest has it
    home.tables.write("fits_files", pd.DataFrame({"partition": ["jw01234-o001"], "status": ["downloaded"],
                                                  "path": ["files/JWST/jw01234-o001/a, b.fits"]}), "jw01234-o001")
    status, out, err = _run(capsys, "export", "SELECT path FROM images", str(tmp_path / "out"))
    assert status == 1 and out.startswith("1 file (0.0 MB) exported to a folder")
    assert "not exported: 0 skipped (not files to ship), 1 missing from the home (named on stderr)" in out
    assert err == ("  missing: files/JWST/jw01234-o001/a, b.fits: no longer in the home "
                   "(removed since it was catalogued)\n")
    assert (tmp_path / "out" / "jw01234-o002" / "c.fits").read_bytes() == b"c"


def test_an_export_says_a_selected_folder_is_skipped_counts_it_apart_and_exits_1(home, capsys, tmp_path):
    kept = home.root / "files" / "JWST" / "jw01234-o002" / "c.fits"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"c")
    sql = ("SELECT path FROM images WHERE obs_id = 'jw01234-o002' "
           "UNION ALL SELECT 'files/JWST/jw01234-o002' UNION ALL SELECT 'files/JWST/jw01234-o009/gone.fits'")
    status, out, err = _run(capsys, "export", sql, str(tmp_path / "out"))
    assert status == 1 and out.startswith("1 file (0.0 MB) exported to a folder")
    assert "not exported: 1 skipped (not files to ship), 1 missing from the home (named on stderr)" in out
    assert err.splitlines() == [
        "  skipped: files/JWST/jw01234-o002: is a folder, not a file",
        "  missing: files/JWST/jw01234-o009/gone.fits: never stored in the home "
        "(not fetched or copied yet, or refused)",
    ]
    assert "removed" not in err


def test_export_into_a_folder_in_use_needs_force_and_names_the_folder_whole(home, capsys, tmp_path, monkeypatch):
    for path in home.tables.read("image_metadata", "jw01234-o001")["path"]:
        (home.root / path).parent.mkdir(parents=True)
        (home.root / path).write_bytes(b"pixels")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README.md").write_text("my notes")
    sql = "SELECT path FROM images WHERE obs_id = 'jw01234-o001'"
    status, _, err = _run(capsys, "export", sql, "out")
    assert status == 2 and "out: the folder is not empty" in err and "--force" in err
    assert (tmp_path / "out" / "README.md").read_text() == "my notes"
    status, out, _ = _run(capsys, "export", sql, "out", "--force")
    assert status == 0 and f"cd {tmp_path / 'out'} && sha256sum -c SHA256SUMS" in out
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--force" in capsys.readouterr().out


def test_dev_on_a_port_already_taken_says_so_and_starts_nothing(home, capsys, monkeypatch):
    import socket

    started = []
    monkeypatch.setattr(os, "execv", lambda exe, command: started.append(command))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, _, err = _run(capsys, "dev", "-p", str(port))
    assert status == 1 and not started
    assert err == (f"skyassets dev: cannot serve the UI on 127.0.0.1:{port}: Address already in use; "
                   "choose another with -p PORT (or -h HOST)\n")


def test_dev_takes_host_and_port_like_dagster_dev(home, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(os, "execv", lambda exe, command: started.append(command))
    here = os.getcwd()
    monkeypatch.chdir(here)  # dev starts dagster dev from $DAGSTER_HOME; the folder is restored after
    assert main(["dev", "-p", "3333", "-h", "0.0.0.0", "--", "--log-level", "debug"]) == 0
    command = started[0]
    (location,) = yaml.safe_load(Path(command[command.index("-w") + 1]).read_text())["load_from"]
    assert os.getcwd() == os.environ["DAGSTER_HOME"] and location["python_module"]["working_directory"] == here
    assert location["python_module"]["location_name"] == LOCATION  # where the command line's runs re-execute
    assert command[command.index("--port") + 1] == "3333" and command[command.index("--host") + 1] == "0.0.0.0"
    assert command[-2:] == ["--log-level", "debug"]
    with pytest.raises(SystemExit):
        main(["dev", "--help"])
    assert "-p PORT, --port PORT" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "said"), [
    ("entries:\n  - name: ring\n    target: [NGC 3132\n", "line 4, column 1: not valid YAML"),
    # a filter no known instrument has: searched as written, but said
    ("entries:\n  - name: ring\n    target: NGC 3132\n    filters: [F44W]\n",
     "entry 'ring': filter 'F44W' is none skyassets knows (did you mean F444W?); searched as written"),
])
def test_dev_warns_of_a_watchlist_it_doubts_and_starts_the_ui_even_so(home, capsys, monkeypatch, tmp_path, text, said):
    started = []
    monkeypatch.setattr(os, "execv", lambda exe, command: started.append(command))
    monkeypatch.chdir(os.getcwd())
    watchlist = tmp_path / "watchlist.yaml"
    watchlist.write_text(text)
    monkeypatch.setenv("SKYASSETS_WATCHLIST", str(watchlist))
    assert main(["dev"]) == 0 and len(started) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"skyassets dev: warning: {watchlist}: {said}"), line


def test_a_second_dev_on_a_home_is_refused_while_the_first_runs(home, capsys, monkeypatch):
    """Two daemons on one instance would launch every sensor's and automation's runs twice."""
    second = []

    def first_dev_runs(exe, command):  # dagster dev runs here, holding the home: a second is started
        second.append(main(["dev", "-p", "3334"]))

    monkeypatch.setattr(os, "execv", first_dev_runs)
    monkeypatch.chdir(os.getcwd())
    assert main(["dev", "-p", "3333"]) == 0 and second == [1]
    said = capsys.readouterr().err.strip()
    assert said.startswith(f"skyassets dev: already running on this home (pid {os.getpid()}, "
                           "http://127.0.0.1:3333, since "), said
    assert said.endswith("; open it, or stop it first")
    monkeypatch.setattr(os, "execv", lambda exe, command: None)
    assert main(["dev", "-p", "3334"]) == 0  # the first has ended: the home is free


def test_dev_passes_the_options_it_does_not_know_on_to_dagster_dev(home, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(os, "execv", lambda exe, command: started.append(command))
    monkeypatch.chdir(os.getcwd())  # dev starts dagster dev from $DAGSTER_HOME; the folder is restored after
    assert main(["dev", "-p", "3333", "--log-level", "debug", "--log-format=json"]) == 0
    assert main(["dev", "--log-level", "info", "-h", "0.0.0.0", "--", "--code-server-log-level", "debug"]) == 0
    first, second = started
    assert first[first.index("--port") + 1] == "3333" and first[-3:] == ["--log-level", "debug", "--log-format=json"]
    assert second[second.index("--host") + 1] == "0.0.0.0"
    assert second[-4:] == ["--log-level", "info", "--code-server-log-level", "debug"]
    with pytest.raises(SystemExit):
        main(["dev", "--help"])
    assert "Any other option goes on to `dagster dev`" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:  # the other commands still refuse what they do not know
        main(["catalog", "SELECT 1", "--log-level", "debug"])
    assert exited.value.code == 2 and "unrecognized arguments: --log-level debug" in capsys.readouterr().err


@pytest.mark.slow
def test_ingest_brings_the_whole_chain_up_to_date_and_says_what_failed(emu, tmp_path):
    drop = tmp_path / "night"
    drop.mkdir()
    cal = sorted(emu.sky.root.rglob("*_cal.fits"))[:3]
    for path in cal:
        (drop / path.name).write_bytes(path.read_bytes())
    (drop / "cut\nshort.fits").write_bytes(cal[0].read_bytes()[:5000])  # a name that is two lines
    (drop / "elsewhere.fits").symlink_to(cal[-1])  # a link is never followed out of the folder
    (drop / "night2").symlink_to(cal[-1].parent)  # nor a linked folder: said, and no file of it counted
    blank = drop / "jw99999001001_02101_00001_nrca1_cal.fits"
    with fits.open(cal[0]) as hdul:
        hdul[0].header["OBS_ID"] = "V99999001001P0000000002101"
        hdul["SCI"].data = np.full_like(hdul["SCI"].data, np.nan)
        hdul.writeto(blank, checksum=True)  # a valid file whose pixels are all NaN: catalogued, not usable
    spectrum = drop / "obqc01010_x1d.fits"  # a STIS spectrum: a table, no image HDU
    table = fits.BinTableHDU.from_columns([fits.Column(name="WAVELENGTH", format="8D", array=np.ones((1, 8)))])
    fits.HDUList([fits.PrimaryHDU(header=fits.Header({"OBS_ID": "OBQC01010", "INSTRUME": "STIS"})),
                  table]).writeto(spectrum, checksum=True)
    env = {**os.environ, "SKYASSETS_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "home" / "dagster")}
    result = subprocess.run(  # with a path mistyped: refused, and the rest taken
        [sys.executable, "-m", "skyassets.cli.main", "ingest", str(drop), "nigth"],  # named from where it runs
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr  # one file was quarantined
    assert "8 files in 6 partitions" in result.stdout
    assert f"  refused: {tmp_path / 'nigth'}: does not exist\n" in result.stderr
    # the partitions of the quarantined file and of the spectrum have no image, but are run as the
    # daemon would run them (nothing measured): a daemon started next finds nothing to do
    assert "Measuring image quality of 6 observations:" in result.stdout
    assert "details: skyassets quality landed-cut" not in result.stdout
    # the image that needs a look is named with its observation and HDU
    assert re.search(rf"^  lowest: landed-\S+ {re.escape(blank.name)}\[1\] \(F\w+\) score \d+ \w+$",
                     result.stdout, re.M), result.stdout
    assert "5 catalogued, 1 quarantined, 0 failed, 2 refused; 1 folder not read\n" in result.stdout
    assert f"refused: {drop / 'night2'}: a symbolic link to a folder" in result.stderr
    assert "1 catalogued file with no image HDU (spectra or tables)" in result.stdout
    assert f"  no image: {spectrum}\n" in result.stdout
    assert any(line.startswith(f"  quarantined: {drop}/cut\\nshort.fits: ") for line in result.stderr.splitlines())
    assert f"refused: {drop / 'elsewhere.fits'}:" in result.stderr
    assert f"not usable: {blank}[1]: no finite" in result.stderr  # where it was landed, as the rest are named
    assert "runs failed" not in result.stderr  # the unusable image failed no run of its batch
    # each step's runs are announced, in the order they run, a short step's too
    steps = ["Grouping the images into targets ...", "Publishing the catalog ...", "Tiling the sky of ",
             "Publishing the sky tiles ..."]
    assert [result.stderr.find(step) for step in steps] == sorted(result.stderr.find(step) for step in steps)
    assert all(step in result.stderr for step in steps), result.stderr
    # Every run was launched for the code location, as the UI launches runs, so the UI can re-execute it.
    with DagsterInstance.from_config(str(tmp_path / "home" / "dagster")) as instance:
        runs = instance.get_runs()
        assert {r.job_name for r in runs} >= {"landing_job", "quality_job", "catalog_job", "products_job"}
        assert all(r.remote_job_origin and r.remote_job_origin.location_name == LOCATION for r in runs)
        # targets grouped once, and the catalog published once, after the products were made
        for asset in ("target_groups", "catalog"):
            assert len(instance.fetch_materializations(AssetKey(asset), limit=10).records) == 1, asset
        # the daemon's first look, as `skyassets dev` started now would take it: nothing left to run
        first = evaluate_automation_conditions(defs=defs, instance=instance)
        asked = {key.to_user_string(): first.get_num_requested(key)
                 for key in defs.resolve_asset_graph().get_all_asset_keys() if first.get_num_requested(key)}
        assert first.total_requested == 0, asked
    home = Home(tmp_path / "home")
    assert (home.root / "catalog.duckdb").exists()
    made = home.tables.read("mosaics")
    assert len(made) and connect(home.root).sql("SELECT count(*) FROM mosaics").fetchall() == [(len(made),)]
    measured = pd.concat(home.tables.read("image_quality", p) for p in home.tables.partitions("image_quality"))
    assert sorted(measured["file_name"]) == sorted([p.name for p in cal] + [blank.name])  # without a daemon
    assert home.tables.exists("target_groups")
    # nothing taken (a file not named as FITS): nothing to bring up to date, nothing published again
    notes = tmp_path / "notes.txt"
    notes.write_text("observing log")
    refused = subprocess.run([sys.executable, "-m", "skyassets.cli.main", "ingest", str(notes)],
                             env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1 and f"no FITS file taken from {notes}" in refused.stderr, refused.stderr
    assert "Published" not in refused.stdout and "catalog published" not in refused.stdout
    # the same folder again: nothing to run, so no webserver is started, and the catalog is as it was
    published = (home.root / "catalog.duckdb").stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-m", "skyassets.cli.main", "ingest", str(drop)],
                           env=env, capture_output=True, text=True, timeout=600)
    assert "6 of them unchanged since an earlier ingest" in again.stdout, again.stdout
    assert "webserver" not in again.stderr, again.stderr
    assert f"catalog up to date: {home.root / 'catalog.duckdb'}" in again.stdout, again.stdout
    assert (home.root / "catalog.duckdb").stat().st_mtime_ns == published
    # a file whose header now names another observation leaves its partition, and is named
    moved = drop / cal[1].name
    with fits.open(moved) as hdul:
        hdul[0].header["OBS_ID"] = "V99999001001P0000000002199"
        hdul.writeto(moved, checksum=True, overwrite=True)
    moved_out = subprocess.run([sys.executable, "-m", "skyassets.cli.main", "ingest", str(drop)],
                               env=env, capture_output=True, text=True, timeout=600)
    assert re.search(rf"^1 file left (\S+) for another partition.*\n  left \1: {re.escape(str(moved))}$",
                     moved_out.stdout, re.M), moved_out.stdout


@pytest.mark.slow
def test_a_second_command_on_a_home_waits_for_the_first_and_finds_its_work_done(emu, tmp_path):
    drop = tmp_path / "night"
    drop.mkdir()
    cal = sorted(emu.sky.root.rglob("*_cal.fits"))[0]
    shutil.copy(cal, drop / cal.name)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYASSETS_", "DAGSTER_"))}
    env["SKYASSETS_HOME"] = str(home)
    command = [sys.executable, "-m", "skyassets.cli.main", "ingest", str(drop)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    lock = home / ".skyassets-command.lock"
    deadline = time.monotonic() + 120
    while f"pid {first.pid} " not in (lock.read_text() if lock.exists() else ""):
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.1)
    second = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out + err
    assert "1 catalogued, 0 quarantined" in out
    assert second.returncode == 0, second.stdout + second.stderr
    waited = [line for line in second.stderr.splitlines() if line.startswith("waiting for another skyassets command")]
    assert len(waited) == 1 and f"pid {first.pid} since " in waited[0], second.stderr
    # taken after the first had ended: nothing of its work done twice
    assert "1 of them unchanged since an earlier ingest" in second.stdout, second.stdout
    assert "webserver" not in second.stderr


def test_output_cut_short_by_its_reader_ends_quietly(home):
    """``skyassets catalog ... | head -1``: the reader going away is no error to report."""
    command = [sys.executable, "-m", "skyassets.cli.main", "catalog", "SELECT * FROM range(200000)",
               "--format", "csv", "--max-rows", "0"]
    shell = subprocess.run(f"{shlex.join(command)} | head -1; echo \"status ${{PIPESTATUS[0]}}\"",
                           shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert shell.stdout.splitlines() == ["range", "status 141"]
    assert shell.stderr == ""


@pytest.mark.parametrize(("name", "value", "said"), [
    ("SKYASSETS_AUTOMATION_INTERVAL", "soon", "SKYASSETS_AUTOMATION_INTERVAL='soon' is not a whole number"),
    ("SKYASSETS_DOWNLOAD_PARALLEL", "abc", "SKYASSETS_DOWNLOAD_PARALLEL='abc' is not a whole number"),
    ("SKYASSETS_DOWNLOAD_PARALLEL", "0", "SKYASSETS_DOWNLOAD_PARALLEL='0': it must be at least 1"),
    ("SKYASSETS_DAILY_RETRIES", "-1", "SKYASSETS_DAILY_RETRIES='-1': it must be at least 0"),
    ("SKYASSETS_CLOUD", "maybe", "SKYASSETS_CLOUD='maybe' is neither on (1, true, yes, on) nor off"),
    ("SKYASSETS_STORAGE_CACHE_GB", "lots", "SKYASSETS_STORAGE_CACHE_GB='lots' is not a number"),
    ("SKYASSETS_MAX_DECOMPRESSED_BYTES", "1GB", "SKYASSETS_MAX_DECOMPRESSED_BYTES='1GB' is not a whole number"),
])
def test_a_setting_that_cannot_be_read_is_one_line_before_anything_starts(home, tmp_path, monkeypatch, capsys,
                                                                          name, value, said):
    def no_server(home):
        raise AssertionError("a Dagster home was prepared for nothing")

    monkeypatch.setattr("skyassets.cli.commands.prepare_dagster_home", no_server)
    drop = tmp_path / "drop"
    drop.mkdir()
    fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(drop / "one.fits")  # a run to launch
    monkeypatch.setenv(name, value)
    for argv in (["ingest", str(drop)], ["demo"], ["dev", "-p", "3999"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"skyassets {argv[0]}: {said}") and err.count("\n") == 1, err


def _webserver_of(home: Path) -> int | None:
    """The pid of the webserver a command started for ``home`` (its command line names the home)."""
    for proc in Path("/proc").iterdir():
        try:
            line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and "dagster_webserver" in line and str(home) in line:
            return int(proc.name)
    return None


@pytest.mark.slow
def test_a_command_killed_outright_takes_its_webserver_with_it(emu, tmp_path):
    """kill -9 (or the OOM killer) leaves a command no time to stop its webserver: the webserver hears
    of its death and stops, rather than serve no one for ever."""
    drop = tmp_path / "night"
    drop.mkdir()
    cal = sorted(emu.sky.root.rglob("*_cal.fits"))[0]
    for k in range(20):
        shutil.copy(cal, drop / f"{k:03d}_{cal.name}")
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYASSETS_", "DAGSTER_"))}
    env["SKYASSETS_HOME"] = str(home)
    command = subprocess.Popen([sys.executable, "-m", "skyassets.cli.main", "ingest", str(drop)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.monotonic() + 180
    while (server := _webserver_of(home)) is None:
        assert time.monotonic() < deadline and command.poll() is None, "the command started no webserver"
        time.sleep(0.2)
    command.kill()
    command.wait(timeout=30)
    import psutil

    try:
        psutil.Process(server).wait(timeout=60)  # reaped by init once it stops
    except psutil.TimeoutExpired:
        os.kill(server, signal.SIGKILL)
        pytest.fail("the webserver outlived its command")


@pytest.mark.slow
def test_a_command_terminated_stops_the_webserver_and_runs_it_started(emu, tmp_path):
    drop = tmp_path / "night"
    drop.mkdir()
    cal = sorted(emu.sky.root.rglob("*_cal.fits"))[0]
    for k in range(150):  # one observation's run that lasts a while
        shutil.copy(cal, drop / f"{k:03d}_{cal.name}")
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYASSETS_", "DAGSTER_"))}
    env["SKYASSETS_HOME"] = str(home)
    command = subprocess.Popen([sys.executable, "-m", "skyassets.cli.main", "ingest", str(drop)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)

    def group_alive(group: int) -> list[str]:  # processes of the group that still run (not zombies)
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                alive.append(stat.parent.name)
        return alive

    deadline = time.monotonic() + 180
    while (server := _webserver_of(home)) is None:
        assert time.monotonic() < deadline and command.poll() is None, "the command started no webserver"
        time.sleep(0.2)
    group = os.getpgid(server)
    instance = None
    while instance is None or not [r for r in instance.get_runs() if r.status == DagsterRunStatus.STARTED]:
        assert time.monotonic() < deadline and command.poll() is None, "no run started"
        time.sleep(0.2)
        if instance is None and (home / "dagster" / "history" / "runs.db").exists():
            instance = DagsterInstance.from_config(str(home / "dagster"))
    command.send_signal(signal.SIGTERM)
    _, err = command.communicate(timeout=90)
    assert command.returncode == 143 and "skyassets ingest: terminated" in err and "show as canceled" in err, err
    assert not group_alive(group)  # the webserver, its code server and the run processes are all gone
    assert all(r.status == DagsterRunStatus.CANCELED for r in instance.get_runs())  # none left STARTED


def test_the_run_retry_daemon_starts_past_the_runs_that_ended_before_it(tmp_path: Path) -> None:
    """`skyassets dev` gives the daemon its cursors (so its first start says nothing): past a run that
    failed before, which is not retried then; a cursor the daemon already keeps is left as it is."""
    from dagster import DagsterEventType, instance_for_test, job, op

    @op
    def breaks() -> None:
        raise RuntimeError("failed before the daemon ever ran")

    @job
    def failing() -> None:
        breaks()

    with instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert not failing.execute_in_process(instance=instance, raise_on_error=False).success
        (failure,) = instance.fetch_run_status_changes(DagsterEventType.RUN_FAILURE, limit=1).records
        start_run_retries_from_now(instance)
        failed, succeeded = run_retry_cursor("RUN_FAILURE"), run_retry_cursor("RUN_SUCCESS")
        assert failed == "EVENT_LOG_CONSUMER_CURSOR-PIPELINE_FAILURE"  # the daemon's name: its event's value
        assert instance.daemon_cursor_storage.get_cursor_values({failed, succeeded}) == {
            failed: str(failure.storage_id), succeeded: "0"}
        instance.daemon_cursor_storage.set_cursor_values({succeeded: "7"})
        start_run_retries_from_now(instance)
        assert instance.daemon_cursor_storage.get_cursor_values({succeeded})[succeeded] == "7"


def test_a_home_that_cannot_be_written_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    """A home that is a file, or a Dagster home on a read-only mount, is said before anything starts."""
    started = []
    monkeypatch.setattr(os, "execv", lambda exe, command: started.append(command))
    plain = tmp_path / "home"
    plain.write_text("not a folder")
    monkeypatch.setenv("SKYASSETS_HOME", str(plain))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for argv in (["demo"], ["ingest", str(tmp_path)], ["dev", "-p", "3999"]):
        status, out, err = _run(capsys, *argv)
        assert (status, out) == (1, "") and err == f"skyassets {argv[0]}: the skyassets home {plain} is a file, " \
                                                   "not a folder\n", err
    assert not started
    read_only = tmp_path / "mounted"
    read_only.mkdir()

    def refused(self: Path, *args: object, **kwargs: object) -> None:  # as a read-only mount refuses it
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setenv("SKYASSETS_HOME", str(read_only))
    monkeypatch.setattr(Path, "mkdir", refused)
    status, _, err = _run(capsys, "demo")
    assert status == 1 and err == (f"skyassets demo: the skyassets home {read_only} cannot be written: "
                                   f"{read_only / 'dagster'}: Read-only file system\n")


@pytest.mark.parametrize("text, said", [
    ("entries:\n  - name: ring\n    target: NGC 3132: the Southern Ring\n",
     "line 3, column 21: not valid YAML: mapping values are not allowed here"),
    ("entries:\n  - name: ring\n    target: NGC 3132\n  - name: typo\n    coordinates: \"400 -95\"\n",
     "entry 'typo': ra is between 0 and 360 degrees, not 400"),
    ("entries:\n  - name: ring\n    target: NGC 3132\n    colection: JWST\n",
     "entry 'ring': unknown keys ['colection'] (did you mean 'collection'?); known keys are"),
])
def test_a_demo_refuses_a_watchlist_it_cannot_query_before_it_starts_anything(tmp_path, monkeypatch, capsys,
                                                                               text, said):
    watchlist = tmp_path / "watchlist.yaml"
    watchlist.write_text(text)
    monkeypatch.setenv("SKYASSETS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SKYASSETS_WATCHLIST", str(watchlist))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["demo"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, out + err
    assert err.startswith(f"skyassets demo: {watchlist}: {said}"), err
    assert not (tmp_path / "home").exists()  # no instance, webserver or emulator was started
    monkeypatch.setenv("SKYASSETS_WATCHLIST", str(tmp_path / "nope.yaml"))
    assert main(["demo"]) == 2
    assert capsys.readouterr().err == (f"skyassets demo: {tmp_path / 'nope.yaml'}: cannot read the watchlist: "
                                       "No such file or directory\n")


def test_the_quality_report_lists_the_images_worst_first_and_ties_in_file_order(tmp_path, monkeypatch, capsys):
    home = Home(tmp_path / "home")
    obs = "jw01234-o001_t001_nircam_clear-f090w"
    measured = pd.DataFrame({"obs_id": [obs] * 5, "file_name": ["b.fits", "a.fits", "c.fits", "a.fits", "d.fits"],
                             "hdu_index": [1, 2, 1, 1, 1], "score": [80.0, 30.0, None, 30.0, 90.0],
                             "flag": ["good", "reject", "reject", "reject", "good"]})
    home.tables.write("image_metadata", measured[["obs_id", "file_name", "hdu_index"]], obs)
    home.tables.write("image_quality", measured, obs)
    monkeypatch.setenv("SKYASSETS_HOME", str(home.root))
    assert main(["quality", obs]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{obs}: 5 images, 3 reject, 2 good\n"), out
    listed = [line.split()[0] for line in out.splitlines() if line.endswith("  - -")]
    assert listed == ["c.fits[1]", "a.fits[1]", "a.fits[2]", "b.fits[1]", "d.fits[1]"], out
