"""Pools: a step that Dagster left waiting beside a free slot of its pool is given the slot.

Dagster assigns a pool's slot to the next waiting step as the slot is freed. On SQLite storage a
step that queues just as the slot is freed can miss both that assignment and its own check for a
free slot, and then waits for ever (its run process polling without a pause). Two looks some time
apart that both see a step waiting while a slot is free cannot be that passing moment, and the slot
is then assigned as Dagster would have assigned it.
"""

from __future__ import annotations

import json

from dagster import DagsterInstance, DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

__all__ = ["give_free_slots", "pool_slots_sensor", "stalled_pools"]


def stalled_pools(instance: DagsterInstance) -> set[str]:
    """The pools with a step waiting to be assigned a slot while one of their slots is free."""
    storage = instance.event_log_storage
    stalled = set()
    for pool in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(pool)
        if info.pending_step_count and info.assigned_step_count < info.slot_count:
            stalled.add(pool)
    return stalled


def give_free_slots(instance: DagsterInstance, seen_before: set[str]) -> tuple[set[str], set[str]]:
    """Assign a free slot to the first waiting step of each pool stalled now and at the last look
    (``seen_before``); the pools given a slot, and those stalled for the first time (the next look's
    ``seen_before``)."""
    now = stalled_pools(instance)
    given = now & seen_before
    if given:
        instance.event_log_storage.assign_pending_steps(sorted(given))
    return given, now - given


@sensor(
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Gives a free pool slot to a step that Dagster left waiting beside it (seen on two ticks).",
)
def pool_slots_sensor(context: SensorEvaluationContext) -> SkipReason:
    seen_before = set(json.loads(context.cursor)) if context.cursor else set()
    given, stalled = give_free_slots(context.instance, seen_before)
    context.update_cursor(json.dumps(sorted(stalled)))
    if given:
        context.log.warning(f"gave a free slot of {', '.join(sorted(given))} to a step left waiting beside it")
        return SkipReason(f"gave a free slot of {', '.join(sorted(given))} to a step left waiting beside it")
    return SkipReason("no step waits beside a free pool slot" if not stalled else
                      f"a step waits beside a free slot of {', '.join(sorted(stalled))}: looked at again next tick")
