"""eval_episodes_per_s_2w: closed-loop Meta-World episodes/s with 2 Ray workers vs 1, the same
jobs (scripted ceiling and zero floor on all four tasks, new layouts), on a private local Ray.
Each measured run is a whole `run_ray` call, actor start included (what an evaluation pays)."""

from __future__ import annotations

import os
import time

from benchmarks.harness import Figure, ratio_figure

EPISODES = int(os.environ.get("WALLWM_BENCH_EVAL_EPISODES", "2"))  # per task and policy
REPEATS = int(os.environ.get("WALLWM_BENCH_REPEATS", "2"))
TASKS = ["pick-place-v3", "drawer-open-v3", "button-press-topdown-v3", "push-v3"]

FIGURES = {
    "eval_episodes_per_s_2w": {
        "what": "closed-loop episodes/s, 2 Ray workers vs 1 (expert + zero, 4 tasks)",
        "target": 1.7,
    },
}


def _setup():
    from pathlib import Path

    from wallwm.config import load_params
    from wallwm.config.eval_schema import EvalParams
    from wallwm.eval.closed_loop import scripted_factories, settings_from
    from wallwm.eval.runner import plan_jobs

    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    ev = EvalParams(tasks=TASKS, conditions=["new_layout"], episodes=EPISODES,
                    policies=["expert", "zero"])
    jobs = plan_jobs(["expert", "zero"], ev.tasks, ev.conditions, ev.episodes, ev.seed,
                     ev.layout_seed, [p.data.sim.seed], check_layouts=False)
    return scripted_factories(ev), jobs, settings_from(p.data, ev)


def _rates(factories, jobs, settings, workers: int) -> tuple[list[float], float]:
    """Episodes/s of REPEATS runs on one warm pool, and the seconds its start + warm took."""
    from components.compute.ray_eval import EvalPool

    t0 = time.perf_counter()
    with EvalPool(factories, settings, workers) as pool:
        pool.warm(TASKS, jobs[0].unit.layout_seed)
        pool.run(jobs[:workers])  # first episodes: lazy imports inside the episode code
        start = time.perf_counter() - t0
        rates = []
        for _ in range(REPEATS):
            t1 = time.perf_counter()
            pool.run(jobs)
            rates.append(len(jobs) / (time.perf_counter() - t1))
    return rates, start


def run() -> dict[str, Figure]:
    os.environ.pop("RAY_ADDRESS", None)  # a private local Ray with this machine's cores
    from components.compute import connect

    connect()
    factories, jobs, settings = _setup()
    one, start1 = _rates(factories, jobs, settings, 1)
    two, start2 = _rates(factories, jobs, settings, 2)
    fig = ratio_figure(
        "eval_episodes_per_s_2w", two, one,
        what=f"closed-loop episodes/s, 2 Ray workers vs 1 ({len(jobs)} episodes: expert + "
             f"zero, {len(TASKS)} tasks, new layouts, 2 cameras at "
             f"{settings.image_size}px every {settings.render_every} steps)",
        baseline="1 worker", target=FIGURES["eval_episodes_per_s_2w"]["target"],
        notes=f"episodes/s on warm actors: 1 worker {[round(x, 3) for x in one]}, 2 workers "
              f"{[round(x, 3) for x in two]}; pool start + warm-up (actor processes, imports, "
              f"4 envs per actor, first episode) {start1:.1f} s with 1 worker, {start2:.1f} s "
              f"with 2, paid once per evaluation; on 2 cores the driver competes with the 2 "
              f"workers")
    return {fig.key: fig}
