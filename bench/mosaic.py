"""Mosaics against the truth: ``build_mosaic`` beside ``reproject_and_coadd`` and ``drizzle``.

    python bench/mosaic.py                 # 30" skies: 4 x 0.031" (same scale), 2 x 0.031" + 2 x 0.063" (mixed)
    python bench/mosaic.py --size 60       # larger skies (inputs of 60"/0.031" = 1935 px a side)
    python bench/mosaic.py --repeat 5      # each method five times, interleaved: median time, largest peak

Two synthetic skies of known truth (``skyassets_tests/imaging/truth_sky.py``): Gaussian stars of
0.08" FWHM, rotated and dithered JWST-like cal files (SCI in MJy/sr, ERR, DQ) with a background
level of their own, unflagged cosmic rays, DO_NOT_USE hot pixels with finite values and JUMP_DET
blobs (good values). Every method makes its mosaic on the same grid (``find_optimal_celestial_wcs``
of the inputs), each in a fresh Python process whose peak RSS (``VmHWM``) is its own:
  reproject  ``reproject_and_coadd(reproject_interp, match_background=True)``, DO_NOT_USE pixels NaN;
  drizzle    drizzle 3 ``Drizzle(kernel="square")``, pixfrac 1, one inverse-variance weight per
             input (1 / median ERR^2, 0 on DO_NOT_USE), each input's sigma-clipped sky subtracted
             first (its own pipeline's skymatch does that; drizzle has no background matching);
  skyassets  ``build_mosaic`` with its defaults (background matching, outlier rejection, FITS out,
             two slabs at a time on two threads where the machine has two cores);
  1 thread   the same on one thread, one slab at a time.
Then, on each mosaic: the flux of every isolated truth star (aperture minus annulus) over its true
flux, mean and standard deviation; the RMS offset of their centroids from the truth (mas);
coverage (the share of output pixels whose centre lies in a valid input pixel that have a value),
holes (such pixels without one) and spill (values outside every valid input pixel); and the
cosmic rays left (hits under at least two inputs, away from stars, still 6 sigma above the
truth). A mosaic of two seconds varies by a tenth from one process to the next on a busy machine,
so ``--repeat`` runs the methods in turn that many times and keeps each one's median time and
largest peak. Prints one table per sky and skyassets' time and memory over drizzle's; exits 1 when
skyassets is slower or larger than drizzle.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from skyassets_tests.imaging.truth_sky import Truth, make_sky, measure, render  # noqa: E402

# Each child builds its mosaic, saves SCI (NaN where empty) as .npy and reports time and peak memory.
_REPORT = """
import json, sys, time, warnings
import numpy as np
warnings.simplefilter("ignore")
args = json.loads(sys.argv[1])
start = time.perf_counter()
sci = build(args)
seconds = time.perf_counter() - start
peak_kib = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
np.save(args["out"], sci)
print(json.dumps({"seconds": seconds, "rss_mb": peak_kib / 1024}))
"""

_GRID = """
from astropy.io import fits
from astropy.wcs import WCS

def grid(args):
    return WCS(fits.Header.fromstring(args["wcs"])), tuple(args["shape"])
"""

_REPROJECT = _GRID + """
import numpy as np
from reproject import reproject_interp
from reproject.mosaicking import reproject_and_coadd

def build(args):
    wcs, shape = grid(args)
    inputs = []
    for path in args["paths"]:
        with fits.open(path) as hdul:
            sci = hdul["SCI"].data.astype(np.float32)
            sci[(hdul["DQ"].data & 1) != 0] = np.nan
            inputs.append((sci, WCS(hdul["SCI"].header)))
    array, footprint = reproject_and_coadd(inputs, wcs, shape_out=shape, reproject_function=reproject_interp,
                                           match_background=True)
    array[footprint == 0] = np.nan
    return array
""" + _REPORT

_DRIZZLE = _GRID + """
import numpy as np
from astropy.stats import sigma_clipped_stats
from drizzle.resample import Drizzle
from drizzle.utils import calc_pixmap

