"""The landing sensors hand on a tick's files in a few partition-range runs, however many partitions."""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from dagster import AssetKey, DagsterInstance, Definitions, SensorResult, build_sensor_context, instance_for_test

from skyassets.defs.archive.assets import fits_files
from skyassets.defs.catalog.assets import image_metadata
from skyassets.defs.landing.jobs import landing_job
from skyassets.defs.landing.sensors import landing_zone_sensor
from skyassets.defs.partitions import LANDED_PARTITIONS_PER_RUN, requested_partitions
from skyassets.defs.resources import ArchiveResource, DownloaderResource, HomeResource, LandingResource


def _image(path: Path, obs_id: str, *, checksum: bool = True) -> None:
    """A small calibrated-looking image: an OBS_ID, a filter and a celestial WCS on its SCI extension."""
    primary = fits.PrimaryHDU()
    primary.header.update(
        {"OBS_ID": obs_id, "TELESCOP": "JWST", "INSTRUME": "NIRCAM", "FILTER": "F200W",
         "DATE-OBS": "2026-11-20", "TIME-OBS": "01:02:03", "EFFEXPTM": 100.0}
    )
    sci = fits.ImageHDU(np.ones((8, 8), np.float32), name="SCI")
    sci.header.update(
        {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 2.0, "CRPIX1": 4.5,
         "CRPIX2": 4.5, "CDELT1": -1e-5, "CDELT2": 1e-5, "CUNIT1": "deg", "CUNIT2": "deg", "BUNIT": "MJy/sr"}
    )
    fits.HDUList([primary, sci]).writeto(path, checksum=checksum)


def _header_only(path: Path, obs_id: str) -> None:
    """The smallest FITS file with an OBS_ID: one header block, enough for a partition key."""
    cards = [f"{'SIMPLE':<8}= {'T':>20}", f"{'BITPIX':<8}= {8:>20}", f"{'NAXIS':<8}= {0:>20}",
             f"{'OBS_ID':<8}= '{obs_id}'", "END"]
    path.write_bytes("".join(c.ljust(80) for c in cards).ljust(2880).encode("ascii"))


def _resources(home: Path, landing: Path, **landing_settings) -> dict:
    return {
        "home": HomeResource(root=str(home)),
        "landing": LandingResource(folder=str(landing), **landing_settings),
        "downloader": DownloaderResource(),
        "archive": ArchiveResource(),  # landed files are copied, never fetched from the archive
    }


def _tick(instance: DagsterInstance, resources: dict, cursor: str | None, *, apply: bool = True) -> SensorResult:
    """One evaluation; ``apply`` adds its partitions as the daemon does before it launches the runs."""
    result = landing_zone_sensor(build_sensor_context(instance=instance, cursor=cursor, resources=resources))
    if apply:
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def _covered(instance: DagsterInstance, result: SensorResult) -> list[str]:
    every = instance.get_dynamic_partitions("observations")
    return [k for r in result.run_requests for k in requested_partitions(r, every)]


def test_a_tick_of_many_partitions_is_a_few_runs_and_each_runs_once(tmp_path):
    landing = tmp_path / "drop"
    landing.mkdir()
    obs_ids = [f"jw09999-o{i:03d}_t001" for i in range(60)]
    for obs_id in obs_ids:
        _image(landing / f"{obs_id}_cal.fits", obs_id)
    (landing / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 100)
    resources = _resources(tmp_path / "home", landing)
    with instance_for_test() as instance:
        first = _tick(instance, resources, None)
        assert not first.run_requests  # nothing is taken the first time it is seen
        assert "0 runs; 61 waiting to settle" in first.skip_reason.skip_message  # said in the UI's tick history
        second = _tick(instance, resources, first.cursor, apply=False)
        assert 1 <= len(second.run_requests) <= 3
        # The evaluation is lost (its cursor not stored) and repeated: the same runs, by run key.
        again = _tick(instance, resources, first.cursor)
        assert [r.run_key for r in again.run_requests] == [r.run_key for r in second.run_requests]
        assert len({r.run_key for r in again.run_requests}) == len(again.run_requests)
        keys = _covered(instance, again)
        assert len(keys) == len(set(keys)) == 61 and {f"landed-{o}" for o in obs_ids} < set(keys)
        assert _tick(instance, resources, again.cursor).run_requests == []  # nothing is offered twice

        defs = Definitions(assets=[fits_files, image_metadata], jobs=[landing_job], resources=resources)
        job = defs.resolve_job_def("landing_job")
        for request in again.run_requests:
            run = job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags)
            assert run.success  # the broken file is quarantined; its batch goes on
        assert instance.get_materialized_partitions(AssetKey("image_metadata")) == set(keys)
        assert instance.get_materialized_partitions(AssetKey("fits_files")) == set(keys)
    home = tmp_path / "home"
    names = {p.name for p in (home / "lake" / "image_metadata").glob("*.parquet")}
    assert names == {f"{k}.parquet" for k in keys}
    quarantined = list((home / "quarantine").glob("broken*.json"))
    assert len(quarantined) == 1 and "broken.fits" in json.loads(quarantined[0].read_text())["file"]


