"""The catalog over a synthetic lake: snapshots under concurrent writes, sky/time/instrument questions, publishing."""

from __future__ import annotations

import gzip
import hashlib
import multiprocessing
import multiprocessing.synchronize
import os
import re
from pathlib import Path

import astropy.units as u
import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy.coordinates import SkyCoord
from astropy.time import Time

from skyassets.catalog import db as catalog
from skyassets.lake.parquet import write_parquet


def image_rows(n: int, *, obs_id: str = "obs1", seed: int = 0, **columns) -> pd.DataFrame:
    """Image-HDU rows shaped like ``image_metadata``: random centres, times, instruments and filters."""
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    t_min = 60000 + rng.uniform(0, 30, n)
    frame = pd.DataFrame(
        {
            "obs_id": obs_id,
            "obs_collection": "JWST",
            "target_name": rng.choice(["NGC 3132", "M16", "Orion Bar"], n),
            "s_ra": ra,
            "s_dec": dec,
            "s_fov": 0.05,
            "s_region": None,
            "t_min": t_min,
            "t_max": t_min + 0.01,
            "t_exptime": rng.choice([100.0, 500.0, 1000.0], n),
            "em_min": 4.0e-6,
            "em_max": 4.9e-6,
            "instrument_name": rng.choice(["NIRCAM/IMAGE", "MIRI/IMAGE", "WFC3/IR"], n),
            "filter": rng.choice(["F090W", "F444W", "F770W"], n),
            "pupil": "CLEAR",
            "sha256": [f"{obs_id}-{seed}-{i:06d}" for i in range(n)],
            "filename": [f"{obs_id}_{i}_cal.fits" for i in range(n)],
            "path": [f"files/JWST/{obs_id}/{obs_id}_{i}_cal.fits" for i in range(n)],
            "hdu_index": 1,
            "header": "{}",
        }
    )
    for name, value in columns.items():
        frame[name] = value
    return frame


def lake_file(home: Path | str, asset: str, partition: str | None = None) -> Path:
    """Where the lake keeps an asset: ``lake/<asset>.parquet``, or ``lake/<asset>/<partition>.parquet``."""
    lake = Path(home) / "lake"
    return lake / f"{asset}.parquet" if partition is None else lake / asset / f"{partition}.parquet"


def put(home: Path, asset: str, frame: pd.DataFrame, partition: str | None = None, mtime: float | None = None) -> Path:
    path = Path(write_parquet(frame, lake_file(home, asset, partition)))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def ids(relation: duckdb.DuckDBPyRelation) -> set[str]:
    return set(relation.df()["sha256"])


def test_empty_and_missing_lake(tmp_path):
    with pytest.warns(UserWarning, match="nothing-here does not exist: the catalog is empty"):
        con = catalog.connect(tmp_path / "nothing-here")
    assert not (tmp_path / "nothing-here").exists()
    for table in ("observations", "products", "files", "images"):
        assert con.sql(f"SELECT count(*) FROM {table}").fetchall() == [(0,)]
    assert {"s_ra", "s_dec", "s_region", "t_min", "locations", "obs_ids"} <= set(con.table("images").columns)
    assert len(catalog.search(con, cone=(10, 20, 1), instrument="NIRCAM", time=(60000, 60001)).df()) == 0
    with pytest.raises(duckdb.CatalogException):
        con.sql("SELECT * FROM quality").fetchall()
    with pytest.raises(catalog.CatalogError, match="no quality table yet"):
        catalog.search(con, min_quality=50)
    with pytest.raises(catalog.CatalogError, match="does not exist yet"):
        catalog.connect(tmp_path, published=True)


def test_tables_appear_once_files_exist(tmp_path):
    con = catalog.connect(tmp_path)
    put(tmp_path, "image_metadata", image_rows(5), "obs1")
    put(tmp_path, "mast_observations", pd.DataFrame({"obs_id": ["obs1"], "s_ra": [1.0], "s_dec": [2.0]}))
    put(tmp_path, "source_catalogs", pd.DataFrame({"sha256": ["x"], "ra": [1.0], "dec": [2.0]}), "obs1")
    assert len(catalog.search(con).df()) == 5  # helpers refresh first
    assert con.sql("SELECT count(*) FROM observations").fetchall() == [(1,)]
    assert con.sql("SELECT count(*) FROM sources").fetchall() == [(1,)]
    assert catalog.refresh(con) is False  # nothing changed since
    put(tmp_path, "image_metadata", image_rows(3, obs_id="obs2"), "obs2")
    assert catalog.refresh(con) is True
    assert con.sql("SELECT count(*) FROM images").fetchall() == [(8,)]
    lake_file(tmp_path, "image_metadata", "obs1").unlink()
    assert catalog.refresh(con) is True
    assert con.sql("SELECT count(DISTINCT obs_id) FROM images").fetchall() == [(1,)]


def rewrite_partitions(
    home: str, stop: multiprocessing.synchronize.Event, started: multiprocessing.synchronize.Event
) -> None:
    """Replace two partitions (temp file + rename) in a tight loop until told to stop."""
    images = [image_rows(200, obs_id="obs1", t_exptime=float(k)) for k in range(5)]
    files = [image_rows(100 + k, seed=k)[["path", "sha256"]] for k in range(5)]
    k = 0
    while not stop.is_set():
        write_parquet(files[k % 5], lake_file(home, "fits_files", "obs1"))
        if k % 10 == 0:
            write_parquet(images[k % 5], lake_file(home, "image_metadata", "obs1"))
        k += 1
        started.set()
        stop.wait(0.02)


