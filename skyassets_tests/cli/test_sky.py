"""`skyassets sky`: what it says when it cannot serve the collection."""

import socket

from skyassets.cli.main import main
from skyassets.lake.home import Home
from skyassets.tiles.products import tile_target
from skyassets.tiles.publish import FolderDestination, publish_collection
from skyassets_tests.tiles.test_products import TARGET, make_products


def test_sky_says_a_target_not_in_the_collection_is_not_there_before_it_looks_for_aladin(tmp_path, monkeypatch,
                                                                                         capsys):
    monkeypatch.setenv("SKYASSETS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SKYASSETS_ALADIN_JS", raising=False)  # and none installed in the home
    home = Home(tmp_path / "home")
    make_products(home)
    tile_target(home, TARGET, width=64)
    publish_collection(home, FolderDestination(home.root / "published"))
    assert main(["sky", "NOPE", "--no-browser"]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"skyassets sky: target NOPE is not in the collection at {home.root / 'published'}; "
                              f"published: {TARGET}\n")
    assert main(["sky", TARGET, "--no-browser"]) == 1  # a target that is there: the missing viewer is said
    assert capsys.readouterr().err.startswith("skyassets sky: Aladin Lite not found at ")


def test_sky_on_a_port_already_taken_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    script = tmp_path / "aladin.js"
    script.write_text("export default {};")
    monkeypatch.setenv("SKYASSETS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SKYASSETS_ALADIN_JS", str(script))
    home = Home(tmp_path / "home")
    make_products(home)
    tile_target(home, TARGET, width=64)
    publish_collection(home, FolderDestination(home.root / "published"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(["sky", "--no-browser", "--port", str(port)])
    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    assert err == (f"skyassets sky: cannot serve the collection on 127.0.0.1:{port}: Address already in use; "
                   "choose another with --port PORT (0: any free one)\n")
