"""Mosaics and composites per target, from ingest to the catalog, on a real Dagster instance, kept
fresh by declarative automation."""

import shutil

from astropy.io import fits
from astropy.wcs import WCS
from dagster import AssetKey, evaluate_automation_conditions, instance_for_test

from skyassets.catalog.db import connect
from skyassets.cli.main import main
from skyassets.cli.runs import QUIET, ingest
from skyassets.definitions import defs
from skyassets.defs.tags import partition_range
from skyassets.imaging import composite
from skyassets.imaging.composite import read_avm_wcs
from skyassets.lake.home import Home

MOSAICS = AssetKey("mosaics")
LATER = "jw02733002001_02301"  # NGC 3132's second pointing in F444W, catalogued after the rest


def _catalogue(files, drop, home, instance, run_config) -> None:
    """Land ``files``, catalogue and measure their observations, regroup the targets."""
    drop.mkdir()
    for path in files:
        shutil.copy(path, drop / path.name)
    before = set(instance.get_dynamic_partitions("observations"))
    ingest([drop], home, instance)
    new = sorted(set(instance.get_dynamic_partitions("observations")) - before)
    tags = partition_range(new[0], new[-1])
    quality = defs.resolve_job_def("quality_job")
    assert quality.execute_in_process(instance=instance, tags=tags, run_config=run_config).success
    assert defs.resolve_job_def("catalog_job").execute_in_process(instance=instance, run_config=run_config).success


def _make_products(instance, targets, run_config) -> None:
    for target in sorted(targets):
        run = defs.resolve_job_def("products_job").execute_in_process(
            instance=instance, partition_key=target, run_config=run_config
        )
        assert run.success


def test_each_target_gets_mosaics_and_composites_remade_only_when_its_images_change(
    emu, tmp_path, monkeypatch, capsys
):
    sky = sorted(emu.sky.root.rglob("jw02733*_cal.fits")) + sorted(emu.sky.root.rglob("jw02736*_cal.fits"))
    # the combined F090W image of the first pointing's exposures, landed under a name of one's own
    mine = tmp_path / "ngc3132_mine.fits"
    shutil.copy(next(emu.sky.root.rglob("jw02733-o001_*_clear-f090w_i2d.fits")), mine)
    home = Home(tmp_path / "home")
    run_config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
    with instance_for_test() as instance:
        _catalogue([p for p in sky if not p.name.startswith(LATER)] + [mine], tmp_path / "first", home, instance,
                   run_config)
        targets = set(instance.get_dynamic_partitions("targets"))
        assert targets == {"NGC-3132", "SMACS-0723"}  # target_groups added a partition per target
        # and recorded each target's images with their digest as the data version
        grouped = home.tables.read("target_groups").drop_duplicates("target").set_index("target")
        recorded = {r.partition_key: r.event_log_entry.tags["dagster/data_version"]
                    for r in instance.fetch_materializations(AssetKey("target_images"), limit=10).records}
        assert recorded == grouped["inputs_digest"].to_dict()
        assert len(home.tables.read("target_images", "NGC-3132")) == 11  # 12 exposures but 2 held back, and mine

        first = evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.get_requested_partitions(MOSAICS) == targets
        _make_products(instance, targets, run_config)
        before = home.tables.read("mosaics", "NGC-3132").set_index("filter")["n_inputs"]
        # its exposures are co-added, not it: their light would count twice
        inputs = home.tables.read("mosaics", "NGC-3132").set_index("filter")["inputs"]
        assert "_cal.fits" in inputs["F090W"] and mine.name not in inputs["F090W"]
        files = {p.name: p.stat().st_ino for p in home.target_dir("NGC-3132").glob("*_*.*")}
        settled = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        # made in one run with their mosaics, the composites are not asked for again either
        assert settled.get_num_requested(MOSAICS) == 0 and settled.get_num_requested(AssetKey("composites")) == 0

        # A new observation of NGC 3132 is catalogued: only NGC 3132's products are remade.
        _catalogue([p for p in sky if p.name.startswith(LATER)], tmp_path / "later", home, instance, run_config)
        changed = evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
        assert changed.get_requested_partitions(MOSAICS) == {"NGC-3132"}
        _make_products(instance, ["NGC-3132"], run_config)
        after = home.tables.read("mosaics", "NGC-3132").set_index("filter")["n_inputs"]
        assert after["F444W"] == 2 * before["F444W"] and after.drop("F444W").equals(before.drop("F444W"))
        # and of them only the F444W mosaic: the other bands' inputs are as they were, so are their files;
        # the composite is made of the F444W mosaic too, so it is made again
        remade = {p.name for p in home.target_dir("NGC-3132").glob("*_*.*") if p.stat().st_ino != files.get(p.name)}
        assert remade == {"mosaic_nircam_image_f444w.fits", "mosaic_nircam_image_f444w.png",
                          "composite_nircam-classic.png", "composite_nircam-classic.tif"}, remade
        # the UI's preview grid: the target's mosaics and its composite side by side
        latest = instance.fetch_materializations(AssetKey("composites"), limit=1).records[0]
        grid = latest.asset_materialization.metadata["preview_grid"].value
        assert latest.partition_key == "NGC-3132"
        assert grid.startswith("| F090W mosaic | F200W mosaic | F444W mosaic | nircam-classic (F090W;F200W;F444W) |")
        assert grid.count("](data:image/png;base64,") == 4

    mosaics = home.tables.read("mosaics", "NGC-3132")
    assert len(mosaics) == 3 and (mosaics["n_inputs"] >= 2).all()  # every filter has both pointings now
    composites = home.tables.read("composites", "NGC-3132")
    assert len(composites) == 1 and composites.iloc[0]["filters"] == "F090W;F200W;F444W"  # the classic 3-colour
    assert set(composites["stretch"]) == {"lupton-asinh"} and set(composites["method"]) == {"lupton"}
    first_made = composites.iloc[0]
    png = home.root / first_made["png"]
    assert png.exists() and (home.root / first_made["cube"]).exists()
    assert read_avm_wcs(png).celestial.has_celestial
    con = connect(home.root)
    assert con.execute("SELECT count(*) FROM mosaics").fetchone()[0] == 6
    assert con.execute("SELECT count(*) FROM composites").fetchone()[0] == len(composites) + len(
        home.tables.read("composites", "SMACS-0723")
    )
    # every suggested recipe is in the catalog, those made marked so
    recipes = con.execute("SELECT target, recipe, made FROM recipes ORDER BY target, rank").df()
    assert set(recipes["target"]) == {"NGC-3132", "SMACS-0723"}
    assert recipes["made"].sum() == con.execute("SELECT count(*) FROM composites").fetchone()[0]

    monkeypatch.setenv("SKYASSETS_HOME", str(home.root))
    assert main(["show", "NGC-3132"]) == 0
    shown = capsys.readouterr().out
    assert str(png) in shown and shown.count("mosaic ") == 3
    assert "lupton, lupton-asinh" in shown
    assert shown.count("not made ") == int((~recipes[recipes["target"] == "NGC-3132"]["made"]).sum())
    assert main(["show", "NOWHERE"]) == 1


