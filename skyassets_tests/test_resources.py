import pytest

from skyassets.home import Home
from skyassets.resources import ArchiveResource, composites_from_file, default_resources


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
        composites_from_file(str(settings))
    assert str(settings) in str(error.value) and reason in str(error.value)
