"""An astroquery ``Observations`` client for a given MAST server.

astroquery builds its portal URLs at import time from ``conf.server`` and hard-codes the hosts of
the name resolver (``mastresolver.stsci.edu``) and of the cloud path lookup (``mast.stsci.edu``).
This module is the one place that points an unchanged astroquery at another server (the emulator,
a mirror): the portal URLs are set on the client instance, the two hard-coded hosts are rewritten
in astroquery's ``_simple_request``, and the S3 client used for cloud URIs gets an endpoint. For
the real MAST only timeouts are added: astroquery sends its requests without one.

The real archive fails now and then (429 when busy, 502/503 behind its proxies, dropped
connections), so every call skyassets makes through astroquery goes through :func:`with_retries`,
with the :class:`RetryPolicy` and the MAST token given when the client was made
(:func:`archive_settings`). The token is kept in memory only and never appears in a ``repr``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import astropy.units as u
import astroquery
import requests
import requests.adapters
from astropy.coordinates import Angle, SkyCoord
from astropy.table import Table
from astroquery.mast import ObservationsClass
from astroquery.mast import utils as mast_utils

from skyassets.archive.download import retry_after_seconds, token_header

REAL_MAST_URL = "https://mast.stsci.edu"
DOWNLOAD_PATH = "/api/v0.1/Download/file"
# HTTP statuses worth asking again: the archive or a proxy in front of it is busy or restarting.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

# Every request to the archive gets at most this long to connect and between bytes of its answer
# (each capped by the client's ``timeout``): astroquery sends its portal, name-resolver, cloud-lookup
# and ``whoami`` requests without a timeout, and a server that takes a connection and never answers
# would hold a run, and its pool slot, forever. A timed-out request is retried like any transient failure.
CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 120.0

T = TypeVar("T")
log = logging.getLogger(__name__)


class ArchiveError(RuntimeError):
    """An archive call failed for good: not transient, or still failing when the retry time ran out
    (``exhausted``: the service kept failing, so the next call to it would likely wait as long)."""

    def __init__(self, message: str, *, exhausted: bool = False) -> None:
        super().__init__(message)
        self.exhausted = exhausted


@dataclass(frozen=True)
class RetryPolicy:
    """Jittered exponential backoff for archive calls, honouring ``Retry-After``, bounded in total time.

    Attempt n waits a random time between half and all of ``min(max_delay, base_delay * 2**(n-1))``,
    or longer when the archive asks for it with ``Retry-After``; no wait starts that would end more
    than ``total_seconds`` after the first attempt began.
    """

    total_seconds: float = 300.0
    base_delay: float = 1.0
    max_delay: float = 60.0


@dataclass(frozen=True)
class ArchiveSettings:
    """What skyassets knows about a client beyond astroquery: its server, retries and MAST token."""

    server: str = REAL_MAST_URL
    retry: RetryPolicy = RetryPolicy()
    token: str | None = field(default=None, repr=False)
    # why MAST refused the token given (the client then goes on without it, for public data)
    token_refused: str | None = None

    @property
    def download_url(self) -> str:
        return self.server + DOWNLOAD_PATH


_settings: weakref.WeakKeyDictionary[ObservationsClass, ArchiveSettings] = weakref.WeakKeyDictionary()


def archive_settings(client: ObservationsClass) -> ArchiveSettings:
    """The settings ``client`` was made with by :func:`observations_client` (defaults for any other)."""
    return _settings.get(client) or ArchiveSettings()


def transient_failure(exc: BaseException) -> tuple[bool, float | None]:
    """Whether ``exc`` is worth another attempt, and the delay the archive asked for (Retry-After)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        response = exc.response
        if response.status_code in TRANSIENT_STATUS:
            return True, retry_after_seconds(response.headers.get("Retry-After"))
        return False, None
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)):
        return True, None
    # a 200 whose body is not JSON (a proxy's error page, an answer cut short), and a search still
    # EXECUTING when astroquery's ``timeout`` ran out: the archive answers again as it should
    if isinstance(exc, (requests.exceptions.JSONDecodeError, TimeoutError)):
        return True, None
    return False, None


