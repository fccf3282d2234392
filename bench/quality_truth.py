"""Image quality against the truth of the emulator's sky: the ``quality`` table of a home the demo filled.

    ./scripts/demo.sh                                  # or skyassets demo: fills ./.skyassets
    .venv/bin/python bench/quality_truth.py            # the home of SKYASSETS_HOME (default ./.skyassets)

The emulator saves what it drew each file from (PSF FWHM, cosmic rays and whether the DQ flags
them) in ``truth.json`` beside its sky, under ``<home>/emulator``. Prints, per kind of image
(single exposures; combined i2d/drz products) and for PSFs under and over 1 pixel, the median and
largest relative error of the measured FWHM and how many images lie within 3.1 %, then the
cosmic rays counted against those drawn (all, and those the DQ leaves unflagged), per instrument
and kind. docs/quality.md quotes its figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from skyassets.catalog import connect
from skyassets.lake.home import Home

COMBINED = ("_i2d", "_drz", "_drc")


def compare(home: Home) -> pd.DataFrame:
    """One row per measured image that the emulator drew: its measurements beside its truth."""
    truths = sorted((home.root / "emulator").glob("sky-*/truth.json"))
    if not truths:
        raise SystemExit(f"no truth.json under {home.root / 'emulator'}: run skyassets demo on this home first")
    drawn = json.loads(truths[-1].read_text())["files"]
    measured = connect(home).sql(
        "SELECT file_name, instrument_name, fwhm_pix, n_cosmic_rays FROM quality").df()
    rows = []
    for row in measured.itertuples():
        truth = drawn.get(row.file_name)
        if not truth:
            continue
        rays = truth.get("cosmic_rays") or []
        rows.append({
            "file": row.file_name, "instrument": str(row.instrument_name).split("/")[0],
            "combined": any(k in row.file_name for k in COMBINED),
            "fwhm": row.fwhm_pix, "fwhm_true": truth["fwhm_pix"],
            "rays": row.n_cosmic_rays, "rays_true": len(rays), "rays_unflagged": sum(not r["flagged"] for r in rays),
        })
    frame = pd.DataFrame(rows)
    frame["fwhm_error"] = frame["fwhm"] / frame["fwhm_true"] - 1
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="the skyassets home (default: SKYASSETS_HOME or ./.skyassets)")
    args = parser.parse_args()
    home = Home.from_env(Path(args.home) if args.home else None)
    frame = compare(home)
    print(f"{len(frame)} images of the emulator's sky measured in {home.root}")
    print("\nFWHM against the truth (relative error):")
    for (combined, narrow), group in frame.groupby(["combined", frame["fwhm_true"] < 1.0]):
        error = group["fwhm_error"].abs()
        kind = "combined" if combined else "single  "
        print(f"  {kind}  PSF {'<' if narrow else '>='} 1 px: {len(group):3d} images, median {error.median():.1%}, "
              f"largest {error.max():.1%}, within 3.1 %: {(error <= 0.031).sum()}")
    print("\ncosmic rays counted against those drawn (all / left unflagged by the DQ):")
    for (instrument, combined), group in frame.groupby(["instrument", "combined"]):
        print(f"  {instrument:<7} {'combined' if combined else 'single  '}: {int(group['rays'].sum()):4d} counted, "
              f"{int(group['rays_true'].sum()):4d} drawn / {int(group['rays_unflagged'].sum()):4d} unflagged "
              f"({len(group)} images)")


if __name__ == "__main__":
    main()
