"""``python -m skyassets.emulator``: serve the emulator until Ctrl-C (beside ``dagster dev`` or a benchmark)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

from skyassets.emulator import Emulator, SkySpec
from skyassets.emulator.server import fault_fields


def _fault(text: str) -> dict:
    """A ``--fault`` value as a fault's fields; ``SystemExit`` with one line saying what is wrong."""
    try:
        fields = json.loads(text)
    except ValueError as exc:
        _refuse(f"--fault {text}: not JSON: {exc}")
    try:
        return fault_fields(fields)
    except ValueError as exc:
        _refuse(f"--fault {text}: {exc}")


def _refuse(message: str) -> NoReturn:
    print(f"python -m skyassets.emulator: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m skyassets.emulator", description=__doc__)
    parser.add_argument("--home", type=Path, required=True, help="folder for the generated sky cache")
    parser.add_argument("--port", type=int, default=0, help="MAST HTTP port (0 = any free port)")
    parser.add_argument("--s3-port", type=int, default=0, help="S3 port (0 = any free port)")
    parser.add_argument("--image-size", type=int, default=SkySpec().image_size, help="image side in pixels")
    parser.add_argument("--no-s3", action="store_true", help="do not start the S3 server")
    parser.add_argument("--real-answers", action="store_true",
                        help="answer like the real MAST (nulls, per-filter rows, mixed ids, HLA/GALEX, duplicates)")
    parser.add_argument("--grant", action="append", default=[], metavar="TOKEN[:PROPOSAL,...]",
                        help="accept this MAST API token, for the exclusive-access data of the proposals named "
                        "(all of them when none are); repeatable")
    parser.add_argument("--fault", action="append", default=[], metavar="JSON",
                        help='arm a fault, e.g. \'{"kind": "status", "endpoint": "any", "status": 503, "times": 20}\' '
                        "(the fields of POST /_emulator/faults; README: The MAST emulator); repeatable")
    args = parser.parse_args(argv)
    faults = [_fault(text) for text in args.fault]  # before anything starts
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Emulator(args.home, SkySpec(image_size=args.image_size), s3=not args.no_s3,
                  port=args.port, s3_port=args.s3_port) as emu:
        if args.real_answers:
            emu.real_answers()
        for grant in args.grant:
            token, _, proposals = grant.partition(":")
            emu.grant(token, *[p for p in proposals.split(",") if p])
        for text, fields in zip(args.fault, faults, strict=True):
            try:
                emu.faults.add(**fields)
            except ValueError as exc:
                _refuse(f"--fault {text}: {exc}")
        print(f"MAST emulator: {emu.url}", flush=True)
        print(f"S3 endpoint:   {emu.s3_endpoint}", flush=True)
        print(f"sky files:     {emu.sky.root}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
