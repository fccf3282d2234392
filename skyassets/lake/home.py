"""Where skyassets keeps its local state (``SKYASSETS_HOME``, default ``./.skyassets``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from skyassets.lake.names import safe_filename, validate_obs_id
from skyassets.lake.store import Lake

HOME_ENV = "SKYASSETS_HOME"


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or ".skyassets").expanduser().resolve()


@dataclass(frozen=True)
class Home:
    """The folder layout: FITS files, the Parquet lake, quarantine, the emulator's cache."""

    root: Path

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def previews(self) -> Path:
        """PNG thumbnails of measured images, ``previews/<obs_id>/<file>.<hdu>.png``."""
        return self.root / "previews"

    def target_dir(self, target: str) -> Path:
        """``products/<target>``: a target's mosaics and composites."""
        return self.root / "products" / validate_obs_id(target)

    @property
    def dagster(self) -> Path:
        return self.root / "dagster"

    def observation_dir(self, collection: str, obs_id: str) -> Path:
        """``files/<collection>/<obs_id>``, from validated names only."""
        return self.files / safe_filename(collection) / validate_obs_id(obs_id)

    @property
    def tables(self) -> Lake:
        """The Parquet tables under :attr:`lake`: every read and write of the lake goes through it."""
        return Lake(self.lake)
