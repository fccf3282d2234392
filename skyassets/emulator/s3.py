"""moto's S3 server on loopback holding a public ``stpubdata`` bucket, with faults on demand.

The server runs in a child process: moto keeps its buckets in process-wide state that any
``moto.mock_aws`` in the same process resets, which would silently empty the bucket under tests
that mock AWS themselves. The child exits when its stdin closes, so it never outlives its parent,
and ignores Ctrl-C, which its parent reports (a traceback of its own would only add noise).

Faults reach the child as JSON lines on its stdin, each answered by one line on its stdout, so a
fault is armed before ``command`` returns. They strike as a busy S3 does: an error status with S3's XML
body (``503 SlowDown`` with ``Retry-After``, ``500 InternalError``, ...) or an object body cut
after ``after_bytes`` with the connection closed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

BUCKET = "stpubdata"
_DUMMY_CREDENTIALS = {"aws_access_key_id": "emulator", "aws_secret_access_key": "emulator"}


class S3Server:
    """A moto S3 server child process and a signed client to fill it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, host, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.isdigit():
            self.close()
            raise RuntimeError(f"moto S3 server did not start (said {line!r})")
        self.endpoint = f"http://{host}:{int(line)}"
        self._client: Any = None
        self._talk = threading.Lock()

    def command(self, op: str, fault: dict[str, Any] | None = None) -> Any:
        """Ask the child to ``add`` a fault (a dict of ``Fault`` fields), ``clear`` them or ``list``
        them; returns its answer once it has acted."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        with self._talk:
            self._proc.stdin.write(json.dumps({"op": op, "fault": fault}) + "\n")
            self._proc.stdin.flush()
            answer = self._proc.stdout.readline()
        if not answer:
            raise RuntimeError("the moto S3 server has exited")
        return json.loads(answer)

    def client(self) -> Any:
        """A boto3 client with dummy credentials, for uploads only (readers go unsigned)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint, region_name="us-east-1",
                config=Config(retries={"max_attempts": 3}), **_DUMMY_CREDENTIALS,
            )
            self._client.create_bucket(Bucket=BUCKET, ACL="public-read")
        return self._client

    def upload(self, path: Path, key: str) -> None:
        """Stream ``path`` (multipart when large) to ``key``, readable anonymously."""
        from boto3.s3.transfer import TransferConfig

        self.client().upload_file(
            str(path), BUCKET, key.lstrip("/"), ExtraArgs={"ACL": "public-read"},
            Config=TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20,
                                  max_concurrency=4),
        )

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout:
            self._proc.stdout.close()


# Run with ``python -c`` so the child does not import this package (and astropy) just to serve S3.
_CHILD = r"""
import signal
# Ctrl-C reaches the whole process group: the parent's interrupt is its own to report, and the
# child goes when the parent closes its stdin (or leaves).
signal.signal(signal.SIGINT, signal.SIG_IGN)
import json, logging, sys, threading
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

logging.getLogger("werkzeug").setLevel(logging.ERROR)
faults, lock = [], threading.Lock()
CODES = {500: "InternalError", 503: "SlowDown", 429: "SlowDown", 403: "AccessDenied", 404: "NoSuchKey"}


def take(method, path):
    with lock:
        for fault in faults:
            if fault["times"] == 0 or fault["match"] not in path:
                continue
            if method != "GET" and fault["kind"] != "status":
                continue
            if fault["times"] > 0:
                fault["times"] -= 1
            return dict(fault)
    return None


def cut(body, after, close):
    sent = 0
    try:
        for chunk in body:
            if sent + len(chunk) >= after:
                yield chunk[: after - sent]
                raise ConnectionAbortedError("injected drop")
            sent += len(chunk)
            yield chunk
    finally:
        close()


def app(environ, start_response):
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
    fault = take(method, path)
    if fault and fault["kind"] == "status":
        status = fault["status"]
        code = CODES.get(status, "ServiceUnavailable")
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                f"<Message>HTTP {status} (injected)</Message><Resource>{path}</Resource></Error>").encode()
        headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        if status in (429, 503):
            headers.append(("Retry-After", str(fault["retry_after"])))
        start_response(f"{status} {code}", headers)
        return [b"" if method == "HEAD" else body]
    body = moto(environ, start_response)
    if fault and fault["kind"] == "drop":
        return cut(body, fault["after_bytes"], getattr(body, "close", lambda: None))
    return body


class Handler(MotoRequestHandler):
    def connection_dropped(self, error, environ=None):
        self.close_connection = True  # the client sees the body end short of its Content-Length


moto = DomainDispatcherApplication(create_backend_app)
server = make_server(sys.argv[1], int(sys.argv[2]), app, threaded=True, request_handler=Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(server.server_address[1], flush=True)
for line in sys.stdin:  # serve until the parent closes our stdin or exits
    request = json.loads(line)
    with lock:
        if request["op"] == "add":
            faults.append(request["fault"])
        elif request["op"] == "clear":
            faults.clear()
        answer = [dict(f) for f in faults]
    print(json.dumps(answer), flush=True)
server.shutdown()
"""
