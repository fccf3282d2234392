"""The moto S3 server: anonymous (unsigned) reads of the public bucket, and publishing files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import boto3
import pytest
import requests
from botocore import UNSIGNED
from botocore.config import Config

from skyassets.archive.client import observations_client
from skyassets.emulator import BUCKET, Emulator


def _unsigned(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(signature_version=UNSIGNED))


def test_unsigned_head_and_get(emu: Emulator) -> None:
    uri = "mast:JWST/product/jw02107-o001_t002_nircam_clear-f200w_i2d.fits"
    key = emu.sky.path_for(uri).lstrip("/")
    path, size, md5 = emu.sky.files[uri]
    s3 = _unsigned(emu.s3_endpoint)
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == size
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == path.read_bytes()
    ranged = s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=100-199")
    assert ranged["Body"].read() == path.read_bytes()[100:200]
    assert ranged["ContentRange"] == f"bytes 100-199/{size}"
    assert head["ETag"].strip('"') == md5  # single-part upload: S3 ETag is the MD5


@pytest.fixture(scope="module")
def second(emu_home: Path):
    """A separate emulator on the same (cached) sky, so publishing does not change the shared one."""
    with Emulator(emu_home) as emulator:
        yield emulator


def test_publish(second: Emulator, tmp_path: Path) -> None:
    big = tmp_path / "jw09999-o001_t001_nircam_clear-f200w_i2d.fits"
    block = hashlib.sha256(b"bench").digest() * 32768  # 1 MiB
    with open(big, "wb") as f:
        for _ in range(3):
            f.write(block)
    row = second.publish(big, obs_id="jw09999-o001_t001_nircam_clear-f200w")
    assert row["size"] == big.stat().st_size
    assert row["productSubGroupDescription"] == "I2D" and row["calib_level"] == 3
    client = observations_client(second.url, s3_endpoint=second.s3_endpoint)
    obs = client.query_criteria(obs_id="jw09999-o001_t001_nircam_clear-f200w")
    assert len(obs) == 1 and obs["proposal_id"][0] == "9999"
    products = client.get_product_list(obs)
    assert list(products["dataURI"]) == [row["dataURI"]]
    reply = requests.get(f"{second.url}/api/v0.1/Download/file", params={"uri": row["dataURI"]},
                         headers={"Range": "bytes=1048576-"}, timeout=10)
    assert reply.status_code == 206 and reply.content == big.read_bytes()[1 << 20:]
    key = client.get_cloud_uris(products, include_bucket=False)[0]
    assert _unsigned(second.s3_endpoint).head_object(Bucket=BUCKET, Key=key)["ContentLength"] == row["size"]
    # Publishing into an existing observation adds a product there.
    extra = tmp_path / "jw02733001001_02101_00009_nrcb1_cal.fits"
    extra.write_bytes(b"x" * 2880)
    added = second.publish(extra, obs_id="jw02733-o001_t001_nircam_clear-f090w", s3=False)
    assert added["productSubGroupDescription"] == "CAL" and added["calib_level"] == 2
    target = next(o for o in second.sky.observations if o["obs_id"] == "jw02733-o001_t001_nircam_clear-f090w")
    assert added["dataURI"] in {p["dataURI"] for p in second.sky.products[target["obsid"]]}


def test_embedded_is_one_instance_per_home(emu_home: Path) -> None:
    from skyassets.emulator import embedded

    first = embedded(emu_home)
    assert embedded(emu_home) is first
    assert requests.get(first.url + "/_emulator/requests", timeout=10).status_code == 200


def _strict(endpoint: str):
    """An unsigned client that takes every answer as it comes (botocore retries nothing)."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1}))


def test_s3_faults_answer_as_a_busy_store_and_count_down(emu: Emulator) -> None:
    from botocore.exceptions import ClientError

    uri = "mast:JWST/product/jw02107-o001_t002_nircam_clear-f200w_i2d.fits"
    key = emu.sky.path_for(uri).lstrip("/")
    path = emu.sky.files[uri][0]
    s3 = _strict(emu.s3_endpoint)
    emu.faults.add("status", endpoint="s3", match=key, status=503, retry_after=7, times=1)
    assert [f["endpoint"] for f in emu.faults.list()] == ["s3"]
    with pytest.raises(ClientError) as refused:
        s3.get_object(Bucket=BUCKET, Key=key)
    assert refused.value.response["Error"]["Code"] == "SlowDown"
    assert refused.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "7"
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == path.read_bytes()  # once only
    assert emu.faults.list()[0]["times"] == 0


def test_s3_drop_cuts_the_body_and_closes_the_connection(emu: Emulator) -> None:
    from botocore.exceptions import IncompleteReadError, ResponseStreamingError

    uri = "mast:JWST/product/jw02107-o001_t002_nircam_clear-f200w_i2d.fits"
    key = emu.sky.path_for(uri).lstrip("/")
    s3 = _strict(emu.s3_endpoint)
    emu.faults.add("drop", endpoint="s3", match="nircam_clear-f200w_i2d", after_bytes=5000, times=1)
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    got = b""
    with pytest.raises((IncompleteReadError, ResponseStreamingError)):
        while chunk := body.read(1000):
            got += chunk
    assert got == emu.sky.files[uri][0].read_bytes()[:5000]
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == emu.sky.files[uri][1]  # a HEAD is untouched
    emu.faults.clear()
    assert emu.faults.list() == []


def test_s3_faults_need_an_s3_server(emu_home: Path) -> None:
    with Emulator(emu_home, s3=False) as bare, pytest.raises(ValueError, match="no S3 server"):
        bare.faults.add("status", endpoint="s3")
