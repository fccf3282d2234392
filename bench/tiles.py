"""Tile-pyramid time and peak memory: skyassets' HiPS against reproject's ``reproject_to_hips`` and toasty.

    python bench/tiles.py                         # a 4096x4096 float32 mosaic, all three
    python bench/tiles.py --size 20000 --only skyassets   # 1.6 GB of pixels: memory stays bounded

Writes a synthetic mosaic (SCI extension, TAN, 0.06"/px, a smooth sky with a little structure) slab by
slab, then tiles it, each tiler in its own fresh Python process so that peak RSS (the child's
``VmHWM``) is its own:
  skyassets  ``skyassets.tiles.hips.build_hips`` on ``FitsRows`` (rows memory-mapped a slab at a
             time): HiPS FITS tiles at the deepest order, every order down to 3, Allsky, MOC, properties;
  reproject  ``reproject.hips.reproject_to_hips(path, hdu_in=1, reproject_function=reproject_interp)``,
             the same deepest order (its own choice), every order down to 0, properties;
  toasty     ``toasty.tile_fits(path, hdu_index=1, tiling_method=TAN)``: a WWT study pyramid (TAN
             tiles, 256 px) with its cascade, the kind of pyramid toasty makes without Java (its HiPS
             route runs hipsgen, a Java program).
Prints seconds, peak RSS and image files written, and the ratios of skyassets to reproject (the baseline
that makes the same HiPS). Targets: time <= 0.7x and peak RSS <= 0.5x reproject's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

TIME_TARGET = 0.7
MEMORY_TARGET = 0.5

_REPORT = """
import json, sys, time, warnings
from pathlib import Path
warnings.simplefilter("ignore")
start = time.perf_counter()
build(Path(sys.argv[1]), Path(sys.argv[2]))
seconds = time.perf_counter() - start
peak_kib = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
tiles = sum(1 for p in Path(sys.argv[2]).rglob("*") if p.suffix in (".fits", ".png"))
print(json.dumps({"seconds": seconds, "rss_mb": peak_kib / 1024, "tiles": tiles}))
"""

TILERS = {
    "skyassets": """
from skyassets.tiles.hips import FitsRows, build_hips
def build(src, out):
    build_hips(FitsRows(src, "SCI"), out, tile_format="fits", title="bench", creator_did="ivo://skyassets/P/bench")
""",
    "reproject": """
from reproject import reproject_interp
from reproject.hips import reproject_to_hips
def build(src, out):
    reproject_to_hips(str(src), hdu_in=1, coord_system_out="equatorial", reproject_function=reproject_interp,
                      output_directory=str(out))
""",
    "toasty": """
from toasty import tile_fits
from toasty.fits_tiler import TilingMethod
def build(src, out):
    tile_fits(str(src), out_dir=str(out), hdu_index=1, tiling_method=TilingMethod.TAN, parallel=1)
""",
}


def make_mosaic(path: Path, size: int, slab: int = 1024) -> None:
    """A ``size`` x ``size`` float32 mosaic written slab by slab (never whole in memory)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [size / 2, size / 2]
    wcs.wcs.cdelt = [-0.06 / 3600, 0.06 / 3600]
    header = fits.Header()
    header["XTENSION"], header["BITPIX"], header["NAXIS"] = "IMAGE", -32, 2
    header["NAXIS1"], header["NAXIS2"], header["PCOUNT"], header["GCOUNT"] = size, size, 0, 1
    header["EXTNAME"] = "SCI"
    header.update(wcs.to_header())
    x = np.arange(size, dtype=np.float32)
    with open(path, "wb") as out:
        out.write(fits.PrimaryHDU().header.tostring().encode())
        out.write(header.tostring().encode())
        for first in range(0, size, slab):
            y = np.arange(first, min(first + slab, size), dtype=np.float32)[:, None]
            rows = 0.3 + 1e-5 * x[None, :] + 0.2 * np.sin(x[None, :] / 97.0) * np.cos(y / 131.0)
            out.write(rows.astype(">f4").tobytes())
        out.write(b"\0" * (-out.tell() % 2880))


def run(name: str, source: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", TILERS[name] + _REPORT, str(source), str(out)],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{name}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="side of the mosaic in pixels")
    parser.add_argument("--only", choices=sorted(TILERS), action="append", help="run only these (repeatable)")
    args = parser.parse_args()
    names = args.only or ["skyassets", "reproject", "toasty"]
    folder = Path(tempfile.mkdtemp(prefix="bench-tiles-"))
    results = {}
    try:
        source = folder / "mosaic.fits"
        make_mosaic(source, args.size)
        print(f"mosaic {args.size}x{args.size} float32 ({source.stat().st_size / 1e6:.0f} MB)")
        for name in names:
            results[name] = run(name, source, folder / name)
            r = results[name]
            print(f"  {name:<10} {r['seconds']:8.1f} s  peak RSS {r['rss_mb']:7.0f} MB  {r['tiles']:6d} files",
                  flush=True)
            shutil.rmtree(folder / name, ignore_errors=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if "skyassets" in results and "reproject" in results:
        ours, base = results["skyassets"], results["reproject"]
        time_ratio, memory_ratio = ours["seconds"] / base["seconds"], ours["rss_mb"] / base["rss_mb"]
        print(f"skyassets / reproject: time {time_ratio:.2f} (target <= {TIME_TARGET}), "
              f"peak RSS {memory_ratio:.2f} (target <= {MEMORY_TARGET})")
        return 0 if time_ratio <= TIME_TARGET and memory_ratio <= MEMORY_TARGET else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
