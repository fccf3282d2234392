"""The catalog: DuckDB over the Parquet lake, its query helpers, and export of what a query names."""

from skyassets.catalog.db import SOURCES, CatalogError, Query, connect, publish, refresh, search, to_mjd

# Imported here, not on first use: ``find`` is both the module and its function, and the package's
# attribute must be the function. find.py imports nothing db.py does not (bm25s and the embedding
# model load on first use), so this costs no start-up time.
from skyassets.catalog.find import build_index, find  # noqa: E402

__all__ = ["SOURCES", "CatalogError", "Query", "build_index", "connect", "find", "publish", "refresh", "search",
           "to_mjd"]
