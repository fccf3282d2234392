"""Publishing the collection to a folder and to a real S3-protocol server (moto): tiles first, each
verified, indexes last; an interrupted publish resumes without sending verified files again."""

import hashlib
import json
from xml.etree import ElementTree

import pytest

from skyassets.emulator.s3 import S3Server
from skyassets.lake.home import Home
from skyassets.tiles.products import tile_target, tiles_root
from skyassets.tiles.publish import PUBLISHED, FolderDestination, S3Destination, publish_collection, publish_demo
from skyassets_tests.tiles.test_products import TARGET, make_products


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = Home(tmp_path_factory.mktemp("publish") / "home")
    make_products(home)
    tile_target(home, TARGET, width=64)
    return home


def _files(home):
    root = tiles_root(home) / TARGET
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "pyramids.json")


def _check_collection(read, home, base=""):
    """Every pyramid file is at the destination with the same bytes, and the indexes name them all."""
    root = tiles_root(home) / TARGET
    for name in _files(home):
        assert read(f"{TARGET}/{name}") == (root / name).read_bytes(), name
    hipslist = read("hipslist").decode()
    urls = [line.split("=", 1)[1].strip() for line in hipslist.splitlines() if line.startswith("hips_service_url")]
    assert urls == [f"{base}{TARGET}/composite_pair", f"{base}{TARGET}/mosaic_nircam_f444w"] or \
        sorted(urls) == sorted([f"{base}{TARGET}/composite_pair", f"{base}{TARGET}/mosaic_nircam_f444w"])
    folder = ElementTree.fromstring(read("index.wtml"))
    sets = folder.findall("./Place/ForegroundImageSet/ImageSet")
    assert {s.get("FileType") for s in sets} == {".fits", ".png"}
    assert all(s.get("Projection") == "Healpix" and s.get("Url").endswith("/Norder{0}/Dir{1}/Npix{2}") for s in sets)
    assert b'"polygon"' in read(f"{TARGET}/footprints.json") or read(f"{TARGET}/footprints.json") == b"[]"


def _interrupt_after(count):
    sent = []

    def after(key):
        sent.append(key)  # every file sent, also one already on its way when the publish stopped
        if len(sent) == count:
            raise Interrupted(key)
    return sent, after


def test_publish_to_a_folder_resumes_and_writes_indexes_last(home, tmp_path):
    dest = FolderDestination(tmp_path / "site")
    sent, after = _interrupt_after(10)
    with pytest.raises(Interrupted):
        publish_collection(home, dest, threads=1, after_upload=after)
    assert not (dest.root / "hipslist").exists() and not (dest.root / "index.wtml").exists()
    assert not list(dest.root.rglob("*.part"))
    resumed = publish_collection(home, dest, threads=4)
    total = len(_files(home)) + 4  # and footprints.json, hipslist, index.wtml, the record of targets
    assert len(sent) < total / 2
    assert resumed.skipped == len(sent) and resumed.uploaded == total - len(sent)
    _check_collection(lambda key: (dest.root / key).read_bytes(), home)
    again = publish_collection(home, dest)
    assert again.uploaded == 0 and again.skipped == total


def test_publish_to_s3_verifies_each_upload_and_resumes(home):
    server = S3Server()
    try:
        client = server.client()
        client.create_bucket(Bucket="sky")
        sent, after = _interrupt_after(7)
        with pytest.raises(Interrupted):
            publish_collection(home, S3Destination(client, "sky", "pub/v1"), threads=1, after_upload=after,
                               public_url="https://example.org/sky")
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="sky").get("Contents", [])}
        assert len(keys) == len(sent) and "pub/v1/hipslist" not in keys
        resumed = publish_collection(home, S3Destination(client, "sky", "pub/v1"), public_url="https://example.org/sky")
        assert resumed.skipped == len(sent) and resumed.uploaded == len(_files(home)) + 4 - len(sent)

        def read(key):
            return client.get_object(Bucket="sky", Key=f"pub/v1/{key}")["Body"].read()
        _check_collection(read, home, base="https://example.org/sky/")
        # what S3 holds is checked by its MD5: a tile changed there is sent again
        tile = next(k for k in _files(home) if k.endswith(".fits") and "Norder" in k)
        client.put_object(Bucket="sky", Key=f"pub/v1/{TARGET}/{tile}", Body=b"damaged")
        repaired = publish_collection(home, S3Destination(client, "sky", "pub/v1"), public_url="https://example.org/sky")
        assert repaired.uploaded == 1
        body = read(f"{TARGET}/{tile}")
        assert hashlib.md5(body).hexdigest() == hashlib.md5((tiles_root(home) / TARGET / tile).read_bytes()).hexdigest()
    finally:
        server.close()


def test_keys_from_outside_cannot_leave_the_destination(tmp_path):
    dest = FolderDestination(tmp_path / "site")
    with pytest.raises(ValueError, match="refusing"):
        dest.put("../escape", b"x", hashlib.md5(b"x").hexdigest())


