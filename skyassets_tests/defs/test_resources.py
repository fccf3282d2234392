import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from skyassets.defs.resources import (
    ArchiveResource,
    CompositesResource,
    MosaicsResource,
    default_resources,
    settings_from_file,
)
from skyassets.lake.home import Home


def test_default_archive_is_the_embedded_emulator(tmp_path_factory):
    home = Home(tmp_path_factory.mktemp("embedded"))
    archive = ArchiveResource()
    server, s3 = archive.endpoints(home)
    assert server.startswith("http://127.0.0.1:") and s3.startswith("http://127.0.0.1:")
    assert archive.endpoints(home) == (server, s3)  # one emulator per process
    assert archive.download_url(home) == server + "/api/v0.1/Download/file"
    assert len(archive.client(home).query_criteria(obs_collection="JWST")) > 0
    assert (home.root / "emulator").is_dir()


def test_environment_configures_the_resources(monkeypatch, tmp_path):
    monkeypatch.setenv("SKYASSETS_HOME", str(tmp_path))
    monkeypatch.setenv("SKYASSETS_MAST_URL", "https://mast.stsci.edu/")
    monkeypatch.setenv("SKYASSETS_CLOUD", "0")
    monkeypatch.setenv("SKYASSETS_DOWNLOAD_PARALLEL", "7")
    resources = default_resources()
    assert resources["home"].home.root == tmp_path
    archive = resources["archive"]
    assert archive.endpoints(resources["home"].home) == ("https://mast.stsci.edu", None)
    assert not archive.cloud and resources["downloader"].parallel == 7


def test_composites_are_configured_from_a_yaml_file(monkeypatch, tmp_path):
    settings = tmp_path / "composites.yaml"
    settings.write_text(
        "per_target: 2\nmethod: lupton\nrecipes:\n  '*': {two-colour: null}\n  NGC-3132: {mine: F444W;F090W}\n"
    )
    monkeypatch.setenv("SKYASSETS_COMPOSITES", str(settings))
    composites = default_resources()["composites"]
    assert composites.per_target == 2 and composites.method == "lupton"
    assert composites.overrides("NGC-3132") == {"two-colour": None, "mine": "F444W;F090W"}
    assert composites.overrides("M-16") == {"two-colour": None}


@pytest.mark.parametrize(
    "text, reason",
    [
        ("stretch: spiral\n", "composites.stretch must be one of"),
        ("method: rainbow\n", "composites.method must be one of"),
        ("per_target: -1\n", "per_target must be 0 or more"),
        ("colours: many\n", "unknown composites settings ['colours']"),
        ("per_target: [1\n", "cannot read the composites settings"),
        ("- a list\n", "must be a mapping"),
        ("recipes: {NGC-3132: [F090W]}\n", "recipes"),
    ],
)
def test_unusable_composites_settings_name_the_file_and_the_reason(tmp_path, text, reason):
    settings = tmp_path / "composites.yaml"
    settings.write_text(text)
    with pytest.raises(ValueError) as error:
        settings_from_file(CompositesResource, str(settings))
    assert str(settings) in str(error.value) and reason in str(error.value)


def test_mosaic_grids_come_from_a_header_and_bad_ones_name_the_file(tmp_path):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval, wcs.wcs.crpix, wcs.wcs.cdelt = [10.0, 20.0], [50.5, 40.5], [-1e-5, 1e-5]
    fits.PrimaryHDU(np.zeros((80, 100), np.float32), header=wcs.to_header()).writeto(tmp_path / "grid.fits")
    (tmp_path / "bare.hdr").write_text("SIMPLE  =                    T\nEND\n")
    settings = MosaicsResource(grids={"M-16": str(tmp_path / "grid.fits"), "CRAB": str(tmp_path / "bare.hdr")})
    grid, shape = settings.grid("M-16")
    assert shape == (80, 100) and grid.wcs.crval[0] == 10.0
    assert settings.grid("NGC-3132") is None
    with pytest.raises(ValueError, match="bare.hdr: no header with a celestial WCS"):
        settings.grid("CRAB")
    (tmp_path / "mosaics.yaml").write_text("downscale: 0\n")
    with pytest.raises(ValueError, match="mosaics.yaml: mosaics.downscale must be 1 or more"):
        settings_from_file(MosaicsResource, str(tmp_path / "mosaics.yaml"))
