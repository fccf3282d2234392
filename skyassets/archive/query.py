"""Querying MAST for a watchlist, and listing the products to download (no Dagster here).

astroquery does the talking; this module turns watchlist entries into astroquery calls, checks
that paging returned every row, leaves out proprietary data (unless the MAST token grants it),
and shapes the results as pandas tables ready for Parquet.

Every archive call is retried through :func:`skyassets.archive.client.with_retries`; a watchlist
entry whose calls still fail is reported in :attr:`WatchlistResult.failed` and the other entries
go on.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import requests
from astropy.table import Table, vstack
from astropy.time import Time
from astroquery.exceptions import NoResultsWarning
from astroquery.mast import ObservationsClass

from skyassets.archive.client import (
    ArchiveError,
    ArchiveSettings,
    archive_settings,
    cone_search,
    token_grants,
    with_retries,
)
from skyassets.archive.watchlist import (
    MINIMUM_RECOMMENDED,
    ProductSpec,
    Watchlist,
    WatchlistEntry,
    unknown_filters,
)
from skyassets.lake.names import InvalidNameError, safe_filename, validate_obs_id

log = logging.getLogger(__name__)

PUBLIC = "PUBLIC"
# MAST's missions (CAOM obs_collection), to say of an entry that finds nothing that its collection is none of them.
MAST_COLLECTIONS = (
    "BEFS", "EUVE", "FIMS-SPEAR", "FUSE", "GALEX", "HLA", "HLSP", "HST", "HUT", "IUE", "JWST", "K2", "K2FFI",
    "Kepler", "KeplerFFI", "OPO", "PS1", "SPITZER_SHA", "SWIFT", "TESS", "TUES", "WUPPE",
)


@dataclass
class WatchlistResult:
    """Everything one pass over the watchlist found.

    ``proprietary`` counts the exclusive-access observations left out; ``granted`` those kept because
    the MAST token grants them. ``failed`` has one line per watchlist entry whose search failed
    (``"<entry>: <why>"``), like ``incomplete`` and ``rejected``.
    """

    observations: pd.DataFrame
    per_entry: dict[str, int] = field(default_factory=dict)
    proprietary: int = 0
    granted: int = 0
    rejected: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    failed_entries: list[str] = field(default_factory=list)  # the names of the entries in ``failed``
    # entries that found nothing for a reason the watchlist shows (a collection MAST does not hold)
    suspicious: list[str] = field(default_factory=list)
    token_refused: str | None = None  # why MAST refused the token given: public data only this time
    # exclusive-access observations whose access check failed (an archive outage): obs_id -> why; not
    # counted as proprietary, and their last rows are kept, as a failed entry's are
    unchecked: dict[str, str] = field(default_factory=dict)


def _query(client: ObservationsClass, entry: WatchlistEntry, count: bool) -> Table | int:
    """Run one entry's search (or its row count) through astroquery; data and count always come
    from the same service, so that they can be compared."""
    criteria = dict(entry.criteria)
    if entry.kind == "obs_id":
        criteria["obs_id"] = list(entry.obs_id)
    elif entry.kind == "program":
        criteria["proposal_id"] = list(entry.program)
    elif entry.kind == "target":
        criteria.update(objectname=entry.target, radius=entry.radius)
    else:
        criteria.update(coordinates=entry.coordinates, radius=entry.radius)
    if set(criteria) <= {"objectname", "coordinates", "radius"}:  # query_criteria refuses a position alone
        return cone_search(client, entry.radius, coordinates=entry.coordinates, objectname=entry.target, count=count)
    return (client.query_criteria_count if count else client.query_criteria)(**criteria)


def query_entry(client: ObservationsClass, entry: WatchlistEntry) -> tuple[Table, int]:
    """Return the entry's observations and the row count the archive says it has.

    Transient failures are retried; a final failure is an :class:`ArchiveError` naming the entry.
    """
    policy = archive_settings(client).retry
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoResultsWarning)
        table = with_retries(lambda: _query(client, entry, count=False), f"{entry.name}: search", policy)
        expected = int(with_retries(lambda: _query(client, entry, count=True), f"{entry.name}: row count", policy))
    return table, expected


def _to_frame(table: Table) -> pd.DataFrame:
    """An astropy Table as a DataFrame with masked values as nulls and no bookkeeping columns.

    A text column stays text even when the archive sent null in every row (MAST does, e.g. for
    ``dataURL`` or ``prvversion``): pandas would otherwise make it a float column of NaN, and the
    column's type would change from one answer to the next.
    """
    table = table.copy()
    for name in ("_selected_",):
        if name in table.colnames:
            table.remove_column(name)
    text = [name for name in table.colnames if table[name].dtype.kind in "US"]
    frame = table.to_pandas()
    for column in frame.columns:
        if column in text:
            col = table[column]
            masked = np.ma.getmaskarray(col)
            values = [None if m else str(v) for v, m in zip(np.asarray(col).tolist(), masked, strict=True)]
            frame[column] = pd.Series(values, index=frame.index, dtype="str")
        elif frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: None if v is np.ma.masked else v)
    return frame


def merge_filter_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per observation: rows of the same ``obs_id`` become one, with all their filters.

    MAST's position searches answer one row per observation and filter (an observation through
    ``F200W`` and ``CLEAR`` comes back twice, once per filter). The rows are merged, keeping the
    first row's values, with ``filters`` the distinct filters joined by ``;`` (CAOM's own separator
    for observations with several filters) and ``em_min``/``em_max`` spanning them all.
    """
    if frame.empty or frame["obs_id"].is_unique:
        return frame.reset_index(drop=True)
    groups = frame.groupby("obs_id", sort=False)
    merged = frame.drop_duplicates("obs_id").set_index("obs_id")
    if "filters" in frame.columns:
        def join(values: pd.Series) -> str | None:
            names = [f.strip() for v in values.dropna() for f in str(v).split(";") if f.strip()]
            return ";".join(dict.fromkeys(names)) or None

        merged["filters"] = pd.Series(groups["filters"].agg(join), dtype="str")
    if "em_min" in frame.columns:
        merged["em_min"] = groups["em_min"].min()
    if "em_max" in frame.columns:
        merged["em_max"] = groups["em_max"].max()
    return merged.reset_index()