def build(args):
    wcs, shape = grid(args)
    driz = Drizzle(kernel="square", out_shape=shape, fillval=np.nan)
    for path in args["paths"]:
        with fits.open(path) as hdul:
            sci = hdul["SCI"].data.astype(np.float32)
            good = (hdul["DQ"].data & 1) == 0
            err = hdul["ERR"].data
            in_wcs = WCS(hdul["SCI"].header)
        sky = sigma_clipped_stats(sci[good], sigma=3.0)[1]
        weight = np.where(good, 1.0 / float(np.median(err[good])) ** 2, 0.0).astype(np.float32)
        in_wcs.array_shape = sci.shape
        pixmap = calc_pixmap(in_wcs, wcs, shape=sci.shape)
        driz.add_image(sci - np.float32(sky), exptime=1.0, pixmap=pixmap, weight_map=weight, pixfrac=1.0)
    out = driz.out_img.copy()
    out[driz.out_wht <= 0] = np.nan
    return out
""" + _REPORT

_SKYASSETS = _GRID + """
from pathlib import Path
from skyassets.imaging.mosaic import MosaicInput, build_mosaic

def build(args):
    wcs, shape = grid(args)
    result = build_mosaic([MosaicInput(Path(p)) for p in args["paths"]], Path(args["out"]).with_suffix(".fits"),
                          wcs=wcs, shape=shape)
    return fits.getdata(result.path, "SCI")
