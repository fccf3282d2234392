"""The downloader against the MAST emulator: sources, resume, faults, verification, names, skips."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import boto3
import numpy as np
import pytest
from astropy.io import fits
from botocore import UNSIGNED
from botocore.config import Config

from skyassets.archive.download import DownloadConfig, FileRequest, FileResult, Progress, download_files

CHUNK = 256 << 10
_counter = itertools.count()


def download_config(emu, **overrides) -> DownloadConfig:
    base = dict(
        parallel=4,
        connect_timeout=2.0,
        read_timeout=2.0,
        retries=3,
        backoff_base=0.01,
        backoff_max=0.05,
        chunk_size=CHUNK,
        s3_endpoint=emu.s3_endpoint,
    )
    base.update(overrides)
    return DownloadConfig(**base)


def http_url(emu, product: dict) -> str:
    return f"{emu.url}/api/v0.1/Download/file?uri={product['dataURI']}"


def s3_key(emu, filename: str) -> str:
    """The bucket key of a published file, found by listing (as the path lookup would give it)."""
    s3 = boto3.client(
        "s3", endpoint_url=emu.s3_endpoint, region_name="us-east-1", config=Config(signature_version=UNSIGNED)
    )
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="stpubdata"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/" + filename):
                return obj["Key"]
    raise AssertionError(f"{filename} is not in the emulator's bucket")


def publish_file(
    emu, tmp_path: Path, megabytes: float = 3.0, *, s3: bool = True, name: str | None = None
) -> tuple[dict, bytes]:
    """Publish a fresh FITS file with checksums (a new version if ``name`` is given again); return
    its product row and its bytes."""
    name = name or f"jw9{next(_counter):04d}{os.getpid() % 1000:03d}_test_cal.fits"
    data = np.random.default_rng().random(int(megabytes * 2**20 / 4), dtype=np.float32)
    src = tmp_path / f"published{next(_counter)}" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI")]).writeto(src, checksum=True)
    product = emu.publish(src, obs_id="jw90000-o001_t001", s3=s3)
    return product, src.read_bytes()


def file_request(emu, product: dict, dest: Path, *, s3: bool = False, http: bool = True) -> FileRequest:
    return FileRequest(
        filename=product["productFilename"],
        dest_dir=dest,
        http_url=http_url(emu, product) if http else None,
        s3_key=s3_key(emu, product["productFilename"]) if s3 else None,
        expected_size=int(product["size"]),
    )


def gets_of(emu, since: int, filename: str) -> list[dict]:
    return [
        r for r in list(emu.requests)[since:]
        if r.get("method", "GET") == "GET" and filename in (r.get("uri") or r.get("path") or "")
    ]


def assert_in_place(result: FileResult, content: bytes, *, md5: bool = False) -> None:
    """The file is in place, verified and hashed; ``md5``: the ETag's MD5 was checked too."""
    assert result.status == "downloaded", result.error
    assert result.path is not None
    assert result.path.read_bytes() == content
    digest = hashlib.sha256(content).hexdigest()
    assert result.sha256 == digest
    assert result.md5 == (hashlib.md5(content).hexdigest() if md5 else None)
    sidecar = result.path.with_name(result.path.name + ".sha256")
    assert sidecar.read_text() == f"{digest}  {result.path.name}\n"
    assert result.fits_checksum == "ok"
    leftovers = [p.name for p in result.path.parent.iterdir() if p.name.endswith((".part", ".part.json"))]
    assert leftovers == []