def _stamps(folder) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each composite file in ``folder``: a file kept as it was has both unchanged."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("composite_*")}


def _products_run(instance, run_config) -> tuple[dict, dict, list[str]]:
    """NGC 3132's products made by hand: the metadata of its mosaics and composites, and the run's log."""
    from skyassets.cli.runs import latest_metadata

    run = defs.resolve_job_def("products_job").execute_in_process(
        instance=instance, partition_key="NGC-3132", run_config=run_config
    )
    assert run.success
    said = [entry.user_message for entry in instance.all_logs(run.run_id)]
    return latest_metadata(instance, "mosaics", "NGC-3132"), latest_metadata(instance, "composites", "NGC-3132"), said


def test_a_composite_is_made_again_only_when_its_mosaics_or_settings_change(emu, tmp_path):
    """A composite whose mosaics (their PROVHASH) and settings are those it was made from keeps its
    files and its row: a new exposure in one band remakes the composites made of that band only, and
    a run with nothing changed rewrites no file; the others of the target are still its set."""
    sky = sorted(emu.sky.root.rglob("jw02733*_cal.fits"))
    home = Home(tmp_path / "home")
    pair = {"composites": {"config": {"recipes": {"NGC-3132": {"pair": "F090W;F200W"}}}}}  # no F444W
    run_config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}, **pair}}
    folder = home.target_dir("NGC-3132")
    with instance_for_test() as instance:
        _catalogue([p for p in sky if not p.name.startswith(LATER)], tmp_path / "first", home, instance, run_config)
        _products_run(instance, run_config)
        first, rows = _stamps(folder), home.tables.read("composites", "NGC-3132")
        assert set(first) == {"composite_pair.png", "composite_pair.tif",
                              "composite_nircam-classic.png", "composite_nircam-classic.tif"}
        assert list(rows["recipe"]) == ["pair", "nircam-classic"]

        # made again with nothing changed: every mosaic and composite kept, no file written
        mosaics, made, said = _products_run(instance, run_config)
        assert _stamps(folder) == first
        assert home.tables.read("composites", "NGC-3132").equals(rows)
        assert (mosaics["made"], mosaics["kept"]) == (0, 3) and (made["made"], made["kept"]) == (0, 2)
        assert "NGC-3132: 0 mosaics made, 3 kept as made before" in said
        assert "NGC-3132: 0 composites made, 2 kept as made before" in said
        assert made["composites"].count(", as made before") == 2

        # a new F444W exposure: the F444W mosaic and the composite made of it are made again, the pair kept
        _catalogue([p for p in sky if p.name.startswith(LATER)], tmp_path / "later", home, instance, run_config)
        mosaics, made, said = _products_run(instance, run_config)
        later = _stamps(folder)
        assert {name for name in later if later[name] != first[name]} == {
            "composite_nircam-classic.png", "composite_nircam-classic.tif"}
        assert (mosaics["made"], mosaics["kept"]) == (1, 2) and (made["made"], made["kept"]) == (1, 1)
        assert "NGC-3132: 1 composites made, 1 kept as made before" in said
        assert composite.made_of(folder / "composite_nircam-classic.png") != composite.made_of(
            folder / "composite_pair.png")
        now = home.tables.read("composites", "NGC-3132").set_index("recipe")
        assert now.loc["pair"].equals(rows.set_index("recipe").loc["pair"])  # the pair's row as it was

        # the composites' own settings changed: both made again, the mosaics kept
        screen = {**run_config, "resources": {**run_config["resources"], "composites": {"config": {
            **pair["composites"]["config"], "method": "screen"}}}}
        mosaics, made, _ = _products_run(instance, screen)
        assert (mosaics["made"], mosaics["kept"]) == (0, 3) and (made["made"], made["kept"]) == (2, 0)
        assert all(_stamps(folder)[name] != later[name] for name in later)
        assert set(home.tables.read("composites", "NGC-3132")["method"]) == {"screen"}


