"""Download/file: ranges, ETag/If-Range, and every injected fault kind, with plain requests."""

from __future__ import annotations

import hashlib
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

from skyassets.emulator import Emulator

URI = "mast:JWST/product/jw02736-o001_t003_nircam_clear-f444w_i2d.fits"


@pytest.fixture()
def url(emu: Emulator) -> str:
    return f"{emu.url}/api/v0.1/Download/file?uri={URI}"


@pytest.fixture()
def whole(emu: Emulator) -> bytes:
    return emu.sky.files[URI][0].read_bytes()


def _get(url: str, **headers: str) -> requests.Response:
    return requests.get(url, headers=headers, timeout=10)


def test_head_and_full_get(emu: Emulator, url: str, whole: bytes) -> None:
    head = requests.head(url, timeout=10)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == len(whole)
    assert head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["ETag"] == f'"{hashlib.md5(whole).hexdigest()}"'
    reply = _get(url)
    assert reply.status_code == 200 and reply.content == whole
    entry = emu.requests.snapshot()[-1]
    assert entry == {"method": "GET", "path": "/api/v0.1/Download/file", "uri": URI, "range": None,
                     "status": 200, "bytes_sent": len(whole), "with_token": False}
    assert _get(url, Authorization="token t").status_code == 200  # a public file, whatever the token
    assert emu.requests.snapshot()[-1]["with_token"] is True  # that one came, never what it was


def test_ranges(url: str, whole: bytes) -> None:
    n = len(whole)
    open_ended = _get(url, Range="bytes=1000-")
    assert open_ended.status_code == 206
    assert open_ended.headers["Content-Range"] == f"bytes 1000-{n - 1}/{n}"
    assert open_ended.content == whole[1000:]
    closed = _get(url, Range="bytes=10-19")
    assert (closed.status_code, closed.content) == (206, whole[10:20])
    assert closed.headers["Content-Range"] == f"bytes 10-19/{n}"
    assert _get(url, Range="bytes=-5").content == whole[-5:]
    unsatisfiable = _get(url, Range=f"bytes={n}-")
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["Content-Range"] == f"bytes */{n}"


def test_if_range(url: str, whole: bytes) -> None:
    etag = requests.head(url, timeout=10).headers["ETag"]
    same = _get(url, Range="bytes=100-", **{"If-Range": etag})
    assert (same.status_code, same.content) == (206, whole[100:])
    changed = _get(url, Range="bytes=100-", **{"If-Range": '"0123456789abcdef"'})
    assert (changed.status_code, changed.content) == (200, whole)


def test_unknown_and_proprietary(emu: Emulator) -> None:
    assert _get(f"{emu.url}/api/v0.1/Download/file?uri=mast:JWST/product/nope.fits").status_code == 404
    proprietary = next(o for o in emu.sky.observations if o["dataRights"] != "PUBLIC")
    row = emu.sky.products[proprietary["obsid"]][0]
    assert _get(f"{emu.url}/api/v0.1/Download/file?uri={row['dataURI']}").status_code == 401


