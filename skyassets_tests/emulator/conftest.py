"""One emulator for the whole folder: the sky is generated once into a session temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from skyassets.archive.client import observations_client
from skyassets.emulator import Emulator


@pytest.fixture(scope="session")
def emu_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulator-home")


@pytest.fixture(scope="session")
def emu(emu_home: Path) -> Iterator[Emulator]:
    with Emulator(emu_home) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def _no_faults_left(emu: Emulator) -> Iterator[None]:
    emu.faults.clear()
    yield
    emu.faults.clear()


@pytest.fixture()
def client(emu: Emulator):
    """Unchanged astroquery pointed at the emulator, cloud lookups going to its S3 server."""
    return observations_client(emu.url, s3_endpoint=emu.s3_endpoint)


@pytest.fixture()
def http_client(emu: Emulator):
    """Unchanged astroquery downloading over HTTP from Download/file (no cloud)."""
    return observations_client(emu.url, cloud=False)
