"""Colour composites of the emulator's sky, measured: the default (balanced Lupton) picture against
the per-channel "screen" one, and what the extended sources cost the emulator.

    python bench/composite.py                        # figures, PNGs in /tmp/skyassets-composites
    python bench/composite.py --out DIR --repeat 3   # elsewhere; emulator timed 3 times each way
    python bench/composite.py --repeat 0             # pictures only (--pictures 0: timing only)

For each emulator target, its NIRCam F090W, F200W and F444W level-3 images of both pointings are
co-added per filter (``build_mosaic``), put on one grid (``reproject_channels``) and composed both
ways. Printed per picture (``picture_figures``): the blank sky's R, G, B medians and their spread
(max - min) / mean, over pixels the truth says hold no extended emission and no star within
15 px x (its flux in uJy) ** 1/5;
the median R/G and B/G of the light of the truth's stars on blank sky; the fraction of pixels with a
colour at 1. For the default picture also each filter's sky level against the median of the truth's
blank sky (in noise sigmas), and each of those stars' own R/G and B/G with its true F444W / F090W
flux ratio and the share of its aperture every filter covers, and each saturated star's core
colour against the colour of its true fluxes relative to the field's median star (which the
balance makes white). Then the emulator's generation of the default sky with and without extended
sources, interleaved, in CPU seconds of this process (the machine may be shared) and wall seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy.ndimage import binary_fill_holes

from skyassets.emulator.sky import BANDS, TARGETS, Sky, SkySpec
from skyassets.imaging import composite
from skyassets.imaging.mosaic import MosaicInput, build_mosaic

FILTERS = ("F090W", "F200W", "F444W")


def pictures(sky: Sky, out: Path) -> list[dict]:
    """Figures of both methods' pictures of every target, the PNGs written to ``out``."""
    rows = []
    for target in TARGETS:
        files = {f: sorted(n for n, t in sky.truth["files"].items()
                           if t["target"] == target.name and t["filter"] == f and n.endswith("_i2d.fits"))
                 for f in FILTERS}
        images = []
        for f in FILTERS:
            mosaic = build_mosaic([MosaicInput(sky.root / n) for n in files[f]], out / f"{target.program}_{f}.fits")
            with fits.open(mosaic.path) as hdul:
                images.append((hdul["SCI"].data.astype(float), WCS(hdul["SCI"].header)))
        channels, wcs, shape = composite.reproject_channels(images)
        footprint = np.all([np.isfinite(c) for c in channels], axis=0)
        rows_px, cols_px = np.mgrid[:shape[0], :shape[1]]
        ra, dec = wcs.pixel_to_world_values(cols_px, rows_px)
        emission = np.max([sky.extended_at(target, BANDS[f], ra, dec) for f in FILTERS], axis=0)
        stars = sky.truth["targets"][target.name]["stars"]
        sx, sy = wcs.world_to_pixel_values([s["ra"] for s in stars], [s["dec"] for s in stars])
        near = np.zeros(shape, dtype=bool)
        for s, x, y in zip(stars, sx, sy, strict=True):  # PSF wings reach further round brighter stars
            radius = 15.0 * max(1.0, max(s["flux_ujy"][f] for f in FILTERS)) ** (1 / 5)
            near |= (cols_px - x) ** 2 + (rows_px - y) ** 2 < radius**2
        blank = footprint & ~near & (emission < 0.05)
        field_stars = [(s, x, y) for s, x, y in zip(stars, sx, sy, strict=True)
                       if not s["on_extended"] and not s["bright"] and s["flux_ujy"]["F200W"] > 0.5
                       and 0 <= round(y) < shape[0] and 0 <= round(x) < shape[1]]  # on the picture
        measured = [(int(round(y)), int(round(x)), s["flux_ujy"]["F444W"] / s["flux_ujy"]["F090W"])
                    for s, x, y in field_stars]
        on_blank = [(r, c) for r, c, _ in measured]
        colours = composite.channel_colours([BANDS[f].pivot_um for f in FILTERS])
        balance = composite.balance_channels(channels)
        for method in ("lupton", "screen"):
            rgb = composite.compose(channels, colours, method=method)
            composite.write_composite(rgb, wcs, out / f"{target.program}_{method}")
            figures = composite.picture_figures(rgb, blank, on_blank, half=8, footprint=footprint)
            row = {"target": target.name, "method": method, **figures}
            if method == "lupton":  # the default's sky per filter against the truth's, and each star
                row["sky_sigmas"] = [(s - float(np.median(c[blank]))) / n
                                     for c, s, n in zip(channels, balance.sky, balance.noise, strict=True)]
                row["per_star"] = [((r, c, ratio, float(footprint[r - 8:r + 9, c - 8:c + 9].mean())),
                                    composite.picture_figures(rgb, blank, [(r, c)], half=8))
                                   for r, c, ratio in measured]
                row["saturated"] = []
                covered = binary_fill_holes(footprint)  # masked cores included
                # white as the balance makes it: the median colour of the stars it measures, from their true fluxes
                true = np.array([[s["flux_ujy"][f] for f in FILTERS] for s, _, _ in field_stars])
                white = np.median(true / true.mean(axis=1, keepdims=True), axis=0)
                for s, x, y in zip(stars, sx, sy, strict=True):
                    r, c = int(round(y)), int(round(x))
                    if s["bright"] and 0 <= r < shape[0] and 0 <= c < shape[1] and covered[r, c]:
                        want = (np.array([s["flux_ujy"][f] for f in FILTERS]) / white) @ colours
                        row["saturated"].append(((r, c), rgb[r, c] / rgb[r, c].sum(), want / want.sum()))
            rows.append(row)
    return rows


