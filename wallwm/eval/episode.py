"""One closed-loop episode: reset on an eval unit, observe, act, split, step, judge.

The loop keeps the sim source's order of things at every control step (rollout.py): a due
disturbance fires first; at a frame boundary the frame is recorded (here: rendered for the
policy); the command is chosen; a disturbance's grip override applies; the env steps with
contacts read at every substep; then the step is judged (wallwm/eval/progress.py). A frame
policy is asked for actions only when the frames of its last chunk are used up; each frame
action is split into `render_every` commands (wallwm/eval/actions.py).

Verdict: Meta-World's own `info["success"]` at any control step (`success`); also reported:
the flag after the last step (`success_end`), the control steps until it first rose, and the
task progress. The episode ends at `max_steps`, when a control policy is done (at a frame
boundary, as the source ends its episodes), or (`stop_when_done`) once every ground-truth
event is complete: nothing is left to judge.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from wallwm.data.sources.sim.env import get_env
from wallwm.eval.actions import split_frame_action
from wallwm.eval.conditions import Disturbance, instruction_for, recovery_disturbance
from wallwm.eval.observe import SimObserver
from wallwm.eval.policies.base import EpisodeInfo, is_control_policy
from wallwm.eval.progress import ProgressJudge
from wallwm.eval.seeds import EvalUnit


@dataclass(frozen=True)
class EpisodeSettings:
    """How every episode of a run is played (from eval.* and data.sim.*)."""

    cameras: tuple[str, ...]
    image_size: int
    render_every: int
    max_steps: int
    stop_when_done: bool = True
    recovery_min_steps: int = 6


@dataclass
class EpisodeResult:
    policy: str
    task: str
    condition: str
    unit_id: str
    index: int
    layout: int
    seed: int
    instruction: str
    success: bool
    success_end: bool
    steps_to_success: int | None
    steps: int
    frames: int
    chunks: int
    progress: float
    events_completed: int
    events_total: int
    event_steps: list[int]
    disturbance: dict[str, Any] | None
    wall_s: float
    # filled only when asked for (record=True / video=True): kept out of metrics.json
    states: np.ndarray | None = field(default=None, repr=False)  # (T, 4) observation.state
    object_pos: np.ndarray | None = field(default=None, repr=False)  # (T, 3)
    success_frames: np.ndarray | None = field(default=None, repr=False)  # (T,) as sim.success
    video: list[tuple[dict[str, np.ndarray], str, str]] | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        """The JSON-able fields (no arrays)."""
        d = asdict(self)
        for k in ("states", "object_pos", "success_frames", "video"):
            d.pop(k)
        return d


def run_episode(policy: Any, unit: EvalUnit, condition: str, settings: EpisodeSettings, *,
                disturbance: Disturbance | None = None, record: bool = False,
                video: bool = False) -> EpisodeResult:
    """Play `policy` on `unit` under `condition`. `disturbance` replaces the condition's own
    (replays of a recorded disturbed episode); `record` keeps the per-frame state, object
    position and success; `video` keeps every frame's images with the policy's caption and
    the judged event."""
    t0 = time.perf_counter()
    task, every = unit.task, settings.render_every
    instruction = instruction_for(condition, task, unit.index)
    sim = get_env(task, unit.layout_seed)
    obs = sim.reset(unit.layout, unit.seed)
    judge = ProgressJudge.start(sim, obs)
    if disturbance is None and condition == "recovery":
        disturbance = recovery_disturbance(task, unit.seed, settings.recovery_min_steps)
    low = np.asarray(sim.env.action_space.low, np.float64)
    high = np.asarray(sim.env.action_space.high, np.float64)
    control = is_control_policy(policy)
    states: list[np.ndarray] = []
    objs: list[np.ndarray] = []
    succ_steps: list[bool] = []
    frames: list[tuple[dict[str, np.ndarray], str, str]] = []
    first_success: int | None = None
    pending: list[np.ndarray] = []
    commands = np.zeros((every, 4))
    caption, chunks, steps, n_frames = "", 0, 0, 0
    with SimObserver(sim, settings.cameras, settings.image_size, every) as observer:
        info = EpisodeInfo(unit.unit_id, unit.seed, condition, observer.fps, every,
                           -(-settings.max_steps // every))
        if control:
            policy.reset(task, instruction, info, obs)
        else:
            policy.reset(task, instruction, info)
        for step in range(settings.max_steps):
            if disturbance is not None and disturbance.due(step, judge.current):
                disturbance.pert.fire(sim, step, judge.completed, obs)
                obs = np.asarray(sim.env._get_obs(), np.float64)
                if task == "pick-place-v3":  # as rollout.py: the goal sits on the table
                    obs[-3:] = sim.env._target_pos
            at_frame = step % every == 0
            if at_frame:
                frame = observer.capture(obs, step // every)
                n_frames += 1
                if record:
                    states.append(frame.state)
                    objs.append(np.asarray(obs[4:7], np.float32))
                if not control:
                    if not pending:
                        chunk = policy.act(frame)
                        pending, caption, chunks = list(chunk.actions), chunk.caption, chunks + 1
                    commands = split_frame_action(pending.pop(0), every, low, high)
            if control:
                cmd, caption = policy.act_step(obs)
                cmd = np.asarray(cmd, np.float64).copy()  # as the source: Meta-World clips xyz
            else:
                cmd = commands[step % every].copy()
            if at_frame and video:
                frames.append((frame.images, caption, _judged(judge)))
            override = None if disturbance is None else disturbance.pert.grip_override(step)
            if override is not None:
                cmd[3] = override
            sim.contact = False
            obs, step_info = sim.step(cmd)
            judge.update(step, judge.state(sim, obs, sim.contact))
            ok = bool(step_info["success"])
            succ_steps.append(ok)
            if ok and first_success is None:
                first_success = step + 1
            steps = step + 1
            if steps % every == 0 and (
                    (control and policy.done) or (settings.stop_when_done and judge.finished)):
                break
    s = np.asarray(succ_steps, bool)
    success_frames = np.r_[False, s[every - 1 : (n_frames - 1) * every : every]][:n_frames]
    return EpisodeResult(
        policy=str(getattr(policy, "name", type(policy).__name__)), task=task,
        condition=condition, unit_id=unit.unit_id, index=unit.index, layout=unit.layout,
        seed=unit.seed, instruction=instruction, success=bool(s.any()),
        success_end=bool(s[-1]) if len(s) else False, steps_to_success=first_success,
        steps=steps, frames=n_frames, chunks=chunks, progress=judge.progress,
        events_completed=judge.completed, events_total=len(judge.events),
        event_steps=list(judge.done_at),
        disturbance=None if disturbance is None else disturbance.to_json(),
        wall_s=round(time.perf_counter() - t0, 3),
        states=np.asarray(states, np.float32) if record else None,
        object_pos=np.asarray(objs, np.float32) if record else None,
        success_frames=success_frames if record else None,
        video=frames if video else None)


def _judged(judge: ProgressJudge) -> str:
    cur = judge.current
    return (f"judged: {judge.completed}/{len(judge.events)} done"
            + ("" if cur is None else f", at {cur}"))
