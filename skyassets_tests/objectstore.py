"""An S3-protocol store on loopback for tests of the home on S3: moto's server in a child process
(:class:`skyassets.emulator.s3.S3Server`), with a private bucket and dummy credentials."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from skyassets.emulator.s3 import S3Server

BUCKET = "skyassets-home"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "skyassets", "AWS_SECRET_ACCESS_KEY": "skyassets", "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def object_store() -> Iterator[S3Server]:
    """A running S3 server with the empty bucket ``BUCKET``; stopped when the block ends."""
    server = S3Server()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.close()
