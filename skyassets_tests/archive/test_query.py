import pytest
from astropy.time import Time

from skyassets.archive.client import observations_client
from skyassets.archive.query import CLOUD_DOWN_SECONDS, CloudLookup, list_products, query_watchlist
from skyassets.archive.watchlist import ProductSpec, load_watchlist, parse_watchlist


@pytest.fixture
def client(emu):
    return observations_client(emu.url, s3_endpoint=emu.s3_endpoint)


def test_packaged_watchlist_finds_public_observations_and_counts_proprietary(emu, client):
    result = query_watchlist(client, load_watchlist())
    frame = result.observations
    assert len(frame) > 0 and frame["obs_id"].is_unique
    assert set(result.per_entry) == {e.name for e in load_watchlist().entries}
    assert all(count > 0 for count in result.per_entry.values())
    now = Time.now().mjd
    assert (frame["t_obs_release"] <= now).all()
    sky_proprietary = {o["obs_id"] for o in emu.sky.observations if o["t_obs_release"] > now}
    assert sky_proprietary and not sky_proprietary & set(frame["obs_id"])
    assert result.proprietary >= 1
    assert not result.incomplete and not result.rejected


def test_each_search_kind(emu, client):
    jwst = [o for o in emu.sky.observations if o["obs_collection"] == "JWST"]
    first = jwst[0]
    target = next(t["name"] for t in emu.sky.targets if t["target_name"] == first["target_name"])
    wl = parse_watchlist(
        f"""
entries:
  - {{name: by-id, obs_id: {first['obs_id']}}}
  - {{name: by-program, program: "{first['proposal_id']}"}}
  - {{name: by-target, target: "{target}", radius: 5 arcmin}}
  - {{name: by-cone, coordinates: "{first['s_ra']} {first['s_dec']}", radius: 1 arcmin, collection: JWST}}
"""
    )
    result = query_watchlist(client, wl)
    assert result.per_entry["by-id"] == 1
    expected_program = {o["obs_id"] for o in emu.sky.observations if o["proposal_id"] == first["proposal_id"]}
    program_rows = result.observations[result.observations["watchlist_entry"].str.contains("by-program")]
    assert set(program_rows["obs_id"]) == expected_program
    assert result.per_entry["by-target"] >= 1 and result.per_entry["by-cone"] >= 1
    both = result.observations.set_index("obs_id").loc[first["obs_id"], "watchlist_entry"]
    assert both.split(",")[:2] == ["by-id", "by-program"]


def test_an_entry_that_cannot_be_read_fails_alone_and_the_others_are_searched(emu, client):
    first = next(o for o in emu.sky.observations if o["obs_collection"] == "JWST")
    wl = parse_watchlist(f"""
entries:
  - {{name: by-id, obs_id: {first['obs_id']}}}
  - {{name: off-the-sky, coordinates: "400.0 -95.0"}}
  - {{coordinates: [10, 95]}}
""", "mine.yaml")
    assert [e.name for e in wl.entries] == ["by-id"]
    result = query_watchlist(client, wl)
    assert result.per_entry == {"by-id": 1} and list(result.observations["obs_id"]) == [first["obs_id"]]
    assert result.failed_entries == ["off-the-sky", "coordinates:[10, 95]"]  # the name it would have had
    assert result.failed == ["mine.yaml: entry 'off-the-sky': ra is between 0 and 360 degrees, not 400",
                             "mine.yaml: entry 3: dec is between -90 and +90 degrees, not 95"]


def test_an_entry_whose_collection_is_no_mission_of_mast_is_said_to_have_found_nothing_for_it(emu, client):
    first = next(o for o in emu.sky.observations if o["obs_collection"] == "JWST")
    target = next(t["name"] for t in emu.sky.targets if t["target_name"] == first["target_name"])
    wl = parse_watchlist(f"""
entries:
  - {{name: slip, target: "{target}", collection: JWTS}}
  - {{name: right, target: "{target}", collection: JWST}}
  - {{name: empty-sky, coordinates: "0.5 -89.5", radius: 1 arcsec, collection: HST}}
  - {{name: filter-slip, target: "{target}", filters: [F44W]}}
""")
    result = query_watchlist(client, wl)
    assert result.per_entry["slip"] == 0 and result.per_entry["right"] > 0 and result.per_entry["empty-sky"] == 0
    assert result.per_entry["filter-slip"] == 0
    # an empty patch of sky under a real mission is no slip: only the misspelt mission and filter are said
    assert result.suspicious == ["slip: found nothing; collection 'JWTS' is not one of MAST's (did you mean JWST?)",
                                 "filter-slip: found nothing; filter 'F44W' is none skyassets knows "
                                 "(did you mean F444W?)"]


