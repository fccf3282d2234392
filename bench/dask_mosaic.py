"""A mosaic of many inputs on a local Dask cluster, block by block, against ``build_mosaic`` in one process.

    python bench/dask_mosaic.py                          # 64 inputs of 512x512 on an 8x8 pattern, 2 workers
    python bench/dask_mosaic.py --inputs 16 --size 256   # quick look

Makes synthetic JWST NIRCam-like cal files (SCI in MJy/sr, ERR, DQ, stars, a sky level of their own)
on a square pattern overlapping by a third. Then, each in a fresh Python process:
  one process  ``skyassets.imaging.mosaic.build_mosaic`` (background matching, outlier rejection);
  dask         ``skyassets.imaging.blocks.build_mosaic_blocks`` with a ``LocalCluster`` of ``--workers``
               worker processes (one thread each), output blocks of ``--block`` pixels a side.
Prints seconds, peak RSS of the one process, of the process assembling the Dask mosaic and of the
busiest worker (its high-water mark while building a block, reported with it), the ratios, and the
largest difference between the two mosaics' SCI relative to the input noise.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

NOISE = 0.03

_REPORT = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
start = time.perf_counter()
extra = build(sys.argv[1:])
seconds = time.perf_counter() - start
peak_kib = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
print(json.dumps({"seconds": seconds, "rss_mb": peak_kib / 1024, **extra}))
"""

_ONE = """
from pathlib import Path
from skyassets.imaging.mosaic import MosaicInput, build_mosaic

def build(args):
    result = build_mosaic([MosaicInput(Path(p)) for p in args[2:]], Path(args[0]))
    return {"shape": list(result.shape)}
""" + _REPORT

_DASK = """
from pathlib import Path
from distributed import Client, LocalCluster
from skyassets.imaging.blocks import build_mosaic_blocks
from skyassets.imaging.mosaic import MosaicInput

def build(args):
    workers, block = (int(n) for n in args[1].split(","))
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \\
            Client(cluster) as client:
        result = build_mosaic_blocks([MosaicInput(Path(p)) for p in args[2:]], Path(args[0]), client.get_executor(),
                                     block=(block, block))
    return {"shape": list(result.shape), "worker_mb": result.header["BLKPEAK"], "blocks": result.header["NBLOCKS"]}
""" + _REPORT


def make_inputs(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` overlapping NIRCam-like cal files of ``size`` x ``size`` pixels on a square pattern."""
    from skyassets.emulator.sky import make_wcs

    side = math.ceil(math.sqrt(count))
    scale = 0.031
    shift = 0.65 * size * scale / 3600
    rng = np.random.default_rng(64)
    yy, xx = np.mgrid[-6:7, -6:7]
    star = np.exp(-(xx**2 + yy**2) / 2.0).astype(np.float32)
    paths = []
    for k in range(count):
        fx, fy = k % side, k // side
        wcs = make_wcs(30.0 + fx * shift / math.cos(math.radians(-10.0)), -10.0 + fy * shift, scale,
                       20.0 + 0.1 * k, size, sip=False)
        sci = rng.normal(0.25 + 0.01 * (k % 7), NOISE, (size, size)).astype(np.float32)
        for x, y in rng.integers(8, size - 8, (size * size // 4000, 2)):
            sci[y - 6:y + 7, x - 6:x + 7] += np.float32(rng.uniform(0.1, 20.0)) * star
        header = wcs.to_header()
        primary = fits.PrimaryHDU()
        primary.header["TELESCOP"] = "JWST"
        hdu = fits.ImageHDU(sci, header=header, name="SCI")
        hdu.header["BUNIT"] = "MJy/sr"
        err = fits.ImageHDU(np.full((size, size), NOISE, np.float32), header=header, name="ERR")
        dq = fits.ImageHDU(np.zeros((size, size), np.uint32), header=header, name="DQ")
        path = folder / f"in{k:03d}_cal.fits"
        fits.HDUList([primary, hdu, err, dq]).writeto(path)
        paths.append(path)
    return paths


def run(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--size", type=int, default=512, help="side of each input in pixels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block", type=int, default=1024, help="side of an output block in pixels")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-dask-mosaic-"))
    try:
        paths = [str(p) for p in make_inputs(folder, args.inputs, args.size)]
        one = run(_ONE, str(folder / "one.fits"), "", *paths)
        dask = run(_DASK, str(folder / "dask.fits"), f"{args.workers},{args.block}", *paths)
        a, b = fits.getdata(folder / "one.fits", "SCI"), fits.getdata(folder / "dask.fits", "SCI")
        finite = np.isfinite(a) & np.isfinite(b)
        difference = float(np.max(np.abs(a - b)[finite])) / NOISE
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.inputs} inputs of {args.size}x{args.size}, output {one['shape'][0]}x{one['shape'][1]}, "
          f"{dask['blocks']} blocks of {args.block}x{args.block} on {args.workers} worker processes")
    print(f"one process  build_mosaic         {one['seconds']:7.1f} s  {one['rss_mb']:6.0f} MB peak RSS")
    print(f"dask         build_mosaic_blocks  {dask['seconds']:7.1f} s  {dask['worker_mb']:6.0f} MB peak RSS per worker"
          f" ({dask['rss_mb']:.0f} MB the assembling process)")
    print(f"time ratio dask / one process       {dask['seconds'] / one['seconds']:.2f}")
    print(f"memory ratio worker / one process   {dask['worker_mb'] / one['rss_mb']:.2f}")
    print(f"largest SCI difference              {difference:.3f} sigma of the input noise")
    return 0


if __name__ == "__main__":
    sys.exit(main())