def query_watchlist(client: ObservationsClass, watchlist: Watchlist, now: Time | None = None) -> WatchlistResult:
    """Run every entry; merge, leave out proprietary rows, and refuse unusable observation ids.

    The result has one row per observation (see :func:`merge_filter_rows`). An observation found
    by several entries is kept once, with all their names in ``watchlist_entry`` (comma-separated,
    in watchlist order). An entry whose search fails after retries is listed in ``failed`` and the
    others are kept. Exclusive-access observations (``dataRights``, or a release date still to
    come) are left out and counted, except those the client's MAST token grants.
    """
    now_mjd = (now or Time.now()).mjd
    result = WatchlistResult(observations=pd.DataFrame(), token_refused=archive_settings(client).token_refused)
    for name, why in watchlist.invalid:  # an entry that cannot be read fails alone
        result.failed.append(why)
        result.failed_entries.append(name)
    tables = []
    for entry in watchlist.entries:
        try:
            table, expected = query_entry(client, entry)
        except ArchiveError as err:
            result.failed.append(str(err))
            result.failed_entries.append(entry.name)
            continue
        result.per_entry[entry.name] = len(table)
        if not len(table) and (why := _unknown_names(entry)):
            result.suspicious.append(f"{entry.name}: found nothing; {why}")
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
    valid = []
    for obs_id in frame["obs_id"]:
        try:
            validate_obs_id(obs_id)
            valid.append(True)
        except InvalidNameError as err:
            if str(err) not in result.rejected:
                result.rejected.append(str(err))
            valid.append(False)
    frame = frame[valid]
    entries = frame.groupby("obs_id", sort=False)["watchlist_entry"].agg(lambda s: ",".join(dict.fromkeys(s)))
    frame = merge_filter_rows(frame).set_index("obs_id")
    frame["watchlist_entry"] = entries
    frame = frame.reset_index()
    exclusive = _exclusive(frame, now_mjd)
    granted, result.unchecked = _granted(client, frame, exclusive)
    result.proprietary = int((exclusive & ~granted).sum()) - len(result.unchecked)
    result.granted = int(granted.sum())
    frame = frame[~exclusive | granted]
    result.observations = frame.sort_values("obs_id", kind="stable").reset_index(drop=True)
    return result


