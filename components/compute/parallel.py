"""Run a function over many items on Ray, results back in input order, memory bounded.

At most `workers` tasks are in flight (each takes one CPU), and results wait in a reorder buffer
only until the items before them are done, so a build of any size holds about `workers`
episodes in memory at once. With `workers=0` the items run in this process (debugging, tests).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from components.compute.ray_cluster import connect

T = TypeVar("T")
R = TypeVar("R")

# Environment every task needs wherever it runs (MuJoCo renders without a GPU through OSMesa).
TASK_ENV = {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "HF_HUB_OFFLINE": "1"}


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    env: dict[str, str] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> Iterator[R]:
    """Yield fn(item) for each item, in order, running up to `workers` at a time on Ray."""
    items = list(items)
    if workers <= 0:
        for i, item in enumerate(items):
            yield fn(item)
            if on_done:
                on_done(i + 1)
        return
    connect()
    import ray

    task_env = {**TASK_ENV, **(env or {})}
    for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM"):
        os.environ.setdefault(k, task_env[k])
    remote = ray.remote(num_cpus=1, max_retries=1, runtime_env={"env_vars": task_env})(fn)
    pending: dict[Any, int] = {}
    done: dict[int, Any] = {}
    next_submit = next_yield = finished = 0
    while next_yield < len(items):
        while next_submit < len(items) and len(pending) + len(done) < max(workers, 1) * 2 and (
            len(pending) < workers
        ):
            pending[remote.remote(items[next_submit])] = next_submit
            next_submit += 1
        if next_yield not in done:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                done[pending.pop(ref)] = ref
                finished += 1
                if on_done:
                    on_done(finished)
            continue
        yield ray.get(done.pop(next_yield))
        next_yield += 1
