"""Closed-loop evaluation episodes on Ray: one actor per worker, results in job order.

Each actor builds its policies once from the (picklable) factories and keeps its Meta-World
envs between episodes (an env costs ~0.7 s to build; `SimEnv.reset` makes every episode
bit-identical whatever ran before), then plays the jobs it is handed with the same
`wallwm.eval.runner.run_job` the serial runner uses: the same jobs give the same results.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from components.compute.parallel import TASK_ENV
from components.compute.ray_cluster import connect
from wallwm.eval.episode import EpisodeResult, EpisodeSettings
from wallwm.eval.policies.base import PolicyFactory
from wallwm.eval.runner import EpisodeJob, run_job


class _EpisodeWorker:
    def __init__(self, factories: Mapping[str, PolicyFactory], settings: EpisodeSettings):
        self.factories, self.settings = dict(factories), settings
        self.policies: dict[str, Any] = {}

    def run(self, job: EpisodeJob) -> EpisodeResult:
        if job.policy not in self.policies:
            self.policies[job.policy] = self.factories[job.policy]()
        res = run_job(self.policies[job.policy], job, self.settings)
        res.policy = job.policy
        return res

    def warm(self, tasks: list[str], layout_seed: int) -> None:
        from wallwm.data.sources.sim.env import get_env

        for t in tasks:
            get_env(t, layout_seed)


class EvalPool:
    """`workers` Ray actors (one CPU each) that keep their policies and envs between runs:
    `with EvalPool(...) as pool: pool.warm(tasks, layout_seed); pool.run(jobs)`."""

    def __init__(self, factories: Mapping[str, PolicyFactory], settings: EpisodeSettings,
                 workers: int = 2, env: dict[str, str] | None = None):
        if workers < 1:
            raise ValueError(f"EvalPool: workers={workers} must be >= 1 (eval.workers)")
        self.factories, self.settings, self.workers = dict(factories), settings, int(workers)
        self.env = {**TASK_ENV, "OMP_NUM_THREADS": "1", **(env or {})}
        self.actors: list[Any] = []

    def __enter__(self) -> EvalPool:
        connect()
        import ray

        for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM"):
            os.environ.setdefault(k, self.env[k])
        actor = ray.remote(num_cpus=1, runtime_env={"env_vars": self.env})(_EpisodeWorker)
        shared = ray.put(self.factories)
        self.actors = [actor.remote(shared, self.settings) for _ in range(self.workers)]
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []

    def warm(self, tasks: Sequence[str], layout_seed: int) -> None:
        """Start every actor and build its envs of `tasks` (imports, ~0.7 s per env)."""
        import ray

        ray.get([a.warm.remote(list(tasks), int(layout_seed)) for a in self.actors])

    def run(self, jobs: Sequence[EpisodeJob],
            on_done: Callable[[int, EpisodeResult], None] | None = None
            ) -> list[EpisodeResult]:
        """Play `jobs` on the actors, each taking the next job when free; results in order."""
        missing = sorted({j.policy for j in jobs} - set(self.factories))
        if missing:
            raise KeyError(f"jobs name policies {missing} without a factory; have "
                           f"{sorted(self.factories)}")
        if not self.actors:
            raise RuntimeError("EvalPool.run outside its `with` block")
        from ray.util import ActorPool

        out = []
        pool = ActorPool(self.actors)
        for i, res in enumerate(pool.map(lambda a, j: a.run.remote(j), list(jobs))):
            out.append(res)
            if on_done:
                on_done(i + 1, res)
        return out


def run_ray(factories: Mapping[str, PolicyFactory], jobs: Sequence[EpisodeJob],
            settings: EpisodeSettings, workers: int = 2,
            on_done: Callable[[int, EpisodeResult], None] | None = None,
            env: dict[str, str] | None = None) -> list[EpisodeResult]:
    """Play `jobs` on `workers` Ray actors (one CPU each); results in job order."""
    missing = sorted({j.policy for j in jobs} - set(factories))
    if missing:
        raise KeyError(f"jobs name policies {missing} without a factory; have "
                       f"{sorted(factories)}")
    if not jobs:
        return []
    with EvalPool(factories, settings, min(workers, len(jobs)), env) as pool:
        return pool.run(jobs, on_done)


def ray_runner(workers: int) -> Callable[..., list[EpisodeResult]]:
    """A runner for `wallwm.eval.closed_loop.closed_loop(run=...)` on `workers` actors."""

    def run(factories: Mapping[str, PolicyFactory], jobs: Sequence[EpisodeJob],
            settings: EpisodeSettings) -> list[EpisodeResult]:
        return run_ray(factories, jobs, settings, workers=workers)

    return run
