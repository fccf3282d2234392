"""Download throughput: skyassets' downloader against curl and astroquery, in one run, on loopback.

    python bench/download.py                 # (a) one 512 MB file, (b) 50 files of 20 MB
    python bench/download.py --large-mb 64 --small-count 10 --small-mb 4 --repeat 1   # quick look

The MAST emulator serves the files over HTTP from a separate process (so the server does not share
the interpreter with the clients). Every client fetches the same files from the same server:
  skyassets  skyassets.archive.download.download_files (HTTP; S3 off so all three use the same path),
             verifying size and FITS checksums and hashing SHA-256 as it goes
  curl       one stream per file, one file at a time (`curl -o`)
  astroquery Observations.download_products (HTTP), the way most MAST scripts download
Each figure is the median of --repeat runs; the ratios are skyassets over the baseline. Files live
in /dev/shm by default, so the figures are the clients' and not the disk's (--workdir to change).
Targets: (a) >= 0.9x curl, (b) >= 3x astroquery.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
from astropy.io import fits


def _make_fits(path: Path, megabytes: float, seed: int) -> Path:
    """A FITS image of about ``megabytes`` MB of float32 noise with CHECKSUM/DATASUM."""
    side = int((megabytes * 1e6 / 4) ** 0.5)
    data = np.random.default_rng(seed).standard_normal((side, side), dtype=np.float32)
    fits.PrimaryHDU(data).writeto(path, checksum=True, overwrite=True)
    return path


def _serve(home: str, sets: dict[str, list[str]], pipe) -> None:
    """Child process: an emulator publishing the benchmark files; sends back its URL and products."""
    from skyassets.emulator import Emulator

    with Emulator(Path(home), s3=False) as emu:
        products = {
            name: [emu.publish(Path(p), obs_id=f"bench-{name}", s3=False) for p in paths]
            for name, paths in sets.items()
        }
        pipe.send((emu.url, products))
        pipe.recv()  # wait until the parent is done


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _skyassets(url: str, products: list[dict], out: Path, parallel: int, md5: str) -> None:
    from skyassets.archive.download import DownloadConfig, FileRequest, download_files

    requests = [
        FileRequest(
            filename=p["productFilename"],
            dest_dir=out,
            http_url=f"{url}/api/v0.1/Download/file?uri={p['dataURI']}",
            expected_size=int(p["size"]),
        )
        for p in products
    ]
    results = download_files(requests, DownloadConfig(parallel=parallel, prefer_s3=False, md5=md5))
    bad = [r for r in results if r.status != "downloaded"]
    if bad:
        raise RuntimeError(f"skyassets failed: {bad[0].error}")


def _curl(url: str, products: list[dict], out: Path) -> None:
    for p in products:
        subprocess.run(
            ["curl", "-sSf", "-o", str(out / p["productFilename"]), f"{url}/api/v0.1/Download/file?uri={p['dataURI']}"],
            check=True,
        )


def _astroquery(url: str, products: list[dict], out: Path) -> None:
    from astropy.table import Table

    from skyassets.archive.client import observations_client

    client = observations_client(url, cloud=False)
    table = Table(rows=[(p["dataURI"], p["productFilename"], p["obs_id"], p["obs_collection"]) for p in products],
                  names=("dataURI", "productFilename", "obs_id", "obs_collection"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = client.download_products(table, download_dir=str(out), cache=False, flat=True, verbose=False)
    if any(s != "COMPLETE" for s in manifest["Status"]):
        raise RuntimeError("astroquery failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large-mb", type=float, default=512)
    parser.add_argument("--small-count", type=int, default=50)
    parser.add_argument("--small-mb", type=float, default=20)
    parser.add_argument("--parallel", type=int, default=4, help="skyassets' files in parallel")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--md5", choices=("auto", "always"), default="auto", help="skyassets' MD5 policy")
    parser.add_argument(
        "--workdir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where files are written (default: memory-backed /dev/shm, so the disk does not set the figure)",
    )
    args = parser.parse_args()
    if not shutil.which("curl"):
        print("curl is not installed", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="skyassets-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        (work / "src").mkdir()
        print(f"writing test files ({args.large_mb:.0f} MB + {args.small_count} x {args.small_mb:.0f} MB)...")
        sets = {
            "large": [str(_make_fits(work / "src" / "bench_large_i2d.fits", args.large_mb, 0))],
            "small": [
                str(_make_fits(work / "src" / f"bench_small_{i:03d}_cal.fits", args.small_mb, i + 1))
                for i in range(args.small_count)
            ],
        }
        parent, child = mp.Pipe()
        server = mp.get_context("spawn").Process(target=_serve, args=(str(work / "emu"), sets, child), daemon=True)
        server.start()
        url, products = parent.recv()
        try:
            rows = []
            for name in ("large", "small"):
                total = sum(int(p["size"]) for p in products[name])
                clients = {
                    "skyassets": lambda out, ps=products[name]: _skyassets(url, ps, out, args.parallel, args.md5),
                    "curl": lambda out, ps=products[name]: _curl(url, ps, out),
                    "astroquery": lambda out, ps=products[name]: _astroquery(url, ps, out),
                }
                times: dict[str, list[float]] = {client: [] for client in clients}
                for _ in range(args.repeat):  # interleaved, so a slow moment of the machine hits every client
                    for client, run in clients.items():
                        out = work / "out" / client
                        shutil.rmtree(out, ignore_errors=True)
                        out.mkdir(parents=True)
                        times[client].append(_timed(partial(run, out)))
                speeds = {client: total / statistics.median(t) for client, t in times.items()}
                rows.append((name, len(products[name]), total, speeds))
        finally:
            parent.send("stop")
            server.join(10)

    print(f"\n{'case':<8} {'files':>5} {'MB':>8} {'skyassets MB/s':>15} {'curl MB/s':>10} {'astroquery MB/s':>16}"
          f" {'vs curl':>8} {'vs astroquery':>14}")
    for name, count, total, s in rows:
        print(
            f"{name:<8} {count:>5} {total / 1e6:>8.0f} {s['skyassets'] / 1e6:>15.0f} {s['curl'] / 1e6:>10.0f}"
            f" {s['astroquery'] / 1e6:>16.0f} {s['skyassets'] / s['curl']:>7.2f}x"
            f" {s['skyassets'] / s['astroquery']:>13.2f}x"
        )
    large, small = rows[0][3], rows[1][3]
    print(f"\n(a) one large file: skyassets / curl = {large['skyassets'] / large['curl']:.2f}x (target >= 0.9x)")
    print(f"(b) many files: skyassets / astroquery = {small['skyassets'] / small['astroquery']:.2f}x (target >= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
