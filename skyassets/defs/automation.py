"""Automation conditions: when the assets downstream of new files bring themselves up to date.

Dagster's ``eager()`` remembers a dependency's update only until the asset is next requested or
updated, and when both happen on the same evaluation the reset wins. An unpartitioned asset over
per-observation partitions (target_groups, catalog) is often requested on the same tick as a
partition it reads from (image_quality of a new observation), runs alongside it, and finishes on
the tick that partition does: the update would be forgotten, and the table stay without it until
the next observation arrives. Here a request resets the memory only when no dependency updated on
that same tick, and an asset's own update never does: the worst case is one extra run that finds
nothing new, never a lost update.
"""

from __future__ import annotations

import os

from dagster import AssetSelection, AutomationCondition, AutomationConditionSensorDefinition, DefaultSensorStatus

__all__ = ["automation_sensor", "catch_up", "data_changed", "follows"]


def _since_requested(trigger: AutomationCondition) -> AutomationCondition:
    """``trigger`` has been true on some evaluation since the last request that came after it."""
    handled = (AutomationCondition.newly_requested() & ~trigger) | AutomationCondition.initial_evaluation()
    return trigger.since(handled.with_label("requested after it"))


def catch_up() -> AutomationCondition:
    """Like ``eager()`` without waiting for every dependency: a missing or failed observation must
    not hold back the tables that gather all of them."""
    updated = AutomationCondition.newly_missing() | AutomationCondition.any_deps_updated()
    return (
        _since_requested(updated)
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("catch up with updated dependencies")


def data_changed() -> AutomationCondition:
    """A target's products: remade when the images they are made from change (a new data version of
    target_images[target]), made when the target appears or when the condition is first evaluated
    and they are missing. A re-measured score that keeps the same images remakes nothing, and a
    failed run is not retried until the images change again."""
    changed = AutomationCondition.newly_missing() | AutomationCondition.any_deps_match(
        AutomationCondition.data_version_changed()
    )
    return (
        (_since_requested(changed) | (AutomationCondition.missing() & AutomationCondition.initial_evaluation()))
        & ~AutomationCondition.in_progress()
    ).with_label("target images changed")


def follows() -> AutomationCondition:
    """``eager()``, and also made for the partitions that have their inputs but not this asset when
    the condition is first evaluated: ``eager()`` alone never makes them. Files catalogued before
    the daemon first ran (``skyassets ingest --catalog-only``) are measured; a target's derived
    products (composites after mosaics, tiles after both) are made for an asset added to a home
    that already has products."""
    return AutomationCondition.eager() | (
        AutomationCondition.missing()
        & AutomationCondition.initial_evaluation()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    )


def _interval() -> int:
    """``SKYASSETS_AUTOMATION_INTERVAL``: whole seconds, at least 1 (Dagster's 30 s by default)."""
    text = os.environ.get("SKYASSETS_AUTOMATION_INTERVAL", "").strip() or "30"
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"SKYASSETS_AUTOMATION_INTERVAL must be a whole number of seconds (at least 1), not {text!r}")
    return int(text)


# Dagster's implicit default_automation_condition_sensor starts stopped; this one runs as soon as the
# daemon does, so quality, targets, products and the catalog follow new files without a toggle.
automation_sensor = AutomationConditionSensorDefinition(
    "automation_sensor",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    # shorter where products should follow files within seconds
    minimum_interval_seconds=_interval(),
    description="Evaluates every asset's automation condition: quality, target groups, products and the catalog.",
)
