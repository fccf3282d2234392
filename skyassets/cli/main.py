"""The ``skyassets`` command's entry point.

It loads nothing but the standard signal handling before it is ready for an interrupt: the commands
(Dagster, pandas, astropy: a second or more) are loaded inside it, so that Ctrl-C or ``kill`` while
they load ends the command as it does later, in one line and exit status 130 (143), not a traceback.
"""

from __future__ import annotations

import signal
import sys
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is so that what it started (a webserver, runs) is stopped
    on the way out, as on Ctrl-C."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the command's name for the last line, before argparse (loaded with the commands) has read it
    command = next((word for word in argv if not word.startswith("-")), "")
    try:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminated)  # `kill`, a service manager, a CI timeout: as Ctrl-C
        from skyassets.cli.commands import run

        return run(argv)
    except KeyboardInterrupt as exc:
        launched = "skyassets.cli.launch" in sys.modules  # the command had started runs of its own
        print(f"\n{' '.join(['skyassets', command][: 2 if command else 1])}: "
              f"{'terminated' if isinstance(exc, Terminated) else 'interrupted'}"
              + ("; runs it had started were stopped (they show as canceled in the Dagster UI, and the next run "
                 "takes up their work)" if launched else ""), file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