def test_files_for_partitions_already_known_join_their_partitions_runs(tmp_path):
    landing = tmp_path / "drop"
    landing.mkdir()
    for i in range(30):
        _header_only(landing / f"a{i:02d}.fits", f"obs-{i:02d}")
    resources = _resources(tmp_path / "home", landing)
    with instance_for_test() as instance:
        known = ["mast-1", "landed-obs-03", "landed-obs-04", "mast-2", "landed-obs-05", "mast-3"]
        instance.add_dynamic_partitions("observations", known)
        result = _tick(instance, resources, _tick(instance, resources, None).cursor)
        keys = _covered(instance, result)
        assert sorted(keys) == [f"landed-obs-{i:02d}" for i in range(30)]
        assert not any(k.startswith("mast") for k in keys)  # a range never spans a partition not asked for
        assert len(result.run_requests) == 3  # obs-03..obs-04; obs-05; the 27 new ones


def test_a_tick_over_thousands_of_files_stays_bounded(tmp_path):
    landing = tmp_path / "drop"
    for folder in range(3):
        (landing / f"night{folder}").mkdir(parents=True)
    total = 3000
    for i in range(total):
        _header_only(landing / f"night{i % 3}" / f"f{i:05d}.fits", f"obs-{i:05d}")
    max_files, max_ready = 1000, 200
    resources = _resources(tmp_path / "home", landing, max_files=max_files, max_ready=max_ready)
    taken: list[str] = []
    cursor, ticks = None, 0
    with instance_for_test() as instance:
        while len(taken) < total and ticks < 60:
            result = _tick(instance, resources, cursor)
            cursor, ticks = result.cursor, ticks + 1
            keys = _covered(instance, result)
            assert len(keys) <= max_ready
            assert len(result.run_requests) <= math.ceil(max_ready / LANDED_PARTITIONS_PER_RUN)
            taken += keys
        assert _tick(instance, resources, cursor).run_requests == []
    assert len(taken) == len(set(taken)) == total
    # A pass examines max_files entries a tick, and a file is taken on its second sighting.
    assert ticks <= 2 * math.ceil(total / max_files) + math.ceil(total / max_ready)


# --- one file never fails its batch; nothing from outside the zone; no archive partition taken over ---

def _runs(instance: DagsterInstance, resources: dict, result: SensorResult) -> list:
    defs = Definitions(assets=[fits_files, image_metadata], jobs=[landing_job], resources=resources)
    job = defs.resolve_job_def("landing_job")
    return [
        job.execute_in_process(instance=instance, partition_key=r.partition_key, tags=r.tags, raise_on_error=False)
        for r in result.run_requests
    ]


def _holds(folder: Path, marker: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and marker in p.read_bytes()]


