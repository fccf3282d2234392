"""The emulator answering like the real MAST: every switch off by default, each one on demand."""

from __future__ import annotations

import gzip
import io
import json
from urllib.parse import quote

import pytest
import requests
from astropy.io import fits

from skyassets.emulator import ANSWER_KINDS, Emulator


def _invoke(emu: Emulator, service: str, params: dict, page: int = 1, pagesize: int = 50000) -> requests.Response:
    body = "request=" + quote(json.dumps({"service": service, "params": params, "page": page, "pagesize": pagesize}))
    return requests.post(emu.url + "/api/v0/invoke", data=body, timeout=10,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})


def _position(emu: Emulator, target: str, radius: float = 0.1, **params) -> list[dict]:
    t = next(t for t in emu.sky.targets if t["name"] == target)
    reply = _invoke(emu, "Mast.Caom.Filtered.Position",
                    {"columns": "*", "filters": [], "position": f"{t['ra']}, {t['dec']}, {radius}", **params})
    return reply.json()["data"]


def _products(emu: Emulator, obsid: str) -> list[dict]:
    return _invoke(emu, "Mast.Caom.Products", {"obsid": obsid}).json()["data"]


def test_every_switch_is_off_by_default(emu: Emulator) -> None:
    rows = _position(emu, "NGC 628")
    assert {r["obs_collection"] for r in rows} == {"JWST", "HST"}
    assert len({r["obs_id"] for r in rows}) == len(rows)
    assert all(r["dataURL"] and r["target_classification"] for r in rows)
    assert all(r["obs_id"] == r["obs_id"].lower() for r in rows)
    assert all(";" not in r["filters"] for r in rows)
    products = _products(emu, rows[0]["obsid"])
    assert len({p["dataURI"] for p in products}) == len(products)
    assert emu.faults.list() == []


def test_nulls_in_every_row(emu: Emulator) -> None:
    emu.real_answers("nulls")
    rows = _position(emu, "NGC 628")
    for column in ("dataURL", "target_classification", "srcDen"):
        assert all(r[column] is None for r in rows), column
    products = _products(emu, rows[0]["obsid"])
    assert all(p["prvversion"] is None for p in products)
    assert any(p["productGroupDescription"] is None for p in products)


def test_position_searches_answer_a_row_per_observation_and_filter(emu: Emulator) -> None:
    emu.real_answers("per_filter_rows")
    rows = _position(emu, "SMACS J0723.3-7327")
    ids = [r["obs_id"] for r in rows]
    assert len(ids) == 2 * len(set(ids))  # every NIRCam observation: its filter and CLEAR
    first = [r["filters"] for r in rows if r["obs_id"] == ids[0]]
    assert sorted(first) == sorted([ids[0].rsplit("-", 1)[1].upper(), "CLEAR"])
    count = _invoke(emu, "Mast.Caom.Filtered.Position", {
        "columns": "COUNT_BIG(*)", "filters": [], "position": f"{110.83125}, {-73.4543333}, 0.1"}).json()
    assert count["data"][0]["Column1"] == len(rows)  # the count counts the same rows
    cone = _invoke(emu, "Mast.Caom.Cone", {"ra": 110.83125, "dec": -73.4543333, "radius": 0.1}).json()["data"]
    assert len(cone) == len(set(ids))


def test_mixed_id_styles(emu: Emulator) -> None:
    emu.real_answers("mixed_ids", "more_collections")
    rows = {r["obs_collection"]: r for r in _position(emu, "NGC 628")}
    assert rows["HST"]["obs_id"].isupper()
    assert rows["HLA"]["obs_id"].startswith("hst_10402_")
    assert rows["GALEX"]["obs_id"].isdigit()
    hst = _products(emu, rows["HST"]["obsid"])
    assert all(p["obs_id"].isupper() and p["productFilename"] == p["productFilename"].lower() for p in hst)
    # The ids of other collections come back only while the switch is on.
    emu.faults.clear()
    assert {r["obs_collection"] for r in _position(emu, "NGC 628")} == {"JWST", "HST"}


def test_galex_products_are_gzip_fits_with_a_preview(emu: Emulator) -> None:
    galex = emu.sky.more_observations[-1]
    products = _products(emu, galex["obsid"])
    names = sorted(p["productFilename"] for p in products)
    assert names[0].endswith(".fits.gz") and names[1].endswith(".jpg")
    science = next(p for p in products if p["productFilename"].endswith(".fits.gz"))
    reply = requests.get(emu.url + "/api/v0.1/Download/file", params={"uri": science["dataURI"]}, timeout=10)
    assert reply.status_code == 200 and reply.content[:2] == b"\x1f\x8b"
    with fits.open(io.BytesIO(gzip.decompress(reply.content)), checksum=True) as hdul:
        assert hdul[0].header["TELESCOP"] == "GALEX" and hdul[0].data.shape == (256, 256)


def test_duplicate_data_uris(emu: Emulator) -> None:
    obs = next(o for o in emu.sky.observations if o["obs_collection"] == "JWST")
    plain = _products(emu, obs["obsid"])
    emu.real_answers("duplicate_uris")
    doubled = _products(emu, obs["obsid"])
    assert len(doubled) > len(plain) and {p["dataURI"] for p in doubled} == {p["dataURI"] for p in plain}


