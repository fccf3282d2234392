"""The archive assets: what the watchlist finds in MAST, each observation's products, its files."""

import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from skyassets.defs.metadata import column_schema, frame_metadata, partition_metadata
from skyassets.defs.partitions import (
    failed_partitions_metadata,
    observation_backfill_policy,
    observations_partitions,
)
from skyassets.defs.resources import (
    ArchiveResource,
    DownloaderResource,
    HomeResource,
    LandingResource,
    WatchlistResource,
)
from skyassets.lake.home import Home
from skyassets.lake.names import InvalidNameError
from skyassets.lake.store import Lake
from skyassets.lake.tables import table
from skyassets.landing.keys import LANDED_PREFIX

# The archive client (astroquery), the downloader (requests) and astropy's FITS reader are imported
# in the assets that use them, so that loading the definitions stays quick.
if TYPE_CHECKING:
    from skyassets.archive.download import FileRequest, FileResult, Progress

OBSERVATION_PREVIEW = [
    "obs_id", "target_name", "obs_collection", "instrument_name", "filters", "t_exptime", "watchlist_entry",
]
PRODUCT_PREVIEW = ["productFilename", "productSubGroupDescription", "size", "s3_key"]
# In the home: when a run last found the cloud path lookup down, and why (CloudLookup.for_run).
CLOUD_DOWN_NOTE = ".cloud-lookup-down.json"
MANIFEST_PREVIEW = ["filename", "size", "status", "source", "fits_checksum", "seconds", "bytes_per_second"]