def test_happy_path_s3_and_http_with_progress(emu, tmp_path: Path) -> None:
    sky = next(p for rows in emu.sky.products.values() for p in rows if p["productFilename"].endswith(".fits"))
    mine, content = publish_file(emu, tmp_path, 2)
    dest = tmp_path / "dest"
    reports: list[Progress] = []
    since = len(emu.requests)
    results = download_files(
        [
            file_request(emu, sky, dest, s3=True),
            file_request(emu, mine, dest, s3=False),
        ],
        download_config(emu),
        on_progress=reports.append,
    )
    by_s3, by_http = results
    assert by_s3.source == "s3" and by_http.source == "http"
    assert by_s3.status == "downloaded" and by_s3.fits_checksum == "ok"
    assert by_s3.size == int(sky["size"])
    assert_in_place(by_http, content)
    assert gets_of(emu, since, sky["productFilename"]) == []  # S3 served it, HTTP was not asked
    subprocess.run(["sha256sum", "-c", "--quiet", f"{by_http.path.name}.sha256"], cwd=dest, check=True)

    assert len(reports) == 4  # start and finish of each file; no timed report within 2 s
    assert reports[-1].files_done == reports[-1].files_total == 2
    assert reports[-1].bytes_done == reports[-1].bytes_total == by_s3.size + by_http.size
    assert any(r.message.startswith(f"start {mine['productFilename']}") for r in reports)
    assert any(r.message.startswith(f"downloaded {mine['productFilename']}") for r in reports)


def test_dropped_connection_resumes_from_bytes_on_disk(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 3)
    name = product["productFilename"]
    emu.faults.add("drop", match=name, after_bytes=1_000_000, times=1)
    since = len(emu.requests)
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert_in_place(result, content)
    first, second = gets_of(emu, since, name)
    assert first["range"] in (None, "")
    n = result.resumed_from
    assert 0 < n <= 1_000_000
    assert second["range"] == f"bytes={n}-"
    assert result.bytes_fetched < len(content) + CHUNK
    assert result.attempts == 2


def test_server_ignoring_range_restarts_instead_of_appending(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 3)
    name = product["productFilename"]
    emu.faults.add("drop", match=name, after_bytes=1_000_000, times=1)
    (failed,) = download_files([file_request(emu, product, tmp_path)], download_config(emu, retries=0))
    assert failed.status == "failed" and name in failed.error
    on_disk = (tmp_path / f"{name}.part").stat().st_size
    assert on_disk > 0

    emu.faults.add("ignore_range", match=name, times=1)
    since = len(emu.requests)
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    (get,) = gets_of(emu, since, name)
    assert get["range"] == f"bytes={on_disk}-" and get["status"] == 200
    assert_in_place(result, content)
    assert result.resumed_from == 0 and result.bytes_fetched == len(content)


def _partial(emu, tmp_path: Path, product: dict) -> int:
    """Leave a ``.part`` behind as an interrupted earlier run would; return its size."""
    name = product["productFilename"]
    emu.faults.add("drop", match=name, after_bytes=1_000_000, times=1)
    (failed,) = download_files([file_request(emu, product, tmp_path)], download_config(emu, retries=0))
    assert failed.status == "failed"
    return (tmp_path / f"{name}.part").stat().st_size


def test_part_from_http_resumes_over_s3(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 2)
    on_disk = _partial(emu, tmp_path, product)
    assert on_disk > 0
    since = len(emu.requests)
    (result,) = download_files([file_request(emu, product, tmp_path, s3=True)], download_config(emu))
    assert_in_place(result, content)
    assert result.source == "s3"
    assert result.resumed_from == on_disk and result.bytes_fetched == len(content) - on_disk
    assert gets_of(emu, since, product["productFilename"]) == []


@pytest.mark.parametrize("via_s3", [False, True], ids=["http-if-range", "s3-if-match"])
def test_object_changed_since_the_part_restarts(emu, tmp_path: Path, via_s3: bool) -> None:
    old, _ = publish_file(emu, tmp_path, 2)
    on_disk = _partial(emu, tmp_path, old)
    assert on_disk > 0
    new, content = publish_file(emu, tmp_path, 2, name=old["productFilename"])
    (result,) = download_files([file_request(emu, new, tmp_path, s3=via_s3)], download_config(emu))
    assert_in_place(result, content)
    assert result.source == ("s3" if via_s3 else "http")
    assert result.resumed_from == 0 and result.bytes_fetched == len(content)
    if not via_s3:
        assert result.attempts == 1  # If-Range made the server answer 200 with the new object


