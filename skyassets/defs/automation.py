"""Automation conditions: when the assets downstream of new files bring themselves up to date.

Dagster's ``eager()`` remembers a dependency's update only until the asset is next requested or
updated, and when both happen on the same evaluation the reset wins. Two updates were lost that
way: a table over every observation (target_groups, catalog) requested on the tick a partition it
reads (image_quality of a new observation) is, finishing on the tick that partition does; and a
file landed into an observation while its quality run was measuring the files before it. Restarting
the daemon after runs it did not launch (``skyassets demo``) must, on the other hand, remake
nothing those runs brought up to date.

Here an update is handled by a request that came after it, or by a materialisation whose run read
it: each materialisation records the storage id of every dependency's latest materialisation when
its step started (Dagster's data provenance; an observation, for a dependency only observed), and
a dependency with a newer one in the partitions it maps to was not read. A materialisation
reported outside a run has no provenance and counts as up to date, as ``eager()`` counts it. The
worst case is one extra run that finds nothing new, never a lost update.
"""

from __future__ import annotations

import warnings

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    AutomationContext,
    AutomationResult,
    BetaWarning,
    DagsterInstance,
    DataProvenance,
    DefaultSensorStatus,
    EventLogRecord,
    IdentityPartitionMapping,
)

from skyassets.settings import env_number

__all__ = ["automation_interval", "automation_sensor", "catch_up", "data_changed", "follows", "read_latest"]


class _ReadLatest(AutomationCondition):
    """The partitions whose latest materialisation read every dependency's latest."""

    @property
    def name(self) -> str:  # what the UI's evaluation tree shows
        return "read_latest"

    @property
    def description(self) -> str:
        return "its latest run read every dependency's latest update"

    def evaluate(self, context: AutomationContext) -> AutomationResult:
        candidates = context.candidate_subset
        if candidates.is_empty:
            return AutomationResult(context, candidates)
        instance = context.asset_graph_view.instance
        keys = sorted(candidates.expensively_compute_partition_keys()) if candidates.is_partitioned else [None]
        provenance = {
            key: DataProvenance.from_tags(record.asset_materialization.tags or {})
            for key, record in _latest(instance, context.key, keys).items()
        }
        # reported outside a run, with no provenance: up to date, as eager() counts it
        current = {key for key, made in provenance.items() if made is None}
        read = {key: made.input_storage_ids for key, made in provenance.items() if made is not None}
        for dep in context.asset_graph.get(context.key).parent_keys:
            read = {key: pointers for key, pointers in read.items() if dep in pointers}
            for key in _newer(context, dep, read):
                del read[key]
        current |= set(read)
        if not candidates.is_partitioned:
            return AutomationResult(context, candidates if current else context.get_empty_subset())
        return AutomationResult(context, candidates.compute_intersection_with_partition_keys(current))


def _newer(context: AutomationContext, dep: AssetKey, read: dict[str | None, dict[AssetKey, int | None]]) -> set:
    """Of the partitions in ``read`` (each with the storage ids its materialisation read), those
    whose partitions of ``dep`` have a materialisation newer than the one read."""
    instance = context.asset_graph_view.instance
    pointer = {key: pointers[dep] or 0 for key, pointers in read.items()}  # 0: the dependency was not made yet
    mapping = context.asset_graph.get_partition_mapping(context.key, dep)
    node = context.asset_graph.get(dep)
    observed = node.is_observable and not node.is_materializable  # a run reads its latest observation
    if not context.candidate_subset.is_partitioned or node.partitions_def is None:
        newest = _latest(instance, dep, [None], observed=observed).get(None)  # over all partitions, or its only one
        return {key for key in read if newest is not None and newest.storage_id > pointer[key]}
    if isinstance(mapping, IdentityPartitionMapping):  # each partition reads the same one of the dependency
        since = _latest(instance, dep, sorted(read), after=min(pointer.values(), default=0), observed=observed)
        return {key for key, record in since.items() if record.storage_id > pointer[key]}
    return set(read)  # other mappings (none here): not known to have read it, so made again at worst


_PAGE = 500  # partition keys per query, and records per page


