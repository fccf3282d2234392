from skyassets.home import Home
from skyassets.resources import ArchiveResource, default_resources


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