def test_a_file_that_fails_anywhere_is_quarantined_and_its_batch_goes_on(tmp_path):
    """In one batch: a header value with a DEL byte (astropy refuses it while cataloguing), a 250-byte
    name (its lock and working files' names would pass 255 bytes), a broken file, a link to a FITS
    file outside and a name that is not UTF-8, beside good files. The runs succeed, the good files
    and the long name are catalogued, the bad ones are quarantined with the reason, and
    nothing of the file outside reaches the store or the quarantine."""
    landing = tmp_path / "drop"
    landing.mkdir()
    for obs_id in ("good-1", "good-2"):
        _image(landing / f"{obs_id}.fits", obs_id)
    long_name = "g" * 245 + ".fits"
    _image(landing / long_name, "long-1")
    odd = landing / "odd.fits"
    _image(odd, "odd-1", checksum=False)
    odd.write_bytes(odd.read_bytes().replace(b"'F200W", b"'F2\x7f0W", 1))  # no CHECKSUM: the copy passes
    (landing / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 100)
    _image(tmp_path / "outside.fits", "outside-secret")
    (landing / "link.fits").symlink_to(tmp_path / "outside.fits")
    with open(os.path.join(os.fsencode(landing), b"caf\xe9.fits"), "wb") as f:
        f.write(odd.read_bytes())
    resources = _resources(tmp_path / "home", landing)
    with instance_for_test() as instance:
        result = _tick(instance, resources, _tick(instance, resources, None).cursor)
        keys = _covered(instance, result)
        assert {"landed-good-1", "landed-good-2", "landed-long-1", "landed-odd-1"} <= set(keys) and len(keys) == 5
        assert all(run.success for run in _runs(instance, resources, result))
        assert instance.get_materialized_partitions(AssetKey("image_metadata")) == set(keys)
    home = tmp_path / "home"
    catalogued = pd.concat(pd.read_parquet(p) for p in (home / "lake" / "image_metadata").glob("*.parquet"))
    assert sorted(catalogued["obs_id"]) == ["landed-good-1", "landed-good-2", "landed-long-1"]
    stored = catalogued.set_index("obs_id").loc["landed-long-1", "file_name"]
    assert stored.startswith("g" * 100) and stored.endswith(".fits") and len(stored) < 250
    notes = {p.name: json.loads(p.read_text()) for p in (home / "quarantine").glob("*.json")}
    assert sorted(n["file"].partition(".")[0] for n in notes.values()) == ["broken", "odd"]
    assert "odd.fits" in notes["odd.fits.json"]["reason"]
    assert _holds(home, b"outside-secret") == []


def test_a_file_swapped_for_a_link_before_its_copy_is_not_copied(tmp_path):
    """The sensor took a real file; before the run copies it, it becomes a link to a file outside
    with the same size. The copy refuses the link: the outside bytes reach neither the store nor
    the quarantine, and the run goes on."""
    landing = tmp_path / "drop"
    landing.mkdir()
    _image(landing / "a.fits", "swap-1")
    _image(landing / "b.fits", "keep-1")
    _image(tmp_path / "outside.fits", "secret-9")  # the same size as a.fits
    assert (tmp_path / "outside.fits").stat().st_size == (landing / "a.fits").stat().st_size
    resources = _resources(tmp_path / "home", landing)
    with instance_for_test() as instance:
        result = _tick(instance, resources, _tick(instance, resources, None).cursor)
        (landing / "a.fits").unlink()
        (landing / "a.fits").symlink_to(tmp_path / "outside.fits")
        assert all(run.success for run in _runs(instance, resources, result))
    home = tmp_path / "home"
    assert _holds(home, b"secret-9") == []
    assert len(_holds(home / "files", b"keep-1")) == 1


