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