@asset(
    group_name="archive",
    pool="mast_api",
    kinds={"parquet"},
    metadata=column_schema(table("mast_observations").schema),
    description="Every public MAST observation the watchlist's queries find, one row per observation.",
    output_required=False,  # answers the same as the last ones: nothing new for anything downstream
    check_specs=[AssetCheckSpec(
        "mast_token_accepted", asset="mast_observations",
        description="MAST took the token given (MAST_API_TOKEN), or none was given; one it refuses (expired) "
                    "leaves public data only",
    )],
)
def mast_observations(
    context: AssetExecutionContext, home: HomeResource, watchlist: WatchlistResource, archive: ArchiveResource
) -> Iterator[MaterializeResult | AssetCheckResult]:
    from skyassets.archive.query import keep_exclusive, keep_failed_entries, query_watchlist

    wl = watchlist.load()
    result = query_watchlist(archive.client(home.home), wl)
    for message in result.rejected:
        context.log.error(f"observation left out: {message}")
    if len(result.failed_entries) == len(wl.entries) + len(wl.invalid):
        raise Failure("every watchlist entry failed, mast_observations keeps its last rows: "
                      + "; ".join(result.failed))
    for message in result.failed:
        context.log.error(f"watchlist entry failed, its observations keep their last rows: {message}")
    for message in result.suspicious:
        context.log.warning(f"watchlist entry: {message}")
    if result.incomplete:
        raise Failure(
            "MAST returned fewer rows than it counted (paging stopped early): " + "; ".join(result.incomplete)
        )
    lake = home.home.tables
    previous = (lake.read("mast_observations", missing_ok=True)
                if result.failed_entries or result.token_refused or result.unchecked else pd.DataFrame())
    observations = keep_failed_entries(result.observations, previous, result.failed_entries)
    if result.token_refused:
        before = len(observations)
        observations = keep_exclusive(observations, previous)
        result.proprietary = max(0, result.proprietary - (len(observations) - before))  # kept, not left out
        # the refusal itself is logged where the token is read, and is the check's description below
        context.log.error(f"the MAST token was refused: public data only; {len(observations) - before} "
                          "exclusive-access observations it granted before keep their rows")
    elif result.unchecked and not previous.empty:  # an access check the archive did not answer: not gone
        observations = keep_exclusive(observations, previous[previous["obs_id"].isin(list(result.unchecked))])
    for obs_id, why in result.unchecked.items():
        context.log.warning(f"{obs_id}: cannot tell whether the MAST token grants it; its last row is kept: {why}")
    kept = len(observations) - len(result.observations)
    token_check = AssetCheckResult(
        check_name="mast_token_accepted", passed=result.token_refused is None, severity=AssetCheckSeverity.ERROR,
        description=result.token_refused or ("MAST took the token" if archive.mast_token else "no token given"),
    )
    found = (f"{len(observations)} observations from {len(wl.entries) + len(wl.invalid)} watchlist entries "
             f"({result.proprietary} proprietary left out, {kept} kept from failed entries or a refused token)")
    last = context.instance.get_latest_materialization_event(context.asset_key)
    said = {name: getattr(value, "value", None)
            for name, value in (last.asset_materialization.metadata if last is not None else {}).items()}
    # an entry failing anew is materialised even so, and so is its recovery, an entry added that finds
    # nothing and a count that moved between entries: the asset shows how its entries fared; the same
    # answers and failures again (an entry that cannot be read) are said already
    # a token refused or granted again is materialised too: what it grants is this query's to say
    if (last is not None and list(said.get("failed_entry_reasons") or []) == list(result.failed)
            and dict(said.get("rows_per_entry") or {}) == dict(result.per_entry)
            and list(said.get("entries_to_check") or []) == list(result.suspicious)
            and (said.get("exclusive_access_granted"), said.get("kept_from_failed_entries")) == (result.granted, kept)
            and lake.holds("mast_observations", observations)):
        context.log.info(f"{found}: the same as the last answers; nothing materialised, nothing downstream to redo")
        yield token_check
        return
    path = lake.write("mast_observations", observations)
    context.log.info(f"{found} -> {path}")
    yield MaterializeResult(
        metadata={
            **frame_metadata(observations, preview_columns=OBSERVATION_PREVIEW),
            "path": MetadataValue.path(path),
            "watchlist": wl.path,
            "rows_per_entry": MetadataValue.json(result.per_entry),  # as MAST sent them: a row per filter
            "observations_per_entry": MetadataValue.json(_per_entry(observations, result.per_entry)),
            "proprietary_left_out": result.proprietary,
            "exclusive_access_granted": result.granted,
            # exclusive-access observations the archive did not say whether the token grants: kept as they were
            "access_unchecked": MetadataValue.json([f"{o}: {why}" for o, why in result.unchecked.items()]),
            "failed_entries": len(result.failed),
            "failed_entry_reasons": MetadataValue.json(list(result.failed)),  # each names its entry
            "entries_to_check": MetadataValue.json(list(result.suspicious)),  # found nothing, and why that may be
            "kept_from_failed_entries": kept,
            "rejected_obs_ids": len(result.rejected),
        },
        check_results=[token_check],
    )


def _per_entry(observations: pd.DataFrame, entries: Iterable[str]) -> dict[str, int]:
    """How many of the observations each entry found (an observation is one row, whatever its filters)."""
    found = observations["watchlist_entry"].fillna("").str.split(",") if len(observations) else pd.Series([])
    return {name: int(found.map(lambda names, name=name: name in names).sum()) for name in entries}


def _observation_row(observations: pd.DataFrame, obs_id: str) -> pd.Series:
    """The observation's row of mast_observations (indexed by obs_id), or a failure that says why not."""
    if obs_id.startswith(LANDED_PREFIX):  # a backfill of "missing" partitions reaches them too
        raise Failure(
            f"{obs_id} is an observation of landed files: MAST lists nothing for it, its files come from the "
            "landing folder (landing_job); leave landed-* partitions out of runs of mast_products"
        )
    if obs_id not in observations.index:
        raise Failure(
            f"observation {obs_id} is not in the latest mast_observations; re-materialise mast_observations "
            "or delete the partition if it left the watchlist"
        )
    return observations.loc[obs_id]


def _bytes(frame: pd.DataFrame) -> dict[str, int]:
    """A partition's (or run's) own byte count, for its materialisation."""
    return {"bytes_total": int(frame["size"].sum()) if len(frame) else 0}


