"""Querying MAST for a watchlist, and listing the products to download (no Dagster here).

astroquery does the talking; this module turns watchlist entries into astroquery calls, checks
that paging returned every row, leaves out proprietary data, and shapes the results as pandas
tables ready for Parquet.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from urllib.parse import quote

import numpy as np
import pandas as pd
from astropy.table import Table, vstack
from astropy.time import Time
from astroquery.exceptions import NoResultsWarning
from astroquery.mast import ObservationsClass

from skyassets.archive.watchlist import ProductSpec, Watchlist, WatchlistEntry
from skyassets.lake.names import InvalidNameError, safe_filename, validate_obs_id


@dataclass
class WatchlistResult:
    """Everything one pass over the watchlist found."""

    observations: pd.DataFrame
    per_entry: dict[str, int] = field(default_factory=dict)
    proprietary: int = 0
    rejected: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)


def _query(client: ObservationsClass, entry: WatchlistEntry, count: bool) -> Table | int:
    """Run one entry's search (or its row count) through astroquery."""
    criteria = dict(entry.criteria)
    if entry.kind == "obs_id":
        criteria["obs_id"] = list(entry.obs_id)
    elif entry.kind == "program":
        criteria["proposal_id"] = list(entry.program)
    elif entry.kind == "target":
        criteria.update(objectname=entry.target, radius=entry.radius)
    else:
        criteria.update(coordinates=entry.coordinates, radius=entry.radius)
    positional_only = set(criteria) <= {"objectname", "coordinates", "radius"}
    if positional_only and entry.kind == "target":
        return (client.query_object_count if count else client.query_object)(entry.target, radius=entry.radius)
    if positional_only:
        return (client.query_region_count if count else client.query_region)(entry.coordinates, radius=entry.radius)
    return (client.query_criteria_count if count else client.query_criteria)(**criteria)


def query_entry(client: ObservationsClass, entry: WatchlistEntry) -> tuple[Table, int]:
    """Return the entry's observations and the row count the archive says it has."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoResultsWarning)
        table = _query(client, entry, count=False)
        expected = int(_query(client, entry, count=True))
    return table, expected


def _to_frame(table: Table) -> pd.DataFrame:
    """An astropy Table as a DataFrame with masked values as nulls and no bookkeeping columns."""
    table = table.copy()
    for name in ("_selected_",):
        if name in table.colnames:
            table.remove_column(name)
    frame = table.to_pandas()
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: None if v is np.ma.masked else v)
    return frame


def query_watchlist(client: ObservationsClass, watchlist: Watchlist, now: Time | None = None) -> WatchlistResult:
    """Run every entry; merge, leave out proprietary rows, and refuse unusable observation ids.

    An observation found by several entries is kept once, with all their names in
    ``watchlist_entry`` (comma-separated, in watchlist order).
    """
    now_mjd = (now or Time.now()).mjd
    result = WatchlistResult(observations=pd.DataFrame())
    tables = []
    for entry in watchlist.entries:
        table, expected = query_entry(client, entry)
        result.per_entry[entry.name] = len(table)
        if len(table) < expected:
            result.incomplete.append(f"{entry.name}: {len(table)} of {expected} rows")
        if len(table):
            table["watchlist_entry"] = entry.name
            tables.append(table)
    if not tables:
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vstack of differing masked/meta columns
        frame = _to_frame(vstack(tables, metadata_conflicts="silent"))
    release = pd.to_numeric(frame.get("t_obs_release"), errors="coerce")
    proprietary = release > now_mjd
    result.proprietary = int(proprietary.sum())
    frame = frame[~proprietary.fillna(False)]
    valid = []
    for obs_id in frame["obs_id"]:
        try:
            validate_obs_id(obs_id)
            valid.append(True)
        except InvalidNameError as err:
            result.rejected.append(str(err))
            valid.append(False)
    frame = frame[valid]
    entries = frame.groupby("obs_id", sort=False)["watchlist_entry"].agg(lambda s: ",".join(dict.fromkeys(s)))
    frame = frame.drop_duplicates("obs_id").set_index("obs_id")
    frame["watchlist_entry"] = entries
    result.observations = frame.reset_index().sort_values("obs_id", kind="stable").reset_index(drop=True)
    return result


def select_products(products: Table, spec: ProductSpec) -> Table:
    """The products an observation's download is made of, per the watchlist's product spec."""
    keep = np.ones(len(products), dtype=bool)
    if spec.product_type:
        keep &= np.isin(np.char.upper(products["productType"].filled("").astype(str)), spec.product_type)
    if spec.subgroups:
        keep &= np.isin(np.char.upper(products["productSubGroupDescription"].filled("").astype(str)), spec.subgroups)
    if spec.extensions:
        names = np.char.lower(products["productFilename"].filled("").astype(str))
        keep &= np.array([n.endswith(spec.extensions) for n in names], dtype=bool)
    if spec.calib_level and "calib_level" in products.colnames:
        keep &= np.isin(products["calib_level"].filled(-1), spec.calib_level)
    return products[keep]


def list_products(
    client: ObservationsClass,
    obsid: str,
    spec: ProductSpec,
    *,
    download_url: str,
    cloud: bool = True,
) -> tuple[pd.DataFrame, list[str]]:
    """The science products of one observation, with their S3 key (if any) and HTTP URL.

    Returns the table and the list of products refused because their file name is unsafe.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoResultsWarning)
        products = client.get_product_list(str(obsid))
    products = select_products(products, spec)
    products = products[np.unique(products["dataURI"].astype(str), return_index=True)[1]]
    refused = []
    safe = []
    for name in products["productFilename"]:
        try:
            safe_filename(str(name))
            safe.append(True)
        except InvalidNameError as err:
            refused.append(str(err))
            safe.append(False)
    products = products[np.array(safe, dtype=bool)]
    frame = _to_frame(products)
    uris = [str(u) for u in frame["dataURI"]] if len(frame) else []
    keys: dict[str, str | None] = {}
    if cloud and uris:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoResultsWarning)
            keys = client.get_cloud_uris(uris, include_bucket=False, return_uri_map=True, verbose=False) or {}
    frame["s3_key"] = [keys.get(uri) for uri in uris]
    frame["http_url"] = [f"{download_url}?uri={quote(uri, safe=':/')}" for uri in uris]
    return frame.sort_values("productFilename", kind="stable").reset_index(drop=True), refused
