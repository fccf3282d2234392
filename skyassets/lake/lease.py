"""A lock that the machines sharing one home respect: a file lock for the processes of one machine,
and, with a store, a lease object beside the stored layout that a machine takes and hands on with
S3's conditional writes (``If-None-Match: *`` to create it, ``If-Match: <ETag>`` to take it over,
renew it or release it), so that of two machines writing at once one wins and the other sees it.

A lease lasts ``ttl`` seconds from its last write by the store's clock (the object's LastModified
against the ``Date`` of the answer that read it), so machines whose clocks disagree still agree on
when it ran out; its holder renews it every ``ttl / 3`` seconds while it works. A holder that dies
leaves a lease that runs out, and the next machine takes it over. A lock that stays busy past the
caller's ``wait`` raises :class:`LockBusy` naming who holds it and since when: a sensor gives its
tick up instead of hanging, a command says so.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

DEFAULT_TTL = 120.0
_RETRY_PAUSE = 5.0  # seconds between tries of a renewal the store did not answer
_CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class LockBusy(TimeoutError):
    """Another process or machine held the lock for longer than the caller would wait."""


def _holder() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


Waiting = Callable[[str], None]  # hears once, when a lock is not free at once, who holds it


@contextmanager
def file_lock(path: Path, wait: float, on_wait: Waiting | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created when missing), waiting at most ``wait`` seconds.
    The holder writes who it is and since when into the file, for those who wait to say."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    with open(path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                handle.seek(0)
                handle.truncate()
                handle.write(f"{_holder()} since {datetime.now(UTC).isoformat(timespec='seconds')}\n")
                handle.flush()
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process of this machine"
                held = f"{path}: held by {holder}"
                if time.monotonic() >= deadline:
                    raise LockBusy(f"{held}; waited {wait:.0f} s") from None
                if on_wait is not None:
                    on_wait(held)
                    on_wait = None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class StoreLease:
    """The lease object ``s3://bucket/key``, taken by :meth:`acquire` and given back by :meth:`release`."""

    def __init__(self, client: Any, bucket: str, key: str, ttl: float = DEFAULT_TTL) -> None:
        self.client, self.bucket, self.key, self.ttl = client, bucket, key, ttl
        self.url = f"s3://{bucket}/{key}"
        self.etag: str | None = None
        self.token = uuid.uuid4().hex  # makes each holder's writes, so their ETags, its own
        self.since = ""
        self.lost: str | None = None  # why the lease was lost while held (another machine took it over)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._written = 0.0  # when the lease was last written (monotonic)

    def _body(self, until_now: bool = False) -> bytes:
        return json.dumps({"holder": _holder(), "token": self.token, "since": self.since,
                           "ttl": 0 if until_now else self.ttl}).encode()

    def _put(self, body: bytes, **condition: str) -> str | None:
        """Write the lease under ``condition``; its new ETag, or None when another write won."""
        try:
            answer = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)
        except self.client.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in _CONFLICT:
                return None
            raise
        return answer["ETag"]

    def _ours(self) -> str | None:
        """The lease's ETag when the lease holds this holder's token: a write whose answer was lost
        (and that the client's retry then saw refused) took effect all the same."""
        lease = self._read()
        return lease[0] if lease is not None and lease[1].get("token") == self.token else None

    def _read(self) -> tuple[str, dict, float] | None:
        """(ETag, content, seconds left by the store's clock) of the lease; None when there is none."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None
        raw = answer["Body"].read()
        try:
            content = json.loads(raw)
            ttl = float(content["ttl"])
        except (ValueError, KeyError, TypeError):  # not a lease skyassets wrote: taken over at once
            content, ttl = {"holder": f"an unreadable lease ({len(raw)} bytes)"}, 0.0
        date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date) if date else datetime.now(UTC)
        return answer["ETag"], content, ttl - (now - answer["LastModified"]).total_seconds()

    def acquire(self, wait: float, on_wait: Waiting | None = None) -> None:
        """Take the lease, waiting at most ``wait`` seconds for its holder to give it back or run out."""
        deadline = time.monotonic() + wait
        while True:
            self.since = datetime.now(UTC).isoformat(timespec="seconds")
            try:
                held = self._take()
            except Exception as error:  # the store did not answer: asked again until the wait is over
                if time.monotonic() >= deadline:
                    raise LockBusy(f"{self.url}: the store did not answer ({error}); waited {wait:.0f} s") from error
                held = None
            if self.etag is not None:
                break
            if held is not None:
                if time.monotonic() >= deadline:
                    raise LockBusy(f"{held}; waited {wait:.0f} s")
                if on_wait is not None:
                    on_wait(held)
                    on_wait = None
            time.sleep(random.uniform(0.2, 0.5))
        self._written = time.monotonic()
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"lease {self.key}", daemon=True)
        self._renewer.start()

    def _take(self) -> str | None:
        """One try at the lease, setting ``etag`` when taken; who holds it when another holder does."""
        self.etag = self._put(self._body(), IfNoneMatch="*")
        if self.etag is not None or (lease := self._read()) is None:
            return None
        etag, content, left = lease
        if content.get("token") == self.token:  # our own write, its answer lost
            self.etag = etag
        elif left <= 0:  # given back, or its holder stopped renewing it
            self.etag = self._put(self._body(), IfMatch=etag) or self._ours()
        else:
            return (f"{self.url}: held by {content.get('holder')} since {content.get('since')} "
                    f"(for {left:.0f} s more unless renewed)")
        return None

    def _renew(self) -> None:
        """Renew every ``ttl / 3`` seconds; a store that fails to answer is asked again every few
        seconds until the lease would run out, and only then is the lease counted lost."""
        pause = self.ttl / 3
        while not self._stop.wait(pause):
            with self._lock:
                try:
                    etag = self._put(self._body(), IfMatch=self.etag) if self.etag else None
                    etag = etag or self._ours()
                except Exception as error:  # the store did not answer: try again while the lease holds
                    pause = min(_RETRY_PAUSE, self.ttl / 10)
                    if time.monotonic() - self._written < self.ttl - 2 * pause:
                        continue
                    self.lost = f"{self.url}: could not be renewed before it ran out ({error})"
                    return
                if etag is None:
                    self.lost = f"{self.url}: taken over by another holder after it ran out"
                    return
                self.etag, self._written, pause = etag, time.monotonic(), self.ttl / 3

    def release(self) -> None:
        """Give the lease back (it reads as run out), unless another holder has it by now."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        with self._lock:
            if self.etag is not None and self.lost is None:
                try:
                    if self._put(self._body(until_now=True), IfMatch=self.etag) is None and self._ours() is None:
                        self.lost = f"{self.url}: taken over by another holder before it was given back"
                except Exception:  # noqa: BLE001 - not given back: it runs out by itself within its ttl
                    pass
            self.etag = None


@contextmanager
def store_lease(
    client: Any, bucket: str, key: str, wait: float, ttl: float = DEFAULT_TTL, on_wait: Waiting | None = None,
) -> Iterator[StoreLease]:
    """Hold the lease ``s3://bucket/key`` for the block; raises :class:`LockBusy` at its end when
    another holder took it over meanwhile (this one stalled past its ``ttl``), as the block's writes
    may then have met theirs."""
    lease = StoreLease(client, bucket, key, ttl)
    lease.acquire(wait, on_wait)
    try:
        yield lease
    finally:
        lease.release()
    if lease.lost:
        raise LockBusy(lease.lost)
