"""Tags that Dagster reads from runs and events but whose names its public API does not export.

Declared here once, and checked against the installed Dagster by the test suite, so an upgrade that
renames one fails a test instead of silently losing ranges or data versions.

- A run tagged with a partition key materialises that partition: runs launched through the
  webserver's GraphQL API (``skyassets.cli.launch``) name their partition this way.
- A run tagged with a partition range materialises every partition in that range in one run: the
  command line runs batches of partitions this way (``execute_in_process`` takes one partition key).
- An ``AssetMaterialization`` tagged with a data version sets that partition's data version:
  ``target_groups`` records each changed target's images (``target_images[T]``) this way, because
  ``MaterializeResult(data_version=...)`` only reports the running asset's own partition and
  ``DataVersionsByPartition`` only an observable source asset, which cannot depend on ``target_groups``.
"""

from collections.abc import Mapping

PARTITION = "dagster/partition"
PARTITION_RANGE_START = "dagster/asset_partition_range_start"
PARTITION_RANGE_END = "dagster/asset_partition_range_end"
DATA_VERSION = "dagster/data_version"
# Why a run failed (a step, its start, its process dying), as Dagster tags a failed run.
FAILURE_REASON = "dagster/failure_reason"
# The run a re-execution (from the UI's "Re-execute") was made from; it copies that run's tags.
PARENT_RUN = "dagster/parent_run_id"
# How many times the daemon's run retries re-execute a run whose process died (dagster.yaml's
# ``run_retries`` for runs without it): "0" on the command line's runs, which it re-executes itself.
MAX_RETRIES = "dagster/max_retries"
# skyassets' own: a run the command line launched and whose failures it retries itself.
LAUNCHED_BY, COMMAND_LINE = "skyassets/launched_by", "command line"
# the machine whose command line launched a run: only there can a command tell that its process is gone
HOST = "skyassets/host"


def retried_by_the_command_line(tags: Mapping[str, str]) -> bool:
    """Whether a run's failures are the command line's to retry: it launched the run, which is no
    re-execution from the UI (one copies the tag). The daemon's sensors leave such runs alone, so
    that a ``skyassets demo`` beside ``skyassets dev`` does not have each failure retried twice."""
    return tags.get(LAUNCHED_BY) == COMMAND_LINE and PARENT_RUN not in tags


def partition_range(first: str, last: str) -> dict[str, str]:
    """The run tags that make one run materialise partitions ``first`` to ``last``."""
    return {PARTITION_RANGE_START: first, PARTITION_RANGE_END: last}
