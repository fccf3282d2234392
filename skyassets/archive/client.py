"""An astroquery ``Observations`` client for a given MAST server.

astroquery builds its portal URLs at import time from ``conf.server`` and hard-codes the hosts of
the name resolver (``mastresolver.stsci.edu``) and of the cloud path lookup (``mast.stsci.edu``).
This module is the one place that points an unchanged astroquery at another server (the emulator,
a mirror): the portal URLs are set on the client instance, the two hard-coded hosts are rewritten
in astroquery's ``_simple_request``, and the S3 client used for cloud URIs gets an endpoint. For
the real MAST nothing is changed at all.
"""

from __future__ import annotations

import threading
from typing import Any

from astroquery.mast import ObservationsClass
from astroquery.mast import utils as mast_utils

REAL_MAST_URL = "https://mast.stsci.edu"

# Hosts astroquery calls directly, whatever conf.server says.
_HARD_CODED_HOSTS = (
    "http://mastresolver.stsci.edu",
    "https://mastresolver.stsci.edu",
    "http://mast.stsci.edu",
    "https://mast.stsci.edu",
)

_route_lock = threading.Lock()
_route: dict[str, str] = {}
_original_simple_request = mast_utils._simple_request


def _routed_simple_request(url: str, params: Any = None):
    """astroquery's ``_simple_request`` with the hard-coded hosts sent to the routed server."""
    server = _route.get("server")
    if server:
        for host in _HARD_CODED_HOSTS:
            if url.startswith(host):
                url = server + url[len(host):]
                break
    return _original_simple_request(url, params)


def _route_hard_coded_hosts(server: str | None) -> None:
    """Send astroquery's resolver and path-lookup calls to ``server`` (``None``: the real hosts).

    The route is process-wide (astroquery calls these hosts from module functions), so the client
    made last decides it; one process works with one archive.
    """
    with _route_lock:
        if server:
            _route["server"] = server
        else:
            _route.pop("server", None)
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


def is_real_mast(server: str) -> bool:
    return server.rstrip("/") == REAL_MAST_URL


def observations_client(
    server: str = REAL_MAST_URL,
    *,
    s3_endpoint: str | None = None,
    cloud: bool = True,
    timeout: float = 600.0,
    pagesize: int | None = None,
) -> ObservationsClass:
    """Return an astroquery ``ObservationsClass`` talking to ``server``.

    ``s3_endpoint`` points the cloud-URI lookup (a HEAD per key on the ``stpubdata`` bucket) at an
    S3-protocol server other than AWS; ``cloud`` enables that lookup at all.
    """
    server = server.rstrip("/")
    client = ObservationsClass()
    portal = client._portal_api_connection
    portal.TIMEOUT = timeout
    if pagesize:
        portal.PAGESIZE = pagesize
    if not is_real_mast(server):
        portal.MAST_REQUEST_URL = server + "/api/v0/invoke"
        portal.COLUMNS_CONFIG_URL = server + "/portal/Mashup/Mashup.asmx/columnsconfig"
        portal.MAST_DOWNLOAD_URL = server + "/api/v0.1/Download/file"
        portal.MAST_BUNDLE_URL = server + "/api/v0.1/Download/bundle"
        _route_hard_coded_hosts(server)
    else:
        _route_hard_coded_hosts(None)
    if cloud:
        client.enable_cloud_dataset(verbose=False)
        if s3_endpoint:
            client._cloud_connection.boto3 = _EndpointBoto3(s3_endpoint)
    return client
