"""The home on an S3-protocol store (moto's server on loopback): the same layout as on disk,
verified uploads, a bounded working copy, the lake read and written through it."""

from __future__ import annotations

import hashlib
import os

import pytest

from skyassets.catalog.db import CatalogError, connect, publish, refresh
from skyassets.lake.home import Home, StorageError, expected_etag
from skyassets_tests.objectstore import BUCKET, CREDENTIALS, object_store


@pytest.fixture(scope="module")
def store():
    with object_store() as server:
        yield server


@pytest.fixture
def home(store, tmp_path, monkeypatch, request):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return Home(tmp_path / "local", storage=f"s3://{BUCKET}/{request.node.name}", endpoint=store.endpoint)


def _keys(store, prefix: str) -> set[str]:
    listed = store.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"][len(prefix) + 1:] for o in listed}


def test_lake_tables_live_in_the_store_with_the_local_layout(home, store, request):
    rows = [{"obs_id": "jw01-o1_t1", "obsid": "1", "target_name": "NGC 628"}]
    url = home.tables.write("mast_observations", rows)
    home.tables.write("fits_files", [{"partition": "jw01-o1_t1", "filename": "a.fits", "size": 3}], "jw01-o1_t1")
    assert url == f"s3://{BUCKET}/{request.node.name}/lake/mast_observations.parquet"
    assert _keys(store, request.node.name) == {"lake/mast_observations.parquet", "lake/fits_files/jw01-o1_t1.parquet"}
    assert not home.lake.exists()  # nothing written locally
    assert home.tables.read("mast_observations")["target_name"].tolist() == ["NGC 628"]
    assert home.tables.partitions("fits_files") == ["jw01-o1_t1"]
    assert home.tables.read("fits_files", "jw01-o1_t1")["size"].tolist() == [3]
    assert home.tables.delete("fits_files", "jw01-o1_t1") and not home.tables.exists("fits_files")


def test_catalog_connect_reads_the_stored_lake_from_the_store(home, store, request, tmp_path, monkeypatch):
    home.tables.write("mast_observations", [{"obs_id": "a", "obsid": "1"}, {"obs_id": "b", "obsid": "2"}])
    home.tables.write("fits_files", [{"partition": "a", "filename": "a.fits", "size": 3}], "a")
    con = connect(home)
    assert con.execute("SELECT count(*) FROM observations").fetchone()[0] == 2
    assert not home.lake.exists()  # read from the store, not through a local copy
    home.tables.write("mast_observations", [{"obs_id": "c", "obsid": "3"}])  # replaced in the store
    home.tables.write("fits_files", [{"partition": "b", "filename": "b.fits", "size": 5}], "b")
    assert con.execute("SELECT list(obs_id) FROM observations").fetchone()[0] == ["a", "b"]  # a snapshot
    assert refresh(con)
    assert con.execute("SELECT list(obs_id) FROM observations").fetchone()[0] == ["c"]
    assert con.execute("SELECT list(size ORDER BY size) FROM files").fetchone()[0] == [3, 5]
    home.tables.delete("fits_files", "a")
    assert refresh(con) and con.execute("SELECT list(size) FROM files").fetchone()[0] == [5]
    assert not refresh(con)  # nothing changed: nothing read again

    # A notebook on another machine names the store only (SKYASSETS_STORAGE, or the URL).
    monkeypatch.setenv("SKYASSETS_HOME", str(tmp_path / "notebook"))
    monkeypatch.setenv("SKYASSETS_STORAGE_ENDPOINT", store.endpoint)
    assert connect(home.storage).execute("SELECT list(obs_id) FROM observations").fetchone()[0] == ["c"]
    monkeypatch.setenv("SKYASSETS_STORAGE", home.storage)
    assert connect().execute("SELECT list(size) FROM files").fetchone()[0] == [5]


