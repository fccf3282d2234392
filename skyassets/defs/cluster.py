"""The Dask cluster heavy steps (image quality, mosaics) hand their work to.

``scheduler`` is a Dask scheduler's address (``tcp://scheduler:8786``, ``SKYASSETS_DASK_SCHEDULER``):
the assets then submit one task per image (quality) or per mosaic block (mosaics) to it and wait for
the answers, so a run's step process stays small while the cluster's workers do the work. Empty:
the work runs in the step's own process, as without Dask. The workers must reach the same files
(the same skyassets home on a shared volume, or the home on S3) and have skyassets installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import TypeVar

from dagster import ConfigurableResource

R = TypeVar("R")


class DaskResource(ConfigurableResource):
    """Where heavy steps run: a Dask scheduler's address, or empty for the step's own process."""

    scheduler: str = ""
    timeout: float = 60.0  # seconds to wait for the scheduler to answer

    @contextmanager
    def executor(self) -> Iterator[Executor | None]:
        """A ``concurrent.futures`` executor on the cluster for the block, or None without a scheduler."""
        if not self.scheduler:
            yield None
            return
        from distributed import Client

        with Client(self.scheduler, timeout=self.timeout, set_as_default=False) as client:
            yield client.get_executor()

    def map(self, function: Callable[..., R], *iterables: Iterable) -> list[R]:
        """``function`` over the items, on the cluster (each a task) or here; results in order.

        A task that fails raises its error here, as it would inline."""
        with self.executor() as pool:
            if pool is None:
                return list(map(function, *iterables))
            return list(pool.map(function, *iterables))