def _file_figures(frame: pd.DataFrame) -> dict[str, int]:
    """A partition's own bytes stored and how its files came: fetched (or copied) now, or already
    verified (a file listed as quarantined is neither)."""
    status = Counter(frame["status"]) if len(frame) else Counter()
    stored = frame[frame["status"] != "quarantined"] if len(frame) else frame
    return {**_bytes(stored), "files_downloaded": status["downloaded"] + status["copied"],
            "files_skipped": status["unchanged"]}


@asset(
    group_name="archive",
    deps=[mast_observations],
    partitions_def=observations_partitions,
    backfill_policy=observation_backfill_policy,
    pool="mast_api",
    kinds={"parquet"},
    metadata=column_schema(table("mast_products").schema),
    description="The science FITS products of one observation that the watchlist asks for, with S3 key and URL.",
)
def mast_products(
    context: AssetExecutionContext, home: HomeResource, watchlist: WatchlistResource, archive: ArchiveResource
) -> MaterializeResult:
    from skyassets.archive.client import ArchiveError, probing
    from skyassets.archive.query import CLOUD_DOWN_SECONDS, CloudLookup, list_products

    wl = watchlist.load()
    client = archive.client(home.home)
    download_url = archive.download_url(home.home)
    lake = home.home.tables
    observations = lake.read("mast_observations").set_index("obs_id")
    frames, failed = [], {}
    # one for the run: a lookup service found down (in this run, or minutes ago in another) is not asked
    note = home.home.root / CLOUD_DOWN_NOTE
    cloud = CloudLookup.for_run(archive.cloud, note)
    if cloud.noted is not None:
        context.log.warning(f"no cloud lookups: a run {time.time() - cloud.noted:.0f} s ago found the service down "
                            f"({cloud.down}); files go over HTTP")
    gave_up: ArchiveError | None = None  # the last call that waited out every retry, until another answers
    for obs_id in context.partition_keys:
        try:  # one observation's trouble (the archive failing its list) is its own: the others are listed
            row = _observation_row(observations, obs_id)
            # after a call that waited out its retries, the next is a short probe: an archive that is
            # down fails it soon, and the batch stops instead of each observation waiting as long
            with probing(client) if gave_up else nullcontext():
                chosen = wl.products_for(row["watchlist_entry"])
                frame, refused = list_products(
                    client, row["obsid"], chosen,
                    download_url=download_url, cloud=cloud, name=obs_id,
                )
            gave_up = None
            try:  # where each file goes: a collection that cannot name a folder fails its observation alone
                frame["path"] = [home.home.stored_at(c, obs_id, f)
                                 for c, f in zip(frame["obs_collection"], frame["productFilename"], strict=True)]
            except InvalidNameError as err:
                raise Failure(f"{obs_id}: a product's collection cannot name its folder ({err})") from err
        except (ArchiveError, Failure) as err:
            if isinstance(err, ArchiveError) and err.exhausted and gave_up is not None:  # the archive is down
                raise Failure(f"{gave_up}; the archive kept failing (the next observation's list too), so the "
                              "rest of the batch was not asked (run it again once the archive answers)") from err
            gave_up = err if isinstance(err, ArchiveError) and err.exhausted else None
            failed[obs_id] = getattr(err, "description", None) or str(err)
            context.log.error(f"no product list: {failed[obs_id]}")
            continue
        for message in refused:
            context.log.error(f"{obs_id}: product refused: {message}")
        frame.insert(0, "partition", obs_id)
        lake.write("mast_products", frame, partition=obs_id)
        lake.write("product_choices", [{"obs_id": obs_id, "products": chosen.text}], partition=obs_id)
        frames.append(frame)
        context.log.info(f"{obs_id}: {len(frame)} products, {int(frame['size'].sum()) if len(frame) else 0} bytes")
    if cloud.down and cloud.noted is None:
        cloud.remember(note)
        context.log.warning(f"no cloud lookups after: {cloud.down}; the rest of the run's files, and those of "
                            f"the runs of the next {CLOUD_DOWN_SECONDS / 60:.0f} minutes, go over HTTP")
    if failed:
        why = "; ".join(list(failed.values())[:5])  # each names its observation
        raise Failure(
            f"no product list ({why})" if len(failed) == 1 and not frames else
            f"none of the {len(failed)} observations has a product list ({why})" if not frames else
            f"{len(failed)} of {len(frames) + len(failed)} observations have no product list ({why}); the others "
            "are listed, and failed_batch_sensor runs each failed one alone and the rest again",
            metadata=failed_partitions_metadata(failed),
        )
    products = pd.concat(frames, ignore_index=True)
    run = {
        "bytes": int(products["size"].sum()) if len(products) else 0,
        "in_s3": int(products["s3_key"].notna().sum()) if len(products) else 0,
    }
    return MaterializeResult(metadata=partition_metadata(
        context, products, preview_columns=PRODUCT_PREVIEW, by="partition", figures=_bytes, run=run))


