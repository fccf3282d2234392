"""The loopback HTTP server speaking the part of the MAST API that astroquery uses.

Portal queries (``/api/v0/invoke``), column configs, the SANTA name resolver, the cloud path
lookup, ``whoami`` and ``Download/file`` with byte ranges, plus fault injection and a request log,
so that archive code can be tested against the failures real networks and the real archive produce.

Every fault is off until armed (:class:`Faults`): transient statuses (429/503 with Retry-After) and
dropped connections on any endpoint, ``EXECUTING`` portal answers, cloud path lookups that fail or
leave files out, broken downloads, and the shapes of real MAST answers (``ANSWER_KINDS``: columns
null in every row, one row per observation and filter from position searches, upper-case HST ids,
HLA and GALEX observations with ``.fits.gz`` products, products listed twice).

Exclusive-access files are served only to a token granted their proposal, presented as MAST takes
it: ``Authorization: token ...`` (downloads) or astroquery's ``mast_token`` session cookie.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from email.utils import formatdate
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from skyassets.emulator.sky import Sky

CHUNK = 1 << 20
# Switches that make answers look like the real archive's; on while armed, whatever ``times`` says.
ANSWER_KINDS = ("nulls", "per_filter_rows", "mixed_ids", "more_collections", "duplicate_uris")
# Download answers a misbehaving server gives: a 206 whose Content-Range total is not the file's
# size, no ETag and no Last-Modified (or no ETag only), a gzip body despite ``Accept-Encoding:
# identity``, right Content-MD5 and x-amz-checksum-sha256 headers (or one of them wrong), one byte
# every ``seconds``.
DOWNLOAD_KINDS = ("wrong_total", "no_validators", "no_etag", "gzip", "digests", "bad_md5", "bad_sha256", "trickle")
# Of those, the ones that shape every download answer while armed (so another fault can strike too).
DOWNLOAD_SWITCHES = ("no_validators", "no_etag")
FAULT_KINDS = ("drop", "ignore_range", "stall", "status", "corrupt", "executing", "omit", *DOWNLOAD_KINDS,
               *ANSWER_KINDS)
ENDPOINTS = ("download", "invoke", "columnsconfig", "resolver", "path_lookup", "whoami", "any", "s3")
# The kinds each endpoint can suffer (answer kinds apply to whole answers, not to one endpoint).
ENDPOINT_KINDS = {
    "download": ("drop", "ignore_range", "stall", "status", "corrupt", *DOWNLOAD_KINDS),
    "invoke": ("drop", "status", "executing"),
    "path_lookup": ("drop", "status", "omit"),
    "columnsconfig": ("drop", "status"),
    "resolver": ("drop", "status"),
    "whoami": ("drop", "status"),
    "any": ("drop", "status"),
    # the S3 server (another process): its ``any`` is not this server's
    "s3": ("drop", "status"),
}

# CAOM observation columns: name -> (portal type, columnsconfig vot.datatype).
OBS_COLUMNS: dict[str, tuple[str, str]] = {
    "intentType": ("string", "char"),
    "obs_collection": ("string", "char"),
    "instrument_name": ("string", "char"),
    "project": ("string", "char"),
    "filters": ("string", "char"),
    "wavelength_region": ("string", "char"),
    "target_name": ("string", "char"),
    "target_classification": ("string", "char"),
    "obs_id": ("string", "char"),
    "s_ra": ("float", "double"),
    "s_dec": ("float", "double"),
    "dataproduct_type": ("string", "char"),
    "proposal_pi": ("string", "char"),
    "calib_level": ("int", "int"),
    "t_min": ("float", "double"),
    "t_max": ("float", "double"),
    "t_exptime": ("float", "double"),
    "em_min": ("float", "double"),
    "em_max": ("float", "double"),
    "obs_title": ("string", "char"),
    "t_obs_release": ("float", "double"),
    "proposal_id": ("string", "char"),
    "s_region": ("string", "char"),
    "jpegURL": ("string", "char"),
    "dataURL": ("string", "char"),
    "dataRights": ("string", "char"),
    "mtFlag": ("boolean", "boolean"),
    "srcDen": ("float", "float"),
    "obsid": ("string", "long"),
    "objID": ("string", "long"),
}
SEPARATED = {"obs_collection", "project", "filters", "wavelength_region", "target_classification"}

PRODUCT_COLUMNS: dict[str, str] = {
    "obsID": "string", "obs_collection": "string", "dataproduct_type": "string",
    "obs_id": "string", "description": "string", "type": "string", "dataURI": "string",
    "productType": "string", "productGroupDescription": "string",
    "productSubGroupDescription": "string", "productDocumentationURL": "string",
    "project": "string", "prvversion": "string", "proposal_id": "string",
    "productFilename": "string", "size": "int", "parent_obsid": "string",
    "dataRights": "string", "calib_level": "int", "filters": "string",
}


@dataclass
class Fault:
    """One injected failure; ``times`` counts down (-1 = forever).

    ``endpoint`` is where it strikes (``download`` by default, ``any`` for every endpoint) and
    ``match`` a substring of what the request is about: the uri of a download, the JSON request of
    a portal query, the name sent to the resolver, the uris of a path lookup, the path
    (``/bucket/key``) of an S3 request. A ``status`` fault of 429 or 503 carries
    ``Retry-After: retry_after``; on S3 a ``drop`` cuts an object's body after ``after_bytes``.
    """

    kind: str
    match: str = ""
    after_bytes: int = 0
    times: int = 1
    seconds: float = 0.0
    offset: int = 0
    status: int = 503
    endpoint: str = "download"
    retry_after: int = 1


def fault_fields(fields: Any) -> dict[str, Any]:
    """``fields`` (a fault as JSON gives it) checked to be a fault's: an object with a ``kind`` and
    no field a fault does not have."""
    if not isinstance(fields, dict):
        raise ValueError('a fault is a JSON object of its fields, e.g. {"kind": "status", "endpoint": "any"}')
    known = [f.name for f in dataclass_fields(Fault)]
    if unknown := sorted(set(fields) - set(known)):
        raise ValueError(f"unknown fault field {', '.join(map(repr, unknown))}; the fields: {', '.join(known)}")
    if "kind" not in fields:
        raise ValueError(f"a fault needs a kind: one of {', '.join(FAULT_KINDS)}")
    return fields


def shown(fault: dict[str, Any]) -> dict[str, Any]:
    """A fault's fields as the control endpoint shows them: a status and Retry-After only on a fault
    that sends them, so that a ``drop`` does not read as a 503."""
    if fault["kind"] == "status":
        return fault
    return {name: value for name, value in fault.items() if name not in ("status", "retry_after")}


class Faults:
    """The armed faults; each request takes the first one matching its endpoint and subject.

    Faults of the ``s3`` endpoint are handed to ``s3`` (the S3 server's ``command``), which keeps
    and plays them in its own process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.s3: Callable[[str, dict[str, Any] | None], Any] | None = None

    def add(self, kind: str, *, match: str = "", after_bytes: int = 0, times: int = 1,
            seconds: float = 0.0, offset: int = 0, status: int = 503, endpoint: str = "download",
            retry_after: int = 1) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        try:
            after_bytes, times, seconds = int(after_bytes), int(times), float(seconds)
            offset, status, retry_after = int(offset), int(status), int(retry_after)
        except (TypeError, ValueError):
            raise ValueError("after_bytes, times, offset, status and retry_after are whole numbers, "
                             "seconds a number") from None
        if after_bytes < 0 or offset < 0 or seconds < 0 or retry_after < 0:
            raise ValueError("after_bytes, offset, seconds and retry_after cannot be negative")
        if times == 0 or times < -1:
            raise ValueError(f"times is how many requests it strikes (-1: every one), not {times}")
        if kind == "status" and not 400 <= status <= 599:
            raise ValueError(f"a status fault answers an error status (400 to 599), not {status}")
        if kind in ANSWER_KINDS:
            endpoint, times = "any", -1
        elif kind not in ENDPOINT_KINDS.get(endpoint, ()):
            where = ", ".join(e for e, kinds in ENDPOINT_KINDS.items() if kind in kinds)
            raise ValueError(f"a {kind!r} fault cannot strike endpoint {endpoint!r}; it can strike: {where}")
        fault = Fault(kind, str(match), after_bytes, times, seconds, offset, status, endpoint, retry_after)
        if endpoint == "s3":
            if self.s3 is None:
                raise ValueError("this emulator runs no S3 server, so it has no s3 endpoint to fault")
            self.s3("add", asdict(fault))
            return fault
        with self._lock:
            self._faults.append(fault)
        return fault

    def on(self, kind: str) -> bool:
        """Whether an answer switch (one of ``ANSWER_KINDS``) is armed."""
        with self._lock:
            return any(f.kind == kind and f.times != 0 for f in self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
        if self.s3 is not None:
            self.s3("clear", None)

    def take(self, method: str, uri: str, endpoint: str = "download") -> Fault | None:
        """The fault this request suffers (counting it down), or None."""
        with self._lock:
            for fault in self._faults:
                if fault.times == 0 or fault.match not in uri or fault.kind in (*ANSWER_KINDS, *DOWNLOAD_SWITCHES):
                    continue
                if fault.endpoint not in (endpoint, "any"):
                    continue
                if method == "HEAD" and fault.kind != "status":
                    continue
                if fault.times > 0:
                    fault.times -= 1
                return Fault(**asdict(fault))
        return None

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            here = [asdict(f) for f in self._faults]
        return [shown(f) for f in here + (self.s3("list", None) if self.s3 is not None else [])]


class RequestLog(list):
    """A list of request records that many server threads append to."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def append(self, item: dict[str, Any]) -> None:
        with self._lock:
            super().append(item)

    def clear(self) -> None:
        with self._lock:
            super().clear()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(x) for x in self]


def _column_config(colconf: str) -> dict[str, Any]:
    if colconf == "Mast.Caom.Products":
        return {name: {"text": name, "vot.datatype": "int" if t == "int" else "char", "type": t}
                for name, t in PRODUCT_COLUMNS.items()}
    if not colconf.startswith("Mast.Caom."):
        return {}
    config: dict[str, Any] = {"_selected_": {"text": "selected", "type": "boolean", "hidden": True}}
    for name, (_, vot) in OBS_COLUMNS.items():
        entry: dict[str, Any] = {"text": name, "vot.datatype": vot, "vot.ID": name, "vot.name": name}
        if name in SEPARATED:
            entry["separator"] = ";"
        config[name] = entry
    config["distance"] = {"text": 'Distance (")', "vot.datatype": "float", "vot.unit": "arcsec"}
    return config


def angular_distance_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Great-circle distance (haversine, stable at small angles)."""
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    h = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h))))


