"""A real PostgreSQL server for the tests that need one, started and stopped by scripts/postgres.sh.

Where PostgreSQL cannot be installed the tests skip, saying why, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "postgres.sh"


@contextmanager
def running_postgres() -> Iterator[str]:
    """A private server on loopback for the block (installed first if missing); yields its URL."""
    try:
        started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
        problem = (started.stderr.strip()[-2000:] or f"exit status {started.returncode}") if started.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem:
        reason = f"PostgreSQL could not be installed or started by scripts/postgres.sh: {problem}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    values = dict(
        line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines() if line.startswith("export ")
    )
    try:
        yield values["SKYASSETS_POSTGRES_URL"]
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", values["SKYASSETS_POSTGRES_DIR"]], timeout=120, check=False)


def new_database(server_url: str, name: str) -> str:
    """Create the empty database ``name`` on the server of ``server_url`` (a SQLAlchemy URL); its URL."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return str(sqlalchemy.make_url(server_url).set(database=name).render_as_string(hide_password=False))
