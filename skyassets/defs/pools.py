"""Pools: a step that Dagster left waiting beside a free slot of its pool is given the slot.

Dagster assigns a pool's slot to the next waiting step as the slot is freed. On SQLite storage a
step that queues just as the slot is freed can miss both that assignment and its own check for a
free slot, and then waits for ever (its run process polling without a pause). Two looks some time
apart that both see the same step first in line while a slot is free cannot be that passing
moment, and the slot is then assigned as Dagster would have assigned it. Steps in line whose runs
have ended (their processes died waiting) are first taken out of the line, so that the slot never
goes to one of them.
"""

from __future__ import annotations

import json
from typing import Any

from dagster import DagsterInstance, DefaultSensorStatus, RunsFilter, SensorEvaluationContext, SkipReason, sensor

__all__ = ["give_free_slots", "pool_slots_sensor", "stalled_steps"]


def _first_waiting(info: Any) -> tuple[str, str] | None:
    """The (run id, step key) Dagster would give a free slot of the pool next, if a slot is free."""
    waiting = [step for step in info.pending_steps if step.assigned_timestamp is None]
    if not waiting or info.assigned_step_count >= info.slot_count or len(info.claimed_slots) >= info.slot_count:
        return None
    first = min(waiting, key=lambda step: (-(step.priority or 0), step.enqueued_timestamp))
    return first.run_id, first.step_key


def stalled_steps(instance: DagsterInstance) -> dict[str, tuple[str, str]]:
    """Per pool with a free slot and a step waiting for one, that step (run id, step key)."""
    storage = instance.event_log_storage
    stalled = {}
    for pool in storage.get_concurrency_keys():
        if (first := _first_waiting(storage.get_concurrency_info(pool))) is not None:
            stalled[pool] = first
    return stalled


def give_free_slots(
    instance: DagsterInstance, seen_before: dict[str, tuple[str, str]]
) -> tuple[set[str], dict[str, tuple[str, str]]]:
    """Give a free slot to the step first in line of each pool where it was first in line beside a
    free slot at the last look too (``seen_before``), looked at once more just before; the pools
    given a slot, and the stalled steps to compare with at the next look."""
    storage = instance.event_log_storage
    now = stalled_steps(instance)
    given, acted = set(), set()
    for pool, step in now.items():
        if tuple(seen_before.get(pool) or ()) != step:
            continue
        waiting = {s.run_id for s in storage.get_concurrency_info(pool).pending_steps if s.assigned_timestamp is None}
        runs = {run.run_id: run for run in instance.get_runs(RunsFilter(run_ids=sorted(waiting)))}
        ended = sorted(r for r in waiting if r not in runs or runs[r].is_finished)
        if ended:  # left in line by runs that died waiting: out of the line first, looked at again next time
            for run_id in ended:
                storage.free_concurrency_slots_for_run(run_id)
            acted.add(pool)
        elif _first_waiting(storage.get_concurrency_info(pool)) == step:
            storage.assign_pending_steps([pool])
            given.add(pool)
            acted.add(pool)
    return given, {pool: step for pool, step in now.items() if pool not in acted}


@sensor(
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Gives a free pool slot to a step that Dagster left waiting beside it (seen on two ticks).",
)
def pool_slots_sensor(context: SensorEvaluationContext) -> SkipReason:
    seen_before = {pool: tuple(step) for pool, step in json.loads(context.cursor or "{}").items()}
    given, stalled = give_free_slots(context.instance, seen_before)
    context.update_cursor(json.dumps(stalled))
    if given:
        said = f"gave a free slot of {', '.join(sorted(given))} to a step left waiting beside it"
        context.log.warning(said)
        return SkipReason(said)
    return SkipReason("no step waits beside a free pool slot" if not stalled else
                      f"a step waits beside a free slot of {', '.join(sorted(stalled))}: looked at again next tick")