def test_queries_while_another_process_rewrites_partitions(tmp_path):
    put(tmp_path, "image_metadata", image_rows(200, obs_id="obs1"), "obs1")
    put(tmp_path, "image_metadata", image_rows(300, obs_id="obs2", seed=1), "obs2")
    put(tmp_path, "fits_files", image_rows(50)[["path", "sha256"]], "obs2")
    con = catalog.connect(tmp_path)
    context = multiprocessing.get_context("spawn")
    stop, started = context.Event(), context.Event()
    writer = context.Process(target=rewrite_partitions, args=(str(tmp_path), stop, started))
    writer.start()
    try:
        assert started.wait(30)
        seen, changes = set(), 0
        for k in range(300):
            changes += catalog.refresh(con)
            n_files = con.sql("SELECT count(*) FROM files").fetchall()[0][0]
            assert 150 <= n_files <= 154, n_files
            sql = "SELECT count(*), count(DISTINCT t_exptime) FROM images WHERE obs_id = 'obs1'"
            seen.add(con.sql(sql).fetchall()[0])
            if k % 10 == 0:
                assert len(catalog.search(con, instrument=["NIRCAM", "MIRI", "WFC3"]).df()) == 500
    finally:
        stop.set()
        writer.join(30)
    assert writer.exitcode == 0
    assert seen == {(200, 1)}
    assert changes > 30  # the snapshots did follow the writer


def sky(n: int, seed: int = 3) -> pd.DataFrame:
    """Random points with crowds where cones are hard: across RA 0 and near both poles."""
    rng = np.random.default_rng(seed)
    frame = image_rows(n, seed=seed)
    k = n // 4
    frame.loc[: k - 1, "s_ra"] = rng.uniform(-0.6, 0.6, k) % 360
    frame.loc[: k - 1, "s_dec"] = rng.uniform(-0.6, 0.6, k)
    frame.loc[k : 2 * k - 1, "s_dec"] = rng.uniform(89.3, 90, k)
    frame.loc[2 * k : 3 * k - 1, "s_dec"] = rng.uniform(-90, -89.5, k)
    return frame


@pytest.mark.parametrize(
    ("ra", "dec", "radius"),
    [(0.01, 0.0, 0.3), (359.99, 0.2, 0.25), (123.0, 89.9, 0.5), (300.0, 89.6, 0.35), (45.0, -89.95, 0.2),
     (200.0, -89.4, 0.15), (-0.5, 0.1, 0.2), (360.0, 0.1, 0.2), (180.0, 30.0, 20.0)],
)
def test_cone_matches_astropy(tmp_path, ra, dec, radius):
    frame = sky(4000)
    put(tmp_path, "image_metadata", frame, "obs1")
    con = catalog.connect(tmp_path)
    separation = SkyCoord(frame.s_ra, frame.s_dec, unit="deg").separation(SkyCoord(ra, dec, unit="deg")).deg
    truth = set(frame.sha256[separation <= radius])
    found = catalog.search(con, cone=(ra, dec, radius)).df()
    assert set(found.sha256) == truth and len(truth) > 0
    assert np.allclose(found.distance, np.sort(separation[separation <= radius]), atol=1e-9)
    assert ids(con.sql(f"SELECT * FROM cone({ra % 360}, {dec}, {radius})")) == truth
    sql_rows = con.sql(f"SELECT * FROM images WHERE in_cone(s_ra, s_dec, {ra % 360}, {dec}, {radius})")
    assert ids(sql_rows) == truth


@pytest.mark.parametrize(("cone", "said"), [
    ((400, 100, 1), "dec is between -90 and +90 degrees, not 100"),
    ((10, -91, 1), "dec is between -90 and +90 degrees, not -91"),
    ((10, 10, -1), "the radius is more than 0 degrees, not -1"),
    ((10, 10, 0), "the radius is more than 0 degrees, not 0"),
])
@pytest.mark.parametrize("rows", [0, 50])
def test_a_cone_off_the_sky_is_refused_rather_than_finding_nothing(tmp_path, cone, said, rows):
    put(tmp_path, "image_metadata", sky(50).iloc[:rows], "obs1")
    con = catalog.connect(tmp_path)
    with pytest.raises(duckdb.InvalidInputException, match=re.escape(f"cone: {said}")):
        con.sql(f"SELECT * FROM cone{cone}").fetchall()
    with pytest.raises(ValueError, match=re.escape(f"cone: {said}")):
        catalog.search(con, cone=cone)


def test_ang_sep_macro_across_ra_zero_and_poles(tmp_path):
    con = catalog.connect(tmp_path)
    pairs = [(359.99, 0.0, 0.01, 0.0), (10.0, 89.9, 190.0, 89.9), (0.0, -90.0, 123.0, -89.0), (1.0, 2.0, 3.0, 4.0)]
    for ra1, dec1, ra2, dec2 in pairs:
        got = con.sql(f"SELECT ang_sep({ra1}, {dec1}, {ra2}, {dec2})").fetchall()[0][0]
        want = SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).deg
        assert got == pytest.approx(want, abs=1e-10)


def square(ra: float, dec: float, half: float, angle: float = 0.0) -> str:
    """A square footprint of half-side ``half`` degrees, rotated by ``angle``, as an s_region."""
    centre = SkyCoord(ra, dec, unit="deg")
    corners = []
    for k in range(4):
        position_angle = angle + 45 + 90 * k
        corner = centre.directional_offset_by(position_angle * u.deg, half * np.sqrt(2) * u.deg)
        corners += [corner.ra.deg, corner.dec.deg]
    return "POLYGON ICRS " + " ".join(f"{v:.10f}" for v in corners)


