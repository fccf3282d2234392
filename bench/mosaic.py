"""Mosaic time and peak memory: ``skyassets.imaging.mosaic.build_mosaic`` against bare ``reproject_and_coadd``.

    python bench/mosaic.py                  # 4 overlapping 2048x2048 inputs
    python bench/mosaic.py --size 1024      # quick look

Makes synthetic JWST NIRCam-like cal files (SCI in MJy/sr, ERR, DQ with a few DO_NOT_USE pixels,
stars on a sky whose level differs per input), four pointings on a 2x2 pattern overlapping by about
a third, each slightly rotated. Then runs, each in its own fresh Python process so that peak RSS
(the child's ``VmHWM``; ``ru_maxrss`` would carry over the parent's) is its own:
  bare       ``reproject_and_coadd`` with its defaults, ``reproject_interp`` (which it needs named) and
             ``match_background=True``, onto ``find_optimal_celestial_wcs`` of the inputs;
  skyassets  ``build_mosaic`` with its defaults (same optimal grid, background matching, ERR
             weights, DQ masking, FITS with SCI/CON/WHT and a PNG preview written).
Prints seconds and peak RSS of each and the ratios; targets: time <= 0.7x, peak RSS <= 0.4x the
bare run's. Exits 1 if a target is missed.
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

TIME_TARGET = 0.7
MEMORY_TARGET = 0.4

# Each child times its ``build`` and reports its own peak memory.
_REPORT = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
start = time.perf_counter()
shape = build(sys.argv[1:])
seconds = time.perf_counter() - start
peak_kib = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
print(json.dumps({"seconds": seconds, "rss_mb": peak_kib / 1024, "shape": list(shape)}))
"""

_BARE = """
from astropy.io import fits
from reproject import reproject_interp
from reproject.mosaicking import find_optimal_celestial_wcs, reproject_and_coadd

def build(paths):
    hdus = [fits.open(p)[1] for p in paths]
    wcs, shape = find_optimal_celestial_wcs(hdus)
    reproject_and_coadd(hdus, wcs, shape_out=shape, reproject_function=reproject_interp, match_background=True)
    return shape
""" + _REPORT

_SKYASSETS = """
from pathlib import Path
from skyassets.imaging.mosaic import MosaicInput, build_mosaic

def build(args):
    dest, paths = Path(args[0]), args[1:]
    return build_mosaic([MosaicInput(Path(p)) for p in paths], dest).shape
""" + _REPORT


def make_inputs(folder: Path, size: int) -> list[Path]:
    """Four overlapping NIRCam-like cal files of ``size`` x ``size`` pixels."""
    from skyassets.emulator.sky import make_wcs

    scale = 0.031
    rng = np.random.default_rng(2024)
    paths = []
    yy, xx = np.mgrid[-6:7, -6:7]
    star = np.exp(-(xx**2 + yy**2) / (2 * 1.0**2))
    for k, (fx, fy) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        shift = 0.65 * size * scale / 3600
        wcs = make_wcs(30.0 + fx * shift / math.cos(math.radians(-10.0)), -10.0 + fy * shift, scale,
                       20.0 + 0.5 * k, size, sip=False)
        sky = 0.25 + 0.02 * k
        sci = rng.normal(sky, 0.03, (size, size)).astype(np.float32)
        for x, y in rng.integers(8, size - 8, (size * size // 4000, 2)):
            sci[y - 6:y + 7, x - 6:x + 7] += np.float32(rng.uniform(0.1, 20.0)) * star.astype(np.float32)
        dq = np.zeros((size, size), np.uint32)
        bad = rng.integers(0, size, (size * size // 1000, 2))
        dq[bad[:, 1], bad[:, 0]] = 1
        sci[dq > 0] = np.nan
        header = wcs.to_header()
        primary = fits.PrimaryHDU()
        primary.header["TELESCOP"] = "JWST"
        hdu = fits.ImageHDU(sci, header=header, name="SCI")
        hdu.header["BUNIT"] = "MJy/sr"
        err = fits.ImageHDU(np.full((size, size), 0.03, np.float32), header=header, name="ERR")
        path = folder / f"in{k}_cal.fits"
        fits.HDUList([primary, hdu, err, fits.ImageHDU(dq, header=header, name="DQ")]).writeto(path)
        paths.append(path)
    return paths


def run(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="side of each input in pixels")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-mosaic-"))
    try:
        paths = [str(p) for p in make_inputs(folder, args.size)]
        bare = run(_BARE, *paths)
        ours = run(_SKYASSETS, str(folder / "mosaic.fits"), *paths)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    time_ratio = ours["seconds"] / bare["seconds"]
    memory_ratio = ours["rss_mb"] / bare["rss_mb"]
    print(f"4 inputs of {args.size}x{args.size}, output {bare['shape'][0]}x{bare['shape'][1]}")
    print(f"bare reproject_and_coadd  {bare['seconds']:7.2f} s  {bare['rss_mb']:7.0f} MB peak RSS")
    print(f"skyassets build_mosaic    {ours['seconds']:7.2f} s  {ours['rss_mb']:7.0f} MB peak RSS")
    print(f"time ratio   {time_ratio:.2f} (target <= {TIME_TARGET})")
    print(f"memory ratio {memory_ratio:.2f} (target <= {MEMORY_TARGET})")
    return 0 if time_ratio <= TIME_TARGET and memory_ratio <= MEMORY_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
