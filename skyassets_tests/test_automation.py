"""Declarative automation keeps the catalogue side fresh after files arrive, with no extra sensors."""

from dagster import AssetKey, AssetMaterialization, evaluate_automation_conditions, instance_for_test

from skyassets.definitions import defs

IMAGES, CATALOG = AssetKey("image_metadata"), AssetKey("catalog")


def test_new_files_are_catalogued_per_observation():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("observations", ["obs-a", "obs-b"])
        first = evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.get_requested_partitions(IMAGES) == set()  # nothing downloaded yet

        instance.report_runless_asset_event(AssetMaterialization("fits_files", partition="obs-a"))
        second = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert second.get_requested_partitions(IMAGES) == {"obs-a"}

        instance.report_runless_asset_event(AssetMaterialization("image_metadata", partition="obs-a"))
        third = evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert third.get_requested_partitions(IMAGES) == set()  # obs-a is done; obs-b has no files


def test_a_missing_observation_does_not_block_the_catalog():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("observations", ["obs-a", "obs-b"])
        first = evaluate_automation_conditions(defs=defs, instance=instance)
        for asset in ("mast_observations", "catalog"):
            instance.report_runless_asset_event(AssetMaterialization(asset))
        second = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert second.get_num_requested(CATALOG) == 0  # up to date
        # obs-a is catalogued; obs-b never arrives (failed, or still proprietary).
        for asset in ("mast_products", "fits_files", "image_metadata"):
            instance.report_runless_asset_event(AssetMaterialization(asset, partition="obs-a"))
        third = evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert third.get_num_requested(CATALOG) == 1
