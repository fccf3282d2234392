"""Unchanged astroquery 0.4.11 against the emulator's portal, resolver and path lookup."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astroquery.exceptions import NoResultsWarning, ResolverError

from skyassets.emulator import Emulator
from skyassets.emulator.server import angular_distance_deg


def _obs(emu: Emulator, **match) -> list[dict]:
    return [o for o in emu.sky.observations if all(o[k] == v for k, v in match.items())]


def test_sky_is_big_enough(emu: Emulator) -> None:
    assert len(emu.sky.observations) >= 12
    assert {o["obs_collection"] for o in emu.sky.observations} == {"JWST", "HST"}
    assert any(o["dataRights"] == "EXCLUSIVE_ACCESS" for o in emu.sky.observations)


def test_query_object_resolves_names_case_insensitively(emu: Emulator, client) -> None:
    table = client.query_object("ngc 3132", radius="0.05 deg")
    assert sorted(table["obs_id"]) == sorted(o["obs_id"] for o in _obs(emu, target_name="NGC-3132"))
    assert "distance" in table.colnames
    assert list(table["distance"]) == sorted(table["distance"])
    table = client.query_object("M74", radius="0.05 deg")  # an alias of NGC 628
    assert "j8pu01010" in table["obs_id"]
    for written in ("M 74", "m-74", "Messier74"):  # as Sesame takes them: blanks and dashes do not matter
        assert "j8pu01010" in client.query_object(written, radius="0.05 deg")["obs_id"], written


def test_unknown_name_does_not_resolve(client) -> None:
    with pytest.raises(ResolverError):
        client.query_object("NGC 99999")


def test_query_region_is_a_true_cone(emu: Emulator, client) -> None:
    target = _obs(emu, obs_id="jw02736-o002_t003_nircam_clear-f090w")[0]
    ra, dec = target["s_ra"], target["s_dec"]
    # 10 arcsec away along the diagonal: inside an 8 arcsec box, outside an 8 arcsec cone.
    step = 10.0 / math.sqrt(2) / 3600.0
    qra, qdec = ra + step / math.cos(math.radians(dec)), dec + step
    assert 9.9 / 3600 < angular_distance_deg(qra, qdec, ra, dec) < 10.1 / 3600
    with pytest.warns(NoResultsWarning):
        near = client.query_region(SkyCoord(qra, qdec, unit="deg"), radius=8.0 / 3600)
    assert target["obs_id"] not in list(near["obs_id"])
    far = client.query_region(SkyCoord(qra, qdec, unit="deg"), radius=11.0 / 3600)
    assert target["obs_id"] in list(far["obs_id"])
    row = far[list(far["obs_id"]).index(target["obs_id"])]
    assert row["distance"] == pytest.approx(10.0, abs=0.1)


def test_query_criteria(emu: Emulator, client) -> None:
    one = client.query_criteria(obs_id="jw02733-o001_t001_nircam_clear-f200w")
    assert list(one["obs_id"]) == ["jw02733-o001_t001_nircam_clear-f200w"]
    assert one["obsid"][0] == _obs(emu, obs_id=one["obs_id"][0])[0]["obsid"]
    smacs = client.query_criteria(proposal_id="2736")
    assert len(smacs) == len(_obs(emu, proposal_id="2736")) == 6
    wild = client.query_criteria(obs_id="jw02736*")
    assert sorted(wild["obs_id"]) == sorted(smacs["obs_id"])
    mixed = client.query_criteria(instrument_name="NIRCAM/IMAGE", filters=["F090W", "F444W"],
                                  calib_level=3, t_exptime=[200, 400], proposal_id="2107")
    assert len(mixed) == 4
    assert set(mixed["filters"]) == {"F090W", "F444W"}
    hst = client.query_criteria(obs_collection="HST", filters="F814W")
    assert list(hst["obs_id"]) == ["j8pu02010"]
    assert len(client.query_criteria(t_exptime=[1000, 2000])) == 2


def test_query_criteria_with_position(emu: Emulator, client) -> None:
    table = client.query_criteria(objectname="SMACS J0723.3-7327", radius="0.05 deg", filters="F444W")
    assert sorted(table["obs_id"]) == sorted(o["obs_id"] for o in _obs(emu, proposal_id="2736", filters="F444W"))


def test_counts(emu: Emulator, client) -> None:
    assert client.query_criteria_count(proposal_id="2736") == 6
    assert client.query_criteria_count(obs_collection="JWST") == len(_obs(emu, obs_collection="JWST"))
    ngc = SkyCoord(151.7573483, -40.4364056, unit="deg")
    assert client.query_region_count(ngc, radius="0.05 deg") == 6
    assert client.query_object_count("NGC 628", radius="0.05 deg") == 8


def test_paging_gives_the_same_rows(emu: Emulator, client) -> None:
    emu.requests.clear()
    paged = client.query_criteria(obs_collection="JWST", pagesize=4)
    invokes = [r for r in emu.requests.snapshot() if r["path"] == "/api/v0/invoke"]
    whole = client.query_criteria(obs_collection="JWST", pagesize=1000)
    assert len(whole) == 18
    assert list(paged["obs_id"]) == list(whole["obs_id"])
    assert len(invokes) == math.ceil(18 / 4)
    page2 = client.query_criteria(obs_collection="JWST", pagesize=4, page=2)
    assert list(page2["obs_id"]) == list(whole["obs_id"][4:8])


def test_products_and_filtering(emu: Emulator, client) -> None:
    obs = client.query_criteria(obs_id="jw02736-o001_t003_nircam_clear-f200w")
    products = client.get_product_list(obs)
    assert set(products["productSubGroupDescription"].filled("")) >= {"CAL", "I2D", "UNCAL", "ASN"}
    for col in ("calib_level", "dataRights", "proposal_id", "parent_obsid", "size", "dataURI"):
        assert col in products.colnames
    science = client.filter_products(products, productType="SCIENCE",
                                     productSubGroupDescription=["CAL", "I2D"], calib_level=[2, 3])
    assert sorted(science["productSubGroupDescription"]) == ["CAL", "CAL", "I2D"]
    for row in science:
        path, size, _ = emu.sky.files[row["dataURI"]]
        assert path.stat().st_size == row["size"] == size
    mrp = client.filter_products(products, mrp_only=True, extension="fits")
    assert list(mrp["productSubGroupDescription"]) == ["I2D"]
    hst = client.get_product_list(client.query_criteria(obs_id="j8pu01010"))
    assert set(hst["productSubGroupDescription"]) == {"FLT", "FLC", "RAW", "DRZ"}
    both = client.get_product_list([obs["obsid"][0], "2"])  # an unknown obsid adds nothing
    assert len(both) == len(products)


def test_cloud_uris(emu: Emulator, client) -> None:
    products = client.get_product_list(client.query_criteria(obs_id="j8pu02010"))
    uris = client.get_cloud_uris(products, extension="fits", filter_products={"productSubGroupDescription": "DRZ"})
    assert uris == ["s3://stpubdata/hst/public/j8pu/j8pu02010/j8pu02010_drz.fits"]
    proprietary = next(o for o in emu.sky.observations if o["dataRights"] != "PUBLIC")
    rows = client.get_product_list(client.query_criteria(obs_id=proprietary["obs_id"]))
    with pytest.warns(Warning):
        mapping = client.get_cloud_uris(rows, return_uri_map=True)
    assert set(mapping.values()) == {None}  # proprietary data is not in the public bucket


def test_astroquery_downloads_over_http(emu: Emulator, http_client, tmp_path) -> None:
    products = http_client.get_product_list(http_client.query_criteria(obs_id="jw02733-o002_t001_nircam_clear-f444w"))
    science = http_client.filter_products(products, productSubGroupDescription=["CAL", "I2D"])
    manifest = http_client.download_products(science, download_dir=tmp_path, flat=True)
    assert set(manifest["Status"]) == {"COMPLETE"}
    for row in science:
        local = tmp_path / row["productFilename"]
        assert hashlib.md5(local.read_bytes()).hexdigest() == emu.sky.files[row["dataURI"]][2]
    uri = science["dataURI"][0]
    status, msg, _ = http_client.download_file(uri, local_path=tmp_path / "one.fits", cache=False)
    assert (status, msg) == ("COMPLETE", None)
    assert any(r["path"] == "/api/v0.1/Download/file" for r in emu.requests.snapshot())


def test_astroquery_downloads_from_s3(emu: Emulator, client, tmp_path) -> None:
    uri = "mast:HST/product/j8pu01abq_flt.fits"
    status, msg, _ = client.download_file(uri, local_path=tmp_path / "flt.fits", cache=False)
    assert (status, msg) == ("COMPLETE", None)
    assert hashlib.md5((tmp_path / "flt.fits").read_bytes()).hexdigest() == emu.sky.files[uri][2]


def test_unknown_service_is_an_error(emu: Emulator) -> None:
    import json
    from urllib.parse import quote

    import requests

    body = "request=" + quote(json.dumps({"service": "Mast.Nope", "params": {}}))
    reply = requests.post(emu.url + "/api/v0/invoke", data=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10).json()
    assert reply["status"] == "ERROR" and "Mast.Nope" in reply["msg"]


def test_path_lookup_and_resolver_formats(emu: Emulator) -> None:
    import requests

    known = "mast:JWST/product/jw02736-o001_t003_nircam_clear-f090w_i2d.fits"
    reply = requests.get(emu.url + "/api/v0.1/path_lookup/", params={"uri": [known, "mast:JWST/product/x.fits"]},
                         timeout=10).json()
    assert reply[known] == {"status_code": 200,
                            "path": "/jwst/public/jw02736/jw02736-o001_t003_nircam_clear-f090w/"
                                    "jw02736-o001_t003_nircam_clear-f090w_i2d.fits"}
    assert reply["mast:JWST/product/x.fits"] == {"status_code": 404, "path": None}
    santa = requests.get(emu.url + "/Santa-war/query", params={"name": "NGC 628", "outputFormat": "json",
                                                               "resolveAll": "true"}, timeout=10).json()
    assert {r["resolver"] for r in santa["resolvedCoordinate"]} == {"SIMBAD", "NED"}
    assert all(r["searchString"] == "ngc 628" for r in santa["resolvedCoordinate"])
    assert np.isclose(santa["resolvedCoordinate"][0]["ra"], 24.1739458)
    none = requests.get(emu.url + "/Santa-war/query", params={"name": "nothing here"}, timeout=10).json()
    assert none["resolvedCoordinate"] == []