def _unknown_names(entry: WatchlistEntry) -> str | None:
    """What may be wrong with the collections and filters an entry asks for: a collection that is no
    MAST mission, a filter no instrument skyassets knows has (a slip such as JWTS or F44W finds
    nothing, which looks like an empty sky)."""
    import difflib

    known = {c.casefold(): c for c in MAST_COLLECTIONS}
    said = []
    for name in entry.criteria.get("obs_collection", []):
        if str(name).casefold() in known:
            continue
        close = difflib.get_close_matches(str(name).upper(), [c.upper() for c in MAST_COLLECTIONS], n=1, cutoff=0.5)
        hint = f" (did you mean {known[close[0].casefold()]}?)" if close else ""
        said.append(f"collection {name!r} is not one of MAST's{hint}")
    return "; ".join(said + unknown_filters(entry)) or None


def keep_exclusive(found: pd.DataFrame, previous: pd.DataFrame, now: Time | None = None) -> pd.DataFrame:
    """``found`` with the exclusive-access rows of ``previous`` it lacks: a token MAST refused this
    time (expired) hides what it granted before, which is not gone from the archive."""
    if previous.empty:
        return found
    kept = previous[_exclusive(previous, (now or Time.now()).mjd).to_numpy()]
    if len(found):
        kept = kept[~kept["obs_id"].isin(found["obs_id"])]
    if not len(kept):
        return found
    # in obs_id order, as a query gives them: the same rows again are the same table
    return pd.concat([found, kept], ignore_index=True).sort_values("obs_id", kind="stable").reset_index(drop=True)


def keep_failed_entries(found: pd.DataFrame, previous: pd.DataFrame, failed_entries: list[str]) -> pd.DataFrame:
    """``found`` with the ``previous`` rows of the entries whose search failed this time.

    An archive outage must not read as "these observations are gone": an observation that only a
    failed entry found keeps its last row, until a search of that entry answers again."""
    if not failed_entries or previous.empty:
        return found
    failed = set(failed_entries)
    by_failed = previous["watchlist_entry"].fillna("").map(lambda names: bool(failed & set(names.split(","))))
    kept = previous[by_failed & ~previous["obs_id"].isin(found["obs_id"] if len(found) else [])]
    if kept.empty:
        return found
    if found.empty:
        return kept.sort_values("obs_id", kind="stable").reset_index(drop=True)
    merged = pd.concat([found, kept.reindex(columns=found.columns.union(kept.columns, sort=False))],
                       ignore_index=True)
    return merged.sort_values("obs_id", kind="stable").reset_index(drop=True)


def _exclusive(frame: pd.DataFrame, now_mjd: float) -> pd.Series:
    """Rows whose data the archive does not serve to everyone: ``dataRights`` other than PUBLIC
    (EXCLUSIVE_ACCESS, RESTRICTED), or, where no rights are given, a release date still to come.

    The rights are the archive's own word on what a download without a token gets: MAST turns them
    to PUBLIC some time after ``t_obs_release`` passes, and until then the files answer 401."""
    release = pd.to_numeric(frame.get("t_obs_release", pd.Series(np.nan, index=frame.index)), errors="coerce")
    by_date = (release > now_mjd).fillna(False).astype(bool)
    if "dataRights" not in frame.columns:
        return by_date
    rights = frame["dataRights"].fillna("").astype(str).str.strip().str.upper()
    return rights.ne(PUBLIC).where(rights.ne(""), by_date).astype(bool)


def _granted(client: ObservationsClass, frame: pd.DataFrame, exclusive: pd.Series) -> tuple[pd.Series, dict[str, str]]:
    """Which exclusive-access rows the client's MAST token lets us download (none without a token),
    and the observations whose check failed (the archive not answering), with why.

    The archive says so itself: a HEAD of one of the observation's products with the token."""
    granted = pd.Series(False, index=frame.index)
    unchecked: dict[str, str] = {}
    settings = archive_settings(client)
    if not settings.token:
        return granted, unchecked
    for index in frame.index[exclusive]:
        obsid, obs_id = str(frame.at[index, "obsid"]), frame.at[index, "obs_id"]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NoResultsWarning)
                products = with_retries(
                    lambda obsid=obsid: client.get_product_list(obsid), f"{obs_id}: product list", settings.retry
                )
            uris = [str(u) for u in products["dataURI"]] if len(products) else []
            granted[index] = bool(uris) and token_grants(settings, uris[0])
        except ArchiveError as err:  # said by whoever keeps the last row (mast_observations)
            unchecked[str(obs_id)] = str(err)
    return granted, unchecked


