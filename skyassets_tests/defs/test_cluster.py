"""The dask resource: work on a scheduler's worker processes when it names one, here otherwise."""

from __future__ import annotations

import os

import pytest
from distributed import LocalCluster

from skyassets.defs.cluster import DaskResource
from skyassets.defs.resources import default_resources


def _pid_and_square(x: int) -> tuple[int, int]:
    if x < 0:
        raise ValueError(f"negative input {x}")
    return os.getpid(), x * x


def test_without_a_scheduler_work_runs_in_this_process():
    results = DaskResource().map(_pid_and_square, [1, 2, 3])
    assert results == [(os.getpid(), 1), (os.getpid(), 4), (os.getpid(), 9)]


@pytest.mark.slow
def test_a_scheduler_address_sends_work_to_its_worker_processes():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dask = DaskResource(scheduler=cluster.scheduler_address)
        results = dask.map(_pid_and_square, range(8))
        assert [r[1] for r in results] == [x * x for x in range(8)]
        assert os.getpid() not in {r[0] for r in results}
        with pytest.raises(ValueError, match="negative input -1"):
            dask.map(_pid_and_square, [2, -1])


def test_the_environment_names_the_scheduler(monkeypatch):
    monkeypatch.setenv("SKYASSETS_DASK_SCHEDULER", "tcp://scheduler:8786")
    monkeypatch.setenv("SKYASSETS_STORAGE", "s3://bucket/skyassets")
    monkeypatch.setenv("SKYASSETS_STORAGE_ENDPOINT", "http://127.0.0.1:9000")
    resources = default_resources()
    assert resources["dask"].scheduler == "tcp://scheduler:8786"
    home = resources["home"].home
    assert home.remote and home.url("lake/x.parquet") == "s3://bucket/skyassets/lake/x.parquet"
    assert home.endpoint == "http://127.0.0.1:9000"
