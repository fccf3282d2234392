"""An S3 server with a landing bucket, for the zone and partition-key tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def bucket() -> str:
    return "landing"


@pytest.fixture(scope="module")
def s3(bucket: str) -> Iterator[Any]:
    from skyassets.emulator.s3 import S3Server

    server = S3Server()
    try:
        client = server.client()
        client.create_bucket(Bucket=bucket)
        yield client
    finally:
        server.close()


@pytest.fixture()
def prefix(s3: Any, request: pytest.FixtureRequest) -> str:
    return f"{request.node.name}/incoming/"
