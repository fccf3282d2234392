"""``skyassets sky [TARGET]``: the published collection in Aladin Lite, served on loopback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import quote

from skyassets.lake.home import Home
from skyassets.tiles.viewer import aladin_script, collection_index, make_server


class SkyError(Exception):
    """What ``skyassets sky`` tells its user in one line."""


def serve_sky(args: argparse.Namespace) -> int:
    home = Home.from_env()
    published = Path(args.published).expanduser().resolve() if args.published else home.root / "published"
    try:  # what was asked for first: a target mistyped is said as such, whether or not Aladin is installed
        targets = [t["target"] for t in collection_index(published)]
        if args.target and args.target not in targets:
            raise SkyError(f"target {args.target} is not in the collection at {published}; published: "
                           + (", ".join(targets) or "none"))
        aladin = aladin_script(home)
    except FileNotFoundError as exc:
        raise SkyError(str(exc)) from exc
    try:
        server = make_server(published, aladin, args.port)
    except OSError as exc:  # the port is taken, or one this user may not open
        raise SkyError(f"cannot serve the collection on 127.0.0.1:{args.port}: {exc.strerror}; "
                       "choose another with --port PORT (0: any free one)") from exc
    url = f"http://127.0.0.1:{server.server_address[1]}/" + (f"?target={quote(args.target)}" if args.target else "")
    print(f"{len(targets)} targets from {published} at {url} (Ctrl-C stops)", flush=True)
    if not args.no_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def add_sky_command(commands: argparse._SubParsersAction) -> None:
    sky = commands.add_parser("sky", help="pan and zoom the published targets' composites and mosaics in a browser")
    sky.add_argument("target", nargs="?", help="the target to open first (default: the newest)")
    sky.add_argument("--port", type=int, default=8642, help="port on 127.0.0.1 (default 8642; 0: any free one)")
    sky.add_argument("--published", help="the published folder (default <home>/published)")
    sky.add_argument("--no-browser", action="store_true", help="only serve; do not open a browser")
    sky.set_defaults(func=serve_sky)
