"""The ``skyassets`` command: run the pipeline end to end, or open it in the Dagster UI."""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sys
from importlib import resources
from pathlib import Path

from skyassets.lake.home import HOME_ENV, Home, default_home


def prepare_dagster_home(home: Home) -> Path:
    """Use ``$DAGSTER_HOME`` or ``<home>/dagster``, giving it skyassets' instance settings if it has none.

    The instance's storage is created under a lock: two commands started at once on a new home would
    otherwise both try to create the same SQLite tables, and one of them would fail.
    """
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home.dagster).resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ.setdefault(HOME_ENV, str(home.root))
    with open(dagster_home / ".skyassets-init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        settings = dagster_home / "dagster.yaml"
        if not settings.exists():
            with resources.as_file(resources.files("skyassets").joinpath("dagster.yaml")) as packaged:
                shutil.copyfile(packaged, settings)
        from dagster import DagsterInstance

        with DagsterInstance.get():
            pass
    return dagster_home


def _demo(args: argparse.Namespace) -> int:
    home = Home(default_home())
    dagster_home = prepare_dagster_home(home)
    from skyassets.cli.demo import run_demo

    return run_demo(home, dagster_home)


def _ingest(args: argparse.Namespace) -> int:
    home = Home(default_home())
    prepare_dagster_home(home)
    from dagster import DagsterInstance

    from skyassets.cli.runs import ingest, text_progress

    files, partitions, failed = ingest(
        args.paths, home, DagsterInstance.get(), batch=args.batch, progress=text_progress
    )
    print(f"{files} files in {partitions} partitions catalogued into {home.lake / 'image_metadata'}")
    if failed:
        print(f"{len(failed)} runs failed: {', '.join(failed)} (see them in the Dagster UI)", file=sys.stderr)
    return 1 if failed or not files else 0


def _catalog(args: argparse.Namespace) -> int:
    import pandas as pd

    from skyassets.catalog.db import connect

    frame = connect(default_home()).execute(args.sql).df()
    with pd.option_context("display.max_rows", args.max_rows, "display.max_columns", 30, "display.width", 200):
        print(frame.drop(columns=[c for c in ("header_json",) if c in frame.columns]))
    return 0


def _export(args: argparse.Namespace) -> int:
    from skyassets.catalog.db import connect
    from skyassets.catalog.export import export_files

    home = Home(default_home())
    selection = connect(home.root).execute(args.sql).df()
    dest = export_files(selection, home, Path(args.dest), args.sql)
    print(f"{len(selection['path'].unique())} files copied to {dest} (manifest.csv, README.md)")
    return 0


def _quality(args: argparse.Namespace) -> int:
    from skyassets.imaging.quality import SCORE_COLUMNS
    from skyassets.lake.names import InvalidNameError
    from skyassets.lake.parquet import read_parquet

    home = Home(default_home())
    try:
        path = home.table("image_quality", args.obs_id)
    except InvalidNameError as exc:
        print(f"not an observation id: {exc}", file=sys.stderr)
        return 2
    if not path.exists():
        print(
            f"no quality measured for {args.obs_id} yet ({path} is missing): materialise image_quality for "
            "this partition in the Dagster UI, or run quality_job",
            file=sys.stderr,
        )
        return 1
    rows = read_parquet(path).sort_values("score")
    print(f"{args.obs_id}: {len(rows)} images, " + ", ".join(f"{n} {f}" for f, n in rows["flag"].value_counts().items()))
    for r in rows.to_dict("records"):
        v = {k: _shown(x) for k, x in r.items()}
        subs = "  ".join(f"{c.removeprefix('score_')} {_shown(r[c], '.0f')}" for c in SCORE_COLUMNS if c.startswith("score_"))
        print(f"\n{v['file_name']}[{v['hdu_index']}]  {v['instrument_name']} {v['filter']}")
        print(f"  score {_shown(r['score'], '.0f')} ({v['flag']}{'; ' + v['flag_reason'] if v['flag_reason'] != '-' else ''})  {subs}")
        if v["problem"] != "-":
            print(f"  problem: {v['problem']}")
        print(
            f"  background {_shown(r['background'], '.4g')} ± {_shown(r['background_rms'], '.3g')} ({v['background_method']}), "
            f"{v['n_sources']} sources ({v['n_cosmic_rays']} cosmic rays), {v['n_stars_fitted']} stars fitted"
        )
        print(
            f"  FWHM {_shown(r['fwhm_arcsec'], '.3f')}\" ({_shown(r['fwhm_pix'], '.2f')} px), "
            f"ellipticity {_shown(r['ellipticity'], '.3f')}, 5σ depth {_shown(r['depth_5sigma_ab'], '.2f')} AB"
        )
        print(
            f"  NaN {_shown(r['frac_nan'], '.2%')}  zero {_shown(r['frac_zero'], '.2%')}  "
            f"saturated {_shown(r['frac_saturated'], '.2%')}  DQ-flagged {_shown(r['frac_dq_flagged'], '.2%')}  "
            f"pixel scale {_shown(r['pixel_scale'], '.4f')}\" (nominal {_shown(r['pixel_scale_nominal'], '.4f')}\")"
            + (f"  header {v['header_flags']}" if v["header_flags"] != "-" else "")
        )
    return 0


def _shown(value: object, spec: str = "") -> str:
    """A value for the report; missing ones (None, NaN, empty) as a dash."""
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec)


