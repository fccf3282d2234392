"""Download throughput: skyassets' downloader against curl, astroquery and aria2c, in one run, on loopback.

    python bench/download.py                 # (a) one 512 MB file, (b) 50 files of 20 MB, (c) one 2 GB file
    python bench/download.py --large-mb 64 --small-count 10 --small-mb 4 --link-mb 256 --repeat 1   # quick look
    python bench/download.py --cases link    # (c) only

(c) is one large file over a link that carries at most --link-rate MB/s per connection (the emulator
paces each connection, as WAN and S3 links do), the same link with --link-latency-ms before every
answer (a round trip and a store's time to its first byte, which every request pays; curl, one
request, is left out of that row), then the unpaced loopback: skyassets with its ranged
connections, curl with one stream and aria2c with as many connections as skyassets
(`aria2c -x N -s N -k SEGMENT`; scripts/bench-deps.sh installs it). curl and aria2c only write the
bytes, where skyassets also verifies them, so two verified baselines run beside them: aria2c checking
the file's SHA-256 once it is complete (`--checksum=sha-256=...`, over both links) and, unpaced, curl
followed by `openssl dgst -sha256` (over the paced link one stream is so slow that the hash adds
little). Each client runs in its own process; its peak RSS is printed (flat memory: far
below the file's size). skyassets' time is measured inside its process (no interpreter start), the
others' around theirs.

The MAST emulator serves the files over HTTP from a separate process (so the server does not share
the interpreter with the clients). Every client fetches the same files from the same server:
  skyassets  skyassets.archive.download.download_files (HTTP; S3 off so all three use the same path),
             verifying size and FITS checksums and hashing SHA-256 as it goes
  curl       one stream per file, one file at a time (`curl -o`)
  astroquery Observations.download_products (HTTP), the way most MAST scripts download
Each figure is the median of --repeat runs; the ratios are skyassets over the baseline. Files live
in /dev/shm by default, so the figures are the clients' and not the disk's (--workdir to change).
Targets: (a) >= 0.9x curl, (b) >= 3x astroquery, (c) >= 4x curl and >= 1x aria2c over the paced link,
>= 0.9x curl unpaced.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
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

from skyassets.archive.download import sha256_file


def _make_fits(path: Path, megabytes: float, seed: int) -> Path:
    """A FITS image of about ``megabytes`` MB of float32 noise with CHECKSUM/DATASUM."""
    side = int((megabytes * 1e6 / 4) ** 0.5)
    data = np.random.default_rng(seed).standard_normal((side, side), dtype=np.float32)
    fits.PrimaryHDU(data).writeto(path, checksum=True, overwrite=True)
    return path


def _make_large_fits(path: Path, megabytes: float) -> Path:
    """A FITS byte image of about ``megabytes`` MB with CHECKSUM/DATASUM, its data a noise block
    repeated; staged through a memory map so the generator never holds the file twice."""
    block = np.random.default_rng(7).integers(0, 256, 8 << 20, dtype=np.uint8)
    size = max(1, int(megabytes * 1e6) // block.size) * block.size
    staging = path.with_name(path.name + ".data")
    data = np.memmap(staging, dtype=np.uint8, mode="w+", shape=(size,))
    for start in range(0, size, block.size):
        data[start:start + block.size] = block
    fits.PrimaryHDU(data).writeto(path, checksum=True, overwrite=True)
    del data
    staging.unlink()
    return path


def _serve(home: str, sets: dict[str, list[str]], pipe) -> None:
    """Child process: an emulator publishing the benchmark files; sends back its URL and products,
    then takes ("link", bytes per second per connection, seconds before each answer) messages until "stop"."""
    from skyassets.emulator import Emulator

    with Emulator(Path(home), s3=False) as emu:
        products = {
            name: [emu.publish(Path(p), obs_id=f"bench-{name}", s3=False) for p in paths]
            for name, paths in sets.items()
        }
        pipe.send((emu.url, products))
        while (message := pipe.recv()) != "stop":
            emu.throttle, emu.latency = message[1:]
            pipe.send("ok")


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


_SKYASSETS_CHILD = """
import json, sys, time
from pathlib import Path
from skyassets.archive.download import DownloadConfig, FileRequest, download_files
url, name, size, out, connections = sys.argv[1:6]
request = FileRequest(filename=name, dest_dir=Path(out), http_url=url, expected_size=int(size))
start = time.perf_counter()
(result,) = download_files([request], DownloadConfig(prefer_s3=False, connections=int(connections)))
print(json.dumps({"seconds": time.perf_counter() - start, "error": result.error}))
"""


def _run_measured(argv: list[str]) -> tuple[float, float, str]:
    """Run a client process; (wall seconds, peak RSS in MB, its stdout). The peak comes from GNU time,
    a small process forking the client, so the bench's own memory is not counted in."""
    with tempfile.NamedTemporaryFile("w+") as rss, tempfile.TemporaryFile("w+") as err:
        timer = ["/usr/bin/time", "-f", "%M %U %S", "-o", rss.name] if Path("/usr/bin/time").exists() else []
        start = time.perf_counter()
        proc = subprocess.run(timer + argv, stdout=subprocess.PIPE, stderr=err, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {err.read().strip()[-500:]}")
        figures = (rss.read().strip().splitlines() or [""])[-1].split()
    if len(figures) == 3:
        print(f"    {Path(argv[0]).name}: {float(figures[1]) + float(figures[2]):.1f} s of CPU", flush=True)
        return seconds, int(figures[0]) / 1e3, proc.stdout
    return seconds, float("nan"), proc.stdout


def _link_clients(url: str, product: dict, connections: int, segment_mb: int, sha256: str):
    """The clients of case (c): each returns (seconds, peak RSS MB) for one fetch into ``out``;
    ``sha256`` is the file's, which the verified baselines check."""
    file_url = f"{url}/api/v0.1/Download/file?uri={product['dataURI']}"
    name = product["productFilename"]
    aria2c_argv = ["aria2c", "-q", f"-x{connections}", f"-s{connections}", f"-k{segment_mb}M", "--file-allocation=none",
                   "--allow-overwrite=true", "--auto-file-renaming=false"]

    def skyassets(out: Path) -> tuple[float, float]:
        _, rss, text = _run_measured([sys.executable, "-c", _SKYASSETS_CHILD, file_url, name,
                                      str(product["size"]), str(out), str(connections)])
        answer = json.loads(text.strip().splitlines()[-1])
        if answer["error"]:
            raise RuntimeError(f"skyassets failed: {answer['error']}")
        return answer["seconds"], rss

    def curl(out: Path) -> tuple[float, float]:
        seconds, rss, _ = _run_measured(["curl", "-sSf", "-o", str(out / name), file_url])
        return seconds, rss

    def aria2c(out: Path) -> tuple[float, float]:
        seconds, rss, _ = _run_measured([*aria2c_argv, "-d", str(out), "-o", name, file_url])
        return seconds, rss

    def aria2c_verified(out: Path) -> tuple[float, float]:
        # aria2c exits non-zero when the complete file does not have this SHA-256
        seconds, rss, _ = _run_measured([*aria2c_argv, f"--checksum=sha-256={sha256}", "-d", str(out), "-o", name,
                                         file_url])
        return seconds, rss

    def curl_verified(out: Path) -> tuple[float, float]:
        # the file, then its SHA-256 by OpenSSL (which uses the CPU's SHA instructions, unlike
        # coreutils' sha256sum, and reads faster than a pipe through tee)
        script = 'set -e; curl -sSf -o "$2" "$1"; openssl dgst -sha256 -r "$2"'
        seconds, rss, text = _run_measured(["bash", "-c", script, "bash", file_url, str(out / name)])
        if text.split()[0] != sha256:
            raise RuntimeError(f"curl, then openssl: {text.split()[0]}, not the file's SHA-256 {sha256}")
        return seconds, rss

    return {"skyassets": skyassets, "curl": curl, "aria2c": aria2c, "aria2c --checksum": aria2c_verified,
            "curl + openssl": curl_verified}


def _link_case(url: str, product: dict, sha256: str, args, pipe, work: Path) -> list[tuple[str, dict]]:
    """Case (c): rows of (link, {client: (MB/s, peak RSS MB)}): paced, paced with a wait before every
    answer (--link-latency-ms), unpaced."""
    every = _link_clients(url, product, args.connections, args.segment_mb, sha256)
    size = int(product["size"])
    rate, latency = args.link_rate * 1e6, args.link_latency_ms / 1e3
    paced = ["skyassets", "curl", "aria2c", "aria2c --checksum"]
    links = [(f"{args.link_rate:g} MB/s per connection", rate, 0.0, paced)]
    if latency:
        # one stream waits for one answer only: curl's row would be the paced one again
        links.append((f"{args.link_rate:g} MB/s, {args.link_latency_ms:g} ms answers", rate, latency,
                      ["skyassets", "aria2c", "aria2c --checksum"]))
    links.append(("unpaced", 0.0, 0.0, list(every)))
    rows = []
    for label, pace, wait, names in links:
        pipe.send(("link", pace, wait))
        pipe.recv()
        times: dict[str, list[float]] = {c: [] for c in names}
        rss: dict[str, float] = dict.fromkeys(names, 0.0)
        for _ in range(args.repeat):
            for index, client in enumerate(names):
                out = work / "out" / f"client{index}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                seconds, peak = every[client](out)
                print(f"  (c) {label}: {client} {size / seconds / 1e6:.0f} MB/s, peak RSS {peak:.0f} MB", flush=True)
                times[client].append(seconds)
                rss[client] = max(rss[client], peak)
                shutil.rmtree(out, ignore_errors=True)  # a 2 GB copy in /dev/shm is memory
        rows.append((label, {c: (size / statistics.median(t), rss[c]) for c, t in times.items()}))
    pipe.send(("link", 0.0, 0.0))
    pipe.recv()
    return rows


def _ratio(row: dict, baseline: str, width: int) -> str:
    """skyassets' MB/s over ``baseline``'s in ``row``, or a dash where the baseline did not run."""
    if baseline not in row:
        return f"{'-':>{width}}"
    return f"{row['skyassets'][0] / row[baseline][0]:>{width - 1}.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large-mb", type=float, default=512)
    parser.add_argument("--small-count", type=int, default=50)
    parser.add_argument("--small-mb", type=float, default=20)
    parser.add_argument("--parallel", type=int, default=4, help="skyassets' files in parallel")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--md5", choices=("auto", "always"), default="auto", help="skyassets' MD5 policy")
    parser.add_argument("--cases", default="large,small,link", help="which of large, small, link to run")
    parser.add_argument("--link-mb", type=float, default=2048, help="(c) the file's size")
    parser.add_argument("--link-rate", type=float, default=50, help="(c) MB/s each connection may carry")
    parser.add_argument("--link-latency-ms", type=float, default=50,
                        help="(c) a paced row with this wait before every answer, as over a long round trip (0: none)")
    parser.add_argument("--connections", type=int, default=8, help="(c) connections of skyassets and aria2c")
    parser.add_argument("--segment-mb", type=int, default=32, help="(c) aria2c's -k (skyassets' segment size)")
    parser.add_argument(
        "--workdir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where files are written (default: memory-backed /dev/shm, so the disk does not set the figure)",
    )
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    if not shutil.which("curl"):
        print("curl is not installed (scripts/bench-deps.sh installs it)", file=sys.stderr)
        return 2
    if "link" in cases and not shutil.which("aria2c"):
        print("aria2c is not installed, so case (c) has no multi-connection baseline: run scripts/bench-deps.sh "
              "(apt-get install aria2), or leave it out with --cases large,small", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="skyassets-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        (work / "src").mkdir()
        print("writing test files...")
        sets: dict[str, list[str]] = {}
        if "large" in cases:
            sets["large"] = [str(_make_fits(work / "src" / "bench_large_i2d.fits", args.large_mb, 0))]
        if "small" in cases:
            sets["small"] = [
                str(_make_fits(work / "src" / f"bench_small_{i:03d}_cal.fits", args.small_mb, i + 1))
                for i in range(args.small_count)
            ]
        if "link" in cases:
            sets["link"] = [str(_make_large_fits(work / "src" / "bench_link_i2d.fits", args.link_mb))]
        parent, child = mp.Pipe()
        server = mp.get_context("spawn").Process(target=_serve, args=(str(work / "emu"), sets, child), daemon=True)
        server.start()
        url, products = parent.recv()
        try:
            rows = []
            link_rows = []
            if "link" in cases:
                sha256 = sha256_file(Path(sets["link"][0]))
                link_rows = _link_case(url, products["link"][0], sha256, args, parent, work)
            for name in ("large", "small"):
                if name not in cases:
                    continue
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
    by_case = {row[0]: row[3] for row in rows}
    if large := by_case.get("large"):
        print(f"\n(a) one large file: skyassets / curl = {large['skyassets'] / large['curl']:.2f}x (target >= 0.9x)")
    if small := by_case.get("small"):
        print(f"(b) many files: skyassets / astroquery = {small['skyassets'] / small['astroquery']:.2f}x "
              "(target >= 3x)")
    if link_rows:
        print(f"\n(c) one {args.link_mb:.0f} MB file, {args.connections} connections for skyassets and aria2c "
              "(MB/s; peak RSS MB)")
        shown = ("skyassets", "curl", "aria2c", "aria2c --checksum", "curl + openssl")
        print(f"{'link':<28} " + " ".join(f"{c:>17}" for c in shown) + f" {'vs curl':>8} {'vs aria2c':>10}"
              f" {'vs verified aria2c':>19} {'vs verified curl':>17}")
        for label, row in link_rows:
            cells = " ".join(f"{row[c][0] / 1e6:>8.0f} ({row[c][1]:>5.0f})" if c in row else f"{'-':>17}"
                             for c in shown)
            ratios = [_ratio(row, b, w) for b, w in
                      (("curl", 8), ("aria2c", 10), ("aria2c --checksum", 19), ("curl + openssl", 17))]
            print(f"{label:<28} {cells} {' '.join(ratios)}")
        paced, unpaced = link_rows[0][1], link_rows[-1][1]
        print(f"paced: skyassets / curl = {paced['skyassets'][0] / paced['curl'][0]:.2f}x (target >= 4x), "
              f"skyassets / aria2c = {paced['skyassets'][0] / paced['aria2c'][0]:.2f}x (target >= 1x); "
              f"unpaced: skyassets / curl = {unpaced['skyassets'][0] / unpaced['curl'][0]:.2f}x (target >= 0.9x)")
        if len(link_rows) == 3:
            slow = link_rows[1][1]
            print(f"paced, {args.link_latency_ms:g} ms before every answer: skyassets / aria2c = "
                  f"{slow['skyassets'][0] / slow['aria2c'][0]:.2f}x")
        print(f"verified baselines: paced, skyassets / aria2c --checksum = "
              f"{paced['skyassets'][0] / paced['aria2c --checksum'][0]:.2f}x; unpaced, skyassets / curl + openssl "
              f"= {unpaced['skyassets'][0] / unpaced['curl + openssl'][0]:.2f}x, skyassets / aria2c --checksum = "
              f"{unpaced['skyassets'][0] / unpaced['aria2c --checksum'][0]:.2f}x")
        sha = _sha256_rate()
        print(f"SHA-256 of one stream on this machine: {sha / 1e6:.0f} MB/s, {sha / unpaced['curl'][0]:.2f}x curl's "
              "unpaced rate (a verified single stream cannot beat it)")
    return 0


def _sha256_rate(megabytes: int = 256) -> float:
    """Bytes/s of hashlib's SHA-256 over one in-memory buffer: the ceiling of one verified stream."""
    data = np.random.default_rng(0).bytes(megabytes << 20)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        hashlib.sha256(data).digest()
        best = min(best, time.perf_counter() - start)
    return len(data) / best


if __name__ == "__main__":
    sys.exit(main())
