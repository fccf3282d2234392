"""Partitions: one per MAST observation, keyed by its validated ``obs_id``; one per target (``target_groups``)."""

from __future__ import annotations

from collections.abc import Iterable

from dagster import AddDynamicPartitionsRequest, BackfillPolicy, DynamicPartitionsDefinition

from skyassets.lake.names import validate_obs_id

observations_partitions = DynamicPartitionsDefinition(name="observations")
targets_partitions = DynamicPartitionsDefinition(name="targets")

# A backfill of thousands of observations runs as tens of runs, not thousands of processes.
observation_backfill_policy = BackfillPolicy.multi_run(max_partitions_per_run=25)


def add_observations_request(obs_ids: Iterable[str]) -> AddDynamicPartitionsRequest:
    """A request adding partitions for ``obs_ids``; every key is validated first (raises on a bad one)."""
    return observations_partitions.build_add_request([validate_obs_id(key) for key in obs_ids])