def test_the_demo_publishes_every_tiled_target_to_the_home(home):
    report, command = publish_demo(home)
    assert report.targets == [TARGET] and report.pyramids == 2
    assert (home.root / "published" / "hipslist").exists()
    assert command.endswith(f"skyassets sky {TARGET}") and str(home.root) in command


def _stale_files(put):
    """What an earlier, deeper pyramid and a product no longer made leave at the destination, and a
    file that is no target's."""
    stale = [f"{TARGET}/mosaic_nircam_f444w/Norder9/Dir0/Npix12.fits", f"{TARGET}/mosaic_nircam_f150w/properties"]
    for key in [*stale, "about.html"]:
        put(key, b"old", hashlib.md5(b"old").hexdigest())
    return stale


def test_a_republish_removes_what_the_new_pyramids_left_behind_after_the_indexes(home, tmp_path):
    dest = FolderDestination(tmp_path / "site")
    publish_collection(home, dest)
    stale = _stale_files(dest.put)
    again = publish_collection(home, dest)
    assert again.removed == len(stale) and again.uploaded == 0
    assert not any((dest.root / key).exists() for key in stale)
    assert not (dest.root / TARGET / "mosaic_nircam_f150w").exists()  # its emptied folder too
    assert (dest.root / "about.html").read_bytes() == b"old"  # not a target's: left alone
    _check_collection(lambda key: (dest.root / key).read_bytes(), home)


def test_a_republish_to_s3_removes_the_stale_objects(home):
    server = S3Server()
    try:
        client = server.client()
        client.create_bucket(Bucket="sky")
        publish_collection(home, S3Destination(client, "sky", "pub"))
        stale = _stale_files(S3Destination(client, "sky", "pub").put)
        again = publish_collection(home, S3Destination(client, "sky", "pub"))
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="sky").get("Contents", [])}
        assert again.removed == len(stale) and not {f"pub/{k}" for k in stale} & keys
        assert "pub/about.html" in keys and "pub/hipslist" in keys
        assert {f"pub/{TARGET}/{name}" for name in _files(home)} <= keys
    finally:
        server.close()


def _retired_target(put) -> list[str]:
    """A target an earlier publish recorded, since merged into another, beside folders of no
    target's: one holding its own ``footprints.json`` (a common name for GeoJSON) is never touched."""
    retired = ["NGC628/mosaic_wfc3_f555w/properties", "NGC628/mosaic_wfc3_f555w/Norder3/Dir0/Npix1.fits",
               "NGC628/footprints.json"]
    for key in [*retired, "docs/howto.html", "maps/footprints.json", "maps/index.html"]:
        put(key, b"old", hashlib.md5(b"old").hexdigest())
    record = json.dumps(["NGC628", TARGET]).encode()
    put(PUBLISHED, record, hashlib.md5(record).hexdigest())
    return retired


def test_a_target_no_longer_in_the_collection_is_taken_out_after_the_indexes(home, tmp_path):
    dest = FolderDestination(tmp_path / "site")
    retired = _retired_target(dest.put)
    report = publish_collection(home, dest)
    assert report.retired == ["NGC628"] and report.removed == len(retired)
    assert not (dest.root / "NGC628").exists()
    assert (dest.root / "docs" / "howto.html").exists() and (dest.root / "maps" / "footprints.json").exists()
    assert json.loads((dest.root / PUBLISHED).read_text()) == [TARGET]
    _check_collection(lambda key: (dest.root / key).read_bytes(), home)
    # a target left out of those to publish is retired too: the indexes no longer name it
    report = publish_collection(home, dest, targets=[])
    assert report.retired == [TARGET] and not (dest.root / TARGET).exists()
    assert TARGET not in (dest.root / "hipslist").read_text() and (dest.root / "maps" / "index.html").exists()


def test_a_retired_target_is_taken_out_of_s3(home):
    server = S3Server()
    try:
        client = server.client()
        client.create_bucket(Bucket="sky")
        retired = _retired_target(S3Destination(client, "sky", "pub").put)
        client.put_object(Bucket="sky", Key="pub/NGC628/", Body=b"")  # a folder marker, as consoles make
        report = publish_collection(home, S3Destination(client, "sky", "pub"))
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="sky").get("Contents", [])}
        assert report.retired == ["NGC628"] and not {f"pub/{k}" for k in retired} & keys
        assert {"pub/docs/howto.html", "pub/maps/footprints.json", f"pub/{TARGET}/footprints.json"} <= keys
    finally:
        server.close()


def test_a_publish_waits_for_a_target_being_tiled(tmp_path):
    """A publish never reads a version another process is replacing: it takes the target's turn."""
    import threading

    from skyassets.tiles.products import target_lock

    home = Home(tmp_path / "home")
    make_products(home)
    tile_target(home, TARGET, width=64)
    done = []
    with target_lock(home, TARGET):  # as a tiling in another process holds it
        publisher = threading.Thread(
            target=lambda: done.append(publish_collection(home, FolderDestination(tmp_path / "out"))))
        publisher.start()
        publisher.join(0.5)
        assert publisher.is_alive() and not done  # waiting for the target, not reading it
    publisher.join(60)
    assert done and done[0].pyramids == 2
    _check_collection(lambda key: (tmp_path / "out" / key).read_bytes(), home)