class _ProgressLog:
    """Sends the downloader's progress to the run log, from whichever thread reports it.

    Every log line is an event written to the Dagster instance, so routine reports are kept to one
    per ``interval`` seconds: a batch of thousands of small files would otherwise spend more time
    logging than copying. Failures, retries and the last file are always logged.
    """

    def __init__(self, context: AssetExecutionContext, interval: float = 1.0):
        self._context = context
        self._lock = threading.Lock()
        self._interval = interval
        self._last = float("-inf")

    def __call__(self, progress: "Progress") -> None:
        total = f"/{progress.bytes_total / 1e6:.1f}" if progress.bytes_total else ""
        eta = f", ETA {progress.eta_seconds:.0f} s" if progress.eta_seconds is not None else ""
        urgent = progress.message.startswith(("failed", "retry")) or progress.files_done == progress.files_total
        with self._lock:
            now = time.monotonic()
            if not urgent and now - self._last < self._interval:
                return
            self._last = now
            self._context.log.info(
                f"{progress.files_done}/{progress.files_total} files, {progress.bytes_done / 1e6:.1f}{total} MB "
                f"at {progress.bytes_per_second / 1e6:.1f} MB/s{eta}"
                + (f" - {progress.message}" if progress.message else "")
            )


def _earlier_manifests(lake: Lake, obs_ids: list[str]) -> dict[tuple[str, str], dict]:
    """The previous manifest rows, so a file skipped as verified keeps the record of its download."""
    return {
        (obs_id, row["filename"]): row
        for obs_id, manifest in lake.read_partitions("fits_files", obs_ids).items()
        for row in manifest.to_pylist()
    }


def _refused_by_partition(keys: list[str], owner: list[tuple], results: "list[FileResult]") -> dict[str, dict]:
    """Each partition's landed files that were not copied (quarantined, or unreadable), with why."""
    named: dict[str, list[str]] = {key: [] for key in keys}
    for (key, location, signature), result in zip(owner, results, strict=True):
        if signature is not None and result.status == "failed" and key in named:  # a landed file's copy
            named[key].append(f"- `{location}`: {result.error}")
    return {key: {"files_not_copied": len(lines), **({"not_copied": MetadataValue.md("\n".join(lines))}
                                                       if lines else {})} for key, lines in named.items()}


