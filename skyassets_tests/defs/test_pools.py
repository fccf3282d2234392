"""A step Dagster left waiting beside a free pool slot is given it, on the second look."""

from dagster import DagsterRun, DagsterRunStatus, build_sensor_context, instance_for_test

from skyassets.defs.pools import pool_slots_sensor, stalled_steps


def _running(instance, run_id: str) -> None:
    instance.add_run(DagsterRun(job_name="observation_job", run_id=run_id, status=DagsterRunStatus.STARTED))


def test_a_step_waiting_beside_a_free_slot_is_given_it_on_the_second_tick():
    with instance_for_test() as instance:
        storage = instance.event_log_storage
        for run_id in ("run-a", "run-b", "run-c"):
            _running(instance, run_id)
        storage.set_concurrency_slots("mast_api", 1)
        storage.add_pending_step("mast_api", "run-a", "fetch", should_assign=True)  # holds the one slot
        storage.add_pending_step("mast_api", "run-b", "fetch", should_assign=False)  # waits its turn
        assert stalled_steps(instance) == {}  # waiting for a slot that is taken: as it should
        storage.set_concurrency_slots("archive_b", 1)
        storage.add_pending_step("archive_b", "run-c", "fetch", should_assign=False)  # the slot free: stalled
        assert stalled_steps(instance) == {"archive_b": ("run-c", "fetch")}

        first = build_sensor_context(instance=instance)
        assert "looked at again next tick" in pool_slots_sensor(first).skip_message
        assert storage.get_concurrency_info("archive_b").pending_steps[0].assigned_timestamp is None
        second = build_sensor_context(instance=instance, cursor=first.cursor)
        given = pool_slots_sensor(second).skip_message
        assert given == "gave a free slot of archive_b to a step left waiting beside it"
        assert storage.get_concurrency_info("archive_b").pending_steps[0].assigned_timestamp is not None
        assert storage.get_concurrency_info("mast_api").assigned_step_count == 1  # the taken pool untouched
        third = build_sensor_context(instance=instance, cursor=second.cursor)
        assert pool_slots_sensor(third).skip_message == "no step waits beside a free pool slot"


def test_a_step_first_in_line_of_a_run_that_ended_is_taken_out_and_the_next_given_the_slot():
    with instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("mast_api", 1)
        storage.add_pending_step("mast_api", "gone", "fetch", should_assign=False)  # its process died waiting
        _running(instance, "alive")
        storage.add_pending_step("mast_api", "alive", "fetch", should_assign=False)
        cursor = None
        for _ in range(4):  # seen, taken out; then the next seen, then given the slot
            context = build_sensor_context(instance=instance, cursor=cursor)
            pool_slots_sensor(context)
            cursor = context.cursor
        [step] = storage.get_concurrency_info("mast_api").pending_steps
        assert step.run_id == "alive" and step.assigned_timestamp is not None


def test_a_slot_is_given_only_to_the_step_seen_waiting_on_both_looks():
    with instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("mast_api", 1)
        _running(instance, "late")
        storage.add_pending_step("mast_api", "late", "fetch", should_assign=False)
        seen = build_sensor_context(instance=instance, cursor='{"mast_api": ["earlier", "fetch"]}')
        assert "looked at again" in pool_slots_sensor(seen).skip_message  # another step than last time
        assert storage.get_concurrency_info("mast_api").assigned_step_count == 0
