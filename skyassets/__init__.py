"""skyassets: the MAST archive (JWST, HST and friends) as Dagster software-defined assets.

The science and data code is plain Python and usable without Dagster; the names below are its
public face. They are imported on first use, so ``import skyassets`` (and the command line) stays
quick and a notebook pays only for what it touches::

    import skyassets
    con = skyassets.connect()                       # the catalog, from a notebook
    skyassets.search(con, cone=(151.76, -40.44, 0.05), filter="F444W").df()
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# public name -> the module that owns it
_OWNERS: dict[str, str] = {
    # the catalog
    "connect": "skyassets.catalog.db",
    "search": "skyassets.catalog.db",
    "find": "skyassets.catalog",
    "refresh": "skyassets.catalog.db",
    "publish": "skyassets.catalog.db",
    "export_files": "skyassets.catalog.export",
    # the archive
    "load_watchlist": "skyassets.archive.watchlist",
    "query_watchlist": "skyassets.archive.query",
    "list_products": "skyassets.archive.query",
    "download_files": "skyassets.archive.download",
    "FileRequest": "skyassets.archive.download",
    "DownloadConfig": "skyassets.archive.download",
    # FITS files
    "extract": "skyassets.fits.meta",
    "verify_fits": "skyassets.fits.verify",
    # imaging
    "measure_image": "skyassets.imaging.quality",
    "group_targets": "skyassets.imaging.targets",
    "build_mosaic": "skyassets.imaging.mosaic",
    "MosaicInput": "skyassets.imaging.mosaic",
    "compose": "skyassets.imaging.composite",
    "write_composite": "skyassets.imaging.composite",
    "suggest_recipes": "skyassets.imaging.composite",
    # where things are kept
    "Home": "skyassets.lake.home",
}

__all__ = sorted(_OWNERS)


def __getattr__(name: str) -> Any:
    owner = _OWNERS.get(name)
    if owner is None:
        raise AttributeError(f"module 'skyassets' has no attribute {name!r}")
    value = getattr(import_module(owner), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names and the subpackages imported so far: not the helpers this module uses."""
    return sorted({n for n in globals() if not n.startswith("_") and n not in _HELPERS} | set(__all__))


_HELPERS = frozenset({"annotations", "import_module", "Any"})
