"""``skyassets demo`` against an archive that fails one observation of a batch."""

import os
import re
import subprocess
import sys

import pytest

from skyassets.cli.demo import download_summary


@pytest.mark.slow
def test_an_observation_the_archive_fails_fails_alone_and_its_batch_is_catalogued(emu, tmp_path):
    watchlist = tmp_path / "watchlist.yaml"
    watchlist.write_text("entries:\n  - name: m74-field\n    coordinates: \"24.1739 15.7836\"\n    radius: 4 arcmin\n"
                         "  - name: ring-by-name\n    target: NGC 3132\n"
                         "  - name: misspelt\n    coordinates: \"24.1739 15.7836\"\n    collection: JWTS\n")
    emu.faults.add("status", endpoint="resolver", status=400, times=-1)  # that entry fails, the other goes on
    public = [o for o in emu.sky.observations if o.get("dataRights", "PUBLIC") == "PUBLIC"]
    found = sorted((o for o in public if abs(o["s_ra"] - 24.1739) < 0.1), key=lambda o: o["obs_id"])
    assert len(found) > 3  # more than one observation in the first batch, around the bad one
    bad = found[1]
    emu.faults.add("status", match=f'"obsid": "{bad["obsid"]}"', status=400, times=-1, endpoint="invoke")
    emu.faults.add("status", endpoint="path_lookup", status=400, times=-1)  # files go over HTTP, and that is said
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYASSETS_", "DAGSTER_"))}
    env.update(SKYASSETS_HOME=str(tmp_path / "home"), SKYASSETS_WATCHLIST=str(watchlist),
               SKYASSETS_MAST_URL=emu.url, SKYASSETS_S3_ENDPOINT=emu.s3_endpoint, SKYASSETS_EMULATOR_IMAGE_SIZE="64",
               MAST_API_TOKEN="expired-t0ken")  # refused: public data goes on, and that is said
    done = subprocess.run([sys.executable, "-m", "skyassets.cli.main", "demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "  failed entries: 1 (what an earlier query found for them is kept):\n" in out, out
    assert "\n    ring-by-name: " in out and "HTTP 400" in out, out
    assert re.search(r"^  m74-field +\d+ observations", out, re.M), out  # observations, however many rows each
    assert "\n  check: misspelt: found nothing; collection 'JWTS' is not one of MAST's (did you mean JWST?)\n" in out
    assert "tried again in 3 runs, each failing observation alone and the rest of its batch apart:" in out, out
    failed = [line for line in out.splitlines() if "FAILED" in line]
    assert len(failed) == 2 and f"  {bad['obs_id']}: FAILED" in failed[1], out  # the batch, then it alone
    assert failed[1].endswith(f"mast_products: no product list ({bad['obs_id']}: product list: "
                              f"HTTP 400 Bad Request from {emu.url}/api/v0/invoke)"), out
    assert "1 failed run." in out, out
    assert re.search(r"\nMosaics and composites for \d+ new targets?:\n", out), out  # none made before
    assert "\n  check failed: mast_token_accepted: MAST refused the token (MAST_API_TOKEN;" in out, out
    assert "expired-t0ken" not in out + done.stderr
    assert "kept from the last query" not in out  # a first query: nothing found before to keep
    assert done.stderr.count("MAST refused the token") == 1, done.stderr  # said once as it happens
    assert "\n  the cloud path lookup was down (" in out and "files went over HTTP" in out, out
    catalogued = {p.stem for p in (tmp_path / "home" / "lake" / "image_metadata").glob("*.parquet")}
    assert catalogued == {o["obs_id"] for o in found} - {bad["obs_id"]}, out
    # the closing count is of the observations with images, not of those the watchlist found
    assert f"images of {len(catalogued)} observations (" in out and "found by the watchlist)" in out, out
    # the way to open the runs in the UI carries the settings they ran with: the same archive, for re-executions
    dev = out.splitlines()[out.splitlines().index("Open these runs in the Dagster UI (then browse "
                                                  "http://127.0.0.1:3000):") + 1]
    assert f"SKYASSETS_MAST_URL={emu.url} " in dev and f"SKYASSETS_WATCHLIST={watchlist} " in dev, dev
    assert dev.startswith(f"  SKYASSETS_HOME={tmp_path / 'home'} DAGSTER_HOME=") and dev.endswith(" dev"), dev


def test_a_demo_started_in_the_background_keeps_its_sigterm_handler_across_the_sensor(tmp_path):
    """A script's background job starts with SIGINT ignored; Dagster's sensor evaluation gives
    SIGTERM SIGINT's handler, which would leave `kill` ignored for the rest of the demo."""
    code = """
import signal
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `skyassets demo &` starts
def handler(signum, frame):
    pass
signal.signal(signal.SIGTERM, handler)
from dagster import build_sensor_context, instance_for_test
from skyassets.cli.demo import keeping_sigterm
from skyassets.definitions import defs
from skyassets.defs.archive.sensors import new_observations_sensor
with instance_for_test() as instance:
    context = build_sensor_context(instance=instance, definitions=defs, resources=defs.resources)
    new_observations_sensor(context)
    print("bare", signal.getsignal(signal.SIGTERM) is handler)
    signal.signal(signal.SIGTERM, handler)
    with keeping_sigterm():
        new_observations_sensor(context)
    print("kept", signal.getsignal(signal.SIGTERM) is handler)
"""
    env = {**os.environ, "SKYASSETS_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["bare", "False", "kept", "True"], result.stdout + result.stderr


def test_the_demo_says_where_its_outputs_are_in_the_store_when_the_home_has_one(tmp_path):
    from skyassets.cli.demo import where_outputs_are
    from skyassets.lake.home import Home

    local = where_outputs_are(Home(tmp_path / "home"))
    assert f"FITS files:      {tmp_path / 'home' / 'files'}\n" in local and str(tmp_path / "home" / "lake") in local
    stored = where_outputs_are(Home(tmp_path / "home", storage="s3://survey/team"))
    assert stored.splitlines() == [
        "FITS files:      s3://survey/team/files",
        "Catalog:         s3://survey/team/catalog.duckdb  (or skyassets.connect() in a notebook)",
        "Parquet tables:  s3://survey/team/lake",
    ]


def test_the_download_summary_names_only_what_happened():
    nothing = {"downloaded": 0, "skipped": 0, "verified": 0, "bytes": 0, "seconds": 0.0, "files": 0, "runs": 0}
    assert download_summary(nothing, 0, 4) == ("Nothing needed fetching: the files of every observation found are "
                                               "stored and verified.")
    assert download_summary(nothing, 0, 0) == "Nothing to fetch: the watchlist found no observations."
    refetched = nothing | {"runs": 1, "downloaded": 1, "skipped": 3, "verified": 1, "bytes": 2e6, "seconds": 1.0}
    assert download_summary(refetched, 0, 4) == ("Downloaded 1 file (2.0 MB, 2.0 MB/s), 3 files already verified, "
                                                 "1 FITS checksum verified.")
    assert download_summary(nothing | {"runs": 2}, 2, 4) == "Downloaded nothing, 2 failed runs."


@pytest.mark.slow
def test_a_demo_that_finds_nothing_and_one_that_runs_only_the_query_say_only_that(emu, tmp_path):
    watchlist = tmp_path / "watchlist.yaml"
    watchlist.write_text('entries:\n  - name: empty-sky\n    coordinates: "0.5 -89.5"\n    radius: 1 arcsec\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYASSETS_", "DAGSTER_"))}
    env.update(SKYASSETS_HOME=str(tmp_path / "home"), SKYASSETS_WATCHLIST=str(watchlist),
               SKYASSETS_MAST_URL=emu.url, SKYASSETS_S3_ENDPOINT=emu.s3_endpoint)
    said = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "skyassets.cli.main", "demo"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "\nNothing to fetch: the watchlist found no observations.\n" in done.stdout, done.stdout
        assert "stored and verified" not in done.stdout, done.stdout
        said.append(next(line for line in done.stdout.splitlines() if "in the Dagster UI" in line))
    # the first pass publishes the (empty) catalog; the second has nothing to run but the query
    assert said == ["Open these runs in the Dagster UI (then browse http://127.0.0.1:3000):",
                    "Only the watchlist query ran this time; open it and the earlier runs in the Dagster UI "
                    "(then browse http://127.0.0.1:3000):"]


def test_the_settings_the_demo_prints_hold_no_secret(tmp_path, monkeypatch):
    """The line that starts the UI with the demo's settings gives a database URL's password, and any
    variable named for a secret, as a reference to the variable, which the shell that ran the
    demo expands: the password is never printed, and the line still works there."""
    from skyassets.cli.demo import settings_line
    from skyassets.lake.home import Home

    for name in [n for n in os.environ if n.startswith("SKYASSETS_")]:
        monkeypatch.delenv(name)
    url = "postgresql+psycopg2://skyassets:TopS3cret@db.example.org:5432/skyassets"
    monkeypatch.setenv("SKYASSETS_POSTGRES_URL", url)
    monkeypatch.setenv("SKYASSETS_S3_SECRET", "hush")
    monkeypatch.setenv("SKYASSETS_MAST_URL", "https://mast.stsci.edu")
    line = settings_line(Home(tmp_path / "home"), tmp_path / "dagster")
    assert "TopS3cret" not in line and "hush" not in line
    assert 'SKYASSETS_POSTGRES_URL="$SKYASSETS_POSTGRES_URL"' in line
    assert 'SKYASSETS_S3_SECRET="$SKYASSETS_S3_SECRET"' in line
    assert "SKYASSETS_MAST_URL=https://mast.stsci.edu" in line  # the rest as they are
    expanded = subprocess.run(["bash", "-c", f"{line} env"], capture_output=True, text=True,
                              env={**os.environ, "SKYASSETS_POSTGRES_URL": url}).stdout
    assert f"SKYASSETS_POSTGRES_URL={url}\n" in expanded