def test_footprint_contains_point(tmp_path):
    regions = {
        "across-zero": ("POLYGON ICRS 359.9 -0.1 0.1 -0.1 0.1 0.1 359.9 0.1", 0.0, 0.0),
        "tilted-high-dec": (square(150.0, 75.0, 0.05, angle=30), 150.0, 75.0),
        "ell": ("POLYGON 10 10 10.2 10 10.2 10.1 10.1 10.1 10.1 10.2 10 10.2", 10.1, 10.1),
        "two": ("POLYGON ICRS 20 0 20.1 0 20.1 0.1 20 0.1 POLYGON ICRS 21 0 21.1 0 21.1 0.1 21 0.1", 20.5, 0.05),
        "circle": ("CIRCLE ICRS 30 -30 0.1", 30.0, -30.0),
    }
    frame = image_rows(len(regions))
    frame["sha256"] = list(regions)
    frame["s_region"] = [v[0] for v in regions.values()]
    frame["s_ra"] = [v[1] for v in regions.values()]
    frame["s_dec"] = [v[2] for v in regions.values()]
    frame["s_fov"] = [0.3, 0.15, 0.3, 1.2, 0.2]
    put(tmp_path, "image_metadata", frame, "obs1")
    con = catalog.connect(tmp_path)
    tilted = SkyCoord(150.0, 75.0, unit="deg")
    cases = [
        ((0.0, 0.0), {"across-zero"}),
        ((359.95, 0.05), {"across-zero"}),
        ((0.0999, -0.0999), {"across-zero"}),
        ((0.1001, 0.0), set()),
        ((359.8, 0.0), set()),
        ((150.0, 75.0), {"tilted-high-dec"}),
        # just inside / outside a tilted edge: offsets along the square's own axes
        (_offset(tilted, 30, 0.0499), {"tilted-high-dec"}),
        (_offset(tilted, 30, 0.0501), set()),
        (_offset(tilted, 30 + 45, 0.07), {"tilted-high-dec"}),  # towards a corner (at 0.0707)
        (_offset(tilted, 30 + 45, 0.072), set()),
        ((10.05, 10.15), {"ell"}),
        ((10.15, 10.15), set()),  # the notch of the L
        ((21.05, 0.05), {"two"}),
        ((20.5, 0.05), set()),
        ((30.05, -30.0), {"circle"}),
        ((30.0, -30.11), set()),
    ]
    for (ra, dec), want in cases:
        assert ids(catalog.search(con, footprint=(ra, dec))) == want, (ra, dec)
        assert ids(con.sql(f"SELECT * FROM footprint({ra}, {dec})")) == want, (ra, dec)


def _offset(centre: SkyCoord, angle: float, distance: float) -> tuple[float, float]:
    point = centre.directional_offset_by(angle * u.deg, distance * u.deg)
    return float(point.ra.deg), float(point.dec.deg)


def test_time_range_overlap_in_every_time_form(tmp_path):
    frame = image_rows(4)
    frame["sha256"] = ["before", "straddles", "inside", "after"]
    frame["t_min"] = [60000.0, 60000.9, 60001.2, 60002.5]
    frame["t_max"] = [60000.5, 60001.1, 60001.3, 60003.0]
    put(tmp_path, "image_metadata", frame, "obs1")
    con = catalog.connect(tmp_path)
    start, stop = 60001.0, 60002.0
    want = {"straddles", "inside"}
    forms = [
        (start, stop),
        (Time(start, format="mjd"), Time(stop, format="mjd")),
        (Time(start, format="mjd").isot, Time(stop, format="mjd").iso),
        (Time(start, format="mjd").datetime, np.datetime64(Time(stop, format="mjd").isot)),
    ]
    for form in forms:
        assert ids(catalog.search(con, time=form)) == want, form
    assert ids(con.sql(f"SELECT * FROM during({start}, {stop})")) == want
    with pytest.raises(duckdb.Error, match="during: the start 60002.0 is after the stop 60001.0"):
        con.sql(f"SELECT * FROM during({stop}, {start})").fetchall()  # backwards: said, not an empty answer
    assert ids(con.sql(f"SELECT * FROM during({start}, {start})")) == {"straddles"}  # an instant
    with pytest.raises(ValueError, match=r"date '2022-13-45' is not a day written YYYY-MM-DD \(month must be"):
        catalog.search(con, date="2022-13-45")
    assert ids(catalog.search(con, time=60000.5)) == {"before"}  # an instant, edges inclusive
    day = Time(60001.0, format="mjd").datetime.date()
    assert ids(catalog.search(con, date=day.isoformat())) == {"straddles", "inside"}
    assert ids(con.sql(f"SELECT * FROM observed_on(DATE '{day.isoformat()}')")) == {"straddles", "inside"}
    assert ids(catalog.search(con, date=Time(60000.0, format="mjd").datetime.date())) == {"before", "straddles"}


def test_filters_compose_and_match_their_sql(tmp_path):
    frame = image_rows(4000, seed=7)
    put(tmp_path, "image_metadata", frame, "obs1")
    con = catalog.connect(tmp_path)
    query = (
        catalog.Query()
        .cone(180.0, 30.0, 60.0)
        .instrument(["nircam", "MIRI"])
        .filter("f444w")
        .target("ngc")
        .exposure(200, 1000)
        .time("2023-02-25T00:00:00", 60010.0)
    )
    sep = SkyCoord(frame.s_ra, frame.s_dec, unit="deg").separation(SkyCoord(180, 30, unit="deg")).deg
    want = frame[
        (sep <= 60)
        & frame.instrument_name.str.split("/").str[0].isin(["NIRCAM", "MIRI"])
        & (frame["filter"] == "F444W")
        & frame.target_name.str.lower().str.contains("ngc")
        & frame.t_exptime.between(200, 1000)
        & (frame.t_min <= 60010.0)
        & (frame.t_max >= Time("2023-02-25T00:00:00").mjd)
    ]
    assert len(want) > 3
    assert set(query.df(con).sha256) == set(want.sha256)
    assert ids(con.sql(query.sql())) == set(want.sha256)
    via_search = catalog.search(
        con, cone=(180, 30, 60), instrument=["nircam", "MIRI"], filter="f444w", target="ngc",
        exposure=(200, 1000), time=("2023-02-25T00:00:00", 60010.0),
    )
    assert ids(via_search) == set(want.sha256)
    pupil = catalog.search(con, filter="clear", instrument="WFC3")
    assert len(pupil.df()) == (frame.instrument_name == "WFC3/IR").sum()


def test_duplicates_collapse_with_every_location(tmp_path):
    a = image_rows(2, obs_id="obsA")
    b = image_rows(1, obs_id="obsB")
    b["sha256"] = a.sha256[0]  # the same bytes, downloaded again under obsB
    put(tmp_path, "image_metadata", a, "obsA")
    put(tmp_path, "image_metadata", b, "obsB")
    con = catalog.connect(tmp_path)
    rows = catalog.search(con).df().set_index("sha256")
    assert len(rows) == 2
    assert list(rows.loc[a.sha256[0], "locations"]) == sorted([a.path[0], b.path[0]])
    assert list(rows.loc[a.sha256[0], "obs_ids"]) == ["obsA", "obsB"]
    assert list(rows.loc[a.sha256[1], "locations"]) == [a.path[1]]