def describe_failure(exc: BaseException) -> str:
    """A one-line reason for a failed call, without request headers (which may carry a token)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        response = exc.response
        url = response.url.split("?", 1)[0] if response.url else "the archive"
        status = f"HTTP {response.status_code} {response.reason}" if response.reason else f"HTTP {response.status_code}"
        return f"{status} from {url}"
    if isinstance(exc, TimeoutError) and str(exc).startswith("Timeout limit of"):  # astroquery's own words
        return f"the archive still answered EXECUTING (the search not done) when the client's timeout ran out: {exc}"
    return f"{type(exc).__name__}: {exc}"


class _TimeoutAdapter(requests.adapters.HTTPAdapter):
    """An adapter giving each request sent without a timeout the client's (connect, read) timeout."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        self.timeout = timeout
        super().__init__()

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, *args, **kwargs)


def request_timeout(timeout: float) -> tuple[float, float]:
    """The (connect, read) timeout of one archive request for a client of ``timeout`` seconds."""
    return min(CONNECT_TIMEOUT, timeout), min(READ_TIMEOUT, timeout)


def _with_timeout(session: requests.Session, timeout: tuple[float, float]) -> None:
    adapter = _TimeoutAdapter(timeout)
    session.mount("http://", adapter)
    session.mount("https://", adapter)


