"""Image quality speed: ``skyassets.imaging.quality.measure_array`` against the bare photutils chain, on one core.

    python bench/quality.py                          # 3 star fields of 2048x2048, median of 3 runs
    python bench/quality.py --images 1 --repeat 1    # quick look

Makes synthetic 2048x2048 JWST NIRCam-like images (deterministic seeds): a few thousand Moffat stars
of known FWHM, pixel-integrated, with a power-law flux distribution, on a sky with Poisson and read
noise, a few saturated stars (clipped at full well, DQ SATURATED), cosmic-ray hits the DQ does not
flag and NaN bad pixels (DQ DO_NOT_USE), with a TAN WCS and a NIRCam header. Then times, in one run
and interleaved, on each image:
  skyassets  ``measure_array`` with the image's DQ, header, WCS and zero point: the whole metric set
             (pixel fractions, WCS check, background, detection, cosmic rays, PSF fits, depth, sources);
  bare       the usual photutils chain: ``Background2D`` (64 px boxes, 3x3 filter, ``SigmaClip``,
             ``MedianBackground``), ``DAOStarFinder`` at 5 sigma over the background RMS with the
             known FWHM, then the FWHM from an astropy ``Gaussian2D`` fitted (``LevMarLSQFitter``) to
             an 11x11 cutout of every detected isolated star, the naive way;
  sampled    the same chain fitting only the 50 brightest isolated stars, as skyassets samples:
             the stricter baseline, which the ratio target is checked against.
The process is pinned to one core and BLAS/OpenMP to one thread, so the figures are one core's.
Prints the median seconds per image of each, the FWHM each found against the truth, the ratios of
skyassets to both baselines (target <= 1.0 against the sampled one) and skyassets' seconds per
image (target <= 2.5 s); exits 1 if a target is missed.
"""

from __future__ import annotations

import os

for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_threads] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.modeling import fitting, models  # noqa: E402
from astropy.stats import SigmaClip  # noqa: E402
from astropy.wcs import WCS  # noqa: E402
from photutils.background import Background2D, MedianBackground  # noqa: E402
from photutils.detection import DAOStarFinder  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from skyassets.imaging.quality import measure_array  # noqa: E402

TARGET_RATIO = 1.0
TARGET_SECONDS = 2.5
SIDE = 2048
FWHM_PIX = 2.0
MOFFAT_BETA = 2.5
PIXEL_SCALE = 0.031
SKY, READ_NOISE = 100.0, 10.0  # electrons
FULL_WELL = 60_000.0
ZP_AB = 28.0
JWST_DO_NOT_USE, JWST_SATURATED = 1, 2
CUTOUT = 5  # half-size of the bare chain's fitting cutouts
ISOLATION = 10.0  # px: no other detection this close


# ------------------------------------------------------------------------------------- images
@dataclass
class Field:
    data: np.ndarray
    dq: np.ndarray
    header: fits.Header
    wcs: WCS
    stars: int


def _moffat_stamp(dx: float, dy: float, flux: float, radius: int, sub: int = 3) -> np.ndarray:
    """A Moffat star of total ``flux`` centred ``(dx, dy)`` from the stamp centre, averaged over
    ``sub`` x ``sub`` sub-pixels as a detector integrates it."""
    alpha = FWHM_PIX / (2 * math.sqrt(2 ** (1 / MOFFAT_BETA) - 1))
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    axis = (np.arange(-radius, radius + 1)[:, None] + offsets[None, :]).ravel()
    r2 = (axis[None, :] - dx) ** 2 + (axis[:, None] - dy) ** 2
    profile = (MOFFAT_BETA - 1) / (math.pi * alpha**2) * (1 + r2 / alpha**2) ** -MOFFAT_BETA
    side = 2 * radius + 1
    return flux * profile.reshape(side, sub, side, sub).mean(axis=(1, 3))