def test_a_compressed_copy_of_a_catalogued_file_is_the_same_image(tmp_path):
    """A file landed as .fits and again as .fits.gz (bytes that differ, one image) is one image with
    both locations, read from the lake and from a published catalog that one of them joined later."""
    from astropy.io import fits

    from skyassets.fits.meta import extract, to_table

    plain = tmp_path / "in" / "jw01_cal.fits"
    plain.parent.mkdir()
    fits.PrimaryHDU(np.arange(64, dtype=np.float32).reshape(8, 8), fits.Header([("OBS_ID", "obsA")])).writeto(plain)
    gz = plain.with_name("jw01_cal.fits.gz")
    gz.write_bytes(gzip.compress(plain.read_bytes()))

    def land(path: Path, obs_id: str) -> None:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        rows = extract(path, sha256=sha, obs_id=obs_id, stored_path=f"files/{obs_id}/{path.name}")
        lake_file(tmp_path, "image_metadata", obs_id).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(to_table(pd.DataFrame(rows)), lake_file(tmp_path, "image_metadata", obs_id))

    land(plain, "obsA")
    catalog.publish(tmp_path)
    land(gz, "obsB")  # landed after the publish
    for con in (catalog.connect(tmp_path), from_lake_alone(tmp_path)):
        images = con.sql("SELECT locations, obs_ids FROM images").df()
        assert len(images) == 1
        assert list(images.locations[0]) == ["files/obsA/jw01_cal.fits", "files/obsB/jw01_cal.fits.gz"]
        assert list(images.obs_ids[0]) == ["obsA", "obsB"]

    # the image's row is the compressed copy's (its path sorts first): a new measurement of that copy
    # after a publish gives the image its FWHM, as a full read of the lake does
    lake_file(tmp_path, "image_metadata", "obsA").unlink()
    land(gz, "obs0")
    shas = {"obs0": hashlib.sha256(gz.read_bytes()).hexdigest(), "obsB": hashlib.sha256(plain.read_bytes()).hexdigest()}
    land(plain, "obsB")
    for obs_id, sha in shas.items():
        put(tmp_path, "image_quality", pd.DataFrame({"obs_id": [obs_id], "sha256": [sha], "hdu_index": [0],
                                                     "fwhm_arcsec": [0.1]}), obs_id)
    catalog.publish(tmp_path)
    put(tmp_path, "image_quality", pd.DataFrame({"obs_id": ["obs0"], "sha256": [shas["obs0"]], "hdu_index": [0],
                                                 "fwhm_arcsec": [0.25]}), "obs0")
    for con in (catalog.connect(tmp_path), from_lake_alone(tmp_path)):
        assert con.sql("SELECT sha256, s_resolution FROM images").fetchall() == [(shas["obs0"], 0.25)]


def product_row(partition: str, **extra) -> dict:
    """A ``mast_products`` row as MAST answers it, with ``extra`` columns MAST may add."""
    return dict(partition=partition, obsID=f"{partition}1", obs_collection="HST", obs_id=partition,
                dataURI=f"mast:HST/product/{partition}_flt.fits", productFilename=f"{partition}_flt.fits",
                productType="SCIENCE", calib_level=2, size=10, dataRights="PUBLIC", **extra)


@pytest.mark.parametrize("later", ["read together", "refresh", "published"])
def test_a_column_the_schema_does_not_declare_may_change_type_between_partitions(tmp_path, later):
    """A column MAST adds to its answers, text in one observation's and a number in another's, is
    read as text instead of keeping the whole catalog from opening."""
    from skyassets.lake.home import Home

    home = Home(tmp_path)
    home.tables.write("mast_products", pd.DataFrame([product_row("a", dataURL="mast:x", flag=True, n=1, x=2)]),
                      partition="a")
    if later == "refresh":
        con = catalog.connect(tmp_path)
    elif later == "published":
        catalog.publish(tmp_path)
    home.tables.write("mast_products", pd.DataFrame([product_row("b", dataURL=3, flag=5, n=2.5, x=4)]),
                      partition="b")
    if later == "refresh":
        assert catalog.refresh(con)
    else:
        con = catalog.connect(tmp_path)
    rows = con.sql("SELECT obs_id, dataURL, flag, n, x, calib_level FROM products ORDER BY obs_id").fetchall()
    # text where text and a number meet; numbers where numbers of two kinds meet, however they were read
    assert rows == [("a", "mast:x", "true", 1.0, 1 * 2, 2), ("b", "3", "5", 2.5, 4, 2)]
    assert con.sql("SELECT typeof(n), typeof(x) FROM products LIMIT 1").fetchall() == [("DOUBLE", "BIGINT")]


def test_file_changed_in_place_shows_its_new_row_only(tmp_path):
    old = image_rows(2, obs_id="obsA")
    put(tmp_path, "image_metadata", old, "obsA", mtime=1_700_000_000)
    # a second partition still lists the first file with its old bytes
    stale = old.iloc[[0]].assign(obs_id="obsZ")
    put(tmp_path, "image_metadata", stale, "obsZ", mtime=1_700_000_000)
    con = catalog.connect(tmp_path)
    assert ids(catalog.search(con)) == set(old.sha256)
    new = old.copy()
    new.loc[0, "sha256"] = "changed"
    put(tmp_path, "image_metadata", new, "obsA", mtime=1_700_000_100)
    rows = catalog.search(con).df()
    assert set(rows.sha256) == {"changed", old.sha256[1]}
    assert rows.set_index("sha256").loc["changed", "obs_ids"].tolist() == ["obsA"]


