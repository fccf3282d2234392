"""A local MAST: the portal API astroquery speaks, ``Download/file``, and an S3 ``stpubdata`` bucket.

``Emulator`` serves a deterministic synthetic sky (see ``sky.py``) on loopback so that unchanged
astroquery, the downloader and the pipeline can run without the network, with faults injected on
demand. ``embedded()`` is the process-wide instance used when the pipeline is configured for the
built-in emulator.
"""

from __future__ import annotations

import atexit
import hashlib
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from skyassets.emulator.s3 import BUCKET, S3Server
from skyassets.emulator.server import ANSWER_KINDS, Fault, Faults, MastServer, RequestLog, serve_in_thread
from skyassets.emulator.sky import Sky, SkySpec

__all__ = ["ANSWER_KINDS", "BUCKET", "Emulator", "Fault", "Faults", "RequestLog", "Sky", "SkySpec", "embedded"]


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


class Emulator:
    """The MAST emulator, started on construction; use as a context manager or call ``close()``."""

    def __init__(self, home: Path, spec: SkySpec | None = None, s3: bool = True, *,
                 host: str = "127.0.0.1", port: int = 0, s3_port: int = 0):
        self.home = Path(home)
        spec = spec or SkySpec()
        self.sky = Sky(self.home, spec)
        self._server = MastServer(self.sky, host, port)
        self._thread = serve_in_thread(self._server)
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._s3: S3Server | None = None
        self.s3_endpoint: str | None = None
        if s3:
            try:
                self._s3 = S3Server(host, s3_port)
                self.s3_endpoint = self._s3.endpoint
                self.faults.s3 = self._s3.command
                self._upload_sky()
            except BaseException:
                self.close()
                raise

    @property
    def faults(self) -> Faults:
        return self._server.faults

    @property
    def throttle(self) -> float:
        """Bytes per second each download connection may carry (0, the default: no limit)."""
        return self._server.throttle

    @throttle.setter
    def throttle(self, bytes_per_second: float) -> None:
        self._server.throttle = float(bytes_per_second)

    @property
    def latency(self) -> float:
        """Seconds each download request waits before its answer (0, the default), as a WAN
        round trip and a store's time to its first byte add to every request."""
        return self._server.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._server.latency = float(seconds)

    @property
    def requests(self) -> RequestLog:
        return self._server.requests

    def real_answers(self, *kinds: str) -> None:
        """Answer like the real archive: switch on ``kinds`` (default: every one of ``ANSWER_KINDS``)
        until ``faults.clear()``."""
        for kind in kinds or ANSWER_KINDS:
            self.faults.add(kind)

    def grant(self, token: str, *proposals: str) -> None:
        """Accept the MAST API ``token``, granting the exclusive-access data of ``proposals``
        (none given: every proposal)."""
        self._server.tokens[token] = {str(p) for p in proposals} or {"*"}

    def revoke(self, token: str) -> None:
        self._server.tokens.pop(token, None)

    def _upload_sky(self) -> None:
        """Put every public product in the bucket under its path_lookup key (proprietary ones stay off
        S3, as on the real bucket)."""
        assert self._s3 is not None
        jobs = []
        for rows in self.sky.products.values():
            for row in rows:
                if row["dataRights"] == "PUBLIC":
                    key = self.sky.path_for(row["dataURI"])
                    jobs.append((self.sky.files[row["dataURI"]][0], key))
        self._s3.client()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda job: self._s3.upload(*job), jobs))  # type: ignore[union-attr]

    def publish(self, path: Path, *, obs_id: str, collection: str = "JWST", s3: bool = True) -> dict[str, Any]:
        """Serve an existing file (streamed from where it is, never copied) as a product of
        observation ``obs_id``, creating the observation from a same-collection template if new.
        Returns the product row; with ``s3`` the file is also uploaded (multipart) to the bucket."""
        path = Path(path).resolve()
        size = path.stat().st_size
        md5 = _md5(path)
        name = path.name
        uri = f"mast:{collection}/product/{name}"
        suffix = name.rsplit("_", 1)[-1].split(".")[0].upper() if "_" in name else ""
        level = 3 if suffix in ("I2D", "DRZ", "DRC") else 1 if suffix in ("UNCAL", "RAW") else 2
        with self._server.lock:
            obs = next((o for o in self.sky.observations if o["obs_id"] == obs_id), None)
            if obs is None:
                template = next((o for o in self.sky.observations if o["obs_collection"] == collection),
                                self.sky.observations[0])
                new_id = str(max(int(o["obsid"]) for o in self.sky.observations) + 1)
                program = re.match(r"jw(\d{5})", obs_id)
                obs = {**template, "obs_id": obs_id, "obsid": new_id, "obs_collection": collection,
                       "objID": str(int(new_id) + 100000000), "dataRights": "PUBLIC",
                       "dataURL": uri, "jpegURL": None,
                       "proposal_id": str(int(program.group(1))) if program else template["proposal_id"]}
                self.sky.observations.append(obs)
                self.sky.products[new_id] = []
            product_obs_id = name.rsplit("_", 1)[0] if level < 3 and "_" in name else obs_id
            row = Sky._product_row(obs, name, product_obs_id, "SCIENCE", suffix, level,
                                   f"Published file {name}")
            row["size"] = size
            rows = self.sky.products[obs["obsid"]]
            rows[:] = [r for r in rows if r["dataURI"] != uri] + [row]
            self.sky.files[uri] = (path, size, md5)
        if s3 and self._s3 is not None:
            self._s3.upload(path, self.sky.path_for(uri) or "")
        return dict(row)

    def close(self) -> None:
        """Stop both servers (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()
        if self._s3 is not None:
            self.faults.s3 = None
            self._s3.close()
            self._s3 = None

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_embedded_lock = threading.Lock()
_embedded: dict[tuple[Path, SkySpec], Emulator] = {}


def embedded(home: Path, spec: SkySpec | None = None) -> Emulator:
    """The emulator of ``home`` and ``spec`` in this process, started on first use, stopped at exit.

    Every run step that asks for the same home and sky gets the same servers, so a process pays for
    starting them once."""
    key = (Path(home), spec or SkySpec())
    with _embedded_lock:
        if key not in _embedded:
            _embedded[key] = emulator = Emulator(Path(home), key[1])
            atexit.register(emulator.close)
        return _embedded[key]