def _quarantine_bad_landed_files(
    root: Home, requests: "list[FileRequest]", results: "list[FileResult]", owner: list[tuple], before: set[int]
) -> tuple[list[str], set[int]]:
    """Landed files that are not valid FITS are quarantined with the reason and reported; the others
    go on. ``before``: the files in the quarantine from before, as they are now (not copied). Returns
    the messages and which files are in the quarantine (now, or from before)."""
    from skyassets.fits.meta import quarantine, release_quarantined
    from skyassets.landing.ingest import NOT_COPIED

    messages, held = [], set(before)
    refused = [i for i, (request, result) in enumerate(zip(requests, results, strict=True))
               if result.status == "failed" and request.local_path is not None and i not in before]
    broken = {i for i in refused if Path(requests[i].dest_dir, f"{requests[i].filename}.corrupt").exists()}
    if broken and root.quarantine.is_dir():  # one reading of the notes for the batch
        # a new version as broken as the one before takes its place: one copy of a file, not one a touch
        release_quarantined(root.quarantine, {str(requests[i].local_path): owner[i][2] for i in broken})
    for i in refused:
        request, result, (_, _, signature) = requests[i], results[i], owner[i]
        bad = Path(request.dest_dir) / f"{request.filename}.corrupt"
        if i in broken:  # the copy is quarantined; the original stays where its owner put it
            moved = quarantine(bad, root.quarantine, f"{request.local_path}: {result.error}",
                               landed_location=str(request.local_path), landed_signature=signature)
            messages.append(f"quarantined a copy of {request.local_path}: {result.error} (now {moved})")
            held.add(i)
        else:
            messages.append(f"{NOT_COPIED}{request.local_path}: {result.error}")
    return messages, held


def _quarantined_row(root: Home, obs_id: str, uri: str, signature: str, request: "FileRequest",
                     result: "FileResult") -> dict:
    """The manifest row of a landed file refused on arrival: listed as ``quarantined``, as a file
    cataloguing refused is, so that ``files`` names every file of the quarantine (no copy, no hash)."""
    return {
        "partition": obs_id, "dataURI": uri, "signature": signature, "filename": request.filename,
        "path": Path(request.dest_dir, request.filename).relative_to(root.root).as_posix(),
        "size": request.expected_size, "sha256": None, "source": "s3" if uri.startswith("s3://") else "local",
        "status": "quarantined", "fits_checksum": result.fits_checksum, "sha256_checked": None,
        "attempts": result.attempts, "resumed_from": None, "seconds": round(result.seconds, 3),
        "bytes_per_second": None,
    }


def _fetch(
    requests: "list[FileRequest]",
    owner: list[tuple],
    downloader: DownloaderResource,
    archive: ArchiveResource,
    landing: LandingResource,
    root: Home,
    progress: _ProgressLog,
) -> "tuple[list[FileResult], list[str | None], set[int]]":
    """Files from MAST with the archive's settings, landed files with the landing zone's; in order,
    with where the store can copy each from (``s3://bucket/key`` on the home's own S3 service), and
    which landed files are in the quarantine from before, unchanged (so not copied).

    A landed file has a signature (its size and mtime, or ETag); a MAST product has none. A local
    landed file whose version is in the quarantine already fails at once, with the reason it was
    given (a local file reads the same every time; an object of a store is fetched again).
    """
    from skyassets.archive.download import FileResult, download_files
    from skyassets.fits.meta import quarantined_versions

    results: list[FileResult | None] = [None] * len(requests)
    origins: list[str | None] = [None] * len(requests)
    versions = quarantined_versions(root.quarantine) if any(r.local_path is not None for r in requests) else {}
    held = set()
    for i, (_, location, signature) in enumerate(owner):
        if requests[i].local_path is not None and (version := versions.get(location)) and version[0] == signature:
            # a local file quarantined before exactly as it is now: not copied (nor quarantined) again
            results[i] = FileResult(requests[i].filename, None, "failed", 0, None, None, None, 0.0, 0.0, 0, 0, 0,
                                    "unchecked", f"quarantined before and unchanged since: {version[1]}")
            held.add(i)
    for landed in (False, True):
        indices = [i for i, (_, _, signature) in enumerate(owner)
                   if (signature is not None) == landed and results[i] is None]
        if not indices:
            continue
        if landed:
            config = replace(
                downloader.config(None, root),
                s3_endpoint=landing.s3_endpoint, s3_anonymous=landing.s3_anonymous, prefer_s3=True,
            )
        else:
            config = downloader.config(archive, root)
        fetched = download_files([requests[i] for i in indices], config, on_progress=progress)
        for i, result in zip(indices, fetched, strict=True):
            results[i] = result
            key = requests[i].s3_key
            if root.remote and key and config.s3_endpoint == root.endpoint:
                origins[i] = key if key.startswith("s3://") else f"s3://{config.s3_bucket}/{key.lstrip('/')}"
    return results, origins, held