def _latest(
    instance: DagsterInstance, key: AssetKey, partitions: list[str | None], after: int = 0, observed: bool = False
) -> dict[str | None, EventLogRecord]:
    """The latest materialisation (observation, if ``observed``), after storage id ``after``, of each
    of ``key``'s ``partitions``; ``[None]`` for the asset's latest over all its partitions. A few
    queries for many partitions."""
    fetch = instance.fetch_observations if observed else instance.fetch_materializations
    found: dict[str | None, EventLogRecord] = {}
    for start in range(0, len(partitions), _PAGE):
        chunk = partitions[start:start + _PAGE]
        wanted = None if chunk == [None] else chunk
        cursor = None
        while True:
            page = fetch(
                AssetRecordsFilter(asset_key=key, asset_partitions=wanted, after_storage_id=after or None),
                limit=_PAGE, cursor=cursor,
            )
            for record in page.records:  # newest first
                found.setdefault(None if wanted is None else record.partition_key, record)
            if not page.has_more or all(partition in found for partition in chunk):
                break
            cursor = page.cursor
    return found


def read_latest() -> AutomationCondition:
    """True where the asset's latest materialisation read every dependency's latest update."""
    return _ReadLatest()


def _since_handled(trigger: AutomationCondition) -> AutomationCondition:
    """``trigger`` has been true on some evaluation since it was handled: by a request that came
    after it, or by a materialisation that read every dependency's latest update."""
    handled = (
        (AutomationCondition.newly_requested() & ~trigger)
        | (AutomationCondition.newly_updated() & read_latest())
        | AutomationCondition.initial_evaluation()
    )
    return trigger.since(handled.with_label("handled since"))


# How long a table over every observation waits for partitions in progress, while more keep coming.
CATCH_UP_CRON = "*/10 * * * *"


def catch_up() -> AutomationCondition:
    """Like ``eager()`` without waiting for every dependency: a missing or failed observation must
    not hold back the tables that gather all of them. It waits for the partitions in progress, so
    that one run takes a batch of observations in; while files keep arriving and some observation
    is always being measured, it runs anyway once a ten-minute mark has passed since its last
    request, so the catalogue stays at most that far behind."""
    updated = AutomationCondition.newly_missing() | AutomationCondition.any_deps_updated()
    waited = AutomationCondition.cron_tick_passed(CATCH_UP_CRON).since(
        AutomationCondition.newly_requested() | AutomationCondition.initial_evaluation()
    ).with_label("a ten-minute mark passed since its last request")
    return (
        _since_handled(updated)
        & (~AutomationCondition.any_deps_in_progress() | waited)
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
        (_since_handled(changed) | (AutomationCondition.missing() & AutomationCondition.initial_evaluation()))
        & ~AutomationCondition.in_progress()
    ).with_label("target images changed")


def follows() -> AutomationCondition:
    """``eager()`` with the memory above, and also made for the partitions that have their inputs
    but not this asset when the condition is first evaluated: ``eager()`` alone never makes them.
    Files catalogued before the daemon first ran (``skyassets ingest --catalog-only``) are
    measured; a target's derived products (composites after mosaics, tiles after both) are made
    for an asset added to a home that already has products."""
    waits = (
        ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    )
    updated = _since_handled(AutomationCondition.newly_missing() | AutomationCondition.any_deps_updated())
    first = AutomationCondition.missing() & AutomationCondition.initial_evaluation()
    return ((updated | first) & waits).with_label("follows its dependencies")


def automation_interval() -> int:
    """``SKYASSETS_AUTOMATION_INTERVAL``: whole seconds, at least 1 (Dagster's 30 s by default)."""
    return env_number("SKYASSETS_AUTOMATION_INTERVAL", 30, minimum=1)


# Evaluating conditions in the code server is marked beta; the memory of what a run read needs it (it
# is Python of this package), and the warning at every start is nothing a user can act on.
warnings.filterwarnings("ignore", message="Parameter `use_user_code_server`", category=BetaWarning)
# Dagster's implicit default_automation_condition_sensor starts stopped; this one runs as soon as the
# daemon does, so quality, targets, products and the catalog follow new files without a toggle.
automation_sensor = AutomationConditionSensorDefinition(
    "automation_sensor",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    # shorter where products should follow files within seconds
    minimum_interval_seconds=automation_interval(),
    use_user_code_server=True,
    description="Evaluates every asset's automation condition: quality, target groups, products and the catalog.",
)
