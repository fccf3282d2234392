"""Automation evaluation time: skyassets' conditions against Dagster's eager() on the same assets.

    .venv/bin/python bench/automation.py                       # 2,000 observations updated at once
    .venv/bin/python bench/automation.py --partitions 500 5000

One evaluation of every asset's automation condition (``evaluate_automation_conditions``, as a tick
of ``automation_sensor`` does it) after ``--partitions`` observations were catalogued and measured
since the last one, on a SQLite instance in a temporary folder: the case where skyassets' memory of
what a run read (``automation.read_latest``) has the most to look up. The materialisations carry
the provenance a run records (the storage id of each dependency's latest when its step started).
The baseline is the same definitions with every asset's condition replaced by ``eager()``; both
evaluate the same instance, in turns, and nothing is requested by either (everything is up to
date). Prints the median of ``--repeat`` evaluations of each, and their ratio.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings

from dagster import (
    AssetKey,
    AssetMaterialization,
    AutomationCondition,
    DagsterInstance,
    evaluate_automation_conditions,
)

from skyassets.definitions import defs

warnings.filterwarnings("ignore")  # beta and preview notices of the evaluation API
logging.getLogger("dagster").setLevel(logging.ERROR)  # its notes on how it fetched timestamps


def _measured(instance: DagsterInstance, keys: list[str]) -> None:
    """Observations catalogued, then measured by runs that read what was catalogued."""
    for key in keys:
        for asset in ("fits_files", "image_metadata"):
            instance.report_runless_asset_event(AssetMaterialization(asset, partition=key))
    read = instance.fetch_materializations(AssetKey("image_metadata"), limit=1).records[0].storage_id
    tags = {"dagster/code_version": "1", "dagster/input_event_pointer/image_metadata": str(read)}
    for key in keys:
        for asset in ("image_quality", "source_catalogs"):
            instance.report_runless_asset_event(AssetMaterialization(asset, partition=key, tags=tags))
    for asset in ("target_groups", "catalog", "search_index"):  # the tables, brought up to date after
        instance.report_runless_asset_event(AssetMaterialization(asset))


def _timed(definitions, instance: DagsterInstance, cursor: str | None) -> tuple[float, int]:
    start = time.perf_counter()
    result = evaluate_automation_conditions(defs=definitions, instance=instance, cursor=cursor)
    return time.perf_counter() - start, result.total_requested


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, nargs="+", default=[2000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    eager = defs.map_resolved_asset_specs(
        func=lambda spec: spec.replace_attributes(automation_condition=AutomationCondition.eager())
        if spec.automation_condition is not None else spec
    )
    print("| observations updated | skyassets (s) | eager() (s) | skyassets / eager() |")
    print("|---|---|---|---|")
    for count in args.partitions:
        with tempfile.TemporaryDirectory() as home:
            instance = DagsterInstance.local_temp(home)
            keys = [f"obs-{i:06d}" for i in range(count)]
            instance.add_dynamic_partitions("observations", keys)
            before = {name: evaluate_automation_conditions(defs=d, instance=instance).cursor
                      for name, d in (("skyassets", defs), ("eager", eager))}
            _measured(instance, keys)
            times: dict[str, list[float]] = {"skyassets": [], "eager": []}
            for _ in range(args.repeat):
                for name, definitions in (("skyassets", defs), ("eager", eager)):
                    seconds, requested = _timed(definitions, instance, before[name])
                    assert requested == 0, f"{name} requested {requested} runs of up-to-date assets"
                    times[name].append(seconds)
            ours, theirs = (statistics.median(times[n]) for n in ("skyassets", "eager"))
            print(f"| {count:,} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f}× |")


if __name__ == "__main__":
    main()