def _publish_raw(emu, tmp_path: Path, name: str, content: bytes) -> dict:
    src = tmp_path / f"published{next(_counter)}" / name
    src.parent.mkdir(parents=True)
    src.write_bytes(content)
    return emu.publish(src, obs_id="jw90000-o001_t001", s3=False)


def test_flipped_byte_once_is_caught_then_fetched_again(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 2)
    name = product["productFilename"]
    emu.faults.add("corrupt", match=name, offset=len(content) - 5000, times=1)
    since = len(emu.requests)
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert_in_place(result, content)
    assert result.attempts == 2
    assert len(gets_of(emu, since, name)) == 2
    assert not (tmp_path / f"{name}.corrupt").exists()  # the bad bytes were moved aside, then dropped


def test_md5_is_checked_when_fits_checksums_do_not_cover_the_file_or_when_asked(emu, tmp_path: Path) -> None:
    covered, content = publish_file(emu, tmp_path, 1)
    (auto,) = download_files([file_request(emu, covered, tmp_path / "auto")], download_config(emu))
    assert_in_place(auto, content, md5=False)  # every HDU's CHECKSUM/DATASUM verified instead
    (always,) = download_files([file_request(emu, covered, tmp_path / "always")], download_config(emu, md5="always"))
    assert_in_place(always, content, md5=True)
    with pytest.raises(ValueError, match="md5"):
        download_files([], download_config(emu, md5="sometimes"))


def test_flipped_byte_in_a_non_fits_file_is_caught_by_md5(emu, tmp_path: Path) -> None:
    content = os.urandom(700_000)
    product = _publish_raw(emu, tmp_path, f"jw9{next(_counter):04d}_test_asn.json", content)
    name = product["productFilename"]
    emu.faults.add("corrupt", match=name, offset=1234, times=1)
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert result.status == "downloaded" and result.attempts == 2
    assert result.fits_checksum == "not-fits"
    assert result.path.read_bytes() == content and result.md5 == hashlib.md5(content).hexdigest()


def test_flipped_byte_in_a_gzip_header_is_caught_by_md5(emu, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = io.BytesIO()
        fits.PrimaryHDU(np.ones((64, 64), dtype=np.float32)).writeto(buf, checksum=True)
    content = gzip.compress(buf.getvalue(), mtime=0)
    product = _publish_raw(emu, tmp_path, f"jw9{next(_counter):04d}_test_cal.fits.gz", content)
    name = product["productFilename"]
    emu.faults.add("corrupt", match=name, offset=5, times=1)  # the gzip header's mtime: no FITS sum sees it
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert (result.status, result.fits_checksum, result.attempts) == ("downloaded", "ok", 2)
    assert result.path.read_bytes() == content and result.md5 == hashlib.md5(content).hexdigest()


def test_retry_after_is_honoured_beyond_the_backoff_cap(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 0.2)
    emu.faults.add("status", endpoint="download", match=product["productFilename"], status=503, times=2,
                   retry_after=1)
    started = time.monotonic()
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))  # backoff_max 0.05 s
    assert_in_place(result, content)
    assert time.monotonic() - started >= 2.0  # both waits as the server asked, not cut to the cap


def test_a_retry_after_past_the_most_waited_is_waited_no_longer_than_that(emu, tmp_path: Path, monkeypatch) -> None:
    import skyassets.archive.download as download

    product, content = publish_file(emu, tmp_path, 0.2)
    emu.faults.add("status", endpoint="download", match=product["productFilename"], status=503, times=1,
                   retry_after=1000)
    monkeypatch.setattr(download.random, "uniform", lambda low, high: high)  # the most jitter there is
    waits: list[float] = []
    monkeypatch.setattr(download.time, "sleep", waits.append)
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu, retry_after_max=0.5))
    assert_in_place(result, content)
    assert waits == [0.5]  # the longest wait allowed, jitter and all