def _invokes(emu: Emulator) -> int:
    return sum(r["path"] == "/api/v0/invoke" for r in emu.requests.snapshot())


def test_executing_answers_before_the_result(emu: Emulator, client) -> None:
    client.query_criteria(proposal_id="2736")
    emu.requests.clear()
    client.query_criteria(proposal_id="2736")
    plain = _invokes(emu)
    emu.faults.add("executing", endpoint="invoke", times=3)
    emu.requests.clear()
    table = client.query_criteria(proposal_id="2736")
    assert len(table) == 6
    assert _invokes(emu) == plain + 3  # astroquery asks again while the archive says EXECUTING


@pytest.mark.parametrize("endpoint, status", [("invoke", 503), ("columnsconfig", 429), ("resolver", 503),
                                              ("path_lookup", 502), ("whoami", 503)])
def test_transient_statuses_on_every_endpoint(emu: Emulator, endpoint: str, status: int) -> None:
    emu.faults.add("status", endpoint=endpoint, status=status, retry_after=7)
    calls = {
        "invoke": lambda: _invoke(emu, "Mast.Caom.Filtered", {"columns": "*", "filters": []}),
        "columnsconfig": lambda: requests.post(emu.url + "/portal/Mashup/Mashup.asmx/columnsconfig",
                                               data={"colConfigId": "Mast.Caom.Cone"}, timeout=10),
        "resolver": lambda: requests.get(emu.url + "/Santa-war/query", params={"name": "M74"}, timeout=10),
        "path_lookup": lambda: requests.get(emu.url + "/api/v0.1/path_lookup/", params={"uri": "mast:x"}, timeout=10),
        "whoami": lambda: requests.get(emu.url + "/whoami", timeout=10),
    }
    first = calls[endpoint]()
    assert first.status_code == status
    assert first.headers.get("Retry-After") == ("7" if status in (429, 503) else None)
    assert calls[endpoint]().status_code == 200  # transient: the next request is answered


def test_dropped_connections_on_api_endpoints(emu: Emulator) -> None:
    emu.faults.add("drop", endpoint="any", match="Mast.Caom.Filtered")
    with pytest.raises(requests.ConnectionError):
        _invoke(emu, "Mast.Caom.Filtered", {"columns": "*", "filters": []})
    assert _invoke(emu, "Mast.Caom.Filtered", {"columns": "*", "filters": []}).json()["status"] == "COMPLETE"


def test_cloud_path_lookup_leaves_files_out(emu: Emulator) -> None:
    uris = ["mast:HST/product/j8pu01010_drz.fits", "mast:HST/product/j8pu01abq_flt.fits"]
    emu.faults.add("omit", endpoint="path_lookup", match="_flt", times=-1)
    reply = requests.get(emu.url + "/api/v0.1/path_lookup/", params={"uri": uris}, timeout=10).json()
    assert list(reply) == [uris[0]]


def test_faults_refuse_endpoints_they_cannot_strike(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="cannot strike"):
        emu.faults.add("executing", endpoint="download")
    with pytest.raises(ValueError, match="unknown fault kind"):
        emu.faults.add("meteor")
    for kind in ANSWER_KINDS:  # answer switches strike every answer and stay on until cleared
        fault = emu.faults.add(kind, times=1)
        assert (fault.endpoint, fault.times) == ("any", -1) and emu.faults.on(kind)
    emu.faults.clear()
    assert not any(emu.faults.on(kind) for kind in ANSWER_KINDS)


def test_exclusive_access_files_need_a_granted_token(emu: Emulator) -> None:
    proprietary = next(o for o in emu.sky.observations if o["dataRights"] == "EXCLUSIVE_ACCESS")
    uri = next(p["dataURI"] for p in emu.sky.products[proprietary["obsid"]])
    url = emu.url + "/api/v0.1/Download/file"
    emu.grant("good-token", proprietary["proposal_id"])
    emu.grant("other-token", "99999")
    try:
        assert requests.head(url, params={"uri": uri}, timeout=10).status_code == 401
        assert requests.head(url, params={"uri": uri}, headers={"Authorization": "token nope"},
                             timeout=10).status_code == 403
        assert requests.head(url, params={"uri": uri}, headers={"Authorization": "token other-token"},
                             timeout=10).status_code == 403
        reply = requests.get(url, params={"uri": uri}, headers={"Authorization": "token good-token"}, timeout=10)
        assert reply.status_code == 200 and len(reply.content) == emu.sky.files[uri][1]
        # astroquery's session presents the token as a cookie
        assert requests.head(url, params={"uri": uri}, cookies={"mast_token": "good-token"},
                             timeout=10).status_code == 200
        whoami = requests.get(emu.url + "/whoami", cookies={"mast_token": "good-token"}, timeout=10).json()
        assert whoami["anon"] is False
        assert requests.get(emu.url + "/whoami", timeout=10).json()["anon"] is True
        assert not any("good-token" in json.dumps(r) for r in emu.requests.snapshot())
    finally:
        emu.revoke("good-token")
        emu.revoke("other-token")