def _like(pattern: str) -> re.Pattern[str]:
    parts = [re.escape(p) for p in pattern.split("%")]
    return re.compile("^" + ".*".join(parts) + "$", re.IGNORECASE | re.DOTALL)


def _matches(row: dict[str, Any], flt: dict[str, Any]) -> bool:
    """One portal filter entry: discrete values (OR), a wildcard, or continuous ranges."""
    name = next((c for c in OBS_COLUMNS if c.lower() == str(flt.get("paramName", "")).lower()), None)
    if name is None:
        raise KeyError(flt.get("paramName"))
    value = row.get(name)
    values = flt.get("values") or []
    free = flt.get("freeText")
    if values and isinstance(values[0], dict):
        if value is None:
            return False
        return any(float(v["min"]) <= float(value) <= float(v["max"]) for v in values)
    if value is None:
        return False
    text = str(value).lower()
    items = [text] + ([p.strip() for p in text.split(flt["separator"])] if flt.get("separator") else [])
    if any(str(v).lower() in items for v in values):
        return True
    if free and any(_like(free).match(i) for i in items):
        return True
    return not values and not free


class MastHandler(BaseHTTPRequestHandler):
    """Routes one request; the emulator state hangs off ``self.server``."""

    protocol_version = "HTTP/1.1"
    server: MastServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by design
        pass

    # -------------------------------------------------------------- helpers
    def _send_json(self, obj: Any, status: int = 200, method: str = "GET") -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        # Logged before the answer goes out: a client that has its answer finds its request in the log.
        self._log(status, len(body) if method != "HEAD" else 0)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _log(self, status: int, sent: int, uri: str | None = None) -> dict[str, Any]:
        entry = {"method": self.command, "path": urlsplit(self.path).path, "uri": uri,
                 "range": self.headers.get("Range"), "status": status, "bytes_sent": sent,
                 "with_token": self._token() is not None}  # whether one was presented, never the token
        if if_range := self.headers.get("If-Range"):
            entry["if_range"] = if_range
        self.server.requests.append(entry)
        return entry

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # --------------------------------------------------------------- routing
    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/")
        query = parse_qs(parts.query, keep_blank_values=True)
        try:
            if path == "/api/v0.1/Download/file" and method in ("GET", "HEAD"):
                self._download(method, (query.get("uri") or [""])[0])
            elif path == "/api/v0/invoke" and method == "POST":
                form = parse_qs(self._body().decode())
                request = json.loads(form["request"][0])
                fault = self._fault("invoke", method, json.dumps(request))
                if fault is None:
                    self._send_json(self.server.invoke(request))
                elif fault.kind == "executing":
                    self._send_json({"status": "EXECUTING", "msg": "", "data": [], "fields": []})
            elif path == "/portal/Mashup/Mashup.asmx/columnsconfig" and method == "POST":
                form = parse_qs(self._body().decode())
                colconf = (form.get("colConfigId") or [""])[0]
                if not self._fault("columnsconfig", method, colconf):
                    self._send_json(_column_config(colconf))
            elif path == "/Santa-war/query" and method in ("GET", "POST"):
                names = query.get("name", [])
                if not self._fault("resolver", method, ";".join(names)):
                    self._send_json(self.server.resolve(names, query.get("resolver", [None])[0],
                                                        (query.get("resolveAll") or ["false"])[0]))
            elif path == "/api/v0.1/path_lookup" and method == "GET":
                uris = query.get("uri", [])
                fault = self._fault("path_lookup", method, " ".join(uris))
                if fault is None or fault.kind == "omit":
                    omit = fault.match if fault else None
                    self._send_json(self.server.path_lookup(uris, omit))
            elif path == "/whoami" and method == "GET":
                if not self._fault("whoami", method, ""):
                    self._send_json(self.server.whoami(self._token()))
            elif path == "/_emulator/faults" and method == "POST":
                try:
                    fault = self.server.faults.add(**fault_fields(json.loads(self._body() or b"{}")))
                except ValueError as exc:  # said as it is, for a person at curl
                    self._send_json({"status": "ERROR", "msg": str(exc)}, 400, method)
                    return
                self._send_json(shown(asdict(fault)))
            elif path == "/_emulator/faults" and method == "DELETE":
                self.server.faults.clear()
                self._send_json({"cleared": True})
            elif path == "/_emulator/faults" and method == "GET":
                self._send_json(self.server.faults.list())
            elif path == "/_emulator/requests" and method == "GET":
                self._send_json(self.server.requests.snapshot())
            else:
                self._send_json({"status": "ERROR", "msg": f"no route for {method} {path}"}, 404, method)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            self._send_json({"status": "ERROR", "msg": f"bad request: {exc!r}"}, 400, method)
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    def _fault(self, endpoint: str, method: str, subject: str) -> Fault | None:
        """The fault this API request suffers. A ``status`` or ``drop`` is answered here (and the
        fault returned, so the caller answers nothing more); other kinds are the caller's to play."""
        fault = self.server.faults.take(method, subject, endpoint)
        if fault is None:
            return None
        if fault.kind == "status":
            self._send_status(fault, "")
        elif fault.kind == "drop":
            self._log(0, 0)
            self._abort()
        return fault

    def _send_status(self, fault: Fault, uri: str | None) -> None:
        """An error status as a busy archive sends it: a short body, ``Retry-After`` on 429 and 503."""
        body = json.dumps({"status": "ERROR", "msg": f"HTTP {fault.status} (injected)"}).encode()
        self.send_response(fault.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if fault.status in (429, 503):
            self.send_header("Retry-After", str(fault.retry_after))
        self._log(fault.status, 0, uri)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _token(self) -> str | None:
        """The MAST token of the request: ``Authorization: token ...`` or the ``mast_token`` cookie."""
        auth = self.headers.get("Authorization", "")
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() in ("token", "bearer") and value.strip():
            return value.strip()
        try:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return None
        morsel = cookie.get("mast_token")
        return morsel.value if morsel and morsel.value else None

    # ------------------------------------------------------------- download
    def _download(self, method: str, uri: str) -> None:
        if self.server.latency:
            time.sleep(self.server.latency)  # a WAN round trip and the server's time to its first byte
        entry = self.server.sky_file(uri)
        if entry is None:
            body = f"File {uri} not found".encode()
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self._log(404, 0, uri)
            self.end_headers()
            if method == "GET":
                self.wfile.write(body)
            return
        path, size, md5, rights = entry
        if rights != "PUBLIC" and not self.server.grants(self._token(), uri):
            denied = 401 if self._token() is None else 403
            self.send_response(denied)
            self.send_header("Content-Length", "0")
            self._log(denied, 0, uri)
            self.end_headers()
            return
        fault = self.server.faults.take(method, uri)
        if fault and fault.kind == "status":
            self._send_status(fault, uri)
            return
        kind = fault.kind if fault else None
        if kind == "gzip":
            self._send_gzip(path, uri)
            return
        no_validators = self.server.faults.on("no_validators")
        etag = None if no_validators or self.server.faults.on("no_etag") else f'"{md5}"'
        modified = None if no_validators else formatdate(path.stat().st_mtime, usegmt=True)
        start, end = 0, size - 1
        status = 200
        range_header = self.headers.get("Range")
        if_range = (self.headers.get("If-Range") or "").strip() or None
        use_range = range_header and (if_range is None or if_range in (etag, modified))
        if use_range and not (fault and fault.kind == "ignore_range"):
            parsed = _parse_range(range_header, size)
            if parsed is None:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self._log(416, 0, uri)
                self.end_headers()
                return
            start, end = parsed
            status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if etag:
            self.send_header("ETag", etag)
        if modified:
            self.send_header("Last-Modified", modified)
        if kind in ("digests", "bad_md5", "bad_sha256"):
            self._send_digests(path, start, length, kind)
        self.send_header("Content-Disposition", f"attachment; filename={Path(uri).name}")
        if status == 206:
            total = size + 1000 if kind == "wrong_total" else size
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        log = self._log(status, 0, uri)
        self.end_headers()
        if method == "HEAD":
            return
        if kind == "trickle":
            self._trickle(path, start, length, fault.seconds if fault else 0.1, log)
            return
        limit = length
        if fault and fault.kind in ("drop", "stall"):
            limit = min(length, max(fault.after_bytes, 0))
        corrupt_at = fault.offset if fault and fault.kind == "corrupt" else None
        try:
            log["bytes_sent"] = self._stream(path, start, limit, corrupt_at, log)
        finally:
            if fault and fault.kind in ("drop", "stall") and limit < length:
                if fault.kind == "stall":
                    time.sleep(fault.seconds)
                self._abort()

    def _send_gzip(self, path: Path, uri: str) -> None:
        """The whole file gzip-compressed with ``Content-Encoding: gzip``, whatever was asked."""
        body = gzip.compress(path.read_bytes(), compresslevel=1)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self._log(200, len(body), uri)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_digests(self, path: Path, start: int, length: int, kind: str) -> None:
        """``Content-MD5`` of the body sent and ``x-amz-checksum-sha256`` of the whole object, both
        base64 as servers send them; ``bad_md5`` / ``bad_sha256`` send that one for other bytes."""
        with open(path, "rb") as f:
            whole = f.read()
        body = whole[start:start + length]
        if kind == "bad_md5":
            body += b"x"
        if kind == "bad_sha256":
            whole += b"x"
        self.send_header("Content-MD5", base64.b64encode(hashlib.md5(body).digest()).decode())
        self.send_header("x-amz-checksum-sha256", base64.b64encode(hashlib.sha256(whole).digest()).decode())

    def _trickle(self, path: Path, start: int, count: int, seconds: float, log: dict[str, Any]) -> None:
        """One byte every ``seconds``: never idle long enough for a read timeout."""
        with open(path, "rb") as f:
            f.seek(start)
            for sent in range(1, count + 1):
                self.wfile.write(f.read(1))
                self.wfile.flush()
                log["bytes_sent"] = sent
                time.sleep(seconds)

    def _stream(self, path: Path, start: int, count: int, corrupt_at: int | None,
                log: dict[str, Any]) -> int:
        sent = 0
        rate = self.server.throttle
        with open(path, "rb") as f:
            if corrupt_at is None or not (start <= corrupt_at < start + count):
                # Fast path: the kernel copies file to socket.
                f.seek(start)
                began = time.monotonic()
                step = max(int(rate / 50), 64 << 10) if rate else 64 * CHUNK
                while sent < count:
                    size = min(count - sent, step)
                    # Each step leaves once the link would have carried it: every answer at most
                    # ``throttle`` bytes/s from its first byte, with no burst a new request could win.
                    if rate and (ahead := (sent + size) / rate - (time.monotonic() - began)) > 0:
                        time.sleep(ahead)
                    n = self.connection.sendfile(f, start + sent, size)
                    if not n:
                        break
                    sent += n
                    log["bytes_sent"] = sent
                return sent
            f.seek(start)
            while sent < count:
                chunk = bytearray(f.read(min(CHUNK, count - sent)))
                if not chunk:
                    break
                pos = start + sent
                if pos <= corrupt_at < pos + len(chunk):
                    chunk[corrupt_at - pos] ^= 0xFF
                self.wfile.write(chunk)
                sent += len(chunk)
                log["bytes_sent"] = sent
        return sent

    def _abort(self) -> None:
        """Close the connection mid-body, as a broken network would. A FIN rather than a reset, so
        the client reliably receives the bytes sent before the cut and then sees a short body."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=N-``, ``bytes=N-M`` or ``bytes=-S`` (one range); None when unsatisfiable."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):
        suffix = int(m.group(2))
        if suffix == 0:
            return None
        return max(size - suffix, 0), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class MastServer(ThreadingHTTPServer):
    """The HTTP server holding the sky, the faults and the request log."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, sky: Sky, host: str = "127.0.0.1", port: int = 0):
        super().__init__((host, port), MastHandler)
        self.sky = sky
        self.faults = Faults()
        self.requests = RequestLog()
        # Guards the sky's rows and files, which ``Emulator.publish`` extends while serving.
        self.lock = threading.Lock()
        # MAST API tokens -> the proposal ids whose exclusive-access data they grant ("*": all).
        self.tokens: dict[str, set[str]] = {}
        # Bytes per second each download connection may carry (0: no limit), like a WAN or S3 link.
        self.throttle = 0.0
        # Seconds every download request waits for its answer (0: none), as over a long round trip.
        self.latency = 0.0

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up (a range closed before its end, a pooled connection dropped) is how
        downloads end, not a server error; anything else is printed as usual."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    # ---------------------------------------------------------- lookups
    def sky_file(self, uri: str) -> tuple[Path, int, str, str] | None:
        """(path, size, md5, dataRights) of a product, or None."""
        with self.lock:
            hit = self.sky.files.get(uri)
            if hit is None:
                return None
            rights = next((r["dataRights"] for rows in self.sky.products.values() for r in rows
                           if r["dataURI"] == uri), "PUBLIC")
            return (*hit, rights)

    def path_lookup(self, uris: list[str], omit: str | None = None) -> dict[str, Any]:
        """Each uri's relative path; with ``omit`` (an ``omit`` fault) the uris containing it are
        missing from the answer altogether, as happens with the real lookup."""
        out = {}
        with self.lock:
            for uri in uris:
                if omit is not None and omit in uri:
                    continue
                path = self.sky.path_for(uri)
                out[uri] = {"status_code": 200 if path else 404, "path": path}
        return out

    def grants(self, token: str | None, uri: str) -> bool:
        """Whether ``token`` may have the exclusive-access product ``uri`` (granted its proposal)."""
        if not token or token not in self.tokens:
            return False
        with self.lock:
            proposal = next((str(r["proposal_id"]) for rows in self.sky.products.values() for r in rows
                             if r["dataURI"] == uri), None)
        granted = self.tokens[token]
        return "*" in granted or proposal in granted

    def whoami(self, token: str | None) -> dict[str, Any]:
        """The session of a token, as MAST's ``whoami`` tells astroquery's ``login``."""
        if token and token in self.tokens:
            return {"anon": False, "ezid": "emulated", "scopes": ["mast:exclusive_access"],
                    "attrib": {"display_name": "Emulated Observer", "ezid": "emulated"}}
        return {"anon": True, "scopes": [], "attrib": {}}

    def resolve(self, names: list[str], resolver: str | None, resolve_all: str) -> dict[str, Any]:
        """SANTA: one entry per resolver (SIMBAD, NED) for known names, searchString lower-cased."""
        found = []
        for name in names:
            key = _squashed(name)  # as Sesame reads a name: M 74, M74 and m-74 alike
            for t in self.sky.targets:
                if key in {_squashed(n) for n in (t["name"], *t["aliases"])}:
                    for res in ("SIMBAD", "NED"):
                        if resolver and resolve_all.lower() != "true" and res != resolver.upper():
                            continue
                        found.append({
                            "searchString": name.lower(), "resolver": res, "cached": True,
                            "resolverTime": 1, "searchRadius": -1.0, "canonicalName": t["name"],
                            "ra": t["ra"], "decl": t["dec"], "objectType": "G",
                        })
                        if not resolver and resolve_all.lower() != "true":
                            break
        return {"resolvedCoordinate": found, "status": ""}

    # ------------------------------------------------------------ portal
    def invoke(self, request: dict[str, Any]) -> dict[str, Any]:
        service = request.get("service", "")
        params = request.get("params") or {}
        pagesize = int(request.get("pagesize") or 50000)
        page = int(request.get("page") or 1)
        with self.lock:
            observations = list(self.sky.observations)
            if self.faults.on("more_collections"):
                observations += self.sky.more_observations
            products = {k: list(v) for k, v in self.sky.products.items()}
        observations = [self._shape_observation(o) for o in observations]
        try:
            if service == "Mast.Caom.Cone":
                ra, dec, radius = float(params["ra"]), float(params["dec"]), float(params["radius"])
                rows = _cone(observations, ra, dec, radius)
                fields = {**{c: t for c, (t, _) in OBS_COLUMNS.items()}, "distance": "float"}
            elif service in ("Mast.Caom.Filtered", "Mast.Caom.Filtered.Position"):
                rows = observations
                fields = {c: t for c, (t, _) in OBS_COLUMNS.items()}
                if service.endswith("Position"):
                    if not params.get("position"):
                        raise KeyError("position")
                    ra, dec, radius = (float(x) for x in str(params["position"]).split(","))
                    rows = _cone(rows, ra, dec, radius)
                    fields["distance"] = "float"
                    if self.faults.on("per_filter_rows"):
                        rows = [{**r, "filters": f} for r in rows for f in str(r["filters"] or "").split(";")]
                for flt in params.get("filters") or []:
                    rows = [r for r in rows if _matches(r, flt)]
                if str(params.get("columns", "*")).strip().upper().startswith("COUNT_BIG"):
                    return _page([{"Column1": len(rows)}], {"Column1": "string"}, 50000, 1)
            elif service == "Mast.Caom.Products":
                ids = [x.strip() for x in str(params.get("obsid", "")).split(",") if x.strip()]
                rows = [self._shape_product(p) for i in ids for p in products.get(i, [])]
                if self.faults.on("duplicate_uris"):
                    rows += [r for r in rows if r["calib_level"] == 3 and r["productType"] == "SCIENCE"]
                fields = dict(PRODUCT_COLUMNS)
            else:
                return {"status": "ERROR", "msg": f"Unknown service {service!r}", "data": [], "fields": []}
        except KeyError as exc:
            return {"status": "ERROR", "msg": f"Missing or unknown parameter: {exc}", "data": [],
                    "fields": []}
        return _page(rows, fields, pagesize, page)

    def _shape_observation(self, row: dict[str, Any]) -> dict[str, Any]:
        """An observation row as the switched-on answer kinds shape it (a copy)."""
        row = dict(row)
        if self.faults.on("nulls"):
            row.update(dataURL=None, target_classification=None, srcDen=None)
        if self.faults.on("mixed_ids") and row["obs_collection"] == "HST":
            row["obs_id"] = row["obs_id"].upper()
        if self.faults.on("per_filter_rows") and row["instrument_name"] == "NIRCAM/IMAGE":
            row["filters"] = f"{row['filters']};CLEAR"  # NIRCam's pupil wheel is a filter to CAOM
        return row

    def _shape_product(self, row: dict[str, Any]) -> dict[str, Any]:
        """A product row as the switched-on answer kinds shape it (a copy)."""
        row = dict(row)
        if self.faults.on("nulls"):
            row.update(prvversion=None, productDocumentationURL=None)
        if self.faults.on("mixed_ids") and row["obs_collection"] == "HST":
            row["obs_id"] = row["obs_id"].upper()
        return row


def _cone(rows: list[dict[str, Any]], ra: float, dec: float, radius: float) -> list[dict[str, Any]]:
    """Observations whose centre lies within ``radius`` degrees, nearest first, with distance."""
    hits = []
    for r in rows:
        d = angular_distance_deg(ra, dec, r["s_ra"], r["s_dec"])
        if d <= radius:
            hits.append({**r, "distance": d * 3600.0})
    hits.sort(key=lambda r: r["distance"])
    return hits


def _page(rows: list[dict[str, Any]], fields: dict[str, str], pagesize: int, page: int) -> dict[str, Any]:
    pagesize = max(pagesize, 1)
    total = len(rows)
    pages = max(1, math.ceil(total / pagesize))
    data = rows[(page - 1) * pagesize: page * pagesize]
    return {
        "status": "COMPLETE", "msg": "",
        "fields": [{"name": n, "type": t} for n, t in fields.items()],
        "data": data,
        "paging": {"page": page, "pageSize": pagesize, "pagesFiltered": pages, "rows": len(data),
                   "rowsFiltered": total, "rowsTotal": total},
    }


def serve_in_thread(server: MastServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="mast-emulator", daemon=True)
    thread.start()
    return thread


__all__ = ["Fault", "Faults", "MastServer", "RequestLog", "serve_in_thread"]


def _squashed(name: str) -> str:
    """A name's letters and digits, lower case: what a name resolver compares."""
    return "".join(ch for ch in name.lower() if ch.isalnum())
