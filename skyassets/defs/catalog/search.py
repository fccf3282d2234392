"""The catalog's text search index: follows catalog.duckdb, adding only the documents new since."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from skyassets.defs.automation import catch_up
from skyassets.defs.catalog.assets import catalog
from skyassets.defs.resources import HomeResource


@asset(
    group_name="catalog",
    deps=[catalog],
    # After every publish, like the catalog itself: a build with nothing new costs a read of the
    # image → document table and writes it again.
    automation_condition=catch_up(),
    kinds={"bm25"},
    description="search/: BM25 (and, with skyassets[embeddings], sentence-embedding) index of every image's "
    "metadata for skyassets.catalog.find and `skyassets find`.",
)
def search_index(context: AssetExecutionContext, home: HomeResource) -> MaterializeResult:
    # imported here, as DuckDB is: run processes of the other assets need neither
    from skyassets.catalog.db import connect
    from skyassets.catalog.find import build_index

    root = home.home
    con = connect(root)
    try:
        report = build_index(con, root.search)
    finally:
        con.close()
    context.log.info(
        f"search index {report.folder}: {report.images} images, {report.documents} documents "
        f"({report.new_documents} new, {report.embedded} embedded), {report.segments} segments"
    )
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(report.folder)),
            "dagster/row_count": report.images,
            "documents": report.documents,
            "new_documents": report.new_documents,
            "segments": report.segments,
            "merged": report.merged,
            "embedding_model": report.model or "none (lexical only)",
            "seconds": round(report.seconds, 2),
        }
    )