def _text(products: Table, name: str, *, upper: bool = True) -> np.ndarray:
    """A column as (upper-case) text, '' where null or where the archive did not send the column."""
    if name not in products.colnames:
        return np.full(len(products), "", dtype=str)
    column = products[name]
    values = np.asarray(column.filled("") if hasattr(column, "filled") else column, dtype=object)
    text = np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip() for v in values],
                    dtype=str)
    return np.char.upper(text) if upper else text


def select_products(products: Table, spec: ProductSpec) -> Table:
    """The products an observation's download is made of, per the watchlist's product spec.

    ``product_type``, ``subgroups`` and ``extensions`` narrow the list (each when given); of what
    remains, a product is kept when MAST recommends it (``productGroupDescription`` "Minimum
    Recommended Products", with ``spec.recommended``) or its ``calib_level`` is one of
    ``spec.calib_level``. Without either, every product that passed the narrowing is kept.
    """
    keep = np.ones(len(products), dtype=bool)
    if spec.product_type:
        keep &= np.isin(_text(products, "productType"), spec.product_type)
    if spec.subgroups:
        keep &= np.isin(_text(products, "productSubGroupDescription"), spec.subgroups)
    if spec.extensions:
        names = np.char.lower(_text(products, "productFilename"))
        keep &= np.array([n.endswith(spec.extensions) for n in names], dtype=bool)
    if spec.recommended or spec.calib_level:
        chosen = np.zeros(len(products), dtype=bool)
        if spec.recommended:
            chosen |= _text(products, "productGroupDescription") == MINIMUM_RECOMMENDED.upper()
        if spec.calib_level and "calib_level" in products.colnames:
            column = products["calib_level"]
            levels = column.filled(-1) if hasattr(column, "filled") else column
            chosen |= np.isin(np.asarray(levels), spec.calib_level)
        keep &= chosen
    return products[keep]


# Seconds a cloud lookup service found down stays unasked by the runs that follow: each run would
# otherwise wait out the same retries (minutes) for the same answer, holding the archive's pool.
CLOUD_DOWN_SECONDS = 900.0