def test_bad_fits_checksum_at_the_source_is_never_placed(emu, tmp_path: Path) -> None:
    _, good = publish_file(emu, tmp_path, 1)
    damaged = bytearray(good)
    damaged[-5000] ^= 0x01  # the server's ETag is the MD5 of these bytes, so only FITS sees it
    name = f"jw9{next(_counter):04d}_test_cal.fits"
    product = _publish_raw(emu, tmp_path, name, bytes(damaged))
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu, retries=1))
    assert result.status == "failed" and result.fits_checksum == "bad"
    assert f"{name} HDU 1 (SCI)" in result.error
    assert not (tmp_path / name).exists() and not (tmp_path / f"{name}.sha256").exists()


def test_fits_checksums_are_verified_from_the_stream_not_by_reading_the_file_again(
    emu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_reread(*args: object, **kwargs: object) -> None:
        raise AssertionError("the complete file was read again to verify it")

    monkeypatch.setattr("skyassets.archive.download.verify_fits", no_reread)
    product, content = publish_file(emu, tmp_path, 2)
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert_in_place(result, content)


def test_damaged_part_prefix_is_caught_by_the_streamed_check_after_a_restart(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 2)
    name = product["productFilename"]
    on_disk = _partial(emu, tmp_path, product)
    part = tmp_path / f"{name}.part"
    damaged = bytearray(part.read_bytes())
    damaged[on_disk // 2] ^= 0x01  # in the SCI data, which the resumed attempt does not fetch again
    part.write_bytes(bytes(damaged))
    reports: list[Progress] = []
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu), on_progress=reports.append)
    assert_in_place(result, content)
    assert result.attempts == 2 and result.resumed_from == 0
    assert any(
        f"FITS checksum mismatch: {name} HDU 1 (SCI): DATASUM" in r.message for r in reports
    ), [r.message for r in reports]
    assert result.bytes_fetched == 2 * len(content) - on_disk
    assert any(f"bytes moved to {name}.corrupt" in r.message for r in reports)
    assert not (tmp_path / f"{name}.corrupt").exists()  # of no use once the file is verified


def test_always_corrupt_ends_failed_with_nothing_in_place(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 1)
    name = product["productFilename"]
    emu.faults.add("corrupt", match=name, offset=len(content) - 5000, times=-1)
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu, retries=2))
    assert result.status == "failed" and result.path is None
    assert name in result.error and ("MD5" in result.error or "checksum" in result.error)
    assert result.attempts == 3
    assert not (tmp_path / name).exists()
    assert not (tmp_path / f"{name}.sha256").exists()
    assert not (tmp_path / f"{name}.part").exists()
    assert (tmp_path / f"{name}.corrupt").exists()


def test_stalled_socket_times_out_and_resumes(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 2)
    name = product["productFilename"]
    emu.faults.add("stall", match=name, after_bytes=600_000, seconds=5.0, times=1)
    since = len(emu.requests)
    started = time.monotonic()
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu, read_timeout=0.5))
    assert time.monotonic() - started < 4
    assert_in_place(result, content)
    assert result.attempts == 2
    gets = gets_of(emu, since, name)
    assert len(gets) == 2 and gets[1]["range"] == f"bytes={result.resumed_from}-"


def test_s3_unreachable_falls_back_to_http(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 1)
    closed = "http://127.0.0.1:9"  # discard port: nothing listens on loopback
    config = download_config(emu, s3_endpoint=closed, retries=0)
    (result,) = download_files([file_request(emu, product, tmp_path, s3=True)], config)
    assert_in_place(result, content)
    assert result.source == "http" and result.attempts == 1