def test_a_landed_file_never_takes_over_an_archive_observation(tmp_path):
    """An archive observation has five files catalogued; a landed file's header carries the same
    OBS_ID. It gets its own partition, and the archive's rows and files stay as they were."""
    from skyassets.lake.home import Home

    obs_id = "jw01234-o001_t001_nircam_clear-f200w"
    home = Home(tmp_path / "home")
    archive = pd.DataFrame({
        "partition": obs_id, "dataURI": [f"mast:JWST/product/f{i}.fits" for i in range(5)],
        "filename": [f"f{i}.fits" for i in range(5)], "path": [f"files/JWST/{obs_id}/f{i}.fits" for i in range(5)],
        "size": 10, "sha256": "0" * 64, "status": "downloaded",
    })
    home.tables.write("mast_products", archive.rename(columns={"filename": "productFilename"}), partition=obs_id)
    home.tables.write("fits_files", archive, partition=obs_id)
    before = home.tables.read("fits_files", obs_id)
    landing = tmp_path / "drop"
    landing.mkdir()
    _image(landing / "mine.fits", obs_id)
    resources = _resources(home.root, landing)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("observations", [obs_id])
        result = _tick(instance, resources, _tick(instance, resources, None).cursor)
        assert _covered(instance, result) == [f"landed-{obs_id}"]
        assert all(run.success for run in _runs(instance, resources, result))
        assert instance.get_materialized_partitions(AssetKey("fits_files")) == {f"landed-{obs_id}"}
    pd.testing.assert_frame_equal(home.tables.read("fits_files", obs_id), before)
    assert not home.tables.exists("landing", obs_id) and not (home.files / "local" / obs_id).exists()
    assert home.tables.read("image_metadata", f"landed-{obs_id}")["file_name"].tolist() == ["mine.fits"]


def test_a_partition_whose_record_cannot_be_written_does_not_stop_the_tick(tmp_path):
    landing = tmp_path / "drop"
    landing.mkdir()
    _header_only(landing / "a.fits", "rec-a")
    _header_only(landing / "b.fits", "rec-b")
    records = tmp_path / "home" / "lake" / "landing"
    records.mkdir(parents=True)
    (records / "landed-rec-a.parquet").write_bytes(b"not parquet")  # an earlier record, damaged
    resources = _resources(tmp_path / "home", landing)
    with instance_for_test() as instance:
        result = _tick(instance, resources, _tick(instance, resources, None).cursor)
        assert _covered(instance, result) == ["landed-rec-b"]
        # the files left out are offered again, and join a run once the record can be written
        assert not _covered(instance, result := _tick(instance, resources, result.cursor))
        (records / "landed-rec-a.parquet").unlink()
        assert _covered(instance, _tick(instance, resources, result.cursor)) == ["landed-rec-a"]


def test_headers_that_take_the_ticks_time_leave_the_rest_for_the_next_tick(tmp_path, monkeypatch):
    import skyassets.landing.ingest as ingest

    landing = tmp_path / "drop"
    landing.mkdir()
    for name in ("a", "b", "c"):
        _header_only(landing / f"{name}.fits", f"slow-{name}")
    read = ingest.partition_key

    def slow(landed, **kwargs):  # as a file with megabytes of header cards reads
        import time

        time.sleep(0.3)
        return read(landed, **kwargs)

    monkeypatch.setattr(ingest, "partition_key", slow)
    monkeypatch.setattr("skyassets.defs.landing.sensors.KEY_SECONDS", 0.4)
    resources = _resources(tmp_path / "home", landing)
    covered: list[str] = []
    with instance_for_test() as instance:
        result = _tick(instance, resources, None)
        for _ in range(3):
            result = _tick(instance, resources, result.cursor)
            covered += _covered(instance, result)
            assert len(_covered(instance, result)) <= 2
    assert sorted(covered) == ["landed-slow-a", "landed-slow-b", "landed-slow-c"]


