"""One scripted episode: control at env.dt, dataset frames every `render_every` control steps.

Frame k is the state (and images) before control step k*r; its action covers steps
[k*r, k*r + r): xyz = the sum of the clipped per-step xyz commands (the mocap moves
0.01 m per unit, so this is the frame's commanded hand displacement in cm), gripper = the
last grip command of those steps. Frame-level `sim.contact` = a finger touched the object in
any physics substep of those steps; `sim.success` describes the frame's state (the success
reported by the step before it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wallwm.data.sources.sim import cameras as cams
from wallwm.data.sources.sim.env import FastRenderer, get_env
from wallwm.data.sources.sim.events import action_events, frame_labels, step_labels, subtask_events
from wallwm.data.sources.sim.experts import ACTIONS, EXPERTS
from wallwm.data.sources.sim.perturb import plan

MOVING = ("gripperPOV", "behindGripper")  # cameras attached to the hand


@dataclass
class Rollout:
    task: str
    layout: int
    seed: int
    control_dt: float
    every: int
    steps: int
    frames: dict[str, np.ndarray]  # per-frame arrays (state, action, flags, sim.*)
    images: dict[str, np.ndarray]  # camera -> (T, H, W, 3)
    intrinsics: dict[str, np.ndarray]
    extrinsics: dict[str, np.ndarray]  # camera -> (T, 4, 4); constant for fixed cameras
    rotated: dict[str, bool]
    events: list[Any]
    success: bool
    perturbation: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def simulate(
    task: str, layout: int, seed: int, *, mt1_seed: int, cameras: list[str], size: int,
    every: int, max_steps: int, perturb_prob: float,
) -> Rollout:  # fmt: skip
    rng = np.random.default_rng(seed)
    sim = get_env(task, mt1_seed)
    obs = sim.reset(layout, seed)
    expert = EXPERTS[task](obs)
    pert = plan(task, rng, perturb_prob)
    rest_z = float(obs[6])
    rotated = {c: c not in MOVING and cams.upside_down(sim.data, c) for c in cameras}
    k_mats = {c: cams.intrinsics(float(sim.model.cam(c).fovy[0]), size, size) for c in cameras}
    st: dict[str, list[Any]] = {k: [] for k in ("act", "phase", "contact", "succ", "objz", "rec")}
    fr: dict[str, list[Any]] = {k: [] for k in ("state", "pos", "quat", "phase")}
    imgs: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
    ext: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
    prev_phase = ""
    with FastRenderer(sim, size, size) as ren:
        for step in range(max_steps):
            if pert is not None and pert.due(prev_phase):
                pert.fire(sim, step, expert.order(prev_phase), obs)
                obs = np.asarray(sim.env._get_obs(), np.float64)
                if task == "pick-place-v3":
                    obs[-3:] = sim.env._target_pos
            if step % every == 0:
                fr["state"].append(obs[:4].copy())
                fr["pos"].append(obs[4:7].copy())
                fr["quat"].append(obs[7:11].copy())
                for c in cameras:
                    img = ren.render(c)
                    imgs[c].append(img[::-1, ::-1] if rotated[c] else img)
                    ext[c].append(cams.cam_to_world(sim.data, c, rotated=rotated[c]))
            action, phase = expert.act(obs)
            override = pert.grip_override(step) if pert is not None else None
            if override is not None:
                action[3] = override
            if step % every == 0:
                fr["phase"].append(ACTIONS.index(phase))
            rec = pert is not None and pert.recovering(step, expert.order(phase), obs)
            sim.contact = False
            obs, info = sim.step(action)
            for key, val in (
                ("act", np.clip(action, -1, 1)), ("phase", phase), ("contact", sim.contact),
                ("succ", bool(info["success"])), ("objz", obs[6]), ("rec", rec),
            ):  # fmt: skip
                st[key].append(val)
            prev_phase = phase
            if expert.done and (step + 1) % every == 0:
                break
    n = len(st["act"])
    t = len(fr["state"])
    acts = np.asarray(st["act"], np.float64)
    action = np.zeros((t, 4), np.float32)
    contact = np.zeros(t, bool)
    rec = np.zeros(t, bool)
    succ_steps = np.asarray(st["succ"], bool)
    for k in range(t):
        sl = slice(k * every, min((k + 1) * every, n))
        action[k, :3] = acts[sl, :3].sum(0)
        action[k, 3] = acts[sl.stop - 1, 3]
        contact[k] = any(st["contact"][sl])
        rec[k] = any(st["rec"][sl])
    success_frames = np.r_[False, succ_steps[every - 1 : (t - 1) * every : every]][:t]
    labels = step_labels(st["phase"], np.asarray(st["contact"]), np.asarray(st["objz"]), rest_z)
    flabels = frame_labels(labels, every)
    events = action_events(flabels) + subtask_events(task, flabels)
    # a pick-place must still hold at the end (placed, released); others count once achieved
    success = (
        bool(succ_steps[-1] and expert.done) if task == "pick-place-v3" else bool(succ_steps.any())
    )
    frames = {
        "observation.state": np.asarray(fr["state"], np.float32),
        "action": action,
        "flags.teleop": np.zeros(t, bool),
        "flags.correction": rec.copy(),
        "flags.recovery": rec,
        "sim.contact": contact,
        "sim.object_pos": np.asarray(fr["pos"], np.float32),
        "sim.object_quat": np.asarray(fr["quat"], np.float32),
        "sim.expert_phase": np.asarray(fr["phase"], np.int64),
        "sim.success": success_frames,
    }
    return Rollout(
        task=task, layout=layout, seed=seed, control_dt=float(sim.env.dt), every=every,
        steps=n, frames=frames, images={c: np.stack(v) for c, v in imgs.items()},
        intrinsics=k_mats, extrinsics={c: np.stack(v) for c, v in ext.items()},
        rotated=rotated, events=events, success=success,
        perturbation=None if pert is None else pert.to_json(),
    )  # fmt: skip