def _show(args: argparse.Namespace) -> int:
    from skyassets.lake.names import InvalidNameError
    from skyassets.lake.parquet import read_parquet

    home = Home(default_home())
    try:
        tables = {kind: home.table(kind, args.target) for kind in ("mosaics", "composites", "recipes")}
    except InvalidNameError as exc:
        print(f"not a target: {exc}", file=sys.stderr)
        return 2
    if not tables["mosaics"].exists():
        print(f"no products for {args.target} yet: materialise mosaics and composites for it (products_job)",
              file=sys.stderr)
        return 1
    print(f"{args.target}: {home.target_dir(args.target)}")
    for row in read_parquet(tables["mosaics"]).to_dict("records"):
        print(f"  mosaic    {row['instrument_name']} {row['filter']}: {home.root / row['path']} ({row['n_inputs']} images)")
    pictures = []
    if tables["composites"].exists():
        for row in read_parquet(tables["composites"]).to_dict("records"):
            pictures.append(home.root / row["png"])
            print(f"  composite {row['recipe']} ({row['filters']}; {row['method']}, {row['stretch']}): "
                  f"{pictures[-1]}, {home.root / row['cube']}")
    if tables["recipes"].exists():
        for row in read_parquet(tables["recipes"]).to_dict("records"):
            if not row["made"]:
                print(f"  not made  {row['recipe']} ({row['filters']}): {row['note']}")
    if args.open and pictures:
        import webbrowser

        webbrowser.open(pictures[0].as_uri())
    return 0


def _dev(args: argparse.Namespace) -> int:
    home = Home(default_home())
    prepare_dagster_home(home)
    extra = args.dagster_args[1:] if args.dagster_args[:1] == ["--"] else args.dagster_args
    command = [sys.executable, "-m", "dagster", "dev", "-m", "skyassets.definitions", *extra]
    os.execv(sys.executable, command)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    import warnings

    from dagster import BetaWarning

    warnings.filterwarnings("ignore", category=BetaWarning)  # backfill policies; nothing a user can act on
    parser = argparse.ArgumentParser(prog="skyassets", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "demo", help="run the whole pipeline once, offline, on the built-in archive emulator"
    ).set_defaults(func=_demo)
    ingest = commands.add_parser("ingest", help="catalogue local FITS files or folders through the Dagster assets")
    ingest.add_argument("paths", nargs="+", help="FITS files or folders (searched recursively)")
    ingest.add_argument("--batch", type=int, default=250, help="at most this many partitions per run (default 250)")
    ingest.set_defaults(func=_ingest)
    query = commands.add_parser("catalog", help="print the result of a SQL query on the catalogue")
    query.add_argument("sql", help='e.g. "SELECT obs_id, filter, s_ra, s_dec FROM images"')
    query.add_argument("--max-rows", type=int, default=100)
    query.set_defaults(func=_catalog)
    quality = commands.add_parser("quality", help="print the quality report of an observation")
    quality.add_argument("obs_id", help="the observation (partition) id")
    quality.set_defaults(func=_quality)
    show = commands.add_parser("show", help="list (or open) the mosaics and composites of a target")
    show.add_argument("target", help="the target (partition) key, e.g. NGC-3132")
    show.add_argument("--open", action="store_true", help="open the best-ranked composite in the browser")
    show.set_defaults(func=_show)
    export = commands.add_parser("export", help="copy the files a SQL query selects, with a manifest")
    export.add_argument("sql", help="a query returning a 'path' column, e.g. SELECT * FROM cone(83.6, 22.0, 0.1)")
    export.add_argument("dest", help="folder to copy into")
    export.set_defaults(func=_export)
    dev = commands.add_parser("dev", help="open the pipeline in the Dagster UI (dagster dev)")
    dev.add_argument("dagster_args", nargs=argparse.REMAINDER, help="passed on to `dagster dev`")
    dev.set_defaults(func=_dev)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
