"""The downloader against servers that lie or dawdle, and names and files that are not what they seem:
sizes that change between ranges, digest headers, resumes without validators, compressed bodies,
names ending in the working files' suffixes, files changed in place, trickling transfers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
from astropy.io import fits
from boto3.s3.transfer import TransferConfig

from skyassets.archive.download import DownloadConfig, FileRequest, download_files
from skyassets_tests.archive.test_download import (
    assert_in_place,
    download_config,
    file_request,
    gets_of,
    http_url,
    publish_file,
    s3_key,
)


def _unsized(emu, product: dict, dest: Path) -> FileRequest:
    """A request whose size the product list did not give: only the server says how long it is."""
    return FileRequest(filename=product["productFilename"], dest_dir=dest, http_url=http_url(emu, product))


def test_range_answer_with_another_total_restarts_instead_of_splicing(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 2)
    name = product["productFilename"]
    emu.faults.add("drop", match=name, after_bytes=500_000, times=1)
    emu.faults.add("wrong_total", match=name, times=1)
    since = len(emu.requests)
    (result,) = download_files([_unsized(emu, product, tmp_path)], download_config(emu))
    assert_in_place(result, content)
    first, second, third = gets_of(emu, since, name)
    assert second["status"] == 206 and second["range"].startswith("bytes=")
    assert third["range"] is None  # started over at once, no byte of the odd answer kept
    assert result.resumed_from == 0


def test_content_md5_mismatch_is_refused_with_its_reason(emu, tmp_path: Path) -> None:
    product, _ = publish_file(emu, tmp_path, 1)
    name = product["productFilename"]
    emu.faults.add("bad_md5", match=name, times=-1)
    (result,) = download_files([_unsized(emu, product, tmp_path)], download_config(emu, retries=1))
    assert result.status == "failed" and result.path is None
    assert name in result.error and "Content-MD5 mismatch" in result.error
    assert not (tmp_path / name).exists()


def test_checksum_sha256_header_mismatch_is_refused(emu, tmp_path: Path) -> None:
    product, _ = publish_file(emu, tmp_path, 1)
    name = product["productFilename"]
    emu.faults.add("bad_sha256", match=name, times=-1)
    (result,) = download_files([_unsized(emu, product, tmp_path)], download_config(emu, retries=0))
    assert result.status == "failed" and "x-amz-checksum-sha256" in result.error and name in result.error
    assert not (tmp_path / name).exists()


def test_right_digest_headers_are_accepted(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 1)
    emu.faults.add("digests", match=product["productFilename"], times=-1)
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert_in_place(result, content)
    assert result.sha256_checked


def _store_with_sha256(emu, product: dict, content: bytes, part_size: int | None = None) -> None:
    """Store the product's object again, as S3 does for an upload that asks for SHA-256 checksums:
    the whole object's in one request, a checksum of the parts' checksums ("...-N") in several."""
    s3 = boto3.client("s3", endpoint_url=emu.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="emulator", aws_secret_access_key="emulator")
    key = s3_key(emu, product["productFilename"])
    extra = {"ACL": "public-read", "ChecksumAlgorithm": "SHA256"}
    if part_size is None:
        s3.put_object(Bucket="stpubdata", Key=key, Body=content, **extra)
    else:
        s3.upload_fileobj(io.BytesIO(content), "stpubdata", key, ExtraArgs=extra,
                          Config=TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size))
    checksum = s3.get_object(Bucket="stpubdata", Key=key, ChecksumMode="ENABLED")["ChecksumSHA256"]
    assert checksum.endswith("=") == (part_size is None)  # composite checksums end in "-<parts>"


def test_the_sha256_s3_stores_with_an_object_is_checked_over_s3(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 1)
    (plain,) = download_files([file_request(emu, product, tmp_path / "plain", s3=True, http=False)],
                              download_config(emu))
    assert_in_place(plain, content)
    assert plain.source == "s3" and not plain.sha256_checked  # stored without one
    _store_with_sha256(emu, product, content)
    (result,) = download_files([file_request(emu, product, tmp_path / "checked", s3=True, http=False)],
                               download_config(emu))
    assert_in_place(result, content)
    assert result.source == "s3" and result.sha256_checked


def test_a_multipart_object_s_composite_checksum_is_not_taken_for_the_file_s_sha256(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 12)
    _store_with_sha256(emu, product, content, part_size=5 << 20)
    (result,) = download_files([file_request(emu, product, tmp_path, s3=True, http=False)], download_config(emu))
    assert_in_place(result, content)  # not refused for a checksum of checksums
    assert result.source == "s3" and not result.sha256_checked


def test_resume_without_etag_or_last_modified_restarts(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 2)
    name = product["productFilename"]
    emu.faults.add("no_validators", times=-1)  # every answer while armed
    emu.faults.add("drop", match=name, after_bytes=500_000, times=1)
    since = len(emu.requests)
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert_in_place(result, content)
    first, second = gets_of(emu, since, name)
    assert second["range"] is None  # nothing proves the rest would be the same object
    assert result.resumed_from == 0


def test_resume_without_etag_is_conditional_on_last_modified(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 2)
    name = product["productFilename"]
    emu.faults.add("no_etag", times=-1)
    emu.faults.add("drop", match=name, after_bytes=500_000, times=1)
    since = len(emu.requests)
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert_in_place(result, content)
    first, second = gets_of(emu, since, name)
    assert second["range"] == f"bytes={result.resumed_from}-" and second["if_range"].endswith("GMT")


def test_compressed_body_is_never_stored_under_the_name(emu, tmp_path: Path) -> None:
    product, _ = publish_file(emu, tmp_path, 1)
    name = product["productFilename"]
    emu.faults.add("gzip", match=name, times=-1)
    (result,) = download_files([_unsized(emu, product, tmp_path)], download_config(emu))
    assert result.status == "failed" and "Content-Encoding 'gzip'" in result.error and name in result.error
    assert not (tmp_path / name).exists()
    assert len(gets_of(emu, 0, name)) == 1  # refused at once, not retried


@pytest.mark.parametrize("suffix", [".part", ".part.json", ".sha256", ".corrupt", ".lock", ".verified", ".tmp"])
def test_names_ending_in_working_suffixes_are_refused(emu, tmp_path: Path, suffix: str) -> None:
    product, content = publish_file(emu, tmp_path, 0.2)
    name = product["productFilename"]
    clash = FileRequest(filename=name + suffix, dest_dir=tmp_path, http_url=http_url(emu, product))
    good, refused = download_files([file_request(emu, product, tmp_path), clash], download_config(emu))
    assert_in_place(good, content)
    assert refused.status == "failed" and suffix in refused.error and "collide" in refused.error
    assert (tmp_path / f"{name}.sha256").read_text().endswith(f"  {name}\n")


def test_name_without_room_for_its_working_files_is_refused(emu, tmp_path: Path) -> None:
    product, _ = publish_file(emu, tmp_path, 0.1)
    long_name = "x" * 245 + ".fits"  # a valid file name, but not once ".part.json.tmp" is added
    request = FileRequest(long_name, tmp_path, http_url=http_url(emu, product))
    (result,) = download_files([request], download_config(emu))
    assert result.status == "failed" and "no room" in result.error
    assert not (tmp_path / long_name).exists()


def test_file_changed_in_place_is_checked_again_before_it_is_reported(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 1)
    name = product["productFilename"]
    (first,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert_in_place(first, content)
    final = tmp_path / name

    os.utime(final, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))  # touched, bytes unchanged
    since = len(emu.requests)
    (touched,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert touched.status == "skipped" and touched.fits_checksum == "ok"  # re-verified, not trusted
    assert gets_of(emu, since, name) == []

    damaged = bytearray(content)
    damaged[-5000] ^= 0xFF  # same size, other bytes: the sidecar's digest no longer holds
    final.write_bytes(bytes(damaged))
    (refetched,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert_in_place(refetched, content)
    assert len(gets_of(emu, since, name)) == 1

    # unchanged since verified: not checked again, and said as it was found when it came (a run that
    # finds it after the run that fetched it failed has no manifest row of it to say so)
    (again,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert (again.status, again.fits_checksum, again.source) == ("skipped", "ok", refetched.source)
    assert refetched.source == "http"
    record = final.with_name(f".{name}.verified")
    kept = json.loads(record.read_text())
    record.write_text(json.dumps({k: kept[k] for k in ("sha256", "size", "mtime_ns")}))  # as older ones are
    (older,) = download_files([file_request(emu, product, tmp_path)], download_config(emu))
    assert (older.status, older.fits_checksum, older.source) == ("skipped", "unchecked", None)


def test_trickling_transfer_is_cut_by_the_minimum_speed(emu, tmp_path: Path) -> None:
    product, _ = publish_file(emu, tmp_path, 0.1)
    name = product["productFilename"]
    emu.faults.add("trickle", match=name, seconds=0.1, times=-1)
    started = time.monotonic()
    (result,) = download_files([file_request(emu, product, tmp_path)],
                               download_config(emu, retries=0, min_speed=1000, min_speed_window=0.5))
    assert time.monotonic() - started < 5
    assert result.status == "failed" and name in result.error and "too slow" in result.error


def test_trickling_transfer_is_cut_by_the_deadline(emu, tmp_path: Path) -> None:
    product, _ = publish_file(emu, tmp_path, 0.1)
    name = product["productFilename"]
    emu.faults.add("trickle", match=name, seconds=0.1, times=-1)
    started = time.monotonic()
    (result,) = download_files([file_request(emu, product, tmp_path)], download_config(emu, min_speed=0, deadline=0.6))
    assert time.monotonic() - started < 5
    assert result.status == "failed" and name in result.error and "deadline of 0.6 s" in result.error


def test_a_sparse_local_fits_file_is_copied_sparse_and_verified(tmp_path: Path) -> None:
    """A FITS file whose data is mostly zeros the file system never stored: the copy holds the same
    bytes and takes no more room than its source, instead of writing every zero."""
    landed = tmp_path / "landed"
    landed.mkdir()
    src = landed / "blank.fits"
    data = np.zeros((4096, 4096), dtype=np.float32)  # 64 MiB of zeros
    data[0, :10] = 1.0  # a little data at the start and at the end
    data[-1, -10:] = 2.0
    data[2048, 2048] = 3.0  # and one value alone in the middle of the zeros, which the copy must keep
    header = fits.PrimaryHDU(data).header
    head = header.tostring().encode()
    body = data.astype(">f4").tobytes()
    with src.open("wb") as f:  # written sparse: the zeros between the ends are a hole
        f.write(head + body[:40960])
        middle = (2048 * 4096 + 2048) * 4
        f.seek(len(head) + middle)
        f.write(body[middle:middle + 4])
        f.seek(len(head) + len(body) - 40960)
        f.write(body[-40960:])
        f.write(bytes(-(len(head) + len(body)) % 2880))
    assert src.stat().st_blocks * 512 < 1 << 20
    (copied,) = download_files([FileRequest(src.name, tmp_path / "dest", local_path=src)],
                               DownloadConfig(retries=0))
    assert copied.status == "downloaded", copied.error
    assert copied.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert copied.path.read_bytes() == src.read_bytes()
    # the three chunks (4 MiB) that hold data, not the 64 MiB a dense copy takes
    assert copied.path.stat().st_blocks * 512 <= 3 * DownloadConfig().chunk_size + (1 << 20)


def test_a_local_file_named_fits_that_is_not_fits_is_refused_before_its_copy(tmp_path: Path) -> None:
    landed = tmp_path / "landed"
    landed.mkdir()
    huge = landed / "huge.fits"
    with huge.open("wb") as f:  # sparse: zeros that take no room until copied
        f.truncate(256 << 20)
    (landed / "empty.fits").write_bytes(b"")
    requests = [FileRequest(p.name, tmp_path / "dest", local_path=p) for p in (huge, landed / "empty.fits")]
    results = download_files(requests, DownloadConfig(retries=0))
    assert [r.status for r in results] == ["failed", "failed"]
    assert "not FITS: starts with b'\\x00" in results[0].error and "empty file (0 bytes)" in results[1].error
    assert (tmp_path / "dest" / "huge.fits.corrupt").stat().st_size == 2880  # its first block, as evidence
    assert not (tmp_path / "dest" / "huge.fits").exists()