def _forget_changed_copy(request: "FileRequest", before: dict | None, signature: str) -> bool:
    """Whether a landed file changed in place since it was copied; if so its old copy's checksum is
    dropped, so that it is copied again. The new copy takes the old one's place in one rename, so a
    run reading the old copy meanwhile (a mosaic of its target) still finds a file."""
    from skyassets.archive.download import SHA256_SUFFIX

    if before is None or before.get("signature") in (None, signature):
        return False
    Path(request.dest_dir, f"{request.filename}{SHA256_SUFFIX}").unlink(missing_ok=True)
    return True


def _release_repaired(root: Home, results: "list[FileResult]", owner: list[tuple]) -> list[Path]:
    """The quarantined copies of landed files whose new version was copied, deleted with their notes."""
    from skyassets.fits.meta import release_quarantined

    taken = {location: signature for (_, location, signature), result in zip(owner, results, strict=True)
             if signature is not None and result.status != "failed"}
    return release_quarantined(root.quarantine, taken) if taken and root.quarantine.is_dir() else []


def _drop_failed_versions(
    root: Home, requests: "list[FileRequest]", results: "list[FileResult]", changed: set[int]
) -> None:
    """The old copies of changed files whose new version could not be copied: deleted, as the file
    they were copied from is no more, and no manifest lists them."""
    root.remove_files(
        relative
        for i in changed if results[i].status == "failed"
        for relative in _copy_and_marks(
            Path(requests[i].dest_dir, requests[i].filename).relative_to(root.root).as_posix())
    )


def _drop_departed_copies(root: Home, landed: dict, earlier: dict) -> None:
    """Copies of landed files that have left their partition (their header now names another
    observation, or their record is gone): deleted, with their checksum and verification marks, so
    the home holds no file that no manifest lists. ``landed``: partition -> its (row, request) pairs."""
    kept = {(key, request.filename) for key, pairs in landed.items() for _, request in pairs}
    root.remove_files(
        relative
        for (key, filename), row in earlier.items()
        if key in landed and (key, filename) not in kept and row.get("path")
        for relative in _copy_and_marks(str(row["path"]))
    )


def _copy_and_marks(relative: str) -> list[str]:
    """A stored copy (relative to the home) and the files the downloader keeps beside it: its
    checksum, its verification mark and its lock."""
    from skyassets.archive.download import LOCK_SUFFIX, SHA256_SUFFIX, VERIFIED_SUFFIX

    folder, _, name = relative.rpartition("/")
    return [relative, f"{relative}{SHA256_SUFFIX}",
            f"{folder}/.{name}{VERIFIED_SUFFIX}", f"{folder}/.{name}{LOCK_SUFFIX}"]


def _restore_from_store(
    root: Home, requests: "list[FileRequest]", owner: list[tuple], earlier: dict, context: AssetExecutionContext
) -> int:
    """With the home on a store: bring back from it the files this partition already stored whose
    working copy was trimmed, checked against their recorded SHA-256, instead of fetching them from
    MAST again. A file the store cannot give back is left to the download; returns those restored."""
    from skyassets.archive.download import adopt_verified
    from skyassets.lake.home import StorageError

    if not root.remote:
        return 0
    restored = 0
    for request, (obs_id, _, signature) in zip(requests, owner, strict=True):
        before = earlier.get((obs_id, request.filename))
        final = Path(request.dest_dir) / request.filename
        if before is None or final.is_file() or not isinstance(before.get("sha256"), str):
            continue
        if (before.get("signature") if isinstance(before.get("signature"), str) else None) != signature:
            continue  # a landed file changed since: copied again from its source
        try:
            local = root.local(before["path"], before["sha256"])
        except (StorageError, ValueError) as error:
            context.log.warning(f"{request.filename}: not restored from the store ({error}); fetching it again")
            continue
        if local == final:
            adopt_verified(final, before["sha256"])
            restored += 1
    return restored