def test_quality_threshold_joins_on_the_image(tmp_path):
    frame = image_rows(3)
    put(tmp_path, "image_metadata", frame, "obs1")
    quality = pd.DataFrame(
        {
            "sha256": frame.sha256,
            "hdu_index": frame.hdu_index,
            "score": [10.0, 60.0, 90.0],
            "fwhm_arcsec": [0.1, 0.2, 0.3],
        }
    )
    put(tmp_path, "image_quality", quality, "obs1")
    con = catalog.connect(tmp_path)
    found = catalog.search(con, min_quality=50).df()
    assert set(found.sha256) == set(frame.sha256[1:]) and found.quality_score.min() == 60.0
    assert ids(con.sql(catalog.Query().quality(50).sql(con))) == set(frame.sha256[1:])
    # ObsCore s_resolution is the measured FWHM, in the live connection and in the published file
    expected = dict(zip(frame.sha256, [0.1, 0.2, 0.3], strict=True))
    assert dict(con.sql("SELECT sha256, s_resolution FROM images").fetchall()) == pytest.approx(expected)
    catalog.publish(tmp_path)
    published = catalog.connect(tmp_path, published=True)
    assert dict(published.sql("SELECT sha256, s_resolution FROM images").fetchall()) == pytest.approx(expected)


def test_publish_is_atomic_and_sorted(tmp_path):
    put(tmp_path, "image_metadata", sky(2000), "obs1")
    put(tmp_path, "mast_observations", image_rows(50, seed=9)[["s_ra", "s_dec", "t_min", "target_name"]])
    path = catalog.publish(tmp_path)
    assert path == tmp_path / "catalog.duckdb"
    reader = catalog.connect(tmp_path, published=True)
    assert reader.sql("SELECT count(*) FROM images").fetchall() == [(2000,)]
    put(tmp_path, "image_metadata", image_rows(500, obs_id="obs2", seed=5), "obs2")
    catalog.publish(tmp_path)
    assert reader.sql("SELECT count(*) FROM images").fetchall() == [(2000,)]  # the old file, still whole
    fresh = catalog.connect(tmp_path, published=True)
    assert fresh.sql("SELECT count(*) FROM images").fetchall() == [(2500,)]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    for table in ("images", "observations"):
        keys = fresh.sql(
            f"SELECT floor((s_dec + 90) / {catalog.ZONE_DEG}) AS zone, s_ra FROM {table} ORDER BY rowid"
        ).df()
        assert keys.zone.is_monotonic_increasing
        assert (keys.groupby("zone").s_ra.apply(lambda s: s.is_monotonic_increasing)).all()
    in_memory = catalog.connect(tmp_path)
    for query in ("SELECT * FROM cone(0.1, 0.1, 0.4)", "SELECT * FROM during(60001, 60003)"):
        assert ids(fresh.sql(query)) == ids(in_memory.sql(query))
    assert ids(catalog.search(fresh, cone=(0.1, 0.1, 0.4))) == ids(in_memory.sql("SELECT * FROM cone(0.1, 0.1, 0.4)"))
    reader.close()
    fresh.close()


def test_to_mjd_forms():
    assert catalog.to_mjd(60000) == 60000.0
    assert catalog.to_mjd("2023-02-25T00:00:00") == pytest.approx(60000.0)
    assert catalog.to_mjd(Time("2023-02-25T12:00:00", scale="tt")) == pytest.approx(60000.5 - 69.184 / 86400)
    assert catalog.to_mjd(pd.Timestamp("2023-02-25").date()) == pytest.approx(60000.0)