def timing(spec: SkySpec, repeat: int) -> dict[str, list[tuple[float, float]]]:
    """(CPU s, wall s) of generating the sky with and without extended sources, interleaved."""
    runs: dict[str, list[tuple[float, float]]] = {"stars only": [], "with extended": []}
    for _ in range(repeat):
        for name, extended in (("stars only", False), ("with extended", True)):
            with tempfile.TemporaryDirectory() as home:
                cpu, wall = time.process_time(), time.perf_counter()
                Sky(Path(home), replace(spec, extended=extended))
                runs[name].append((time.process_time() - cpu, time.perf_counter() - wall))
    return runs


def show(out: Path) -> None:
    """Print the figures of every target's pictures, written to ``out``."""
    print(f"{'target':20s} {'method':7s} {'sky R':>7s} {'sky G':>7s} {'sky B':>7s} {'spread':>7s} "
          f"{'star R/G':>8s} {'star B/G':>8s} {'stars':>5s} {'clipped':>8s}")
    for r in pictures(Sky(out / "home", SkySpec()), out):
        print(f"{r['target']:20s} {r['method']:7s} {r['sky_r']:7.3f} {r['sky_g']:7.3f} {r['sky_b']:7.3f} "
              f"{r['sky_spread']:7.1%} {r['star_rg']:8.2f} {r['star_bg']:8.2f} {r['n_stars']:5d} {r['clipped']:8.3%}")
        if "sky_sigmas" in r:
            print(f"{'':29s}sky per filter - the truth's blank sky: "
                  + ", ".join(f"{f} {d:+.2f} sigma" for f, d in zip(FILTERS, r["sky_sigmas"], strict=True)))
            for (row, col, ratio, inside), star in r["per_star"]:
                if star["n_stars"]:
                    print(f"{'':29s}star at ({row}, {col}), true F444W/F090W flux {ratio:.2f}, {inside:.0%} of its "
                          f"aperture in every filter: R/G {star['star_rg']:.2f}, B/G {star['star_bg']:.2f}")
            for (row, col), got, want in r["saturated"]:
                print(f"{'':29s}saturated star at ({row}, {col}): core R:G:B "
                      + ":".join(f"{v:.2f}" for v in got) + ", from its true fluxes "
                      + ":".join(f"{v:.2f}" for v in want) + f", largest difference {np.abs(got - want).max():.2f}")
    print(f"pictures in {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "skyassets-composites")
    parser.add_argument("--repeat", type=int, default=2, help="emulator generations each way (0: none)")
    parser.add_argument("--pictures", type=int, default=1, help="0: time the emulator only")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.pictures:
        show(args.out)
    if args.repeat > 0:
        runs = timing(SkySpec(), args.repeat)
        cpu = {k: statistics.median(c for c, _ in v) for k, v in runs.items()}
        wall = {k: statistics.median(w for _, w in v) for k, v in runs.items()}
        for k in runs:
            print(f"emulator sky, {k:14s}: {cpu[k]:6.1f} s CPU, {wall[k]:6.1f} s wall (median of {args.repeat})")
        print(f"ratio with/without extended: {cpu['with extended'] / cpu['stars only']:.2f} CPU, "
              f"{wall['with extended'] / wall['stars only']:.2f} wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