def make_field(seed: int, stars: int = 3000, saturated: int = 5, cosmic_rays: int = 300,
               bad_fraction: float = 5e-4) -> Field:
    """One synthetic NIRCam short-wavelength exposure (electrons), with its DQ, header and WCS."""
    rng = np.random.default_rng(seed)
    image = np.full((SIDE, SIDE), SKY)
    peak_per_flux = _moffat_stamp(0, 0, 1.0, 0)[0, 0]
    faintest = 3 * math.sqrt(SKY + READ_NOISE**2) / peak_per_flux  # peak at 3 sigma
    fluxes = np.concatenate([
        np.minimum(faintest * rng.uniform(size=stars) ** (-1 / 0.8), 0.5 * FULL_WELL / peak_per_flux),
        rng.uniform(5, 30, saturated) * FULL_WELL / peak_per_flux,
    ])
    for flux in fluxes:
        radius = 8 if flux < 1e5 else 24
        x, y = rng.uniform(radius, SIDE - radius - 1, 2)
        xi, yi = round(x), round(y)
        image[yi - radius:yi + radius + 1, xi - radius:xi + radius + 1] += _moffat_stamp(x - xi, y - yi, flux, radius)
    data = (rng.poisson(image) + rng.normal(0, READ_NOISE, image.shape)).astype(np.float32)
    for _ in range(cosmic_rays):
        x, y = rng.integers(2, SIDE - 6, 2)
        length, direction = rng.integers(1, 5), rng.choice([(0, 1), (1, 0), (1, 1)])
        for step in range(length):
            data[y + step * direction[0], x + step * direction[1]] += rng.uniform(500, 20_000)
    dq = np.zeros(data.shape, np.uint32)
    full = data >= FULL_WELL
    data[full] = FULL_WELL
    dq[full] |= JWST_SATURATED
    bad = rng.random(data.shape) < bad_fraction
    data[bad] = np.nan
    dq[bad] |= JWST_DO_NOT_USE
    header = fits.Header({"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "DETECTOR": "NRCA1", "FILTER": "F200W",
                          "ENG_QUAL": "OK", "BUNIT": "electrons"})
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [SIDE / 2 + 0.5, SIDE / 2 + 0.5]
    wcs.wcs.crval = [53.16 + seed, -27.78]
    wcs.wcs.cdelt = [-PIXEL_SCALE / 3600, PIXEL_SCALE / 3600]
    return Field(data, dq, header, wcs, len(fluxes))


# ---------------------------------------------------------------------------------- the chains
SAMPLED_FITS = 50


@dataclass
class Result:
    seconds: float
    n_sources: int
    n_fitted: int
    fwhm: float | None


def run_skyassets(field: Field) -> Result:
    data = field.data.copy()
    started = time.perf_counter()
    measured = measure_array(data, dq=field.dq, dq_kind="jwst", header=field.header, zp_ab=ZP_AB,
                             saturation=FULL_WELL, wcs=field.wcs)
    seconds = time.perf_counter() - started
    m = measured.metrics
    if not m["usable"] or m["fwhm_pix"] is None:
        raise RuntimeError(f"skyassets could not measure the image: {m['problem']}")
    return Result(seconds, m["n_sources"], m["n_stars_fitted"], m["fwhm_pix"])


