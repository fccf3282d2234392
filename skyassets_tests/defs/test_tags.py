"""The tags skyassets writes are the ones the installed Dagster reads."""

from dagster import DagsterInstance, Definitions, StaticPartitionsDefinition, asset, define_asset_job

from skyassets.defs.tags import (
    DATA_VERSION,
    FAILURE_REASON,
    MAX_RETRIES,
    PARENT_RUN,
    PARTITION,
    PARTITION_RANGE_END,
    PARTITION_RANGE_START,
    partition_range,
)


def test_the_tags_match_dagsters_own():
    # The one place a private module is read: to notice a rename on a Dagster upgrade.
    from dagster._core.definitions.data_version import DATA_VERSION_TAG
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
        MAX_RETRIES_TAG,
        PARENT_RUN_ID_TAG,
        PARTITION_NAME_TAG,
        RUN_FAILURE_REASON_TAG,
    )

    assert (PARTITION, PARTITION_RANGE_START, PARTITION_RANGE_END, DATA_VERSION, FAILURE_REASON, PARENT_RUN,
            MAX_RETRIES) == (
        PARTITION_NAME_TAG, ASSET_PARTITION_RANGE_START_TAG, ASSET_PARTITION_RANGE_END_TAG, DATA_VERSION_TAG,
        RUN_FAILURE_REASON_TAG, PARENT_RUN_ID_TAG, MAX_RETRIES_TAG,
    )


def test_a_partition_range_run_materialises_exactly_that_range():
    letters = StaticPartitionsDefinition(list("abcde"))

    @asset(partitions_def=letters)
    def letter(context) -> None:
        assert context.partition_key_range.start == "b" and context.partition_key_range.end == "d"

    with DagsterInstance.ephemeral() as instance:
        job = Definitions(assets=[letter], jobs=[define_asset_job("letters")]).resolve_job_def("letters")
        assert job.execute_in_process(instance=instance, tags=partition_range("b", "d")).success
        done = instance.get_materialized_partitions(letter.key)
    assert done == {"b", "c", "d"}

