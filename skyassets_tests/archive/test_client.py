import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from skyassets.archive.client import (
    ArchiveError,
    RetryPolicy,
    archive_settings,
    observations_client,
    transient_failure,
)
from skyassets.archive.query import query_watchlist
from skyassets.archive.watchlist import parse_watchlist


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that takes every connection and never answers a byte, as a hung proxy does."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in held:
        connection.close()


def finished_within(seconds: float, call) -> tuple[float, object]:
    """``call()``'s seconds and result (or exception), failing the test if it is still running after
    ``seconds`` instead of hanging it."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # the caller looks at what came out
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still waiting on a silent server after {seconds} s"
    return time.monotonic() - started, outcome[0]


QUICK = RetryPolicy(total_seconds=1.0, base_delay=0.1, max_delay=0.2)


def test_a_silent_archive_fails_each_search_in_bounded_time(silent_server):
    """Searches and the name resolver (which astroquery calls without a timeout) give up on a
    server that never answers, and say which watchlist entry failed."""
    client = observations_client(silent_server, cloud=False, timeout=1.0, retry=QUICK)
    watchlist = parse_watchlist("entries: [{name: by-program, program: 2736}, {name: by-name, target: M16}]")
    seconds, result = finished_within(60, lambda: query_watchlist(client, watchlist))
    assert not isinstance(result, Exception), result
    assert result.failed_entries == ["by-program", "by-name"]
    assert all("Timeout" in line for line in result.failed), result.failed
    assert seconds < 30


def test_logging_in_to_a_silent_archive_fails_in_bounded_time(silent_server):
    seconds, result = finished_within(
        60, lambda: observations_client(silent_server, cloud=False, timeout=1.0, retry=QUICK, token="t0ken"))
    assert isinstance(result, ArchiveError) and "logging in" in str(result)
    assert "t0ken" not in str(result)


def test_a_token_is_taken_without_surrounding_blanks_and_a_refusal_never_quotes_it(emu):
    emu.grant("secret-t0ken", "2107")
    try:
        client = observations_client(emu.url, cloud=False, retry=QUICK, token="secret-t0ken\n")  # as a file ends
        assert archive_settings(client).token == "secret-t0ken"
        assert archive_settings(observations_client(emu.url, cloud=False, retry=QUICK, token="  ")).token is None
        # refused (a header cannot hold it: requests quotes it in its error): a client without it, for public data
        public = archive_settings(observations_client(emu.url, cloud=False, retry=QUICK, token="secret\nt0ken"))
        assert public.token is None and public.token_refused.startswith("MAST refused the token (MAST_API_TOKEN; fix")
        assert "t0ken" not in public.token_refused
        expired = archive_settings(observations_client(emu.url, cloud=False, retry=QUICK, token="expired-t0ken"))
        # astroquery's own words, which name no part of the token: why, and where to get a new one
        assert expired.token is None and "LoginError: MAST API token invalid" in expired.token_refused
        assert "auth.mast.stsci.edu/token" in expired.token_refused and "t0ken" not in expired.token_refused
    finally:
        emu.revoke("secret-t0ken")


def test_answers_that_are_not_json_and_searches_still_executing_are_asked_again():
    response = requests.Response()
    response.status_code, response._content = 200, b"<html>Service Unavailable</html>"
    with pytest.raises(requests.exceptions.JSONDecodeError) as not_json:
        response.json()
    assert transient_failure(not_json.value) == (True, None)
    assert transient_failure(TimeoutError("Timeout limit of 600 exceeded.")) == (True, None)
    assert transient_failure(KeyError("obs_id")) == (False, None)