def images_of(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The whole ``images`` table, in a fixed row and column order, lists as tuples."""
    frame = con.sql("SELECT * FROM images").df()
    frame = frame[sorted(frame.columns)].sort_values(["sha256", "path"]).reset_index(drop=True)
    for column in ("locations", "obs_ids"):
        frame[column] = frame[column].map(tuple)
    return frame


def from_lake_alone(home: Path) -> duckdb.DuckDBPyConnection:
    """A snapshot read from the Parquet files only, with the published catalog out of the way."""
    published = home / catalog.CATALOG_FILE
    aside = home / "aside.duckdb"
    published.rename(aside)
    try:
        return catalog.connect(home)
    finally:
        aside.rename(published)


def on_base(con: duckdb.DuckDBPyConnection) -> bool:
    return con.sql("SELECT count(*) FROM duckdb_databases() WHERE path LIKE '%catalog.duckdb'").fetchall() == [(1,)]


def test_connect_from_the_published_catalog_applies_later_partitions(tmp_path):
    a, b = image_rows(30, obs_id="obsA"), image_rows(20, obs_id="obsB", seed=1)
    c = image_rows(10, obs_id="obsC", seed=2)
    c.loc[0, "sha256"] = b.sha256[0]  # the same bytes under two observations
    for frame in (a, b, c):
        put(tmp_path, "image_metadata", frame, frame.obs_id[0])
        put(tmp_path, "fits_files", frame[["path", "sha256"]], frame.obs_id[0])
    catalog.publish(tmp_path)
    assert on_base(catalog.connect(tmp_path))

    d = image_rows(5, obs_id="obsD", seed=3)
    d.loc[0, "sha256"] = a.sha256[1]  # new partition, bytes already published under obsA
    put(tmp_path, "image_metadata", d, "obsD")  # finished after the publish
    replaced = b.iloc[5:].assign(t_exptime=42.0)
    put(tmp_path, "image_metadata", replaced, "obsB")  # rewritten: five rows fewer, new exposure times
    lake_file(tmp_path, "image_metadata", "obsC").unlink()  # removed
    lake_file(tmp_path, "fits_files", "obsC").unlink()

    con = catalog.connect(tmp_path)
    assert on_base(con)
    shas = set(a.sha256) | set(replaced.sha256) | set(d.sha256)
    assert ids(catalog.search(con)) == shas and con.sql("SELECT count(*) FROM images").fetchall() == [(len(shas),)]
    assert set(con.sql("SELECT DISTINCT t_exptime FROM images WHERE obs_id = 'obsB'").df().t_exptime) == {42.0}
    rows = con.sql("SELECT * FROM images").df().set_index("sha256")
    assert list(rows.loc[a.sha256[1], "obs_ids"]) == ["obsA", "obsD"]
    assert b.sha256[0] not in rows.index  # its rows went with obsB's rewrite and obsC's removal
    assert con.sql("SELECT count(*) FROM files").fetchall() == [(50,)]
    pd.testing.assert_frame_equal(images_of(con), images_of(from_lake_alone(tmp_path)))

    # and from there, refresh() follows the lake as before
    lake_file(tmp_path, "image_metadata", "obsD").unlink()
    put(tmp_path, "image_metadata", c, "obsC")
    assert catalog.refresh(con) is True
    assert ids(catalog.search(con)) == set(a.sha256) | set(replaced.sha256) | set(c.sha256)
    pd.testing.assert_frame_equal(images_of(con), images_of(from_lake_alone(tmp_path)))
    assert catalog.refresh(con) is False


def test_a_catalog_published_before_images_were_keyed_by_their_fits_bytes_is_read_again(tmp_path):
    frame = image_rows(3, obs_id="obsA")
    put(tmp_path, "image_metadata", frame, "obsA")
    catalog.publish(tmp_path)
    with duckdb.connect(str(tmp_path / catalog.CATALOG_FILE)) as published:  # as an older version wrote it
        published.execute("ALTER TABLE lake_index.raw_images DROP COLUMN fits_sha256")
    put(tmp_path, "image_quality", pd.DataFrame({"obs_id": "obsA", "sha256": frame.sha256, "hdu_index": 1,
                                                 "fwhm_arcsec": 0.2}), "obsA")
    con = catalog.connect(tmp_path, tables=["images", "quality"])
    assert not on_base(con)
    assert con.sql("SELECT count(*), min(s_resolution) FROM images").fetchall() == [(3, 0.2)]


def test_connect_from_the_published_catalog_follows_a_file_changed_in_place(tmp_path):
    old = image_rows(2, obs_id="obsA")
    put(tmp_path, "image_metadata", old, "obsA", mtime=1_700_000_000)
    put(tmp_path, "image_metadata", old.iloc[[0]].assign(obs_id="obsZ"), "obsZ", mtime=1_700_000_000)
    catalog.publish(tmp_path)
    new = old.copy()
    new.loc[0, "sha256"] = "changed"
    put(tmp_path, "image_metadata", new, "obsA", mtime=1_700_000_100)
    con = catalog.connect(tmp_path)
    assert on_base(con)
    rows = catalog.search(con).df()
    assert set(rows.sha256) == {"changed", old.sha256[1]}  # obsZ's stale row, published, is hidden
    assert rows.set_index("sha256").loc["changed", "obs_ids"].tolist() == ["obsA"]
    pd.testing.assert_frame_equal(images_of(con), images_of(from_lake_alone(tmp_path)))
    # a partition finished after the next publish lists a published path with new bytes: only those show
    catalog.publish(tmp_path)
    relisted = old.iloc[[0]].assign(obs_id="obsN", sha256="rewritten")
    put(tmp_path, "image_metadata", relisted, "obsN", mtime=1_700_000_200)
    con = catalog.connect(tmp_path)
    assert on_base(con)
    assert ids(catalog.search(con)) == {"rewritten", old.sha256[1]}
    pd.testing.assert_frame_equal(images_of(con), images_of(from_lake_alone(tmp_path)))


def test_connect_from_the_published_catalog_takes_later_quality(tmp_path):
    frame = image_rows(3)
    put(tmp_path, "image_metadata", frame, "obs1")
    quality = pd.DataFrame({"sha256": frame.sha256, "hdu_index": frame.hdu_index, "score": 50.0, "fwhm_arcsec": 0.1})
    put(tmp_path, "image_quality", quality, "obs1")
    catalog.publish(tmp_path)
    put(tmp_path, "image_quality", quality.assign(fwhm_arcsec=[0.1, 0.2, 0.3], score=[10.0, 60.0, 90.0]), "obs1")
    con = catalog.connect(tmp_path)
    assert on_base(con)
    assert dict(con.sql("SELECT sha256, s_resolution FROM images").fetchall()) == pytest.approx(
        dict(zip(frame.sha256, [0.1, 0.2, 0.3], strict=True))
    )
    assert set(catalog.search(con, min_quality=50).df().sha256) == set(frame.sha256[1:])


def test_refresh_starts_again_from_a_newer_published_catalog(tmp_path):
    put(tmp_path, "image_metadata", image_rows(10, obs_id="obsA"), "obsA")
    con = catalog.connect(tmp_path)
    assert not on_base(con)
    catalog.publish(tmp_path)
    put(tmp_path, "image_metadata", image_rows(5, obs_id="obsB", seed=1), "obsB")
    assert catalog.refresh(con) is True
    assert on_base(con) and con.sql("SELECT count(*) FROM _skyassets.raw_images").fetchall() == [(5,)]  # obsB only
    catalog.publish(tmp_path)
    lake_file(tmp_path, "image_metadata", "obsA").unlink()
    assert catalog.refresh(con) is True
    assert ids(catalog.search(con)) == set(image_rows(5, obs_id="obsB", seed=1).sha256)
    assert con.sql("SELECT count(*) FROM _skyassets.raw_images").fetchall() == [(0,)]  # all in the newer catalog
    pd.testing.assert_frame_equal(images_of(con), images_of(from_lake_alone(tmp_path)))


def test_show_tables_lists_the_catalogs_tables_and_nothing_of_its_bookkeeping(tmp_path):
    frame = image_rows(4)
    put(tmp_path, "image_metadata", frame, "obs1")
    quality = pd.DataFrame({"sha256": frame.sha256, "hdu_index": frame.hdu_index, "score": 50.0, "fwhm_arcsec": 0.3})
    put(tmp_path, "image_quality", quality, "obs1")
    shown = {"observations", "products", "files", "images", "quality"}

    def tables(con: duckdb.DuckDBPyConnection) -> set[str]:
        return {r[0] for r in con.sql("SHOW TABLES").fetchall()}

    assert tables(catalog.connect(tmp_path)) == shown
    catalog.publish(tmp_path)
    assert tables(catalog.connect(tmp_path, published=True)) == shown
    con = catalog.connect(tmp_path)
    put(tmp_path, "image_metadata", image_rows(2, obs_id="obs2", seed=1), "obs2")  # read over the published rows
    put(tmp_path, "image_quality", quality.iloc[:2], "obs1")
    assert catalog.refresh(con) and on_base(con) and tables(con) == shown
    pd.testing.assert_frame_equal(images_of(con), images_of(from_lake_alone(tmp_path)))
    catalog.publish(tmp_path)  # a newer catalog: the connection starts again from it
    assert catalog.refresh(con) and tables(con) == shown
    assert catalog.search(con).df().shape[0] == 6


def test_a_database_a_notebook_attaches_does_not_hide_the_catalogs_own_tables(tmp_path):
    put(tmp_path, "image_metadata", image_rows(3), "obs1")
    con = catalog.connect(tmp_path)
    duckdb.connect(str(tmp_path / "skyassets.duckdb")).close()
    duckdb.connect(str(tmp_path / "_skyassets.duckdb")).close()
    con.execute(f"ATTACH '{tmp_path / 'skyassets.duckdb'}'")  # named after its file: skyassets
    put(tmp_path, "image_metadata", image_rows(2, obs_id="obs2", seed=1), "obs2")
    assert len(catalog.search(con).df()) == 5


def test_a_catalog_published_before_a_declared_column_is_not_started_from(tmp_path):
    """A full read of the lake shows every column the schemas declare, even one its older files
    lack: a catalog published before the column existed would hide it until the next publish."""
    put(tmp_path, "mast_products", pd.DataFrame({"partition": ["jw01"], "productFilename": ["a_cal.fits"]}), "jw01")
    catalog.publish(tmp_path)
    assert on_base(con := catalog.connect(tmp_path)) and con.sql("SELECT path FROM products").fetchall() == [(None,)]
    con.close()
    with duckdb.connect(str(tmp_path / catalog.CATALOG_FILE)) as published:  # as an older version published it
        published.execute("ALTER TABLE products DROP COLUMN path")
        published.execute("ALTER TABLE products DROP COLUMN abs_path")
    con = catalog.connect(tmp_path)
    assert not on_base(con)
    assert con.sql("SELECT file_name, path, abs_path FROM products").fetchall() == [("a_cal.fits", None, None)]


def test_connect_to_some_tables_reads_no_other(tmp_path, monkeypatch):
    frame = image_rows(4)
    put(tmp_path, "image_metadata", frame, "obs1")
    put(tmp_path, "fits_files", frame[["path", "sha256"]], "obs1")
    quality = pd.DataFrame({"sha256": frame.sha256, "hdu_index": frame.hdu_index, "score": 50.0, "fwhm_arcsec": 0.3})
    put(tmp_path, "image_quality", quality, "obs1")
    read: list[str] = []
    original = catalog.LakeFiles.read
    monkeypatch.setattr(catalog.LakeFiles, "read", lambda self, name: read.append(name) or original(self, name))

    con = catalog.connect(tmp_path, tables=["images"])  # quality comes with images: it gives s_resolution
    assert sorted(read) == ["image_metadata/obs1.parquet", "image_quality/obs1.parquet"]
    assert dict(con.sql("SELECT sha256, s_resolution FROM images").fetchall()) == pytest.approx(
        dict.fromkeys(frame.sha256, 0.3)
    )
    assert not {"files", "observations", "products"} & {r[0] for r in con.sql("SHOW TABLES").fetchall()}
    put(tmp_path, "fits_files", frame[["path", "sha256"]].iloc[:2], "obs1")
    put(tmp_path, "image_metadata", image_rows(2, obs_id="obs2", seed=1), "obs2")
    read.clear()
    assert catalog.refresh(con) is True and read == ["image_metadata/obs2.parquet"]  # files stay unread

    catalog.publish(tmp_path)  # from the published catalog, too, only the tables asked for
    con = catalog.connect(tmp_path, tables=["images"])
    assert on_base(con)
    assert not {"files", "observations", "products"} & {r[0] for r in con.sql("SHOW TABLES").fetchall()}
    pd.testing.assert_frame_equal(images_of(con), images_of(from_lake_alone(tmp_path)))
    with pytest.raises(ValueError, match="no catalog tables"):
        catalog.connect(tmp_path, tables=["image_metadata"])

    (tmp_path / "catalog.duckdb").rename(tmp_path / "published.duckdb")
    unpublished = catalog.connect(tmp_path, tables=["files"])
    (tmp_path / "published.duckdb").rename(tmp_path / "catalog.duckdb")
    for con in (unpublished, catalog.connect(tmp_path, tables=["files"])):
        # without images there is nothing for cone() and friends to read: the scalar macros stay
        assert con.sql("SELECT count(*) FROM files").fetchall() == [(2,)]
        assert con.sql("SELECT round(ang_sep(0, 0, 1, 0), 6)").fetchall() == [(1.0,)]
        with pytest.raises(duckdb.CatalogException, match="cone"):
            con.sql("SELECT * FROM cone(10, 20, 1)")
        # a table left out is said to be left out, not to be missing from the lake
        with pytest.raises(catalog.CatalogError, match=r"holds only the tables files: .* with 'images' among them"):
            catalog.search(con, filter="F444W")


def test_a_lake_read_in_many_chunks_is_the_lake_read_in_one(tmp_path, monkeypatch):
    for k in range(12):
        put(tmp_path, "image_metadata", image_rows(3 + k % 4, obs_id=f"obs{k:02d}", seed=k), f"obs{k:02d}")
    whole = images_of(catalog.connect(tmp_path))
    monkeypatch.setattr(catalog, "_CHUNK_BYTES", 1)  # every partition file goes into DuckDB on its own
    pd.testing.assert_frame_equal(images_of(catalog.connect(tmp_path)), whole)
    assert len(whole) == sum(3 + k % 4 for k in range(12))


def test_a_column_without_values_in_some_files_takes_its_type_from_the_others(tmp_path):
    """Files written before the lake cast to declared types hold all-null columns as Parquet null."""
    put(tmp_path, "source_catalogs", pd.DataFrame({"sha256": ["a"], "flux": [None]}), "obs1")
    put(tmp_path, "source_catalogs", pd.DataFrame({"sha256": ["b"], "flux": [7]}), "obs2")
    put(tmp_path, "source_catalogs", pd.DataFrame({"sha256": ["c"], "only_null": [None]}), "obs3")
    con = catalog.connect(tmp_path)
    rows = con.sql("SELECT sha256, flux FROM sources ORDER BY sha256").fetchall()
    assert rows == [("a", None), ("b", 7), ("c", None)]
    types = dict(con.sql("SELECT column_name, column_type FROM (DESCRIBE sources)").fetchall())
    assert types["flux"] == "BIGINT" and types["only_null"] == "VARCHAR"


def test_tables_that_name_a_file_share_column_names_and_give_its_full_location(tmp_path):
    home = tmp_path / "home"
    images = image_rows(2, obs_id="jw01", file_name=["jw01_0_cal.fits", "outside.fits"])
    images.loc[1, "path"] = "/data/elsewhere/outside.fits"  # catalogued where it lies: kept as it is
    put(home, "image_metadata", images, "jw01")
    put(home, "fits_files", pd.DataFrame({"partition": ["jw01"], "filename": ["jw01_0_cal.fits"],
                                          "path": [images.path[0]], "sha256": [images.sha256[0]]}), "jw01")
    # an exposure of a combined observation: MAST's product obs_id is the exposure's, not the partition's
    put(home, "mast_products", pd.DataFrame({"partition": ["jw01"], "obs_id": ["jw01001_nrcb1"],
                                             "productFilename": ["jw01_0_cal.fits"]}), "jw01")
    put(home, "composites", pd.DataFrame({"target": ["m16"], "png": ["products/m16/c.png"], "cube": [None]}), "m16")

    def check(con: duckdb.DuckDBPyConnection, where: Path) -> None:
        joined = con.sql(
            "SELECT f.abs_path, i.abs_path, p.file_name FROM files AS f JOIN images AS i USING (obs_id, file_name) "
            "JOIN products AS p USING (obs_id, file_name)"
        ).fetchall()
        assert joined == [(str(where / images.path[0]),) * 2 + ("jw01_0_cal.fits",)]
        assert con.sql("SELECT product_obs_id, productFilename FROM products").fetchall() == [
            ("jw01001_nrcb1", "jw01_0_cal.fits")]
        assert set(con.sql("SELECT abs_path FROM images").df().abs_path) == {
            str(where / images.path[0]), "/data/elsewhere/outside.fits"}
        assert con.sql("SELECT png_abs_path, cube_abs_path FROM composites").fetchall() == [
            (str(where / "products/m16/c.png"), None)]

    check(catalog.connect(home), home)
    with pytest.warns(UserWarning, match=f"{tmp_path / 'new'} does not exist: the catalog is empty"):
        assert {"obs_id", "file_name", "abs_path"} <= set(catalog.connect(tmp_path / "new").table("files").columns)
    catalog.publish(home)
    con = catalog.connect(home)
    assert on_base(con)
    check(con, home)
    check(catalog.connect(home, published=True), home)
    # a home moved elsewhere: its published catalog's locations are those of the old place, so the
    # lake is read again rather than started from it
    moved = tmp_path / "moved"
    home.rename(moved)
    con = catalog.connect(moved)
    assert not on_base(con)
    check(con, moved)


def test_a_lake_column_already_under_the_catalog_name_is_kept_beside_the_old_one(tmp_path):
    put(tmp_path, "fits_files", pd.DataFrame({"partition": ["p1"], "obs_id": ["from-a-header"],
                                              "filename": ["a.fits"], "path": ["files/X/p1/a.fits"]}), "p1")
    put(tmp_path, "fits_files", pd.DataFrame({"partition": ["p2"], "filename": ["b.fits"]}), "p2")
    sql = "SELECT partition, obs_id, file_name FROM files ORDER BY file_name"
    expected = [("p1", "from-a-header", "a.fits"), (None, "p2", "b.fits")]
    assert catalog.connect(tmp_path).sql(sql).fetchall() == expected  # both files read together
    lake_file(tmp_path, "fits_files", "p2").unlink()
    con = catalog.connect(tmp_path)
    put(tmp_path, "fits_files", pd.DataFrame({"partition": ["p2"], "filename": ["b.fits"]}), "p2")
    assert catalog.refresh(con) and con.sql(sql).fetchall() == expected  # or one after the other


def test_sources_join_the_other_tables_by_file_name_and_older_partitions_read_as_null(tmp_path):
    """`sources` names its image's file like `images` and `quality` do; a partition written before
    the column existed reads with it null rather than breaking the view."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from skyassets.lake.home import Home

    home = Home(tmp_path)
    home.tables.write("source_catalogs", [{"obs_id": "a", "sha256": "x", "hdu_index": 1, "file_name": "a_cal.fits",
                                           "source_id": 1, "x": 1.0, "y": 2.0}], partition="a")
    home.tables.write("image_quality", [{"obs_id": "a", "sha256": "x", "hdu_index": 1, "file_name": "a_cal.fits"}],
                      partition="a")
    pq.write_table(pa.table({"obs_id": ["b"], "sha256": ["y"], "hdu_index": pa.array([1], pa.int32()),
                             "source_id": pa.array([1], pa.int32()), "x": [1.0], "y": [2.0]}),
                   home.lake / "source_catalogs" / "b.parquet")
    con = catalog.connect(home)
    assert con.execute("SELECT obs_id, file_name FROM sources ORDER BY obs_id").fetchall() == [
        ("a", "a_cal.fits"), ("b", None)]
    assert con.execute("SELECT count(*) FROM sources JOIN quality USING (obs_id, file_name)").fetchone() == (1,)


def test_a_target_is_found_whatever_its_separators_and_a_number_in_it_is_whole(tmp_path):
    frame = image_rows(6, obs_id="obs1")
    frame["target_name"] = ["NGC-628", "NGC628", "ngc 628 field", "NGC-6284", "SMACS-0723", "HD 12+3"]
    put(tmp_path, "image_metadata", frame, "obs1")
    con = catalog.connect(tmp_path)

    def found(text: str) -> set[str]:
        return set(catalog.search(con, target=text).df().target_name)

    for text in ("NGC 628", "ngc-628", "Ngc628"):
        assert found(text) == {"NGC-628", "NGC628", "ngc 628 field"}, text
    assert found("ngc") == {"NGC-628", "NGC628", "ngc 628 field", "NGC-6284"}
    assert found("smacs 0723") == found("0723") == {"SMACS-0723"}
    assert found("hd12+3") == {"HD 12+3"}
    assert con.sql("SELECT target_like('NGC-6284', 'NGC 628'), target_like(NULL, 'x')").fetchall() == [(False, None)]