def test_composites_follow_the_configured_recipes_method_and_stretch(emu, tmp_path):
    sky = sorted(emu.sky.root.rglob("jw02733*_cal.fits"))
    home = Home(tmp_path / "home")
    run_config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
    with instance_for_test() as instance:
        _catalogue(sky, tmp_path / "drop", home, instance, run_config)
        overrides = {
            "*": {"mine": "F444W;F090W", "absent": "F999W;F090W", "pair": "F200W;F444W"},
            "NGC-3132": {"nircam-classic": None},  # this target's own: no classic 3-colour
        }
        settings = {"per_target": 1, "method": "lupton", "recipes": overrides}
        # this target's mosaics on the user's own grid (an input's WCS, 120 x 100 pixels), halved
        grid = WCS(fits.getheader(sky[0], "SCI")).celestial.to_header()
        grid["NAXIS1"], grid["NAXIS2"] = 120, 100
        grid.totextfile(tmp_path / "grid.hdr")
        mosaics = {"downscale": 2, "reject_sigma": None, "grids": {"NGC-3132": str(tmp_path / "grid.hdr")}}
        _make_products(instance, ["NGC-3132"], {**run_config, "resources": {
            **run_config["resources"], "composites": {"config": settings}, "mosaics": {"config": mosaics}}})
    made = home.tables.read("mosaics", "NGC-3132")
    assert (made["naxis1"] == 60).all() and (made["naxis2"] == 50).all() and (made["n_rejected"] == 0).all()
    assert not fits.getheader(home.root / made["path"].iloc[0], 0)["REJECT"]
    recipes = home.tables.read("recipes", "NGC-3132").set_index("recipe")
    assert recipes.loc["mine", "rank"] == 1 and recipes.loc["mine", "made"]
    assert recipes.loc["mine", "filters"] == "F090W;F444W"  # put in wavelength order
    assert not recipes.loc["absent", "made"] and "F999W" in recipes.loc["absent", "note"]
    assert not recipes.loc["pair", "made"] and "first 1" in recipes.loc["pair", "note"]
    assert "nircam-classic" not in recipes.index
    composites = home.tables.read("composites", "NGC-3132")
    assert list(composites["recipe"]) == ["mine"] and list(composites["method"]) == ["lupton"]


def test_a_single_filter_target_has_a_mosaic_no_composite_and_a_readable_catalog(emu, tmp_path):
    truth = emu.sky.truth["files"]
    sky = [p for p in sorted(emu.sky.root.rglob("jw02733*_cal.fits")) if truth[p.name]["filter"] == "F090W"]
    home = Home(tmp_path / "home")
    run_config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
    with instance_for_test() as instance:
        _catalogue(sky, tmp_path / "drop", home, instance, run_config)
        _make_products(instance, ["NGC-3132"], run_config)
        assert defs.resolve_job_def("catalog_job").execute_in_process(instance=instance, run_config=run_config).success
    con = connect(home.root)
    assert con.execute("SELECT count(*), min(n_rejected) >= 0 FROM mosaics").fetchone() == (1, True)
    assert con.execute("SELECT count(*) FROM composites").fetchone()[0] == 0
    assert "stretch" in {c[0] for c in con.execute("DESCRIBE composites").fetchall()}
    assert not con.execute("SELECT bool_or(made) FROM recipes").fetchone()[0]


