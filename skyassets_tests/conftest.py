import pytest

from skyassets.emulator import Emulator


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """One emulator (MAST API + S3) for the whole session; tests that inject faults clear them."""
    with Emulator(tmp_path_factory.mktemp("emulator")) as emu:
        yield emu


@pytest.fixture
def emu(emulator):
    emulator.faults.clear()
    yield emulator
    emulator.faults.clear()