def _store_verified(root: Home, results: "list[FileResult]", origins: list[str | None]) -> tuple[int, int]:
    """With the home on an object store: store the verified files there (the local copies become
    its bounded working copy); a file skipped as verified is stored only if not stored yet. A file
    fetched from a bucket of the store's own service is copied there by the store, object to
    object, rather than uploaded again. Returns (files stored, of which copied)."""
    if not root.remote:
        return 0, 0
    stored = copied = 0
    for r, origin in zip(results, origins, strict=True):
        if r.status != "failed" and r.path is not None:
            relative = r.path.relative_to(root.root)
            if r.status == "downloaded" or not root.exists(relative):
                if origin is not None and root.copy_in(origin, relative, r.sha256):
                    copied += 1
                else:
                    root.commit(relative, r.sha256)
                stored += 1
    return stored, copied


def _manifest_row(
    root: Home, obs_id: str, uri: str, signature: str | None, result: "FileResult", earlier: dict
) -> dict:
    row = {
        "partition": obs_id,
        "dataURI": uri,
        "signature": signature,
        "filename": result.filename,
        "path": str(result.path.relative_to(root.root)),
        "size": result.size,
        "sha256": result.sha256,
        "source": result.source,
        "status": _stored_status(result.status, signature),
        "fits_checksum": result.fits_checksum,
        "sha256_checked": result.sha256_checked,
        "attempts": result.attempts,
        "resumed_from": result.resumed_from,
        "seconds": round(result.seconds, 3),
        "bytes_per_second": round(result.bytes_per_second, 1),
    }
    before = earlier.get((obs_id, result.filename))
    if result.status == "skipped" and before is not None and before["sha256"] == result.sha256:
        for key in ("source", "fits_checksum", "sha256_checked", "attempts", "resumed_from", "seconds",
                    "bytes_per_second"):
            row[key] = before.get(key)
    return row


def _stored_status(status: str, signature: str | None) -> str:
    """What the run did with a file, in the manifest's words: ``downloaded`` from MAST, ``copied``
    from the landing zone, ``unchanged`` when found stored and verified (older manifests say
    ``skipped``, and ``downloaded`` for a landed copy)."""
    if status == "skipped":
        return "unchanged"
    if status == "downloaded" and signature is not None:
        return "copied"
    return status


