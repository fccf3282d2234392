"""The catalog: DuckDB over the Parquet lake, its query helpers, and export of what a query names."""

from skyassets.catalog.db import SOURCES, CatalogError, Query, connect, publish, refresh, search, to_mjd

__all__ = ["SOURCES", "CatalogError", "Query", "connect", "publish", "refresh", "search", "to_mjd"]