def _raw_get(url: str) -> tuple[str, dict[str, str], bytes]:
    """A GET over a bare socket, reading until the server closes: sees exactly the bytes sent."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], headers, body


def test_drop_then_resume(emu: Emulator, url: str, whole: bytes) -> None:
    emu.faults.add("drop", match="f444w_i2d", after_bytes=5000)
    status, headers, got = _raw_get(url)
    assert status.endswith("200 OK") and int(headers["Content-Length"]) == len(whole)
    assert got == whole[:5000]
    resumed = _get(url, Range=f"bytes={len(got)}-")
    assert resumed.status_code == 206
    assert got + resumed.content == whole
    gets = [r for r in emu.requests.snapshot() if r["uri"] == URI][-2:]
    assert gets[0]["range"] is None and gets[0]["bytes_sent"] == 5000
    assert gets[1]["range"] == "bytes=5000-" and gets[1]["status"] == 206


def test_drop_breaks_a_requests_download(emu: Emulator, url: str) -> None:
    emu.faults.add("drop", after_bytes=5000)
    with pytest.raises(requests.exceptions.RequestException):
        _ = requests.get(url, timeout=10).content


def test_ignore_range(emu: Emulator, url: str, whole: bytes) -> None:
    emu.faults.add("ignore_range")
    reply = _get(url, Range="bytes=100-")
    assert reply.status_code == 200 and reply.content == whole
    assert _get(url, Range="bytes=100-").status_code == 206  # times=1: only the first one


def test_stall(emu: Emulator, url: str) -> None:
    emu.faults.add("stall", after_bytes=100, seconds=1.0)
    start = time.monotonic()
    with pytest.raises(requests.exceptions.RequestException):
        _ = requests.get(url, timeout=(5, 0.3)).content
    assert time.monotonic() - start < 0.9


def test_status(emu: Emulator, url: str, whole: bytes) -> None:
    emu.faults.add("status", status=503, times=2)
    assert requests.head(url, timeout=10).status_code == 503
    failed = _get(url)
    assert failed.status_code == 503 and failed.headers["Retry-After"] == "1"
    assert _get(url).content == whole


def test_corrupt(emu: Emulator, url: str, whole: bytes) -> None:
    emu.faults.add("corrupt", offset=12345, times=-1)
    full = _get(url).content
    part = _get(url, Range="bytes=12000-12999").content
    diff = [i for i in range(len(whole)) if full[i] != whole[i]]
    assert diff == [12345]
    assert part[345] == whole[12345] ^ 0xFF and part[:345] == whole[12000:12345]


def test_match_limits_faults_to_their_uri(emu: Emulator, url: str, whole: bytes) -> None:
    emu.faults.add("status", match="some_other_file", status=500, times=-1)
    assert _get(url).content == whole


def test_control_endpoints(emu: Emulator, url: str) -> None:
    made = requests.post(emu.url + "/_emulator/faults", json={"kind": "status", "status": 429}, timeout=10)
    assert made.json()["status"] == 429
    assert _get(url).status_code == 429
    requests.post(emu.url + "/_emulator/faults", json={"kind": "status", "status": 500}, timeout=10)
    requests.delete(emu.url + "/_emulator/faults", timeout=10)
    assert _get(url).status_code == 200
    log = requests.get(emu.url + "/_emulator/requests", timeout=10).json()
    assert [e["status"] for e in log if e["uri"] == URI][-2:] == [429, 200]
    bad = requests.post(emu.url + "/_emulator/faults", json={"kind": "explode"}, timeout=10)
    assert bad.status_code == 400


def test_the_faults_listed_show_a_status_only_where_one_is_sent(emu: Emulator) -> None:
    dropped = requests.post(emu.url + "/_emulator/faults", json={"kind": "drop", "after_bytes": 10}, timeout=10)
    assert "status" not in dropped.json() and dropped.json()["after_bytes"] == 10
    emu.faults.add("status", status=429, retry_after=3)
    listed = requests.get(emu.url + "/_emulator/faults", timeout=10).json()
    assert [(f["kind"], f.get("status"), f.get("retry_after")) for f in listed] == [("drop", None, None),
                                                                                 ("status", 429, 3)]


def test_a_client_that_hangs_up_is_not_a_server_error(emu: Emulator, url: str, capfd) -> None:
    """A download reset mid-answer (a range closed early, as ranged downloads do) prints nothing."""
    parts = urlsplit(url)
    for _ in range(3):
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
            assert sock.recv(1024).startswith(b"HTTP/1.")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
    time.sleep(0.5)  # the server's threads meet the reset
    assert "Traceback" not in capfd.readouterr().err


def test_a_paced_answer_takes_its_bytes_at_the_rate_from_its_first_byte(emu: Emulator, url: str,
                                                                         whole: bytes) -> None:
    """No step of the body leaves before the link would have carried it: a new request wins no burst
    over a connection that keeps going."""
    rate, size = 2_000_000, 256 << 10
    assert len(whole) >= size
    emu.throttle = rate
    try:
        start = time.monotonic()
        reply = _get(url, Range=f"bytes=0-{size - 1}")
        took = time.monotonic() - start
    finally:
        emu.throttle = 0
    assert reply.status_code == 206 and reply.content == whole[:size]
    assert took >= 0.95 * size / rate


def test_latency_delays_every_answer(emu: Emulator, url: str, whole: bytes) -> None:
    emu.latency = 0.2
    try:
        start = time.monotonic()
        reply = _get(url, Range="bytes=0-99")
        took = time.monotonic() - start
    finally:
        emu.latency = 0
    assert reply.status_code == 206 and reply.content == whole[:100]
    assert took >= 0.2
    start = time.monotonic()
    _get(url, Range="bytes=0-99")
    assert time.monotonic() - start < 0.2  # off again