def test_missing_s3_key_falls_back_per_file(emu, tmp_path: Path) -> None:
    on_s3, content_s3 = publish_file(emu, tmp_path, 1)
    http_only, content_http = publish_file(emu, tmp_path, 1, s3=False)
    missing = FileRequest(
        filename=http_only["productFilename"],
        dest_dir=tmp_path,
        http_url=http_url(emu, http_only),
        s3_key="jwst/public/jw90000-o001_t001/" + http_only["productFilename"],
        expected_size=int(http_only["size"]),
    )
    results = download_files([file_request(emu, on_s3, tmp_path, s3=True), missing], download_config(emu, retries=0))
    assert_in_place(results[0], content_s3)
    assert_in_place(results[1], content_http)
    assert [r.source for r in results] == ["s3", "http"]


def test_s3_slowdown_waits_its_retry_after_then_comes_from_s3(emu, tmp_path: Path) -> None:
    """A file only S3 holds (a store's key) is asked for again after a 503 SlowDown, no sooner than
    its Retry-After."""
    product, content = publish_file(emu, tmp_path, 1)
    emu.faults.add("status", endpoint="s3", match=product["productFilename"], status=503, retry_after=1)
    said: list[str] = []
    (result,) = download_files([file_request(emu, product, tmp_path, s3=True, http=False)], download_config(emu),
                               on_progress=lambda p: said.append(p.message))
    assert_in_place(result, content)
    assert result.source == "s3" and result.attempts == 2
    (retry,) = [m for m in said if m.startswith("retry ")]
    assert "SlowDown" in retry
    assert float(retry.split(" in ", 1)[1].split(" s ", 1)[0]) >= 1.0  # backoff_max is 0.05 s: the server's wait


@pytest.mark.parametrize("status", [500, 503])
def test_s3_error_status_sends_the_file_over_http(emu, tmp_path: Path, status: int) -> None:
    product, content = publish_file(emu, tmp_path, 1)
    name = product["productFilename"]
    emu.faults.add("status", endpoint="s3", match=name, status=status, times=-1)
    since = len(emu.requests)
    (result,) = download_files([file_request(emu, product, tmp_path, s3=True)], download_config(emu, retries=0))
    assert_in_place(result, content)
    assert result.source == "http" and result.attempts == 1
    assert [g["status"] for g in gets_of(emu, since, name)] == [200]


def test_s3_cut_mid_file_goes_on_over_http_from_where_it_stopped(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 3)
    name = product["productFilename"]
    emu.faults.add("drop", endpoint="s3", match=name, after_bytes=1_500_000, times=-1)
    since = len(emu.requests)
    config = download_config(emu, retries=0, connections=1)
    (result,) = download_files([file_request(emu, product, tmp_path, s3=True)], config)
    assert_in_place(result, content)
    assert result.source == "http" and result.attempts == 1
    (get,) = gets_of(emu, since, name)
    assert result.resumed_from >= 1_000_000 and get["range"] == f"bytes={result.resumed_from}-"
    assert get["bytes_sent"] == len(content) - result.resumed_from


def test_503_then_success(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 1)
    name = product["productFilename"]
    emu.faults.add("status", match=name, status=503, times=1)
    since = len(emu.requests)
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert_in_place(result, content)
    assert [g["status"] for g in gets_of(emu, since, name)] == [503, 200]
    assert result.attempts == 2


