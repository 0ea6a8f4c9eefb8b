"""A whole closed-loop evaluation from the parameters: jobs, episodes, videos, report.

`closed_loop(...)` is what a flow calls: it plans the jobs of `eval.*` (proving the units
disjoint from the builds), runs them with the runner it is given (`run_serial` here, the Ray
runner of components/compute/ray_eval.py in a flow), writes the rollout videos and the
report into `out_dir`. Expert and zero policies are added from `eval.policies`; model
policies come in `factories` (a flow builds them from a checkpoint), under any names
("model", or "event" and "chunk" for the ablation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wallwm.data.sources.sim.env import get_env
from wallwm.eval.episode import EpisodeResult, EpisodeSettings
from wallwm.eval.policies.base import PolicyFactory
from wallwm.eval.policies.scripted import ExpertFactory, ZeroFactory
from wallwm.eval.report import SHORT, write_report
from wallwm.eval.runner import EpisodeJob, plan_jobs, run_serial
from wallwm.eval.seeds import sim_build_seeds
from wallwm.eval.spec import SIM_ACTION_DIM, EnvSpec
from wallwm.eval.video import episode_video

Runner = Callable[[Mapping[str, PolicyFactory], Sequence[EpisodeJob], EpisodeSettings],
                  list[EpisodeResult]]


def settings_from(data: Any, ev: Any) -> EpisodeSettings:
    """Episode settings from `data` (DataParams: the sim's cameras, size, rate) and `ev`
    (EvalParams)."""
    return EpisodeSettings(tuple(data.sim.cameras), int(data.sim.image_size),
                           int(data.sim.render_every), int(ev.max_steps),
                           bool(ev.stop_when_done), int(ev.recovery_min_steps))


def env_spec(data: Any, ev: Any) -> EnvSpec:
    """The environment's interface for the model check (control_dt read from Meta-World)."""
    return EnvSpec.from_sim_params(data.sim, float(get_env(ev.tasks[0], ev.layout_seed).env.dt))


def model_factory(model: Any, tokenizer: Any, contract: Any, data: Any, ev: Any, *,
                  name: str = "model", mode: str | None = None) -> PolicyFactory:
    """A `ModelPolicyFactory` with the eval.* settings (mode, receding horizon, planner
    fallback, denoising steps, after-plan behaviour); refuses a model that does not fit."""
    from wallwm.eval.policies.model import ModelPolicyFactory

    return ModelPolicyFactory.from_model(
        model, tokenizer, contract, env_spec(data, ev), name=name, mode=mode or ev.mode,
        execute_frames=int(ev.execute_frames), event_max_frames=int(ev.event_max_frames),
        steps=ev.denoise_steps, after_plan=ev.after_plan)


def scripted_factories(ev: Any) -> dict[str, PolicyFactory]:
    out: dict[str, PolicyFactory] = {}
    if "expert" in ev.policies:
        out["expert"] = ExpertFactory()
    if "zero" in ev.policies:
        out["zero"] = ZeroFactory(SIM_ACTION_DIM, int(ev.execute_frames))
    return out


def closed_loop(data: Any, ev: Any, out_dir: Path | str,
                factories: Mapping[str, PolicyFactory] | None = None, *,
                build_seeds: Iterable[int] | None = None, run: Runner = run_serial,
                title: str = "Closed-loop evaluation (Meta-World)",
                meta: dict[str, Any] | None = None) -> tuple[list[EpisodeResult], dict]:
    """Play every policy on every eval unit and condition; write videos and the report.

    `build_seeds`: the sim base seeds of every build the models trained on (default: those of
    `data.sources`); no eval layout may be one of their layouts."""
    out = Path(out_dir)
    seeds = list(build_seeds) if build_seeds is not None else sim_build_seeds(
        data.sources, data.sim.seed)
    seeds = sorted(set(seeds) | {int(data.sim.seed)})
    facs = {**dict(factories or {}), **scripted_factories(ev)}
    if "model" in ev.policies and not factories:
        raise ValueError("eval.policies includes 'model' but no model policy factory was "
                         "given; pass factories={'model': ModelPolicyFactory...} or drop "
                         "'model' from eval.policies")
    names = [n for n in facs if n not in ("expert", "zero")] + [
        n for n in ("expert", "zero") if n in facs]
    jobs = plan_jobs(names, ev.tasks, ev.conditions, ev.episodes, ev.seed, ev.layout_seed,
                     seeds, videos=ev.videos)
    settings = settings_from(data, ev)
    results = run(facs, jobs, settings)
    fps = 1.0 / (float(get_env(ev.tasks[0], ev.layout_seed).env.dt) * settings.render_every)
    videos = []
    for r in results:
        if r.video:
            name = f"video_{r.policy}_{r.condition}_{SHORT.get(r.task, r.task)}_{r.index}.mp4"
            episode_video(out / name, r.video, settings.cameras, fps,
                          f"{r.policy} {r.condition} {'ok' if r.success else 'fail'}",
                          ev.video_scale)
            videos.append(name)
            r.video = None
    info = {"tasks": list(ev.tasks), "conditions": list(ev.conditions),
            "episodes_per_cell": ev.episodes, "eval_seed": ev.seed,
            "layout_seed": ev.layout_seed, "build_seeds": seeds,
            "execute_frames": ev.execute_frames, "mode": ev.mode, "max_steps": ev.max_steps,
            **(meta or {})}
    paths = write_report(out, results, title=title, meta=info, videos=videos)
    return results, {**paths, "videos": [out / v for v in videos]}