def test_a_band_whose_inputs_cannot_be_coadded_goes_without_and_the_target_keeps_the_rest(emu, tmp_path):
    """One file whose unit cannot be converted stops its band's mosaic only: the target's other
    bands are made, the run succeeds, and what was not made says why, naming the file."""
    from skyassets.cli.runs import latest_metadata

    truth = emu.sky.truth["files"]
    sky = [p for p in sorted(emu.sky.root.rglob("jw02733*_cal.fits")) if truth[p.name]["filter"] in ("F090W", "F444W")]
    odd = next(p for p in sky if truth[p.name]["filter"] == "F444W")
    drop = tmp_path / "odd"
    drop.mkdir()
    with fits.open(odd) as hdul:
        hdul["SCI"].header["BUNIT"] = "DN/s"  # and nothing to convert it with
        for key in ("PHOTMJSR", "PHOTUJA2"):
            hdul["SCI"].header.remove(key, ignore_missing=True)
            hdul[0].header.remove(key, ignore_missing=True)
        hdul.writeto(drop / odd.name, checksum=True)
    home = Home(tmp_path / "home")
    run_config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
    with instance_for_test() as instance:
        _catalogue([drop / odd.name, *[p for p in sky if p != odd]], tmp_path / "drop", home, instance, run_config)
        _make_products(instance, ["NGC-3132"], run_config)
        not_made = latest_metadata(instance, "mosaics", "NGC-3132")["not_made"]
    assert list(home.tables.read("mosaics", "NGC-3132")["filter"]) == ["F090W"]
    (line,) = not_made
    assert line.startswith("NIRCAM/IMAGE F444W: ") and odd.name in line and "BUNIT 'DN/s' differs" in line


def test_a_target_whose_products_run_fails_keeps_every_band_as_it_was(emu, tmp_path):
    """A band that fails for a reason no mosaic can go without (its input gone bad on disk) fails the
    run; the bands made before it in that run are not put in place either, so the products folder and
    the mosaics table still agree, and nothing half made is left behind."""
    truth = emu.sky.truth["files"]
    sky = [p for p in sorted(emu.sky.root.rglob("jw02733*_cal.fits")) if truth[p.name]["filter"] in ("F090W", "F444W")]
    home = Home(tmp_path / "home")
    run_config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
    with instance_for_test() as instance:
        _catalogue(sky, tmp_path / "drop", home, instance, run_config)
        _make_products(instance, ["NGC-3132"], run_config)
        folder = home.target_dir("NGC-3132")
        made = {p.name: p.stat().st_ino for p in folder.iterdir() if p.is_file()}
        assert {"mosaic_nircam_image_f090w.fits", "mosaic_nircam_image_f444w.fits"} <= set(made)
        bad = home.tables.read("target_images", "NGC-3132").query("filter == 'F444W'")["path"].iloc[0]
        home.local(bad).write_bytes(b"")  # emptied on disk after it was catalogued
        coarser = {**run_config, "resources": {**run_config["resources"], "mosaics": {"config": {"downscale": 2}}}}
        run = defs.resolve_job_def("products_job").execute_in_process(  # every band to be made again
            instance=instance, partition_key="NGC-3132", run_config=coarser, raise_on_error=False
        )
    assert not run.success
    assert {p.name: p.stat().st_ino for p in folder.iterdir() if p.is_file()} == made  # F090W not replaced alone
    assert [p.name for p in folder.iterdir() if p.is_dir()] == []


def test_bands_of_a_camera_no_bandpass_table_knows_get_no_composite_and_say_why(emu, tmp_path):
    from skyassets.cli.runs import latest_metadata

    truth = emu.sky.truth["files"]
    own = tmp_path / "own"
    own.mkdir()
    for path in sorted(emu.sky.root.rglob("jw02733*_cal.fits")):
        if truth[path.name]["filter"] in ("F090W", "F444W"):
            with fits.open(path) as hdul:  # one's own camera: the same images, an instrument MAST has not
                hdul[0].header["INSTRUME"] = "CAM"
                hdul.writeto(own / path.name, checksum=True)
    home = Home(tmp_path / "home")
    run_config = {**QUIET, "resources": {"home": {"config": {"root": str(home.root)}}}}
    with instance_for_test() as instance:
        _catalogue(sorted(own.iterdir()), tmp_path / "drop", home, instance, run_config)
        [target] = instance.get_dynamic_partitions("targets")
        _make_products(instance, [target], run_config)
        said = latest_metadata(instance, "composites", target)["composites"]
    assert home.tables.read("mosaics", target)["filter"].nunique() == 2  # the mosaics are made
    assert said.startswith("no recipe: no known wavelength for F090W (CAM/IMAGE), F444W (CAM/IMAGE)"), said