def test_a_public_file_refused_to_a_stale_token_is_asked_again_without_it(emu, tmp_path: Path) -> None:
    """A MAST token expires; an archive that refuses it (401) even for a public file must not cost
    the file: it is asked again at once without the token."""
    product, content = publish_file(emu, tmp_path, 1)
    other, other_content = publish_file(emu, tmp_path, 0.5)
    name = product["productFilename"]
    emu.faults.add("status", match=name, status=401, times=1)
    since = len(emu.requests)
    config = download_config(emu, mast_token="stale-token", parallel=1)
    result, second = download_files([file_request(emu, p, tmp_path) for p in (product, other)], config)
    assert_in_place(result, content)
    assert_in_place(second, other_content)
    assert [(g["status"], g["with_token"]) for g in gets_of(emu, since, name)] == [(401, True), (200, False)]
    assert result.attempts == 1
    # a token refused once is refused: the batch's next file is asked without it from the start
    assert [g["with_token"] for g in gets_of(emu, since, other["productFilename"])] == [False]
    # without a token, a 401 is the file's answer: not asked again
    emu.faults.add("status", match=name, status=401, times=1)
    (refused,) = download_files([file_request(emu, product, tmp_path / "again")], download_config(emu))
    assert refused.status == "failed" and "HTTP 401" in refused.error and refused.attempts == 1


def test_404_fails_without_retrying(emu, tmp_path: Path) -> None:
    request = FileRequest(
        filename="jw_nothing_cal.fits",
        dest_dir=tmp_path,
        http_url=f"{emu.url}/api/v0.1/Download/file?uri=mast:JWST/product/jw_nothing_cal.fits",
    )
    (result,) = download_files([request], download_config(emu))
    assert result.status == "failed" and result.attempts == 1
    assert "jw_nothing_cal.fits" in result.error and "404" in result.error


@pytest.mark.parametrize("bad", ["../escape.fits", "sub/dir.fits", "C:escape.fits", "bell\x07.fits", ".."])
def test_unsafe_names_are_refused_and_the_batch_goes_on(emu, tmp_path: Path, bad: str) -> None:
    product, content = publish_file(emu, tmp_path, 0.2)
    dest = tmp_path / "area" / "dest"
    evil = FileRequest(filename=bad, dest_dir=dest, http_url=http_url(emu, product))
    since = len(emu.requests)
    refused, good = download_files([evil, file_request(emu, product, dest)], download_config(emu))
    assert refused.status == "failed" and refused.path is None
    assert repr(bad) in refused.error
    assert_in_place(good, content)
    assert len(gets_of(emu, since, product["productFilename"])) == 1
    written = sorted(p.relative_to(tmp_path / "area").as_posix() for p in (tmp_path / "area").rglob("*"))
    name = product["productFilename"]
    assert written == ["dest", f"dest/.{name}.lock", f"dest/.{name}.verified", f"dest/{name}", f"dest/{name}.sha256"]