@asset(
    group_name="archive",
    deps=[mast_products],
    partitions_def=observations_partitions,
    backfill_policy=observation_backfill_policy,
    pool="mast_api",
    kinds={"fits", "parquet"},
    metadata=column_schema(table("fits_files").schema),
    description="The observation's files on disk, verified (size, FITS checksums, SHA-256), with a manifest.",
)
def fits_files(
    context: AssetExecutionContext,
    home: HomeResource,
    archive: ArchiveResource,
    downloader: DownloaderResource,
    landing: LandingResource,
) -> MaterializeResult:
    from skyassets.archive.download import FileRequest
    from skyassets.landing.ingest import landed_requests

    root = home.home
    lake = root.tables
    keys = context.partition_keys  # Dagster reads every key of the partitions definition on each access
    earlier = _earlier_manifests(lake, keys)
    landed = landed_requests(root, keys)
    archived = lake.read_partitions("mast_products", [k for k in keys if k not in landed])
    requests, owner, changed = [], [], set()
    _drop_departed_copies(root, landed, earlier)
    for obs_id in keys:
        if obs_id in landed:  # a partition of the landing zone: copy its files
            for row, request in landed[obs_id]:
                if _forget_changed_copy(request, earlier.get((obs_id, request.filename)), row["signature"]):
                    changed.add(len(requests))
                requests.append(request)
                owner.append((obs_id, row["location"], row["signature"]))
            continue
        if obs_id not in archived:
            raise Failure(f"{obs_id}: neither landed files nor MAST products (mast_products) to fetch")
        for product in archived[obs_id].to_pandas().to_dict("records"):
            requests.append(
                FileRequest(
                    filename=product["productFilename"],
                    dest_dir=root.observation_dir(product["obs_collection"], obs_id),
                    http_url=product["http_url"],
                    s3_key=product["s3_key"],
                    expected_size=int(product["size"]) if pd.notna(product["size"]) else None,
                )
            )
            owner.append((obs_id, product["dataURI"], None))
    restored = _restore_from_store(root, requests, owner, earlier, context)
    started = time.monotonic()
    results, origins, before = _fetch(requests, owner, downloader, archive, landing, root, _ProgressLog(context))
    seconds = time.monotonic() - started
    quarantined, held = _quarantine_bad_landed_files(root, requests, results, owner, before)
    _drop_failed_versions(root, requests, results, changed)
    for message in quarantined:
        context.log.warning(message)
    for copy in _release_repaired(root, results, owner):
        context.log.info(f"deleted {copy} from the quarantine: a newer version of its file is copied")
    failed = [(o[0], r) for q, r, o in zip(requests, results, owner, strict=True)
              if r.status == "failed" and q.local_path is None]
    status = Counter(r.status for r in results)
    fetched = sum(r.bytes_fetched for r in results)
    figures = {  # the run's downloads, whether its step then succeeds or not
        "files_downloaded": status["downloaded"], "files_skipped": status["skipped"],
        # checked in this run: a file skipped as verified before is trusted by its size and time
        "files_verified_checksum": sum(r.status == "downloaded" and r.fits_checksum == "ok" for r in results),
        "bytes_fetched": fetched, "seconds": round(seconds, 3),
    }
    if failed:
        listed = "; ".join(f"{obs_id}: {r.error}" for obs_id, r in failed[:5])  # a file name may not say whose
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        raise Failure(
            f"{len(failed)} of {len(results)} files failed ({listed}{more}); "
            "verified files are kept and a retry resumes the rest",
            metadata={
                "failed": MetadataValue.md("\n".join(f"- `{obs}` `{r.filename}`: {r.error}" for obs, r in failed)),
                **failed_partitions_metadata(obs_id for obs_id, _ in failed),
                **figures,
            },
        )
    stored, copied = _store_verified(root, results, origins)
    manifest = pd.DataFrame(
        [
            _manifest_row(root, obs_id, uri, signature, r, earlier) if r.status != "failed"
            else _quarantined_row(root, obs_id, uri, signature, q, r)
            for i, (q, r, (obs_id, uri, signature)) in enumerate(zip(requests, results, owner, strict=True))
            if r.status != "failed" or i in held
        ],
        columns=table("fits_files").schema.names,
    )
    lake.write_partitions("fits_files", manifest, by="partition", partitions=keys)
    root.trim()
    context.log.info(
        f"{status['downloaded']} downloaded, {status['skipped']} already verified, "
        f"{fetched / 1e6:.1f} MB in {seconds:.1f} s"
    )
    run = {
        **figures,
        "files_quarantined": len(quarantined),
        "files_stored": stored,
        "files_copied_in_store": copied,
        "files_restored_from_store": restored,
        "files_retried": sum(r.attempts > 1 for r in results),
        "bytes_per_second": round(fetched / seconds, 1) if seconds > 0 else 0.0,
        "sources": MetadataValue.json(dict(Counter(str(r.source) for r in results if r.status == "downloaded"))),
    }
    return MaterializeResult(metadata=partition_metadata(
        context, manifest, preview_columns=MANIFEST_PREVIEW, by="partition", figures=_file_figures,
        per_key=_refused_by_partition(keys, owner, results), run=run))
