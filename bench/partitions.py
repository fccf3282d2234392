"""The partitions page of an observation asset with 10,000 and 100,000 partitions: GraphQL query time
against a real ``dagster-webserver`` serving skyassets' code location.

    python bench/partitions.py                        # 10,000 then 100,000 observation partitions
    python bench/partitions.py --sizes 1000,10000     # quick look

A temporary ``DAGSTER_HOME`` with skyassets' instance settings (SQLite) gets the observation
partitions (one in ``--every`` with a recorded ``fits_files`` materialisation, as after a partial backfill);
a webserver serves ``workspace.yaml``. For each size the query the asset's partitions page makes
(the partition keys, each partition's status and the counts) is sent ``--repeat`` times after a
warm-up; prints the median and best seconds per query and the ratio between the sizes, next to
the baseline of the same query on an unpartitioned asset (``mast_observations``) in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]

PAGE = """
query PartitionsPage($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      partitionKeysByDimension { name partitionKeys }
      assetPartitionStatuses {
        __typename
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions materializingPartitions }
      }
      partitionStats { numMaterialized numPartitions numFailed numMaterializing }
    }
  }
}
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grow(instance, total: int, have: int, every: int) -> None:
    """Observation partitions ``have``..``total``, one in ``every`` with a fits_files materialisation."""
    from dagster import AssetMaterialization

    keys = [f"jw{i:05d}-o001_t001_nircam_clear-f200w" for i in range(have, total)]
    for start in range(0, len(keys), 10_000):
        instance.add_dynamic_partitions("observations", keys[start:start + 10_000])
    for key in keys[::every]:
        instance.report_runless_asset_event(AssetMaterialization(asset_key="fits_files", partition=key))


def query(url: str, asset: str) -> tuple[float, dict]:
    started = time.perf_counter()
    answer = requests.post(url, json={"query": PAGE, "variables": {"key": {"path": [asset]}}}, timeout=600)
    seconds = time.perf_counter() - started
    answer.raise_for_status()
    body = answer.json()
    if "errors" in body:
        raise RuntimeError(body["errors"])
    return seconds, body["data"]["assetNodeOrError"]


def timed(url: str, asset: str, repeat: int) -> tuple[float, float, dict]:
    query(url, asset)  # warm-up: the code location's answers cached by the webserver
    runs = [query(url, asset) for _ in range(repeat)]
    seconds = [s for s, _ in runs]
    return statistics.median(seconds), min(seconds), runs[-1][1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="partition counts, ascending")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--every", type=int, default=100, help="one partition in this many has a materialisation")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-partitions-"))
    dagster_home = work / "dagster"
    dagster_home.mkdir()
    shutil.copyfile(ROOT / "skyassets" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "SKYASSETS_HOME": str(work / "home")}
    os.environ.update(DAGSTER_HOME=env["DAGSTER_HOME"], SKYASSETS_HOME=env["SKYASSETS_HOME"])
    from dagster import DagsterInstance

    port = _free_port()
    url = f"http://127.0.0.1:{port}/graphql"
    log = open(work / "webserver.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
         "-w", str(ROOT / "workspace.yaml")],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the webserver did not start:\n{(work / 'webserver.log').read_text()[-3000:]}")
            time.sleep(1)
        results = []
        with DagsterInstance.get() as instance:
            have = 0
            for size in sizes:
                started = time.perf_counter()
                grow(instance, size, have, args.every)
                have = size
                print(f"{size} partitions ready in {time.perf_counter() - started:.1f} s", flush=True)
                median, best, answer = timed(url, "fits_files", args.repeat)
                stats = answer["partitionStats"]
                assert stats["numPartitions"] == size, stats
                base, _, _ = timed(url, "mast_observations", args.repeat)
                results.append((size, median, best, base, stats["numMaterialized"]))
        print(f"{'partitions':>11} {'materialised':>12} {'median s':>9} {'best s':>8} {'unpartitioned s':>16}")
        for size, median, best, base, done in results:
            print(f"{size:>11} {done:>12} {median:>9.3f} {best:>8.3f} {base:>16.3f}")
        if len(results) > 1:
            (s0, m0, *_), (s1, m1, *_) = results[0], results[-1]
            print(f"{s1 // s0}x the partitions: {m1 / m0:.1f}x the query time")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the webserver and the code server it started
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