""" + _REPORT

# skyassets works on two slabs at once (``mosaic.THREADS``); the same on one thread, for comparison.
_ONE_THREAD = _SKYASSETS.replace("from skyassets.imaging.mosaic import",
                                 "import skyassets.imaging.mosaic\nskyassets.imaging.mosaic.THREADS = 1\n"
                                 "from skyassets.imaging.mosaic import")

METHODS = {"reproject": _REPROJECT, "drizzle": _DRIZZLE, "skyassets": _SKYASSETS, "1 thread": _ONE_THREAD}


def run(script: str, args: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def true_coverage(truth: Truth, wcs, shape: tuple[int, int]) -> np.ndarray:
    """Output pixels whose centre lies in a valid (not DO_NOT_USE) pixel of at least one input."""
    from astropy.io import fits
    from astropy.wcs.utils import pixel_to_pixel

    from skyassets.imaging.resample import covered

    gx, gy = np.meshgrid(np.arange(shape[1], dtype=float), np.arange(shape[0], dtype=float))
    out = np.zeros(shape, bool)
    for exposure in truth.exposures:
        good = (fits.getdata(exposure.path, "DQ") & 1) == 0
        x, y = pixel_to_pixel(wcs, exposure.wcs, gx, gy)
        out |= covered(good, np.stack([y, x]))
    return out


def cosmic_rays_left(sci: np.ndarray, truth: Truth, wcs, model: np.ndarray, depth: np.ndarray) -> tuple[int, int]:
    """(hits still 6 sigma above the truth, hits checked): hits under >= 2 inputs, away from stars."""
    level = np.nanmedian(sci - model)
    left = checked = 0
    for exposure in truth.exposures:
        hits = np.array(exposure.cosmic_rays, float)
        x, y = wcs.world_to_pixel(exposure.wcs.pixel_to_world(hits[:, 0], hits[:, 1]))
        for ix, iy in zip(np.rint(x).astype(int), np.rint(y).astype(int), strict=True):
            near = (slice(iy - 3, iy + 4), slice(ix - 3, ix + 4))
            if not (3 <= ix < sci.shape[1] - 3 and 3 <= iy < sci.shape[0] - 3):
                continue
            if (depth[near] < 2).any() or model[near].max() > 0.5 or not np.isfinite(sci[near]).all():
                continue
            checked += 1
            left += bool(np.abs(sci[near] - model[near] - level).max() > 6 * 0.02)
    return left, checked


def bench_sky(name: str, folder: Path, scales: tuple[float, ...], per_scale: int, size: float, repeat: int) -> dict:
    from astropy.io import fits
    from astropy.wcs import WCS
    from astropy.wcs.utils import pixel_to_pixel
    from reproject.mosaicking import find_optimal_celestial_wcs

    truth = make_sky(folder, scales=scales, per_scale=per_scale, size_arcsec=size, n_stars=int(size * size / 6),
                     seed=11)
    frames = [(fits.getdata(e.path, "SCI").shape, e.wcs) for e in truth.exposures]
    wcs, shape = find_optimal_celestial_wcs([(np.zeros(s, np.float32), w) for s, w in frames])
    wcs_text = wcs.to_header(relax=True).tostring()
    paths = [str(e.path) for e in truth.exposures]
    covered = true_coverage(truth, wcs, shape)
    depth = np.zeros(shape, int)
    gx, gy = np.meshgrid(np.arange(shape[1], dtype=float), np.arange(shape[0], dtype=float))
    for e in truth.exposures:
        x, y = pixel_to_pixel(wcs, e.wcs, gx, gy)
        n = fits.getdata(e.path, "SCI").shape
        depth += (x > -0.5) & (x < n[1] - 0.5) & (y > -0.5) & (y < n[0] - 0.5)
    model = render(WCS(wcs.to_header()), shape, math.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600,
                   truth.ra, truth.dec, truth.flux)
    runs: dict[str, list[dict]] = {method: [] for method in METHODS}
    for _ in range(repeat):
        for method, script in METHODS.items():
            out = folder / f"{method}.npy"
            runs[method].append(run(script, {"paths": paths, "wcs": wcs_text, "shape": list(shape), "out": str(out)}))
    rows = {}
    for method in METHODS:
        figures = {"seconds": float(np.median([r["seconds"] for r in runs[method]])),
                   "rss_mb": max(r["rss_mb"] for r in runs[method])}
        sci = np.load(folder / f"{method}.npy")
        ratio, offset, ok = measure(sci, wcs, truth)
        finite = np.isfinite(sci)
        left, checked = cosmic_rays_left(sci, truth, wcs, model, depth)
        rows[method] = figures | {
            "flux": (float(ratio.mean()), float(ratio.std())), "stars": int(ok.sum()),
            "astrometry_mas": float(np.sqrt(np.mean(offset**2))),
            "coverage": float((finite & covered).sum() / covered.sum()), "holes": int((covered & ~finite).sum()),
            "spill": int((finite & ~covered).sum()), "cosmic_rays": (left, checked),
        }
    print(f"\n{name}: {len(paths)} inputs ({', '.join(f'{s}' for s in scales)}\"/px), output {shape[1]}x{shape[0]}, "
          f"{rows['skyassets']['stars']} stars measured" + (f", median time of {repeat} runs" if repeat > 1 else ""))
    print(f"{'':10s} {'seconds':>8s} {'peak MB':>8s} {'flux ratio':>17s} {'astrom. mas':>11s} {'coverage':>9s} "
          f"{'holes':>6s} {'spill':>6s} {'CRs left':>9s}")
    for method, r in rows.items():
        print(f"{method:10s} {r['seconds']:8.2f} {r['rss_mb']:8.0f} {r['flux'][0]:8.4f} ± {r['flux'][1]:.4f} "
              f"{r['astrometry_mas']:11.2f} {100 * r['coverage']:8.3f}% {r['holes']:6d} {r['spill']:6d} "
              f"{r['cosmic_rays'][0]:4d}/{r['cosmic_rays'][1]:<4d}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=30.0, help="side of each sky in arcsec")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each method, interleaved (median time)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-mosaic-"))
    try:
        skies = {
            "same scale": bench_sky("same scale", folder / "same", (0.031,), 4, args.size, args.repeat),
            "mixed scales": bench_sky("mixed scales", folder / "mixed", (0.031, 0.063), 2, args.size, args.repeat),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ok = True
    print()
    for name, rows in skies.items():
        time_ratio = rows["skyassets"]["seconds"] / rows["drizzle"]["seconds"]
        memory_ratio = rows["skyassets"]["rss_mb"] / rows["drizzle"]["rss_mb"]
        ok &= time_ratio <= 1.0 and memory_ratio <= 1.0
        print(f"{name}: skyassets / drizzle time {time_ratio:.2f}, peak memory {memory_ratio:.2f} (targets <= 1); "
              f"on one thread {rows['1 thread']['seconds'] / rows['drizzle']['seconds']:.2f} and "
              f"{rows['1 thread']['rss_mb'] / rows['drizzle']['rss_mb']:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
