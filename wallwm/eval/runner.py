"""The episodes of an evaluation and the serial runner (tests, debugging, one process).

`plan_jobs` lays out every (policy, condition, unit) in one fixed order and proves the units
disjoint from the builds (wallwm/eval/seeds.py); `run_serial` plays them in this process with
one policy per factory, built once. The Ray runner (components/compute/ray_eval.py) plays the
same jobs with the same `run_job`, so for the same jobs both give the same results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wallwm.eval.episode import EpisodeResult, EpisodeSettings, run_episode
from wallwm.eval.policies.base import PolicyFactory
from wallwm.eval.seeds import EvalUnit, assert_disjoint, make_units


@dataclass(frozen=True)
class EpisodeJob:
    policy: str  # a key of the factories mapping
    unit: EvalUnit
    condition: str
    video: bool = False


def plan_jobs(policies: Sequence[str], tasks: Sequence[str], conditions: Sequence[str],
              episodes: int, base_seed: int, layout_seed: int, build_seeds: Iterable[int],
              videos: int = 0, check_layouts: bool = True) -> list[EpisodeJob]:
    """Every policy x condition x unit, policies outermost. The first `videos` units of each
    (policy, condition), taken one per task in turn, are recorded as videos."""
    units = make_units(tasks, episodes, base_seed, layout_seed)
    assert_disjoint(units, build_seeds, check_layouts=check_layouts)
    by_task = {t: [u for u in units if u.task == t] for t in tasks}
    filmed = {(t, i) for n in range(videos) for t, i in
              [(tasks[n % len(tasks)], n // len(tasks))] if i < episodes}
    return [EpisodeJob(p, u, c, (u.task, u.index) in filmed)
            for p in policies for c in conditions for t in tasks for u in by_task[t]]


def run_job(policy: Any, job: EpisodeJob, settings: EpisodeSettings) -> EpisodeResult:
    return run_episode(policy, job.unit, job.condition, settings, video=job.video)


def run_serial(factories: Mapping[str, PolicyFactory], jobs: Sequence[EpisodeJob],
               settings: EpisodeSettings,
               on_done: Callable[[int, EpisodeResult], None] | None = None
               ) -> list[EpisodeResult]:
    """Play `jobs` in order in this process; results in job order."""
    missing = sorted({j.policy for j in jobs} - set(factories))
    if missing:
        raise KeyError(f"jobs name policies {missing} without a factory; have "
                       f"{sorted(factories)}")
    policies: dict[str, Any] = {}
    out = []
    for i, job in enumerate(jobs):
        if job.policy not in policies:
            policies[job.policy] = factories[job.policy]()
        res = run_job(policies[job.policy], job, settings)
        res.policy = job.policy
        out.append(res)
        if on_done:
            on_done(i + 1, res)
    return out
