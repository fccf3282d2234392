"""The home's lock across machines: two homes with their own local folders on one store (moto's
server on loopback) take turns through the lease object, a dead holder's lease runs out, a live
one is renewed, and the landing records two machines write keep each other's rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from skyassets.lake.home import Home
from skyassets.lake.lease import LockBusy, StoreLease, store_lease
from skyassets.landing.ingest import record_landed, recording, relocate_landed
from skyassets.landing.zone import LandedFile
from skyassets_tests.objectstore import BUCKET, CREDENTIALS, object_store


@pytest.fixture(scope="module")
def store():
    with object_store() as server:
        yield server


@pytest.fixture
def machines(store, tmp_path, monkeypatch, request) -> tuple[Home, Home]:
    """Two machines' views of one stored home: each its own local folder."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    storage = f"s3://{BUCKET}/{request.node.name}"
    return (Home(tmp_path / "machine-a", storage=storage, endpoint=store.endpoint),
            Home(tmp_path / "machine-b", storage=storage, endpoint=store.endpoint))


def test_a_second_machine_waits_for_the_first_and_hears_who_holds_the_lock(machines, request):
    a, b = machines
    heard: list[str] = []
    with a.lock("landing", wait=1):
        started = time.monotonic()
        with pytest.raises(LockBusy) as busy:
            with b.lock("landing", wait=1.0, on_wait=heard.append):
                pytest.fail("two machines held the lock at once")
        assert time.monotonic() - started >= 1.0
    lease = f"s3://{BUCKET}/{request.node.name}/.landing.lock"
    assert f"{lease}: held by " in str(busy.value) and f"pid {os.getpid()}" in str(busy.value)
    assert len(heard) == 1 and heard[0].startswith(f"{lease}: held by ")
    started = time.monotonic()
    with b.lock("landing", wait=0):  # given back: taken at once
        assert time.monotonic() - started < 1.0