def test_a_file_whose_obs_id_changes_leaves_its_old_observation(tmp_path):
    landing = tmp_path / "drop"
    landing.mkdir()
    moving, staying = landing / "moving_cal.fits", landing / "staying_cal.fits"
    _image(moving, "jw01234-o001_t001")
    _image(staying, "jw01234-o001_t001")
    resources = _resources(tmp_path / "home", landing)
    defs = Definitions(assets=[fits_files, image_metadata], jobs=[landing_job], resources=resources)
    job = defs.resolve_job_def("landing_job")
    lake = HomeResource(root=str(tmp_path / "home")).home.tables

    def settle(cursor: str | None) -> SensorResult:
        result = _tick(instance, resources, _tick(instance, resources, cursor).cursor)
        for request in result.run_requests:
            assert job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                          tags=request.tags).success
        return result

    with instance_for_test() as instance:
        first = settle(None)
        assert sorted(lake.read("image_metadata", "landed-jw01234-o001_t001")["file_name"]) == [
            "moving_cal.fits", "staying_cal.fits"]
        moving.unlink()
        _image(moving, "jw01234-o002_t001")  # the owner rewrites the header: another observation
        os.utime(moving, ns=(3_000_000_000_000_000_000,) * 2)
        second = settle(first.cursor)
        assert sorted(_covered(instance, second)) == ["landed-jw01234-o001_t001", "landed-jw01234-o002_t001"]
    assert list(lake.read("image_metadata", "landed-jw01234-o001_t001")["file_name"]) == ["staying_cal.fits"]
    assert list(lake.read("image_metadata", "landed-jw01234-o002_t001")["file_name"]) == ["moving_cal.fits"]
    # the old partition's copy of the file went with it: the home holds no file no manifest lists
    files = tmp_path / "home" / "files" / "local"
    assert {p.name.lstrip(".").split(".")[0] for p in (files / "landed-jw01234-o001_t001").iterdir()} == {
        "staying_cal"}
    assert (files / "landed-jw01234-o001_t001" / "staying_cal.fits").is_file()
    assert (files / "landed-jw01234-o002_t001" / "moving_cal.fits").is_file()
    assert list(lake.read("landing", "landed-jw01234-o001_t001")["location"]) == [str(staying)]
    index = lake.read("landing_index").set_index("location")["partition"].to_dict()
    assert index == {str(moving): "landed-jw01234-o002_t001", str(staying): "landed-jw01234-o001_t001"}


def test_a_partition_a_file_leaves_again_is_asked_to_run_again(tmp_path):
    landing = tmp_path / "drop"
    landing.mkdir()
    moving = landing / "moving.fits"
    _header_only(moving, "k1")
    _header_only(landing / "between.fits", "k15")  # a partition between the two: each runs alone
    _header_only(landing / "anchor.fits", "k2")
    resources = _resources(tmp_path / "home", landing)
    left_runs = []
    with instance_for_test() as instance:
        cursor = _tick(instance, resources, _tick(instance, resources, None).cursor).cursor
        for step, obs_id in enumerate(["k2", "k1", "k2", "k1", "k2"], start=1):
            _header_only(moving, obs_id)
            os.utime(moving, ns=(step * 10**18, step * 10**18))
            result = _tick(instance, resources, _tick(instance, resources, cursor).cursor)
            cursor = result.cursor
            every = instance.get_dynamic_partitions("observations")
            runs = {tuple(requested_partitions(r, every)): r.run_key for r in result.run_requests}
            old = "landed-k1" if obs_id == "k2" else "landed-k2"
            assert (old,) in runs, (obs_id, runs)  # the partition it left runs again, alone
            left_runs.append(runs[(old,)])
    assert len(set(left_runs)) == len(left_runs)  # each time a run key of its own: Dagster launches each


def test_a_tick_that_cannot_take_the_landing_lock_offers_its_files_again(tmp_path, monkeypatch):
    landing = tmp_path / "drop"
    landing.mkdir()
    _header_only(landing / "a.fits", "busy-a")
    monkeypatch.setattr("skyassets.defs.landing.sensors.LOCK_SECONDS", 0.3)
    resources = _resources(tmp_path / "home", landing)
    home = resources["home"].home
    with instance_for_test() as instance:
        cursor = _tick(instance, resources, None).cursor  # a.fits seen; ready once it has settled
        with home.lock("landing", wait=1):  # `skyassets ingest` recording into the same home
            context = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
            busy = landing_zone_sensor(context)
            assert not busy.run_requests and not busy.dynamic_partitions_requests
            assert "1 ready files offered again next tick" in busy.skip_reason.skip_message
        assert not home.tables.exists("landing", "landed-busy-a")  # nothing recorded while it waited
        result = _tick(instance, resources, busy.cursor)
        assert _covered(instance, result) == ["landed-busy-a"]