@dataclass
class CloudLookup:
    """Whether products are looked up in the cloud: on unless switched off, and off for the rest of a
    run once the lookup service kept failing past its retries (``down`` says why), as every other
    observation would wait out the same retries for the same answer. ``noted`` is when an earlier
    run found it so (:meth:`for_run`), for the runs that follow within ``CLOUD_DOWN_SECONDS``."""

    enabled: bool = True
    down: str = ""
    noted: float | None = None

    @classmethod
    def for_run(cls, enabled: bool, note: Path, now: float | None = None) -> CloudLookup:
        """The run's lookup: off if ``note`` says the service was found down less than
        ``CLOUD_DOWN_SECONDS`` ago (an unreadable note is no note)."""
        now = time.time() if now is None else now
        found = cls.last_found_down(note)
        if found is None or not enabled or not 0 <= now - found[0] < CLOUD_DOWN_SECONDS:
            return cls(enabled)
        return cls(False, found[1], found[0])

    @staticmethod
    def last_found_down(note: Path) -> tuple[float, str] | None:
        """When a run last found the service down, and why (None: never, or the note is unreadable)."""
        try:
            said = json.loads(note.read_text())
            return float(said["at"]), str(said["why"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remember(self, note: Path, now: float | None = None) -> None:
        """Note for the runs that follow that the service was found down in this run."""
        if self.down and self.noted is None:
            note.parent.mkdir(parents=True, exist_ok=True)
            note.write_text(json.dumps({"at": time.time() if now is None else now, "why": self.down}))


def _cloud_keys(
    client: ObservationsClass, uris: list[str], what: str, lookup: CloudLookup, settings: ArchiveSettings
) -> dict[str, str | None]:
    """The S3 key of each of ``uris`` the cloud path lookup gives. A file the lookup cannot place
    goes over HTTP, alone: when the answer for all of them cannot be taken (a product left out of
    it), each is asked on its own."""

    def ask(batch: list[str]) -> dict[str, str | None]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoResultsWarning)
            return with_retries(
                lambda: client.get_cloud_uris(batch, include_bucket=False, return_uri_map=True, verbose=False),
                f"{what}: cloud path lookup", settings.retry,
            ) or {}

    def refused(err: ArchiveError) -> bool:
        """The service itself failed (kept failing, or answered an HTTP error): asking it again, for
        this observation's other files or the run's other observations, gets the same answer."""
        if err.exhausted or isinstance(err.__cause__, requests.HTTPError):
            lookup.enabled, lookup.down = False, str(err)
            log.warning("%s; files go over HTTP, and no more cloud lookups are asked in this run", err)
            return True
        return False

    if not (lookup.enabled and uris):
        return {}
    try:
        return ask(uris)
    except ArchiveError as err:
        if refused(err):
            return {}
        if len(uris) == 1:
            log.warning("%s; the file goes over HTTP", err)
            return {}
    keys: dict[str, str | None] = {}
    for uri in uris:  # an answer that could not be taken (a product left out of it): one product at a time
        try:
            keys.update(ask([uri]))
        except ArchiveError as err:
            if refused(err):
                break
            if isinstance(err.__cause__, TypeError | KeyError | IndexError):  # astroquery's reading of no entry
                log.warning("%s: cloud path lookup: its answer leaves %s out; it goes over HTTP", what, uri)
            else:
                log.warning("%s; %s goes over HTTP", err, uri)
    return keys


def list_products(
    client: ObservationsClass,
    obsid: str,
    spec: ProductSpec,
    *,
    download_url: str,
    cloud: bool | CloudLookup = True,
    name: str | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """The science products of one observation, with their S3 key (if any) and HTTP URL.

    Returns the table and the list of products refused because their file name is unsafe. A
    product listed twice (MAST repeats shared products) is kept once. Only public products are
    looked up in the cloud (the bucket holds public data only); a file the cloud path lookup cannot
    place goes over HTTP instead of the observation failing (:func:`_cloud_keys`). ``name`` (the
    obs_id) names the observation in errors, else its MAST ``obsid`` does.
    """
    settings = archive_settings(client)
    what = name or f"observation {obsid}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoResultsWarning)
        products = with_retries(lambda: client.get_product_list(str(obsid)), f"{what}: product list", settings.retry)
    products = select_products(products, spec)
    refused = []
    located = _text(products, "dataURI", upper=False) != ""
    refused += [f"{name}: no dataURI; left out" for name in _text(products, "productFilename", upper=False)[~located]]
    products = products[located]
    products = products[np.unique(products["dataURI"].astype(str), return_index=True)[1]]
    safe, named = [], {}
    for name, uri in zip(products["productFilename"], products["dataURI"], strict=True):
        try:
            safe_filename(str(name))
        except InvalidNameError as err:
            refused.append(str(err))
            safe.append(False)
            continue
        # two files under one name would be one file on disk: the first (by dataURI) is kept
        first = named.setdefault(str(name), str(uri))
        if first != str(uri):
            refused.append(f"{name}: also the name of {first}; {uri} left out")
        safe.append(first == str(uri))
    products = products[np.array(safe, dtype=bool)]
    frame = _to_frame(products)
    uris = [str(u) for u in frame["dataURI"]] if len(frame) else []
    rights = list(_text(products, "dataRights"))
    if not settings.token and any(right not in ("", PUBLIC) for right in rights):
        # what the archive serves to a token alone: without one, each such download would fail every run
        withheld = [right not in ("", PUBLIC) for right in rights]
        refused += [f"{frame.at[i, 'productFilename']}: {rights[i]} data, and no MAST token; left out"
                    for i in np.flatnonzero(withheld)]
        frame = frame[~np.array(withheld)].reset_index(drop=True)
        uris = [str(u) for u in frame["dataURI"]]
        rights = [right for right, out in zip(rights, withheld, strict=True) if not out]
    public = [uri for uri, right in zip(uris, rights, strict=True) if right in ("", PUBLIC)]
    lookup = cloud if isinstance(cloud, CloudLookup) else CloudLookup(cloud)
    keys = _cloud_keys(client, public, what, lookup, settings)
    frame["s3_key"] = [keys.get(uri) for uri in uris]
    frame["http_url"] = [f"{download_url}?uri={quote(uri, safe=':/')}" for uri in uris]
    return frame.sort_values("productFilename", kind="stable").reset_index(drop=True), refused