def test_second_run_skips_verified_files(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 1)
    name = product["productFilename"]
    (first,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert_in_place(first, content)

    since = len(emu.requests)
    (again,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert again.status == "skipped" and again.bytes_fetched == 0
    assert again.sha256 == first.sha256 and again.path == first.path
    (rehashed,) = download_files([file_request(emu, product, tmp_path)], download_config(emu, verify_existing=True))
    assert rehashed.status == "skipped" and rehashed.fits_checksum == "ok"
    assert gets_of(emu, since, name) == []

    damaged = bytearray(content)
    damaged[-5000] ^= 0xFF
    (tmp_path / name).write_bytes(bytes(damaged))
    (refetched,) = download_files([file_request(emu, product, tmp_path)], download_config(emu, verify_existing=True))
    assert_in_place(refetched, content)
    assert len(gets_of(emu, since, name)) == 1


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from skyassets.archive.download import DownloadConfig, FileRequest, download_files
    url, dest, name, size, retries = sys.argv[1:6]
    (result,) = download_files(
        [FileRequest(filename=name, dest_dir=Path(dest), http_url=url, expected_size=int(size))],
        DownloadConfig(chunk_size=64 << 10, read_timeout=60, retries=int(retries), backoff_base=0.01),
    )
    sys.exit(0 if result.status == "downloaded" else 1)
    """
)


@pytest.mark.slow
def test_resume_after_process_kill(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 3)
    name = product["productFilename"]
    emu.faults.add("stall", match=name, after_bytes=1_000_000, seconds=8.0, times=1)
    part = tmp_path / f"{name}.part"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, http_url(emu, product), str(tmp_path), name, str(len(content)), "0"]
    )
    try:
        deadline = time.monotonic() + 20
        while not (part.exists() and part.stat().st_size > 0):
            assert child.poll() is None, "the child finished before it could be killed"
            assert time.monotonic() < deadline, "the child never wrote to the .part"
            time.sleep(0.05)
        time.sleep(0.2)  # let it reach the stall
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    on_disk = part.stat().st_size
    assert 0 < on_disk <= 1_000_000
    assert (tmp_path / f"{name}.part.json").exists()

    since = len(emu.requests)
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert_in_place(result, content)
    (get,) = gets_of(emu, since, name)
    assert get["range"] == f"bytes={on_disk}-" and get["status"] == 206
    assert result.resumed_from == on_disk
    assert result.bytes_fetched == len(content) - on_disk


@pytest.mark.slow
def test_two_processes_fetching_one_file_do_not_collide(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 2)
    name = product["productFilename"]
    emu.faults.add("stall", match=name, after_bytes=500_000, seconds=1.0, times=1)
    since = len(emu.requests)
    part = tmp_path / f"{name}.part"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, http_url(emu, product), str(tmp_path), name, str(len(content)), "3"]
    )
    try:
        deadline = time.monotonic() + 20
        while not part.exists():
            assert time.monotonic() < deadline, "the child never started its download"
            time.sleep(0.02)
        # The child holds the file; this process waits for it, then finds the file verified.
        (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu, read_timeout=5.0))
    finally:
        assert child.wait(30) == 0
    # Without the lock this process would have resumed the child's .part with a request of its own.
    assert result.status == "skipped" and result.bytes_fetched == 0
    assert result.path.read_bytes() == content
    assert [g["range"] for g in gets_of(emu, since, name)] == [None, "bytes=500000-"]


def test_local_files_are_copied_through_the_same_checks(tmp_path: Path) -> None:
    data = np.arange(300_000, dtype=np.float32)
    src = tmp_path / "landing" / "night1_r.fits"
    src.parent.mkdir()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI")]).writeto(src, checksum=True)
    content = src.read_bytes()
    dest = tmp_path / "files"
    request = FileRequest(filename=src.name, dest_dir=dest, local_path=src, expected_size=len(content))
    (copied,) = download_files([request], DownloadConfig(chunk_size=CHUNK))
    assert_in_place(copied, content)
    assert copied.source == "local"

    # A partial copy resumes; a source changed since the .part began restarts from zero.
    part = dest / f"{src.name}.part"

    def interrupt(result: FileResult) -> None:
        """Turn a finished copy back into a .part of 100,000 bytes, as a copy stopped there leaves it."""
        result.path.rename(part)
        (dest / f"{src.name}.sha256").unlink()
        (dest / f"{src.name}.part.json").write_text(
            json.dumps(
                {"source": "local", "etag": f"{src.stat().st_size}-{src.stat().st_mtime_ns}", "size": len(content)}
            )
        )
        with part.open("r+b") as f:
            f.truncate(100_000)

    interrupt(copied)
    (resumed,) = download_files([request], DownloadConfig(chunk_size=CHUNK))
    assert_in_place(resumed, content)
    assert resumed.resumed_from == 100_000 and resumed.bytes_fetched == len(content) - 100_000

    interrupt(resumed)
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 1_000_000_000))  # touched since
    (restarted,) = download_files([request], DownloadConfig(chunk_size=CHUNK))
    assert_in_place(restarted, content)
    assert restarted.resumed_from == 0 and restarted.bytes_fetched == len(content)

    missing = FileRequest(filename="gone.fits", dest_dir=dest, local_path=tmp_path / "gone.fits")
    (gone,) = download_files([missing], DownloadConfig())
    assert gone.status == "failed" and "gone.fits" in gone.error and gone.attempts == 1
