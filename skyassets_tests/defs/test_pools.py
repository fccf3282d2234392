"""A step Dagster left waiting beside a free pool slot is given it, on the second look."""

from dagster import build_sensor_context, instance_for_test

from skyassets.defs.pools import pool_slots_sensor, stalled_pools


def test_a_step_waiting_beside_a_free_slot_is_given_it_on_the_second_tick():
    with instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("mast_api", 1)
        storage.add_pending_step("mast_api", "run-a", "fetch", should_assign=True)  # holds the one slot
        storage.add_pending_step("mast_api", "run-b", "fetch", should_assign=False)  # waits its turn
        assert stalled_pools(instance) == set()  # waiting for a slot that is taken: as it should
        storage.set_concurrency_slots("archive_b", 1)
        storage.add_pending_step("archive_b", "run-c", "fetch", should_assign=False)  # the slot free: stalled
        assert stalled_pools(instance) == {"archive_b"}

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