def test_a_tick_whose_lock_was_lost_still_runs_the_partition_a_file_left(tmp_path, monkeypatch):
    """The lock given up under the tick (another machine took the lease over while this one stalled)
    after the landing index moved a file on: its files wait for the next tick, but the partition the
    file left runs again now, as no later tick will see it leave."""
    from contextlib import contextmanager

    import skyassets.landing.ingest as ingest
    from skyassets.lake.lease import LockBusy

    landing = tmp_path / "drop"
    landing.mkdir()
    moving = landing / "moving.fits"
    _header_only(moving, "k1")
    resources = _resources(tmp_path / "home", landing)
    really_recording = ingest.recording

    @contextmanager
    def lost_at_the_end(home, **kwargs):
        with really_recording(home, **kwargs):
            yield
        raise LockBusy("s3://bucket/home/.landing.lock: taken over by another holder after it ran out")

    with instance_for_test() as instance:
        cursor = _tick(instance, resources, _tick(instance, resources, None).cursor).cursor
        _header_only(moving, "k2")
        os.utime(moving, ns=(10**18, 10**18))
        cursor = _tick(instance, resources, cursor).cursor  # seen changed; ready once settled
        monkeypatch.setattr(ingest, "recording", lost_at_the_end)
        lost = _tick(instance, resources, cursor)
        assert _covered(instance, lost) == ["landed-k1"]  # the partition it left, without it
        monkeypatch.setattr(ingest, "recording", really_recording)
        again = _tick(instance, resources, lost.cursor)
        assert _covered(instance, again) == ["landed-k2"]  # offered again, and taken


def test_a_file_changed_in_place_replaces_its_copy_in_one_step(tmp_path):
    """A run reading the stored copy of a landed file (a mosaic of its target) while the file's new
    version is copied finds a file throughout: the old copy until the new one takes its place. A new
    version that cannot be copied takes the old copy with it: the home holds no file no manifest lists."""
    landing = tmp_path / "drop"
    landing.mkdir()
    landed = landing / "big_cal.fits"

    def version(value: float) -> None:
        primary = fits.PrimaryHDU()
        primary.header["OBS_ID"] = "jw01234-o001_t001"
        fits.HDUList([primary, fits.ImageHDU(np.full((2048, 2048), value, np.float32), name="SCI")]).writeto(
            landed, overwrite=True, checksum=True)

    version(1.0)
    resources = _resources(tmp_path / "home", landing)
    defs = Definitions(assets=[fits_files, image_metadata], jobs=[landing_job], resources=resources)
    job = defs.resolve_job_def("landing_job")
    stored = tmp_path / "home" / "files" / "local" / "landed-jw01234-o001_t001" / "big_cal.fits"

    with instance_for_test() as instance:
        def settle(cursor: str | None) -> tuple[SensorResult, int]:
            """The landing tick and its runs, with how often the stored copy was looked for and missing."""
            result = _tick(instance, resources, _tick(instance, resources, cursor).cursor)
            missing = 0
            with ThreadPoolExecutor(1) as pool:
                runs = [pool.submit(job.execute_in_process, instance=instance, partition_key=r.partition_key,
                                    tags=r.tags, raise_on_error=False) for r in result.run_requests]
                while not all(run.done() for run in runs):
                    missing += not stored.exists()
            assert all(run.result().success for run in runs)
            return result, missing

        first, _ = settle(None)
        version(2.0)
        os.utime(landed, ns=(3_000_000_000_000_000_000,) * 2)
        second, missing = settle(first.cursor)
        assert _covered(instance, second) == ["landed-jw01234-o001_t001"]
        assert missing == 0
        assert fits.getdata(stored, "SCI")[0, 0] == 2.0
        landed.write_bytes(landed.read_bytes()[:5000])  # a third version, cut short: not FITS any more
        os.utime(landed, ns=(4_000_000_000_000_000_000,) * 2)
        settle(second.cursor)
    assert not stored.exists() and not stored.with_name("big_cal.fits.sha256").exists()
    notes = [json.loads(p.read_text()) for p in (tmp_path / "home" / "quarantine").glob("*.json")]
    assert [note["landed_location"] for note in notes] == [str(landed)]