def test_a_published_catalog_is_stored_and_started_from_on_another_machine(home, store, request, tmp_path):
    home.tables.write("mast_observations", [{"obs_id": "a", "obsid": "1"}])
    for key in ("a", "b"):
        home.tables.write("fits_files", [{"partition": key, "filename": f"{key}.fits", "size": 1,
                                          "path": f"files/X/{key}/{key}.fits"}], key)
    publish(home)
    assert "catalog.duckdb" in _keys(store, request.node.name)
    written = (home.root / "catalog.duckdb").stat().st_ino
    connect(home).close()
    assert (home.root / "catalog.duckdb").stat().st_ino == written  # the publisher's copy is current: not fetched
    elsewhere = Home(tmp_path / "elsewhere", storage=home.storage, endpoint=home.endpoint)
    home.tables.write("fits_files", [{"partition": "b", "filename": "b.fits", "size": 7}], "b")  # after publishing
    con = connect(elsewhere)
    assert (elsewhere.root / "catalog.duckdb").is_file()  # the stored catalog, started from
    assert con.execute("SELECT value FROM _skyassets.settings WHERE key = 'base'").fetchone() is not None
    assert con.execute("SELECT list(size ORDER BY size) FROM files").fetchone()[0] == [1, 7]
    # the files' full locations are the store's, the same on every machine
    assert con.execute("SELECT list(abs_path ORDER BY obs_id) FROM files").fetchone()[0] == [
        f"{home.storage}/files/X/a/a.fits", None]
    published = connect(elsewhere, published=True)
    assert published.execute("SELECT list(size ORDER BY size) FROM files").fetchone()[0] == [1, 1]
    home.tables.write("mast_observations", [{"obs_id": "a", "obsid": "1"}, {"obs_id": "z", "obsid": "9"}])
    publish(home)  # published again by the first machine: the second starts over from the new one
    assert refresh(con)
    assert con.execute("SELECT list(obs_id ORDER BY obs_id) FROM observations").fetchone()[0] == ["a", "z"]
    assert con.execute("SELECT list(size ORDER BY size) FROM files").fetchone()[0] == [1, 7]


def test_a_stored_partition_that_is_not_its_recorded_content_is_named(home, store, request):
    home.tables.write("fits_files", [{"partition": "a", "filename": "a.fits", "size": 1}], "a")
    key = f"{request.node.name}/lake/fits_files/b.parquet"
    store.client().put_object(Bucket=BUCKET, Key=key, Body=b"PAR1 junk", Metadata={"sha256": "1" * 64})
    with pytest.raises(StorageError, match="fits_files/b.parquet"):
        connect(home)
    store.client().put_object(Bucket=BUCKET, Key=key, Body=b"PAR1 junk")
    with pytest.raises(CatalogError, match="fits_files/b.parquet"):
        connect(home)


def test_committed_files_are_verified_then_fetched_back_when_evicted(home, store, request):
    local = home.root / "files" / "jwst" / "jw01-o1_t1" / "a_cal.fits"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"SIMPLE  = T" + bytes(range(256)) * 40)
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    relative = local.relative_to(home.root)
    assert home.commit(relative) == f"s3://{BUCKET}/{request.node.name}/files/jwst/jw01-o1_t1/a_cal.fits"
    head = store.client().head_object(Bucket=BUCKET, Key=f"{request.node.name}/{relative}")
    assert head["Metadata"]["sha256"] == digest and head["ETag"].strip('"') == expected_etag(local)
    local.unlink()
    assert home.exists(relative) and not home.exists("files/other.fits")
    assert home.local(relative, digest).read_bytes()[:11] == b"SIMPLE  = T"
    local.unlink()
    with pytest.raises(StorageError, match="expected"):
        home.local(relative, "0" * 64)  # a copy that is not the catalogued file is refused
    assert not local.exists()


def test_an_object_that_differs_from_its_recorded_digest_is_refused(home, store, request):
    key = f"{request.node.name}/files/x/y/b.fits"
    store.client().put_object(Bucket=BUCKET, Key=key, Body=b"tampered", Metadata={"sha256": "1" * 64})
    with pytest.raises(StorageError, match="b.fits"):
        home.local("files/x/y/b.fits")


def test_a_file_fetched_from_the_same_service_is_copied_by_the_store_not_uploaded(home, store, request):
    client = store.client()
    client.create_bucket(Bucket="observatory")
    content = b"SIMPLE  = T" + bytes(range(256)) * 64
    client.put_object(Bucket="observatory", Key="nights/a.fits", Body=content)
    relative = "files/local/landed-a/a.fits"
    (home.root / relative).parent.mkdir(parents=True)
    (home.root / relative).write_bytes(content)  # the working copy, fetched from the bucket and verified
    calls = []
    home.client().meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    assert home.copy_in("s3://observatory/nights/a.fits", relative)
    assert "CopyObject" in calls and not {"PutObject", "UploadPart", "CreateMultipartUpload"} & set(calls)
    key = f"{request.node.name}/{relative}"
    head = client.head_object(Bucket=BUCKET, Key=key)
    assert head["Metadata"]["sha256"] == hashlib.sha256(content).hexdigest()
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == content

    # The source changed since it was fetched: the copy is not the verified file, and is taken back.
    client.put_object(Bucket="observatory", Key="nights/a.fits", Body=b"SIMPLE  = F, replaced")
    assert not home.copy_in("s3://observatory/nights/a.fits", relative)
    assert "a.fits" not in {k.rsplit("/", 1)[-1] for k in _keys(store, request.node.name)}
    assert not home.copy_in("s3://no-such-bucket/a.fits", relative)  # a source the store cannot read
    home.commit(relative)  # what the caller then does
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == content


