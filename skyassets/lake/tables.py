"""Every table of the lake, declared once: its name, its catalog name, how it is partitioned, its schema.

The name is the asset's (and the lake's folder or file); the catalog name is the DuckDB table
``catalog.connect()`` shows it as. Writers, readers and the catalog all take a table's path,
partitioning and columns from here, through :class:`skyassets.lake.store.Lake`. Plain Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import pyarrow as pa

from skyassets.lake.schemas import (
    COMPOSITES_SCHEMA,
    FITS_FILES_SCHEMA,
    IMAGE_SCHEMA,
    LANDING_INDEX_SCHEMA,
    LANDING_SCHEMA,
    MAST_OBSERVATIONS_SCHEMA,
    MAST_PRODUCTS_SCHEMA,
    MOSAICS_SCHEMA,
    PRODUCT_CHOICES_SCHEMA,
    QUALITY_SCHEMA,
    RECIPES_SCHEMA,
    SOURCE_SCHEMA,
    TARGET_GROUPS_SCHEMA,
    TARGET_IMAGES_SCHEMA,
)


class Partitioning(Enum):
    """What one file of a table holds: the whole table, one observation, or one target."""

    NONE = "none"
    OBSERVATION = "observation"
    TARGET = "target"


@dataclass(frozen=True)
class Table:
    """One table of the lake.

    ``shown_empty``: the catalog has the table, with its columns, before any file exists, so that
    notebooks and helpers over it work on a new home; the others appear once written.
    ``catalogued``: the catalog has the table at all (the landing zone's own index is not for users).
    """

    name: str
    catalog: str
    partitioning: Partitioning
    schema: pa.Schema
    shown_empty: bool = False
    catalogued: bool = True

    @property
    def partitioned(self) -> bool:
        return self.partitioning is not Partitioning.NONE


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table("mast_observations", "observations", Partitioning.NONE, MAST_OBSERVATIONS_SCHEMA, shown_empty=True),
        Table("mast_products", "products", Partitioning.OBSERVATION, MAST_PRODUCTS_SCHEMA, shown_empty=True),
        Table("product_choices", "product_choices", Partitioning.OBSERVATION, PRODUCT_CHOICES_SCHEMA,
              catalogued=False),
        Table("landing", "landing", Partitioning.OBSERVATION, LANDING_SCHEMA),
        Table("landing_index", "landing_index", Partitioning.NONE, LANDING_INDEX_SCHEMA, catalogued=False),
        Table("fits_files", "files", Partitioning.OBSERVATION, FITS_FILES_SCHEMA, shown_empty=True),
        Table("image_metadata", "images", Partitioning.OBSERVATION, IMAGE_SCHEMA, shown_empty=True),
        Table("image_quality", "quality", Partitioning.OBSERVATION, QUALITY_SCHEMA),
        Table("source_catalogs", "sources", Partitioning.OBSERVATION, SOURCE_SCHEMA),
        Table("target_groups", "targets", Partitioning.NONE, TARGET_GROUPS_SCHEMA),
        Table("target_images", "target_images", Partitioning.TARGET, TARGET_IMAGES_SCHEMA),
        Table("mosaics", "mosaics", Partitioning.TARGET, MOSAICS_SCHEMA),
        Table("composites", "composites", Partitioning.TARGET, COMPOSITES_SCHEMA),
        Table("recipes", "recipes", Partitioning.TARGET, RECIPES_SCHEMA),
    )
}


def table(name: str) -> Table:
    """The declaration of the table ``name``, or a ``KeyError`` listing the declared ones."""
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"no lake table {name!r}; the lake has {', '.join(TABLES)}") from None


def partitioned_by(partitioning: Partitioning) -> tuple[str, ...]:
    """The names of the tables with one file per observation, or per target."""
    return tuple(t.name for t in TABLES.values() if t.partitioning is partitioning)
