"""The archive code against MAST as it really answers: recorded answers, transient failures, odd shapes."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import astroquery.mast
import numpy as np
import pyarrow as pa
import pytest
import requests
from astropy.table import Table
from astropy.time import Time
from astroquery.mast.discovery_portal import _json_to_table

from skyassets.archive.client import (
    ArchiveError,
    RetryPolicy,
    archive_settings,
    observations_client,
    probing,
    with_retries,
)
from skyassets.archive.download import DownloadConfig, FileRequest, download_files
from skyassets.archive.query import CloudLookup, list_products, merge_filter_rows, query_watchlist, select_products
from skyassets.archive.watchlist import ProductSpec, load_watchlist, parse_watchlist

RECORDED = Path(astroquery.mast.__file__).parent / "tests" / "data"
FAST = RetryPolicy(total_seconds=3.0, base_delay=0.01, max_delay=0.05)


def _recorded(name: str) -> dict:
    return json.loads((RECORDED / name).read_text())


class _Recorded:
    """A client answering every search with one recorded portal answer."""

    def __init__(self, answer: dict):
        self.table = _json_to_table(answer)

    def query_criteria(self, **criteria) -> Table:
        return self.table

    def query_criteria_count(self, **criteria) -> int:
        return len(self.table)


def _client(emu, **kwargs):
    return observations_client(emu.url, s3_endpoint=emu.s3_endpoint, retry=kwargs.pop("retry", FAST), **kwargs)


# ------------------------------------------------------------------------------------ recorded answers


def test_recorded_product_list_keeps_what_mast_recommends() -> None:
    products = _json_to_table(_recorded("products.json"))  # WFPC2: no calib_level column in this answer
    chosen = sorted(select_products(products, ProductSpec())["productFilename"])
    assert chosen == ["u9o40504m_c0f.fits", "u9o40504m_c1f.fits", "u9o40504m_drz.fits"]
    # Today's answers carry calib_level: the calibrated c0m/c1m are kept too, raw d0m/d0f and auxiliary files not.
    answer = _recorded("products.json")
    answer["fields"].append({"name": "calib_level", "type": "int"})
    levels = {"c0": 2, "c1": 2, "dr": 3}
    for row in answer["data"]:
        row["calib_level"] = levels.get(row["productFilename"].split("_")[1][:2], 1)
    chosen = sorted(select_products(_json_to_table(answer), ProductSpec())["productFilename"])
    assert chosen == ["u9o40504m_c0f.fits", "u9o40504m_c0m.fits", "u9o40504m_c1f.fits", "u9o40504m_c1m.fits",
                      "u9o40504m_drz.fits"]


MRP = "Minimum Recommended Products"


def _answer_of(rows: list[tuple[str, str, str | None, int]]) -> Table:
    """A product list in the recorded answer's shape (its columns, nulls and all), with calib_level,
    of (file name, productType, productGroupDescription, calib_level) rows of one HST observation."""
    answer = copy.deepcopy(_recorded("products.json"))
    answer["fields"].append({"name": "calib_level", "type": "int"})
    template = answer["data"][0]
    answer["data"] = []
    for name, kind, group, level in rows:
        stem, suffix = name.split(".")[0].rsplit("_", 1)
        answer["data"].append({**template, "productFilename": name, "dataURI": f"mast:HST/product/{name}",
                               "obs_id": stem.upper(), "productType": kind, "productGroupDescription": group,
                               "productSubGroupDescription": suffix.upper(), "calib_level": level})
    return _json_to_table(answer)


@pytest.mark.parametrize(("rows", "kept"), [
    pytest.param([  # STIS spectroscopy: 2-D rectified and 1-D extracted spectra kept; raw, wavecal, support not
        ("o6d701030_raw.fits", "SCIENCE", None, 1), ("o6d701030_wav.fits", "SCIENCE", None, 1),
        ("o6d701030_flt.fits", "SCIENCE", MRP, 2), ("o6d701030_crj.fits", "SCIENCE", None, 2),
        ("o6d701030_x1d.fits", "SCIENCE", MRP, 2), ("o6d701030_sx2.fits", "SCIENCE", None, 2),
        ("o6d701030_spt.fits", "AUXILIARY", None, 1), ("o6d701030_asn.fits", "INFO", None, 1),
    ], ["o6d701030_crj.fits", "o6d701030_flt.fits", "o6d701030_sx2.fits", "o6d701030_x1d.fits"], id="STIS"),
    pytest.param([  # NICMOS: calibrated exposures and the association's mosaic kept
        ("n4k201a2q_raw.fits", "SCIENCE", None, 1), ("n4k201a2q_ima.fits", "SCIENCE", None, 2),
        ("n4k201a2q_cal.fits", "SCIENCE", MRP, 2), ("n4k201010_mos.fits", "SCIENCE", MRP, 3),
        ("n4k201a2q_spt.fits", "AUXILIARY", None, 1), ("n4k201a2q_trl.fits", "AUXILIARY", None, 1),
    ], ["n4k201010_mos.fits", "n4k201a2q_cal.fits", "n4k201a2q_ima.fits"], id="NICMOS"),
])
def test_product_choice_follows_mast_for_older_hst_instruments(rows, kept) -> None:
    assert sorted(select_products(_answer_of(rows), ProductSpec())["productFilename"]) == kept
    recommended_only = ProductSpec(calib_level=())
    assert sorted(select_products(_answer_of(rows), recommended_only)["productFilename"]) == sorted(
        name for name, _, group, _ in rows if group)


def test_product_choice_takes_compressed_fits_and_leaves_previews() -> None:
    answer = _recorded("products.json")
    for row, name, kind in zip(answer["data"][:2], ("NGA-nd-int.fits.gz", "NGA-xd-int_2color.jpg"),
                               ("SCIENCE", "PREVIEW"), strict=True):
        row.update(productFilename=name, dataURI=f"mast:GALEX/product/{name}", productType=kind,
                   productGroupDescription="Minimum Recommended Products")
    chosen = set(select_products(_json_to_table(answer), ProductSpec())["productFilename"])
    assert "NGA-nd-int.fits.gz" in chosen and "NGA-xd-int_2color.jpg" not in chosen
    only_drz = select_products(_json_to_table(answer), ProductSpec(subgroups=("DRZ",)))
    assert list(only_drz["productFilename"]) == ["u9o40504m_drz.fits"]


def test_recorded_observations_are_shaped_with_their_nulls_and_id_styles() -> None:
    result = query_watchlist(_Recorded(_recorded("caom.json")), parse_watchlist("entries: [{obs_id: x}]"))
    frame = result.observations
    assert not result.rejected and not result.failed
    assert len(frame) == 19 and frame["obs_id"].is_unique
    assert {"U27XCS01T", "hst_05371_cs_wfpc2_f814w_wf", "6373413925362335744"} <= set(frame["obs_id"])
    # dataURL is null in every row: it stays a text column, as in any other answer.
    assert frame["dataURL"].isna().all() and frame["dataURL"].dtype == frame["obs_id"].dtype
    assert pa.Table.from_pandas(frame)["dataURL"].type in (pa.string(), pa.large_string())
    hla = frame.set_index("obs_id").loc["hst_05371_cs_wfpc2_f814w_wf"]
    assert hla["target_classification"] is None or np.isnan(hla["target_classification"])


def test_per_filter_rows_become_one_row_per_observation() -> None:
    answer = copy.deepcopy(_recorded("caom.json"))
    first = answer["data"][0]
    answer["data"].insert(1, {**first, "filters": "F606W", "em_min": 470.0, "em_max": 720.0})
    result = query_watchlist(_Recorded(answer), parse_watchlist("entries: [{obs_id: x}]"))
    row = result.observations.set_index("obs_id").loc[first["obs_id"]]
    assert row["filters"] == "F814W;F606W"
    assert row["em_min"] == 470.0 and row["em_max"] == pytest.approx(867.45, abs=0.01)
    assert len(result.observations) == 19


def test_what_is_left_out_follows_the_archive_s_rights() -> None:
    """``dataRights`` is the archive's word on what a download without a token gets; the release
    date decides only where no rights are given."""
    answer = copy.deepcopy(_recorded("caom.json"))
    if not any(f["name"] == "dataRights" for f in answer["fields"]):
        answer["fields"].append({"name": "dataRights", "type": "string"})
    for row in answer["data"]:
        row.setdefault("dataRights", None)
    rows = answer["data"]
    rows[0]["dataRights"] = "RESTRICTED"
    rows[1]["dataRights"] = "EXCLUSIVE_ACCESS"  # release date passed, rights not yet turned
    rows[2].update(dataRights="PUBLIC", t_obs_release=99999.0)  # the archive says public: it is
    rows[3].update(dataRights=None, t_obs_release=99999.0)
    result = query_watchlist(_Recorded(answer), parse_watchlist("entries: [{obs_id: x}]"))
    kept = set(result.observations["obs_id"])
    assert result.proprietary == 3
    assert {r["obs_id"] for r in rows[:2]} | {rows[3]["obs_id"]} == {r["obs_id"] for r in rows} - kept
    assert rows[2]["obs_id"] in kept


class _RecordedProducts:
    """A client answering every product list with one recorded answer."""

    def __init__(self, answer: dict):
        self.table = _json_to_table(answer)

    def get_product_list(self, obsid: str) -> Table:
        return self.table


def test_products_without_a_token_a_location_or_a_name_of_their_own_are_left_out_with_the_reason() -> None:
    answer = copy.deepcopy(_recorded("products.json"))
    answer["fields"].append({"name": "dataRights", "type": "string"})
    rows = {r["productFilename"]: r for r in answer["data"]}
    for row in answer["data"]:
        row["dataRights"] = "PUBLIC"
    rows["u9o40504m_c0f.fits"]["dataRights"] = "EXCLUSIVE_ACCESS"
    rows["u9o40504m_c1f.fits"]["dataURI"] = None
    rows["u9o40504m_drz.fits"]["productGroupDescription"] = "Minimum Recommended Products"
    twin = {**rows["u9o40504m_drz.fits"], "dataURI": "mast:HST/product/other/u9o40504m_drz.fits"}
    answer["data"].append(twin)
    frame, refused = list_products(_RecordedProducts(answer), "1", ProductSpec(calib_level=()), cloud=False,
                                   download_url="https://example.org/download")
    assert list(frame["productFilename"]) == ["u9o40504m_drz.fits"]
    assert frame["dataURI"].tolist() == ["mast:HST/product/other/u9o40504m_drz.fits"]  # the first by dataURI
    assert "nan" not in " ".join(frame["http_url"])
    assert sorted(refused) == [
        "u9o40504m_c0f.fits: EXCLUSIVE_ACCESS data, and no MAST token; left out",
        "u9o40504m_c1f.fits: no dataURI; left out",
        "u9o40504m_drz.fits: also the name of mast:HST/product/other/u9o40504m_drz.fits; "
        "mast:HST/product/u9o40504m_drz.fits left out",
    ]


def test_merge_keeps_unique_rows_as_they_are() -> None:
    frame = _Recorded(_recorded("caom.json")).table.to_pandas()
    assert merge_filter_rows(frame).equals(frame.reset_index(drop=True))


# ------------------------------------------------------------------------------------------ retries


class _Answer(requests.HTTPError):
    def __init__(self, status: int, retry_after: str | None = None):
        response = requests.Response()
        response.status_code = status
        response.url = "https://mast.stsci.edu/api/v0/invoke"
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        super().__init__(f"{status}", response=response)


def _flaky(*failures: Exception):
    pending = list(failures)

    def call() -> str:
        if pending:
            raise pending.pop(0)
        return "answer"

    return call


def test_retries_back_off_with_jitter_and_honour_retry_after() -> None:
    sleeps: list[float] = []
    call = _flaky(_Answer(503), requests.ConnectionError("reset"), _Answer(429, "7"), _Answer(502))
    policy = RetryPolicy(total_seconds=100, base_delay=1.0, max_delay=30.0)
    assert with_retries(call, "search", policy, sleep=sleeps.append) == "answer"
    assert len(sleeps) == 4
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0
    assert sleeps[2] == 7.0  # the archive asked for 7 s: that, not the 2 to 4 s of the backoff
    assert 4.0 <= sleeps[3] <= 8.0


def test_a_retry_after_is_not_grown_by_the_failures_before_it() -> None:
    """A search's columns, resolver and query each count as attempts of one call: the archive's
    Retry-After of 2 s after five failures is 2 s, not the backoff of the sixth attempt."""
    sleeps: list[float] = []
    call = _flaky(*[_Answer(503)] * 5, _Answer(429, "2"))
    policy = RetryPolicy(total_seconds=1000, base_delay=1.0, max_delay=300.0)
    assert with_retries(call, "search", policy, sleep=sleeps.append) == "answer"
    assert sleeps[-1] == 2.0 and sleeps[-2] >= 8.0
    sleeps.clear()  # a Retry-After of 0 (or a date gone by) is no wait: the backoff is, never a tight loop
    assert with_retries(_flaky(*[_Answer(429, "0")] * 3), "search", policy, sleep=sleeps.append) == "answer"
    assert len(sleeps) == 3 and all(wait >= 0.5 for wait in sleeps)


def test_retries_stop_within_the_time_bound_and_say_why() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(total_seconds=5, base_delay=1.0, max_delay=2.0)
    with pytest.raises(ArchiveError, match=r"m74: search: HTTP 429 .*\(the archive asked for a wait of 60 s "
                                           r"\(Retry-After\), past the 5 s left of the 5 s allowed; gave up after "
                                           r"1 attempt"):
        with_retries(_flaky(_Answer(429, "60")), "m74: search", policy, sleep=sleeps.append)
    assert sleeps == []  # waiting 60 s would overrun the 5 s allowed
    with pytest.raises(ArchiveError, match="HTTP 400"):
        with_retries(_flaky(_Answer(400)), "m74: search", policy, sleep=sleeps.append)
    assert sleeps == []  # a client error is not asked again


def test_transient_failures_on_every_archive_call_are_ridden_out(emu) -> None:
    wl = load_watchlist()
    baseline = query_watchlist(_client(emu), wl)
    emu.faults.add("status", endpoint="invoke", status=503, times=2, retry_after=0)
    emu.faults.add("drop", endpoint="invoke", times=1)
    emu.faults.add("status", endpoint="resolver", status=429, times=1, retry_after=0)
    emu.faults.add("executing", endpoint="invoke", times=2)
    emu.requests.clear()
    result = query_watchlist(_client(emu), wl)
    assert not result.failed and not result.incomplete
    assert list(result.observations["obs_id"]) == list(baseline.observations["obs_id"])
    statuses = [r["status"] for r in emu.requests.snapshot()]
    assert {503, 429, 0} <= set(statuses)

    obs = result.observations.iloc[0]
    emu.faults.add("status", endpoint="path_lookup", status=503, times=1, retry_after=0)
    emu.faults.add("status", endpoint="invoke", status=503, times=1, retry_after=0)
    frame, _ = list_products(_client(emu), obs["obsid"], ProductSpec(), download_url=emu.url)
    assert len(frame) and frame["s3_key"].notna().all()


def test_a_failing_entry_is_reported_and_the_others_are_kept(emu) -> None:
    wl = load_watchlist()
    emu.faults.add("status", endpoint="resolver", match="NGC 3132", status=503, times=-1, retry_after=0)
    result = query_watchlist(_client(emu, retry=RetryPolicy(total_seconds=0.5, base_delay=0.05, max_delay=0.1)), wl)
    assert len(result.failed) == 1
    assert result.failed[0].startswith("southern-ring-nircam: ") and "HTTP 503" in result.failed[0]
    assert "gave up after" in result.failed[0]
    assert set(result.per_entry) == {"m74-field", "smacs-0723-program"}
    assert set(result.observations["watchlist_entry"]) >= {"m74-field", "smacs-0723-program"}

    unknown = parse_watchlist("entries: [{name: nowhere, target: NGC 99999}, {name: smacs, program: 2736}]")
    result = query_watchlist(_client(emu), unknown)
    assert result.failed == [result.failed[0]] and result.failed[0].startswith("nowhere: ")
    assert "Resolv" in result.failed[0] and result.per_entry == {"smacs": 6}


# ------------------------------------------------------------------------------- odd answer shapes


def test_position_searches_with_a_row_per_filter(emu) -> None:
    emu.real_answers("per_filter_rows")
    wl = load_watchlist()
    result = query_watchlist(_client(emu), wl)
    assert not result.incomplete and not result.failed
    frame = result.observations
    assert frame["obs_id"].is_unique
    ring = frame[frame["watchlist_entry"].str.contains("southern-ring")]
    assert len(ring) >= 6 and result.per_entry["southern-ring-nircam"] == 2 * len(ring)  # rows as MAST sent them
    sky = {o["obs_id"]: o for o in emu.sky.observations}
    for row in ring.itertuples():
        assert row.filters == sky[row.obs_id]["filters"] + ";CLEAR"


def test_the_whole_real_archive_shape(emu, tmp_path) -> None:
    emu.real_answers()
    client = _client(emu)
    result = query_watchlist(client, load_watchlist())
    assert not result.failed and not result.incomplete and not result.rejected
    frame = result.observations.set_index("obs_id")
    assert {"HLA", "GALEX", "HST", "JWST"} <= set(frame["obs_collection"])
    assert "J8PU01010" in frame.index and "6380006183007027200" in frame.index
    assert frame["dataURL"].isna().all()
    download_url = emu.url + "/api/v0.1/Download/file"
    hst, _ = list_products(client, frame.loc["J8PU01010", "obsid"], ProductSpec(), download_url=download_url)
    assert hst["dataURI"].is_unique and "j8pu01010_drz.fits" in set(hst["productFilename"])
    galex, _ = list_products(client, frame.loc["6380006183007027200", "obsid"], ProductSpec(),
                             download_url=download_url)
    assert list(galex["productFilename"]) == ["NGA_NGC0628-nd-int.fits.gz"]
    requests_ = [FileRequest(row.productFilename, tmp_path / obs_id, row.http_url, row.s3_key, int(row.size))
                 for obs_id, products in (("J8PU01010", hst), ("6380006183007027200", galex))
                 for row in products.itertuples()]
    results = download_files(requests_, DownloadConfig(s3_endpoint=emu.s3_endpoint))
    assert {r.status for r in results} == {"downloaded"}
    assert {r.fits_checksum for r in results} == {"ok"}


@pytest.mark.parametrize("fault", [dict(kind="status", status=500), dict(kind="status", status=403),
                                   dict(kind="omit", match="_flt")])
def test_a_failing_cloud_lookup_sends_files_over_http(emu, fault, tmp_path, caplog) -> None:
    obs = next(o for o in emu.sky.observations if o["obs_id"] == "j8pu01010")
    kind = fault.pop("kind")
    emu.faults.add(kind, endpoint="path_lookup", times=-1, retry_after=0, **fault)
    download_url = emu.url + "/api/v0.1/Download/file"
    lookup = CloudLookup()
    lookups = sum("path_lookup" in r["path"] for r in emu.requests)
    frame, refused = list_products(_client(emu), obs["obsid"], ProductSpec(), download_url=download_url,
                                   cloud=lookup)
    if fault.get("status") == 403:  # refused outright: asked once, not again file by file
        assert sum("path_lookup" in r["path"] for r in emu.requests) - lookups == 1
    assert len(frame) == 5 and not refused and frame["http_url"].notna().all()
    placed = frame.set_index("productFilename")["s3_key"].notna()
    if kind == "omit":  # only the files the lookup left out go over HTTP; the others stay in the cloud
        assert {n for n, p in placed.items() if not p} == {n for n in placed.index if "_flt" in n} != set()
        assert placed.any() and lookup.enabled
        said = [r.getMessage() for r in caplog.records if "goes over HTTP" in r.getMessage()]
        assert said and all("its answer leaves mast:HST/product/" in m and "Error" not in m for m in said), said
    else:  # the service kept failing: every file over HTTP, and the lookup is not asked again this run
        assert not placed.any() and not lookup.enabled and f"HTTP {fault['status']}" in lookup.down
        before = sum("path_lookup" in r["path"] for r in emu.requests)
        list_products(_client(emu), obs["obsid"], ProductSpec(), download_url=download_url, cloud=lookup)
        assert sum("path_lookup" in r["path"] for r in emu.requests) == before
    requests_ = [FileRequest(r.productFilename, tmp_path, r.http_url, r.s3_key, int(r.size))
                 for r in frame.itertuples()]
    sources = {r.filename: r.source for r in download_files(requests_, DownloadConfig(s3_endpoint=emu.s3_endpoint))}
    assert {n for n, source in sources.items() if source == "http"} == {n for n, p in placed.items() if not p}


# ---------------------------------------------------------------------------------- exclusive access


def test_exclusive_access_needs_a_token_that_grants_it(emu, tmp_path) -> None:
    exclusive = {o["obs_id"] for o in emu.sky.observations if o["dataRights"] == "EXCLUSIVE_ACCESS"}
    public = query_watchlist(_client(emu), load_watchlist())
    assert public.proprietary == len(exclusive) and public.granted == 0
    assert not exclusive & set(public.observations["obs_id"])

    token = "test-token-7c1e"
    emu.grant(token, "2107")
    try:
        client = _client(emu, token=token)
        assert token not in repr(archive_settings(client))
        result = query_watchlist(client, load_watchlist())
        assert result.granted == len(exclusive) and result.proprietary == 0
        assert exclusive <= set(result.observations["obs_id"])
        obs = result.observations.set_index("obs_id").loc[sorted(exclusive)[0]]
        frame, _ = list_products(client, obs["obsid"], ProductSpec(), download_url=emu.url + "/api/v0.1/Download/file")
        assert len(frame) and frame["s3_key"].isna().all()  # S3 holds public data only
        requests_ = [FileRequest(r.productFilename, tmp_path, r.http_url, r.s3_key, int(r.size))
                     for r in frame.itertuples()]
        refused = download_files(requests_, DownloadConfig(retries=0))
        assert {r.status for r in refused} == {"failed"} and "HTTP 401" in str(refused[0].error)
        config = DownloadConfig(mast_token=token)
        assert token not in repr(config)
        fetched = download_files(requests_, config)
        assert {(r.status, r.source, r.fits_checksum) for r in fetched} == {("downloaded", "http", "ok")}
        assert not any(token in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())

        emu.grant("other-program", "9999")
        other = query_watchlist(_client(emu, token="other-program"), load_watchlist(), now=Time.now())
        assert other.granted == 0 and other.proprietary == len(exclusive)
        refused = query_watchlist(_client(emu, token="not-a-token"), load_watchlist())  # public data only
        assert refused.token_refused.startswith("MAST refused the token") and "not-a-token" not in refused.token_refused
        assert refused.granted == 0 and refused.proprietary == len(exclusive)
        assert sorted(refused.observations["obs_id"]) == sorted(public.observations["obs_id"])
        # a busy token check is asked again, like any archive call, not read as a refusal
        emu.faults.add("status", endpoint="whoami", status=429, times=2, retry_after=0)
        assert archive_settings(_client(emu, token=token)).token == token
        assert [r["status"] for r in emu.requests.snapshot() if r["path"].endswith("/whoami")][-3:] == [429, 429, 200]
    finally:
        emu.revoke(token)
        emu.revoke("other-program")


def test_a_probe_waits_out_a_short_rate_limit_and_soon_gives_up_on_an_outage(emu) -> None:
    """After one call waited out its retries, the next is a probe: a 429 asking for 1 s is waited
    out, not read as an outage; a 503 that lasts ends it within the probe's bound."""
    client = _client(emu, retry=RetryPolicy(total_seconds=300.0, base_delay=0.05, max_delay=0.5))
    obs = query_watchlist(client, load_watchlist()).observations.iloc[0]
    emu.faults.add("status", endpoint="invoke", match="Mast.Caom.Products", status=429, times=1, retry_after=1)
    with probing(client, seconds=3.0):
        frame, _ = list_products(client, obs["obsid"], ProductSpec(), download_url=emu.url)
    assert len(frame)
    emu.faults.add("status", endpoint="invoke", match="Mast.Caom.Products", status=503, times=-1, retry_after=0)
    started = time.monotonic()
    with probing(client, seconds=3.0), pytest.raises(ArchiveError, match="gave up after"):
        list_products(client, obs["obsid"], ProductSpec(), download_url=emu.url)
    assert time.monotonic() - started < 4.0
    assert archive_settings(client).retry.total_seconds == 300.0  # the client's own bound again after


def test_a_last_try_is_made_at_the_end_of_the_time_allowed(monkeypatch) -> None:
    """When the next backoff would overrun the time allowed, the wait is cut to what is left and a
    last attempt made, rather than giving up with seconds to spare; a Retry-After is never cut."""
    import random

    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # the longest backoff every time
    policy = RetryPolicy(total_seconds=4.0, base_delay=2.0, max_delay=60.0)
    started = time.monotonic()
    assert with_retries(_flaky(_Answer(503), _Answer(503)), "search", policy) == "answer"  # 2 s, then 2 s not 4
    assert 3.5 < time.monotonic() - started < 5.0
    with pytest.raises(ArchiveError, match="gave up after 1 attempt"):
        with_retries(_flaky(_Answer(429, "10")), "search", policy)  # asked for more than is left
    with pytest.raises(ArchiveError, match="still answered EXECUTING"):
        with_retries(_flaky(TimeoutError("Timeout limit of 600 exceeded.")), "search",
                     RetryPolicy(total_seconds=0.0))