def run_bare(field: Field, sample: int | None = None) -> Result:
    """The photutils chain; ``sample`` fits only that many of the brightest isolated stars."""
    data = field.data.copy()
    started = time.perf_counter()
    mask = ~np.isfinite(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bkg = Background2D(data, (64, 64), mask=mask, filter_size=(3, 3), sigma_clip=SigmaClip(sigma=3.0),
                           bkg_estimator=MedianBackground())
        residual = data - bkg.background
        found = DAOStarFinder(threshold=5.0 * bkg.background_rms_median, fwhm=FWHM_PIX)(residual, mask=mask)
        x, y = np.asarray(found["x_centroid"]), np.asarray(found["y_centroid"])
        crowded = np.zeros(len(x), bool)
        for i, j in cKDTree(np.column_stack([x, y])).query_pairs(ISOLATION):
            crowded[[i, j]] = True
        yy, xx = np.mgrid[-CUTOUT:CUTOUT + 1, -CUTOUT:CUTOUT + 1]
        fitter = fitting.LevMarLSQFitter()
        sigma = FWHM_PIX / (2 * math.sqrt(2 * math.log(2)))
        widths = []
        order = np.argsort(-np.asarray(found["flux"]))
        chosen = [i for i in order if not crowded[i]][:sample]
        for xc, yc in zip(x[chosen], y[chosen], strict=True):
            xi, yi = round(xc), round(yc)
            if not (CUTOUT <= xi < data.shape[1] - CUTOUT and CUTOUT <= yi < data.shape[0] - CUTOUT):
                continue
            cut = residual[yi - CUTOUT:yi + CUTOUT + 1, xi - CUTOUT:xi + CUTOUT + 1]
            if not np.isfinite(cut).all():
                continue
            start = models.Gaussian2D(cut.max(), xc - xi, yc - yi, sigma, sigma)
            fit = fitter(start, xx, yy, cut)
            widths.append(2 * math.sqrt(2 * math.log(2)) * math.sqrt(abs(fit.x_stddev.value * fit.y_stddev.value)))
    seconds = time.perf_counter() - started
    return Result(seconds, len(x), len(widths), float(np.median(widths)) if widths else None)


# ---------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3, help="number of synthetic images (default 3)")
    parser.add_argument("--stars", type=int, default=3000, help="stars per image (default 3000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each chain per image; the median counts")
    parser.add_argument("--core", type=int, default=0, help="the CPU to pin the process to (default 0)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})

    started = time.perf_counter()
    fields = [make_field(seed, args.stars) for seed in range(args.images)]
    print(f"made {len(fields)} images of {SIDE}x{SIDE} ({fields[0].stars} stars, FWHM {FWHM_PIX} px, "
          f"Moffat beta {MOFFAT_BETA}) in {time.perf_counter() - started:.1f} s; pinned to CPU {args.core}")
    warm = Field(fields[0].data[:512, :512], fields[0].dq[:512, :512], fields[0].header, fields[0].wcs, 0)
    run_skyassets(warm)
    run_bare(warm)

    runs: list[dict[str, list[Result]]] = [{"skyassets": [], "bare": [], "sampled": []} for _ in fields]
    for _ in range(args.repeat):  # interleaved, so a slow moment of the machine hits every chain
        for field, results in zip(fields, runs, strict=True):
            results["skyassets"].append(run_skyassets(field))
            results["bare"].append(run_bare(field))
            results["sampled"].append(run_bare(field, SAMPLED_FITS))

    print(f"\n{'image':>5} {'skyassets s':>12} {'bare s':>8} {'sampled s':>10}   "
          f"{'sources, fitted, FWHM: skyassets':<34} {'bare':<26} {'sampled':<26}")
    means = {k: [] for k in ("skyassets", "bare", "sampled")}
    for i, results in enumerate(runs):
        for k in means:
            means[k].append(statistics.median(r.seconds for r in results[k]))
        last = [results[k][-1] for k in means]
        print(f"{i:>5} {means['skyassets'][-1]:>12.2f} {means['bare'][-1]:>8.2f} {means['sampled'][-1]:>10.2f}   "
              + " ".join(f"{r.n_sources:>6} {r.n_fitted:>6} {r.fwhm:>7.2f} px    " for r in last))
    sky, bare, sampled = (statistics.mean(means[k]) for k in ("skyassets", "bare", "sampled"))
    print(f"\ntrue FWHM {FWHM_PIX:.2f} px (of the Moffat before pixel integration; a Gaussian fit takes in the pixel "
          "and the Moffat wings, so reads wider)")
    print(f"seconds per image (mean of the per-image medians of {args.repeat} runs, one core): "
          f"skyassets {sky:.2f} s, bare {bare:.2f} s, sampled {sampled:.2f} s")
    print(f"ratio skyassets / bare   : {sky / bare:.2f} (target <= {TARGET_RATIO:.1f})")
    print(f"ratio skyassets / sampled: {sky / sampled:.2f} (target <= {TARGET_RATIO:.1f})")
    print(f"skyassets per image      : {sky:.2f} s (target <= {TARGET_SECONDS:.1f} s)")
    return 0 if sky / sampled <= TARGET_RATIO and sky <= TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
