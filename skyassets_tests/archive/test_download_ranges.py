"""One large file over several ranged connections: ranges in order, resumable range by range, one
verification of the whole file, over HTTP and S3."""

from __future__ import annotations

import json
import re
from pathlib import Path

from skyassets.archive.download import download_files
from skyassets_tests.archive.test_download import assert_in_place, download_config, file_request, gets_of, publish_file

SEGMENT = 256 << 10
# fast_stream=0: every connection opens at once, whatever the first one's speed on loopback.


def _ranges(emu, since: int, name: str) -> list[tuple[int, int]]:
    """The ``bytes=a-b`` ranges asked for, as (a, b) pairs."""
    out = []
    for get in gets_of(emu, since, name):
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", get["range"] or "")
        assert m, f"a request without an explicit range: {get}"
        out.append((int(m.group(1)), int(m.group(2))))
    return out


def test_large_file_comes_over_several_ranged_connections(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 3)
    name = product["productFilename"]
    since = len(emu.requests)
    (result,) = download_files([file_request(emu, product, tmp_path)],
                               download_config(emu, connections=4, segment_size=SEGMENT, fast_stream=0, md5="always"))
    assert_in_place(result, content, md5=True)  # SHA-256, MD5 and FITS sums over the assembled file
    ranges = _ranges(emu, since, name)
    assert len(ranges) == -(-len(content) // SEGMENT)
    assert sorted(ranges)[0][0] == 0 and sorted(ranges)[-1][1] == len(content) - 1
    covered = sum(b - a + 1 for a, b in ranges)
    assert covered == len(content)
    assert result.bytes_fetched == len(content)


def test_small_file_uses_one_stream(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 0.4)
    name = product["productFilename"]
    since = len(emu.requests)
    (result,) = download_files([file_request(emu, product, tmp_path)],
                               download_config(emu, connections=4, segment_size=SEGMENT, fast_stream=0))
    assert_in_place(result, content)
    (get,) = gets_of(emu, since, name)  # 0.4 MB is less than two segments
    assert get["range"] is None


def test_failed_range_resumes_only_the_missing_ranges(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 3)
    name = product["productFilename"]
    cfg = download_config(emu, connections=2, segment_size=SEGMENT, fast_stream=0, retries=0)
    emu.faults.add("drop", match=name, after_bytes=100_000, times=-1)
    (failed,) = download_files([file_request(emu, product, tmp_path)], cfg)
    assert failed.status == "failed" and name in failed.error
    state = json.loads((tmp_path / f"{name}.part.json").read_text())
    done = state["done"]
    kept = sum(b - a for a, b in done)
    assert kept > 0 and state["size"] == len(content)

    emu.faults.clear()
    since = len(emu.requests)
    (result,) = download_files([file_request(emu, product, tmp_path)], cfg)
    assert_in_place(result, content)
    assert result.bytes_fetched == len(content) - kept
    for a, b in _ranges(emu, since, name):  # nothing recorded as done is asked for again
        assert all(b < start or a >= end for start, end in done)


def test_ranges_resume_over_s3_and_verify_the_whole_file(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 3)
    name = product["productFilename"]
    emu.faults.add("drop", match=name, after_bytes=100_000, times=-1)
    download_files([file_request(emu, product, tmp_path)],
                   download_config(emu, connections=2, segment_size=SEGMENT, fast_stream=0, retries=0))
    kept = sum(b - a for a, b in json.loads((tmp_path / f"{name}.part.json").read_text())["done"])
    assert kept > 0
    emu.faults.clear()
    (result,) = download_files([file_request(emu, product, tmp_path, s3=True, http=False)],
                               download_config(emu, connections=4, segment_size=SEGMENT, fast_stream=0))
    assert_in_place(result, content)
    assert result.source == "s3"
    assert result.bytes_fetched == len(content) - kept


def test_a_damaged_range_on_disk_fails_the_one_verification(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 3)
    name = product["productFilename"]
    cfg = download_config(emu, connections=2, segment_size=SEGMENT, fast_stream=0, retries=0)
    emu.faults.add("drop", match=name, after_bytes=100_000, times=-1)
    download_files([file_request(emu, product, tmp_path)], cfg)
    part = tmp_path / f"{name}.part"
    done = json.loads((tmp_path / f"{name}.part.json").read_text())["done"]
    start, end = done[-1]
    with part.open("r+b") as f:  # a byte of a range recorded as done goes bad on disk
        f.seek(end - 1)
        byte = f.read(1)
        f.seek(end - 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    emu.faults.clear()
    said: list[str] = []
    (result,) = download_files([file_request(emu, product, tmp_path)],
                               download_config(emu, connections=2, segment_size=SEGMENT, fast_stream=0),
                               on_progress=lambda p: said.append(p.message))
    assert_in_place(result, content)
    assert result.attempts == 2  # the first assembly failed its FITS check and was fetched again
    assert any(f"bytes moved to {name}.corrupt" in m for m in said), said
    assert not (tmp_path / f"{name}.corrupt").exists()  # of no use once the file is verified


def test_other_connections_wait_until_the_first_is_seen_capped(emu, tmp_path: Path) -> None:
    product, _ = publish_file(emu, tmp_path, 3)
    name = product["productFilename"]
    emu.faults.add("drop", match=name, after_bytes=100_000, times=-1)
    since = len(emu.requests)
    # Any speed beats 1 B/s, and the first range fails before it is timed: the others never open.
    (failed,) = download_files([file_request(emu, product, tmp_path)],
                               download_config(emu, connections=4, segment_size=SEGMENT, fast_stream=1, retries=0))
    assert failed.status == "failed"
    ranges = _ranges(emu, since, name)
    assert len(ranges) == 1 and ranges[0][0] == 0  # one connection, one request


def test_an_uncapped_link_takes_a_file_of_many_segments_in_one_request(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 3)
    name = product["productFilename"]
    since = len(emu.requests)
    # Any speed beats 1 B/s: the first connection is never seen capped, and asks for the rest of
    # the file at once rather than one request per segment.
    (result,) = download_files([file_request(emu, product, tmp_path)],
                               download_config(emu, connections=4, segment_size=SEGMENT, fast_stream=1))
    assert_in_place(result, content)
    assert len(content) > 4 * SEGMENT
    assert _ranges(emu, since, name) == [(0, len(content) - 1)]


def test_the_first_request_gives_up_the_pieces_the_others_take_once_the_link_is_seen_capped(
        emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 3)
    name = product["productFilename"]
    since = len(emu.requests)
    emu.throttle = 2_000_000  # bytes/s per connection, as on a WAN
    try:
        (result,) = download_files([file_request(emu, product, tmp_path)],
                                   download_config(emu, connections=4, segment_size=SEGMENT, fast_stream=20_000_000))
    finally:
        emu.throttle = 0
    assert_in_place(result, content)  # every byte once, from whichever connection held its piece
    ranges = _ranges(emu, since, name)
    assert ranges[0] == (0, len(content) - 1)  # asked for the rest of the file while it looked uncapped
    assert len(ranges) >= 4 and all(b - a + 1 <= SEGMENT for a, b in ranges[1:])  # then piece by piece
    assert result.bytes_fetched == len(content)


def test_the_last_segments_come_in_smaller_ranges_so_connections_finish_together(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 3)
    name = product["productFilename"]
    since = len(emu.requests)
    segment = 1 << 20
    (result,) = download_files([file_request(emu, product, tmp_path)],
                               download_config(emu, connections=2, segment_size=segment, fast_stream=0))
    assert_in_place(result, content)
    ranges = sorted(_ranges(emu, since, name))
    assert sum(b - a + 1 for a, b in ranges) == len(content) and ranges[0][0] == 0
    assert all(b + 1 == a for (_, b), (a, _) in zip(ranges, ranges[1:], strict=False))  # no gap, no overlap
    whole, cut = [r for r in ranges if r[1] - r[0] + 1 == segment], [r for r in ranges if r[1] - r[0] + 1 < segment]
    # every segment comes whole but the last two (one per connection), which come in quarters
    segments = -(-len(content) // segment)
    assert segments >= 3 and len(whole) == segments - 2
    assert len(cut) >= 5 and max(b - a + 1 for a, b in cut) == segment // 4
    assert min(a for a, _ in cut) == (segments - 2) * segment


def test_a_connection_with_nothing_left_splits_the_range_a_stalled_one_holds(emu, tmp_path: Path) -> None:
    product, content = publish_file(emu, tmp_path, 6)
    name = product["productFilename"]
    segment = 3 << 20
    # One request sends 64 kB and stalls until it is dropped; the other connection takes every
    # other range, then the stalled range's second half instead of idling until the drop.
    emu.faults.add("stall", match=name, after_bytes=64 << 10, seconds=1.5, times=1)
    since = len(emu.requests)
    (result,) = download_files([file_request(emu, product, tmp_path)],
                               download_config(emu, connections=2, segment_size=segment, fast_stream=0))
    assert_in_place(result, content)
    ranges = _ranges(emu, since, name)
    stalled = next(i for i, get in enumerate(gets_of(emu, since, name)) if get["bytes_sent"] == 64 << 10)
    (first, last), later = ranges[stalled], ranges[stalled + 1:]
    sent = first + (64 << 10)
    # While it stalled, its second half came over the other connection (a request from inside it
    # to its end); only then was it dropped, and the retry fetched what was left from where it stopped.
    split = next(i for i, (a, b) in enumerate(later) if sent < a and b == last)
    retry = next(i for i, (a, _) in enumerate(later) if a == sent)
    assert split < retry and all(b < last for a, b in later[retry:])
    assert result.attempts == 2 and result.bytes_fetched == len(content)  # nothing split off came twice


def test_bytes_read_back_for_the_checks_are_not_overwritten_before_the_checks_take_them(
        emu, tmp_path: Path, monkeypatch) -> None:
    import os
    import time

    import skyassets.archive.download as download
    from skyassets.fits.verify import StreamingFitsVerifier

    product, content = publish_file(emu, tmp_path, 3)
    # Small read-back chunks, so that the few buffers are filled again many times over, and a FITS
    # check that lags behind the reads: a buffer refilled too early fails the checksums.
    monkeypatch.setattr(download, "_HASH_CHUNK", 16 << 10)
    monkeypatch.setattr(download._Digests, "_INLINE_BYTES", 0)  # the checks on their threads from the start
    update = StreamingFitsVerifier.update

    def slow(self, data) -> None:
        time.sleep(0.002)
        update(self, data)

    monkeypatch.setattr(StreamingFitsVerifier, "update", slow)
    reads: list[int] = []
    preadv = os.preadv

    def counted(fd, buffers, offset):
        reads.append(offset)
        return preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counted)
    # Paced, so that each range comes in several steps while the others' come too: the other
    # connections' bytes land ahead of the first one's, to be read back.
    emu.throttle = 4_000_000
    try:
        (result,) = download_files([file_request(emu, product, tmp_path)],
                                   download_config(emu, connections=4, segment_size=SEGMENT, fast_stream=0))
    finally:
        emu.throttle = 0
    assert_in_place(result, content)
    assert result.attempts == 1  # no check failed on the way
    assert len(reads) > 4 * download._READ_BACK_BUFFERS  # each buffer filled again several times


def test_pieces_past_the_write_limit_are_joined_into_one_write(emu, tmp_path: Path, monkeypatch) -> None:
    import os

    import skyassets.archive.download as download

    product, content = publish_file(emu, tmp_path, 3)
    monkeypatch.setattr(download, "_MAX_WRITE_PIECES", 1)
    joined: list[int] = []
    gathered: list[int] = []
    pwrite, pwritev = os.pwrite, os.pwritev

    def one(fd, data, offset):
        joined.append(len(data))
        return pwrite(fd, data, offset)

    def several(fd, buffers, offset):
        gathered.append(len(buffers))
        return pwritev(fd, buffers, offset)

    monkeypatch.setattr(os, "pwrite", one)
    monkeypatch.setattr(os, "pwritev", several)
    emu.throttle = 4_000_000  # paced: each write gathers many small pieces
    try:
        (result,) = download_files([file_request(emu, product, tmp_path)],
                                   download_config(emu, connections=4, segment_size=SEGMENT, fast_stream=0))
    finally:
        emu.throttle = 0
    assert_in_place(result, content)
    assert joined and max(joined) > SEGMENT // 4  # pieces gathered past the limit, written joined
    assert max(gathered, default=1) == 1  # no positioned write of more buffers than the limit