def test_paging_returns_every_row(emu):
    wl = load_watchlist()
    whole = query_watchlist(observations_client(emu.url, s3_endpoint=emu.s3_endpoint), wl)
    paged = query_watchlist(observations_client(emu.url, s3_endpoint=emu.s3_endpoint, pagesize=2), wl)
    assert not paged.incomplete
    assert list(paged.observations["obs_id"]) == list(whole.observations["obs_id"])


def test_products_are_filtered_to_science_fits_with_s3_keys(emu, client):
    obs = next(o for o in emu.sky.observations if o["obs_collection"] == "JWST")
    download_url = emu.url + "/api/v0.1/Download/file"
    frame, refused = list_products(client, obs["obsid"], ProductSpec(), download_url=download_url)
    assert len(frame) > 0 and not refused
    assert set(frame["productSubGroupDescription"]) <= {"CAL", "I2D"}
    assert all(name.endswith(".fits") for name in frame["productFilename"])
    assert frame["s3_key"].notna().all()
    assert all(url.startswith(emu.url) and "uri=mast:" in url for url in frame["http_url"])
    everything = client.get_product_list(str(obs["obsid"]))
    assert len(everything) > len(frame)  # previews, uncal, association files are left out

    i2d_only, _ = list_products(
        client, obs["obsid"], ProductSpec(subgroups=("I2D",)), download_url="http://x/", cloud=False
    )
    assert set(i2d_only["productSubGroupDescription"]) == {"I2D"}
    assert i2d_only["s3_key"].isna().all()


def test_criteria_narrow_the_search(emu, client):
    wl = parse_watchlist(
        """
entries:
  - {name: f200w, program: "2736", filters: F200W}
  - {name: long-hst, target: NGC 628, radius: 10 arcmin, exposure: [600, 5000]}
  - {name: level3-jwst, target: NGC 628, radius: 10 arcmin, collection: JWST, calib_level: 3, product_type: image}
"""
    )
    frame = query_watchlist(client, wl).observations.set_index("obs_id")
    found = {name: frame[frame["watchlist_entry"].str.contains(name)] for name in ("f200w", "long-hst", "level3-jwst")}
    assert len(found["f200w"]) and set(found["f200w"]["filters"]) == {"F200W"}
    assert len(found["long-hst"]) and set(found["long-hst"]["obs_collection"]) == {"HST"}
    assert (found["long-hst"]["t_exptime"] >= 600).all()
    jwst_628 = {
        o["obs_id"] for o in emu.sky.observations
        if o["obs_collection"] == "JWST" and o["proposal_id"] == "2107" and o["dataRights"] == "PUBLIC"
    }
    assert set(found["level3-jwst"].index) == jwst_628


def test_the_real_mast_is_used_without_redirection():
    from skyassets.archive import client as archive_client

    observations_client("http://127.0.0.1:9")  # an emulator-like server routes the hard-coded hosts...
    real = observations_client()  # ...and a client of the real MAST takes that back
    assert real._portal_api_connection.MAST_REQUEST_URL == "https://mast.stsci.edu/api/v0/invoke"
    assert "server" not in archive_client._route


def test_a_cloud_lookup_found_down_stays_off_for_the_runs_that_follow_for_a_while(tmp_path):
    note = tmp_path / "home" / ".cloud-lookup-down.json"
    assert CloudLookup.for_run(True, note) == CloudLookup(True)  # no note
    found = CloudLookup(True)
    found.remember(note, now=1000.0)  # up all run: nothing to say
    assert not note.exists()
    found.enabled, found.down = False, "cloud path lookup: HTTP 503 (gave up after 12 attempts in 299.0 s)"
    found.remember(note, now=1000.0)
    later = CloudLookup.for_run(True, note, now=1000.0 + CLOUD_DOWN_SECONDS - 1)
    assert (later.enabled, later.down, later.noted) == (False, found.down, 1000.0)
    later.remember(note, now=5000.0)  # a run that only read the note does not renew it
    assert CloudLookup.for_run(True, note, now=1000.0 + CLOUD_DOWN_SECONDS) == CloudLookup(True)
    # when and why it was found down is told past that too: a demo whose runs outlast it says it
    assert CloudLookup.last_found_down(note) == (1000.0, found.down)
    assert CloudLookup.for_run(False, note, now=1001.0) == CloudLookup(False)  # switched off: no note needed
    note.write_text("{not json")
    assert CloudLookup.for_run(True, note, now=1001.0) == CloudLookup(True)
    assert CloudLookup.last_found_down(note) is None