def test_multipart_etag_is_that_of_the_parts(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"a" * 10 + b"b" * 10 + b"c" * 5)
    md5 = [hashlib.md5(p).digest() for p in (b"a" * 10, b"b" * 10, b"c" * 5)]
    assert expected_etag(path, part_size=10) == hashlib.md5(b"".join(md5)).hexdigest() + "-3"
    assert expected_etag(path, part_size=100) == hashlib.md5(path.read_bytes()).hexdigest()


def test_the_working_copy_stays_under_its_budget(store, tmp_path, monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    home = Home(tmp_path, storage=f"s3://{BUCKET}/budget", endpoint=store.endpoint, cache_bytes=2500)
    paths = []
    for i in range(3):
        path = home.root / "products" / "NGC-628" / f"m{i}.fits"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([i]) * 1000)
        home.commit(path.relative_to(home.root))
        paths.append(path)
    home.local(paths[0].relative_to(home.root))  # used again: now the most recent
    staged = home.root / "products" / "NGC-628" / ".replacing-run" / "m9.fits"  # a run's mosaic being made
    staged.parent.mkdir()
    staged.write_bytes(b"\0" * 5000)
    os.utime(staged, (1, 1))  # the oldest of all
    assert home.trim() == 1000
    assert [p.exists() for p in paths] == [True, False, True] and staged.exists()
    assert home.local(paths[1].relative_to(home.root)).read_bytes() == bytes([1]) * 1000


def test_put_bytes_and_bad_locations(home, store, request):
    home.put_bytes("previews/o/a.png", b"\x89PNG")
    stored = store.client().get_object(Bucket=BUCKET, Key=f"{request.node.name}/previews/o/a.png")
    assert stored["Body"].read() == b"\x89PNG"
    for bad in ("../x", "/etc/passwd", "files/../../x"):
        with pytest.raises(ValueError, match="inside the skyassets home"):
            home.url(bad)
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        Home(home.root, storage="gs://bucket")


def test_local_home_keeps_files_in_place(tmp_path):
    home = Home(tmp_path)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.fits").write_bytes(b"x")
    assert home.commit("files/a.fits") == str(tmp_path / "files" / "a.fits")
    assert home.local("files/a.fits") == tmp_path / "files" / "a.fits"
    assert home.put_bytes("previews/a.png", b"p") == str(tmp_path / "previews" / "a.png")
    assert home.fresh_copy("files/a.fits") == tmp_path / "files" / "a.fits" and home.trim() == 0
    assert home.fresh_copy("catalog.duckdb") is None
    assert home.tables.write("mast_observations", [{"obs_id": "a"}]) == str(home.lake / "mast_observations.parquet")


def test_a_name_of_the_longest_kind_is_written_whole(tmp_path):
    # a stored file's preview: its name plus ".<hdu>.png", which its working copy must not outgrow
    name = "n" * 240 + ".fits.0.png"
    home = Home(tmp_path)
    assert home.put_bytes(f"previews/o/{name}", b"p") == str(tmp_path / "previews" / "o" / name)
    assert [p.name for p in (tmp_path / "previews" / "o").iterdir()] == [name]


def test_removed_files_leave_the_store_and_the_working_copy(home, store, request):
    for name in ("files/local/o/a.fits", "files/local/o/a.fits.sha256", "files/local/o/b.fits"):
        home.put_bytes(name, b"x" * 10)
    (home.root / "files" / "local" / "o").mkdir(parents=True)
    (home.root / "files" / "local" / "o" / "a.fits").write_bytes(b"x")  # a working copy
    home.remove_files(["files/local/o/a.fits", "files/local/o/a.fits.sha256", "files/local/o/.a.fits.verified"])
    assert _keys(store, request.node.name) == {"files/local/o/b.fits"}
    assert not (home.root / "files" / "local" / "o" / "a.fits").exists()
    home.remove_files([])
    with pytest.raises(ValueError, match="not a relative path"):
        home.remove_files(["../elsewhere"])


def test_a_removed_folder_leaves_the_store_and_the_working_copy(home, store, request):
    for name in ("products/NGC-1/mosaic.fits", "products/NGC-1/sub/composite.png", "products/NGC-10/mosaic.fits"):
        home.put_bytes(name, b"x" * 10)
    (home.root / "products" / "NGC-1").mkdir(parents=True)
    (home.root / "products" / "NGC-1" / "mosaic.fits").write_bytes(b"x")  # a working copy
    assert home.remove_folder("products/NGC-1") == 2
    assert _keys(store, request.node.name) == {"products/NGC-10/mosaic.fits"}  # a prefix, not a name start
    assert not (home.root / "products" / "NGC-1").exists()
    assert home.remove_folder("products/NGC-1") == 0
    with pytest.raises(ValueError, match="not a relative path"):
        home.remove_folder("../elsewhere")
