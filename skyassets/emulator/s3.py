"""moto's S3 server on loopback holding a public ``stpubdata`` bucket.

The server runs in a child process: moto keeps its buckets in process-wide state that any
``moto.mock_aws`` in the same process resets, which would silently empty the bucket under tests
that mock AWS themselves. The child exits when its stdin closes, so it never outlives its parent.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
_CHILD = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address=sys.argv[1], port=int(sys.argv[2]), verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # serve until the parent closes our stdin or exits
server.stop()
"""
