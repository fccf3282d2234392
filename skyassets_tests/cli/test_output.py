"""Query results and counts as the command line prints them."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd

from skyassets.cli.output import counted, one_line, write_frame


def test_counts_are_singular_for_one():
    assert [counted(n, "files") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]
    assert counted(1, "FITS checksums") == "1 FITS checksum"


def test_every_format_takes_repeated_columns_times_and_arrays():
    frame = pd.DataFrame([["a", pd.Timestamp("2022-07-12T10:00:00"), np.array([1, 2]), np.float32(0.5)]],
                         columns=["obs_id", "t", "obs_id", "x"])
    out = io.StringIO()
    write_frame(frame, "json", out)
    # a repeated column name keeps its last value in JSON, as DuckDB's own JSON output does
    assert json.loads(out.getvalue()) == {"obs_id": [1, 2], "t": "2022-07-12T10:00:00", "x": 0.5}
    out = io.StringIO()
    write_frame(frame, "csv", out)
    assert out.getvalue().splitlines() == ["obs_id,t,obs_id,x", 'a,2022-07-12T10:00:00,"[1, 2]",0.5']
    out = io.StringIO()
    write_frame(frame, "table", out)
    header, row = out.getvalue().splitlines()
    assert header.split() == ["obs_id", "t", "obs_id", "x"]
    assert row.split() == ["a", "2022-07-12T10:00:00", "[1,", "2]", "0.5"]


def test_a_null_integer_or_boolean_and_a_blob_print_as_null_and_hex():
    frame = pd.DataFrame({"calib_level": pd.array([None, 3], dtype="Int16"),
                          "ok": pd.array([None, True], dtype="boolean"), "blob": [None, bytearray(b"ab")]})
    out = io.StringIO()
    write_frame(frame, "json", out)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [
        {"calib_level": None, "ok": None, "blob": None}, {"calib_level": 3, "ok": True, "blob": "6162"}]
    out = io.StringIO()
    write_frame(frame, "csv", out)
    assert out.getvalue().splitlines() == ["calib_level,ok,blob", ",,", "3,True,6162"]
    out = io.StringIO()
    write_frame(frame, "table", out)
    assert out.getvalue().splitlines()[1].split() == ["NULL", "NULL", "NULL"]


def test_a_table_keeps_each_row_on_its_line_whatever_the_names_hold():
    frame = pd.DataFrame({"location": ["/drop/bad\nname.fits", "/drop/\x1b[31mred.fits", "/drop/ünï tab\t.fits"]})
    out = io.StringIO()
    write_frame(frame, "table", out)
    assert out.getvalue().splitlines() == [
        "location", "/drop/bad\\nname.fits", "/drop/\\x1b[31mred.fits", "/drop/ünï tab\\t.fits"]
    assert one_line("plain name.fits") == "plain name.fits"
    out = io.StringIO()
    write_frame(frame, "csv", out)  # CSV quotes such values; a reader gets them back as they are
    assert list(pd.read_csv(io.StringIO(out.getvalue()))["location"]) == list(frame["location"])


def test_an_infinity_is_a_value_in_a_table_and_csv_and_a_nan_is_null():
    frame = pd.DataFrame({"x": [np.inf, -np.inf, np.nan, 1.5]})
    out = io.StringIO()
    write_frame(frame, "table", out)
    assert [line.strip() for line in out.getvalue().splitlines()] == ["x", "inf", "-inf", "NULL", "1.5"]
    out = io.StringIO()
    write_frame(frame, "csv", out)
    assert out.getvalue().splitlines() == ["x", "inf", "-inf", "\"\"", "1.5"]  # a lone empty field is quoted
    out = io.StringIO()
    write_frame(frame, "json", out)
    assert [json.loads(line)["x"] for line in out.getvalue().splitlines()] == [None, None, None, 1.5]