def test_a_lease_whose_holder_died_runs_out_and_is_taken_over(machines, store, request):
    _, b = machines
    key = f"{request.node.name}/.landing.lock"
    holder = subprocess.Popen(  # another machine takes the lease for 2 s, then dies without giving it back
        [sys.executable, "-c",
         "import sys, time, boto3\n"
         "from skyassets.lake.lease import StoreLease\n"
         f"client = boto3.client('s3', endpoint_url={store.endpoint!r})\n"
         f"StoreLease(client, {BUCKET!r}, {key!r}, ttl=2.0).acquire(wait=5)\n"
         "print('held', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, **CREDENTIALS})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy):
            with b.lock("landing", wait=0):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        started = time.monotonic()
        with b.lock("landing", wait=10):
            taken = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert taken < 5.0  # within the dead holder's 2 s, from when it last renewed


def test_a_live_holder_keeps_its_lease_past_its_ttl(store, monkeypatch, request):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    client = Home(request.path.parent, storage=f"s3://{BUCKET}/x", endpoint=store.endpoint).client()
    key = f"{request.node.name}/.lock"
    with store_lease(client, BUCKET, key, wait=1, ttl=1.5) as lease:
        time.sleep(3.5)  # more than twice its ttl: renewed every 0.5 s
        with pytest.raises(LockBusy):
            StoreLease(client, BUCKET, key, ttl=1.5).acquire(wait=0)
        assert lease.lost is None
    stored = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert stored["ttl"] == 0  # given back
    StoreLease(client, BUCKET, key).acquire(wait=0)


def test_a_holder_that_stalled_past_its_ttl_hears_its_lease_was_taken_over(store, monkeypatch, request):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    client = Home(request.path.parent, storage=f"s3://{BUCKET}/x", endpoint=store.endpoint).client()
    key = f"{request.node.name}/.lock"
    holder = subprocess.Popen(  # holds the lease with a 1 s ttl until told to stop
        [sys.executable, "-c",
         "import sys, boto3\n"
         "from skyassets.lake.lease import LockBusy, store_lease\n"
         f"client = boto3.client('s3', endpoint_url={store.endpoint!r})\n"
         "try:\n"
         f"    with store_lease(client, {BUCKET!r}, {key!r}, wait=5, ttl=1.0):\n"
         "        print('held', flush=True)\n"
         "        sys.stdin.readline()\n"
         "    print('given back', flush=True)\n"
         "except LockBusy as lost:\n"
         "    print(f'lost: {lost}', flush=True)\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **CREDENTIALS})
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGSTOP)  # frozen, as a machine under swap or a paused VM is
        taker = StoreLease(client, BUCKET, key, ttl=60)
        taker.acquire(wait=10)  # once the frozen holder's lease runs out
        holder.send_signal(signal.SIGCONT)
        time.sleep(1.0)
        out, _ = holder.communicate("\n", timeout=30)
    finally:
        holder.kill()
    assert out.startswith("lost: ") and "taken over" in out
    stored = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert stored["token"] == taker.token and stored["ttl"] == 60  # the frozen holder wrote nothing over it
    taker.release()


def test_two_machines_landing_at_once_keep_each_others_index_rows(machines):
    a, b = machines
    mine, theirs = (LandedFile("local", f"/drop/{n}.fits", 10, "1", f"{n}.fits") for n in ("mine", "theirs"))

    def land(home: Home, key: str, landed: LandedFile) -> None:
        with recording(home):
            relocate_landed(home, {key: [landed]})
            record_landed(home, key, [landed])

    with recording(a):  # machine a's sensor tick, mid-way
        other = threading.Thread(target=land, args=(b, "landed-theirs", theirs))  # b's command line
        other.start()
        other.join(timeout=1.5)
        assert other.is_alive()  # it waits for a's tick, though its local lock file is its own
        relocate_landed(a, {"landed-mine": [mine]})
        record_landed(a, "landed-mine", [mine])
    other.join(timeout=30)
    index = b.tables.read("landing_index")
    assert dict(zip(index["location"], index["partition"], strict=True)) == {
        mine.location: "landed-mine", theirs.location: "landed-theirs"}


def _unretried_client(store):
    """A client that takes each answer as it comes, so the store's refusals reach the lease."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=store.endpoint, config=Config(retries={"total_max_attempts": 1}))


def _refuse_writes(store, key: str, times: int) -> None:
    """The store answers ``times`` requests for ``key`` with 503 SlowDown (-1: until cleared)."""
    store.command("add", {"kind": "status", "match": f"/{BUCKET}/{key}", "times": times, "status": 503,
                          "retry_after": 0, "after_bytes": 0})


def test_a_holder_rides_out_a_store_that_fails_its_renewals_for_a_while(store, monkeypatch, request):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    client, key = _unretried_client(store), f"{request.node.name}/.lock"
    try:
        with store_lease(client, BUCKET, key, wait=1, ttl=3.0) as lease:
            _refuse_writes(store, key, times=3)  # the next renewal and two of its retries fail
            time.sleep(7.0)  # more than twice its ttl
            with pytest.raises(LockBusy):
                StoreLease(client, BUCKET, key, ttl=3.0).acquire(wait=0)
            assert lease.lost is None
    finally:
        store.command("clear")


def test_a_holder_whose_store_stays_down_hears_its_lease_was_not_renewed(store, monkeypatch, request):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    client, key = _unretried_client(store), f"{request.node.name}/.lock"
    try:
        with pytest.raises(LockBusy, match="could not be renewed before it ran out"):
            with store_lease(client, BUCKET, key, wait=1, ttl=3.0):
                _refuse_writes(store, key, times=-1)
                time.sleep(4.0)
    finally:
        store.command("clear")


def test_a_store_that_fails_to_answer_is_waited_for_then_said(store, monkeypatch, request):
    """Taking the lease rides out a store's short refusals; one that lasts past the wait is a
    LockBusy naming the store's answer, which a sensor tick turns into files offered again."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    client, key = _unretried_client(store), f"{request.node.name}/.lock"
    try:
        _refuse_writes(store, key, times=2)
        with store_lease(client, BUCKET, key, wait=5, ttl=3.0) as lease:
            assert lease.etag is not None
        _refuse_writes(store, key, times=-1)
        with pytest.raises(LockBusy, match="the store did not answer .*SlowDown"):
            StoreLease(client, BUCKET, key, ttl=3.0).acquire(wait=1)
    finally:
        store.command("clear")