def _status_checked(url: str) -> Callable[..., None]:
    """A response hook raising ``HTTPError`` for an error answer from ``url``: astroquery reads the
    token check's body without looking at its status, so a 429 or 503 there read as a bad answer
    (``KeyError: 'anon'``) instead of one to ask again."""

    def check(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.url.split("?", 1)[0] == url:
            response.raise_for_status()

    return check


# How long a probe of the archive (after a call waited out every retry) may take: long enough to
# wait out a short Retry-After of a rate limit, short enough that an outage is known at once.
PROBE_SECONDS = 15.0


@contextmanager
def probing(client: ObservationsClass, seconds: float = PROBE_SECONDS) -> Iterator[None]:
    """Calls through ``client`` are retried for ``seconds`` at most (the client's own bound if
    shorter): a probe of whether the archive answers at all, after one call waited out every retry.
    A rate limit's short ``Retry-After`` is waited out; an archive that is down fails it soon."""
    settings = archive_settings(client)
    retry = replace(settings.retry, total_seconds=min(seconds, settings.retry.total_seconds))
    _settings[client] = replace(settings, retry=retry)
    try:
        yield
    finally:
        _settings[client] = settings


# Seconds left at least for a last attempt once the next backoff would overrun the time allowed.
FINAL_TRY_SECONDS = 1.0


def with_retries(
    call: Callable[[], T], what: str, policy: RetryPolicy, *, sleep: Callable[[float], None] = time.sleep
) -> T:
    """``call()``, asked again after transient failures per ``policy``; else an :class:`ArchiveError`
    saying what failed (``what``), after how many attempts, and why."""
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:  # classified just below: transient or not
            transient, asked = transient_failure(exc)
            reason = describe_failure(exc)
            if not transient:
                raise ArchiveError(f"{what}: {reason}") from exc
            delay = min(policy.max_delay, policy.base_delay * 2 ** min(attempt - 1, 30))
            delay = random.uniform(delay / 2, delay)
            elapsed = time.monotonic() - started
            left = policy.total_seconds - elapsed
            if asked:
                # the archive's own wait, neither cut short nor grown by the failures of other steps
                # of the same call (a search's columns, resolver and query each count as attempts);
                # a Retry-After of 0 (or a date already past) is the backoff's, never a tight loop
                delay = asked
            elif delay > left > FINAL_TRY_SECONDS:  # a last try at the end of the time allowed
                delay = left
            if elapsed + delay > policy.total_seconds:
                beyond = (f"the archive asked for a wait of {asked:.0f} s (Retry-After), past the "
                          f"{max(left, 0):.0f} s left of the {policy.total_seconds:.0f} s allowed; " if asked else "")
                raise ArchiveError(
                    f"{what}: {reason} ({beyond}gave up after {attempt} attempt{'s' if attempt > 1 else ''} "
                    f"in {elapsed:.1f} s)", exhausted=True,
                ) from exc
            log.warning(f"{what}: {reason}; trying again in {delay:.1f} s (attempt {attempt + 1})")
            sleep(delay)

# Hosts astroquery calls directly, whatever conf.server says.
_HARD_CODED_HOSTS = (
    "http://mastresolver.stsci.edu",
    "https://mastresolver.stsci.edu",
    "http://mast.stsci.edu",
    "https://mast.stsci.edu",
)

_route_lock = threading.Lock()
_route: dict[str, Any] = {"timeout": request_timeout(READ_TIMEOUT)}


def _routed_simple_request(url: str, params: Any = None) -> requests.Response:
    """astroquery's ``_simple_request`` (a GET raising for an error status, with its headers) with
    the hard-coded hosts sent to the routed server, and a timeout."""
    server = _route.get("server")
    if server:
        for host in _HARD_CODED_HOSTS:
            if url.startswith(host):
                url = server + url[len(host):]
                break
    headers = {"User-Agent": f"astroquery/{astroquery.__version__} {requests.utils.default_user_agent()}",
               "Content-type": "application/x-www-form-urlencoded", "Accept": "text/plain"}
    response = requests.get(url, params=params, headers=headers, timeout=_route["timeout"])
    response.raise_for_status()
    return response


def _route_hard_coded_hosts(server: str | None, timeout: tuple[float, float]) -> None:
    """Send astroquery's resolver and path-lookup calls to ``server`` (``None``: the real hosts),
    with ``timeout``.

    The route is process-wide (astroquery calls these hosts from module functions), so the client
    made last decides it; one process works with one archive.
    """
    with _route_lock:
        if server:
            _route["server"] = server
        else:
            _route.pop("server", None)
        _route["timeout"] = timeout
        mast_utils._simple_request = _routed_simple_request


class _EndpointBoto3:
    """Stands in for the ``boto3`` module inside astroquery's ``CloudAccess``, adding an endpoint."""

    def __init__(self, endpoint_url: str, region: str = "us-east-1"):
        import boto3

        self._boto3 = boto3
        self._kwargs = {"endpoint_url": endpoint_url, "region_name": region}

    def client(self, service: str, **kwargs: Any):
        return self._boto3.client(service, **{**self._kwargs, **kwargs})

    def resource(self, service: str, **kwargs: Any):
        return self._boto3.resource(service, **{**self._kwargs, **kwargs})


def token_grants(settings: ArchiveSettings, uri: str, timeout: float = 60.0) -> bool:
    """Whether the archive serves ``uri`` to ``settings.token`` (a HEAD of its download URL)."""
    if not settings.token:
        return False

    def head() -> bool:
        response = requests.head(
            settings.download_url, params={"uri": uri}, headers=token_header(settings.token or ""),
            timeout=timeout, allow_redirects=True,
        )
        if response.status_code in TRANSIENT_STATUS:
            response.raise_for_status()
        return response.status_code == 200

    return with_retries(head, f"checking access to {uri}", settings.retry)


def cone_search(
    client: ObservationsClass,
    radius: Angle,
    *,
    coordinates: SkyCoord | None = None,
    objectname: str | None = None,
    count: bool = False,
) -> Table | int:
    """Every observation within ``radius`` of a position or a resolved name (or how many rows that is).

    Both go through ``Mast.Caom.Filtered.Position``, as ``query_criteria`` with a position and
    ``query_region_count`` do. ``query_region`` and ``query_object`` use ``Mast.Caom.Cone``
    instead, whose rows cannot be compared with that count: the position service answers one row
    per observation and filter. The column config is the cone's, loaded as ``query_criteria`` does.
    """
    portal = client._portal_api_connection
    portal.build_filter_set(client._caom_cone, client._caom_filtered_position)
    where = mast_utils.parse_input_location(coordinates=coordinates, objectname=objectname)
    position = ", ".join(str(x) for x in (where.ra.deg, where.dec.deg, Angle(radius, u.deg).deg))
    columns = "COUNT_BIG(*)" if count else "*"
    table = portal.service_request(client._caom_filtered_position,
                                   {"columns": columns, "filters": [], "position": position})
    return int(table[0][0]) if count else table


def is_real_mast(server: str) -> bool:
    return server.rstrip("/") == REAL_MAST_URL


def _unquoted(cause: BaseException | None, token: str) -> str:
    """A failure's kind and words, or its kind alone where the words hold any part of the token."""
    words = " ".join(str(cause).split()) if cause is not None else ""
    quoted = any(token[i:i + 6] in words for i in range(max(1, len(token) - 5)))  # a short token: whole
    return type(cause).__name__ if not words or quoted else f"{type(cause).__name__}: {words}"


def observations_client(
    server: str = REAL_MAST_URL,
    *,
    s3_endpoint: str | None = None,
    cloud: bool = True,
    timeout: float = 600.0,
    pagesize: int | None = None,
    retry: RetryPolicy = RetryPolicy(),
    token: str | None = None,
) -> ObservationsClass:
    """Return an astroquery ``ObservationsClass`` talking to ``server``.

    ``s3_endpoint`` points the cloud-URI lookup (a HEAD per key on the ``stpubdata`` bucket) at an
    S3-protocol server other than AWS; ``cloud`` enables that lookup at all. ``retry`` is how
    skyassets' archive calls through this client ride out transient failures. With a MAST
    ``token`` the session is logged in (astroquery checks the token with the archive's ``whoami``)
    and exclusive-access data the token grants can be queried and downloaded; a token the archive
    refuses gives a client without one, whose settings say why (``token_refused``).
    """
    server = server.rstrip("/")
    token = (token or "").strip() or None  # a token read from a file or a secret often ends in a newline
    client = ObservationsClass()
    _settings[client] = ArchiveSettings(server=server, retry=retry, token=token or None)
    portal = client._portal_api_connection
    portal.TIMEOUT = timeout
    per_request = request_timeout(timeout)
    for session in {id(s): s for s in (client._session, portal._session, client._auth_obj.session)}.values():
        _with_timeout(session, per_request)
    if pagesize:
        portal.PAGESIZE = pagesize
    if not is_real_mast(server):
        portal.MAST_REQUEST_URL = server + "/api/v0/invoke"
        portal.COLUMNS_CONFIG_URL = server + "/portal/Mashup/Mashup.asmx/columnsconfig"
        portal.MAST_DOWNLOAD_URL = server + "/api/v0.1/Download/file"
        portal.MAST_BUNDLE_URL = server + "/api/v0.1/Download/bundle"
        _route_hard_coded_hosts(server, per_request)
    else:
        _route_hard_coded_hosts(None, per_request)
    if cloud:
        client.enable_cloud_dataset(verbose=False)
        if s3_endpoint:
            client._cloud_connection.boto3 = _EndpointBoto3(s3_endpoint)
    if token:
        client._auth_obj.SESSION_INFO_URL = server + "/whoami"
        client._auth_obj.session.hooks["response"].append(_status_checked(client._auth_obj.SESSION_INFO_URL))
        what = "logging in to MAST with the token (MAST_API_TOKEN)"
        try:
            with_retries(lambda: client.login(token=token), what, retry)
        except ArchiveError as err:
            if err.exhausted:  # the archive did not answer: nothing is said of the token
                raise
            # A token MAST refuses (mistyped, or expired: MAST's tokens do) leaves public data to fetch:
            # the client goes on without it, and whoever set MAST_API_TOKEN is told why, in the
            # failure's own words unless they quote any of the token.
            cause = err.__cause__
            why = describe_failure(cause) if isinstance(cause, requests.HTTPError) else _unquoted(cause, token)
            refused = f"MAST refused the token (MAST_API_TOKEN; fix it, or unset it for public data only): {why}"
            log.error("%s; going on with public data only", refused)
            public = observations_client(server, s3_endpoint=s3_endpoint, cloud=cloud, timeout=timeout,
                                         pagesize=pagesize, retry=retry)
            _settings[public] = replace(_settings[public], token_refused=refused)
            return public
    return client
