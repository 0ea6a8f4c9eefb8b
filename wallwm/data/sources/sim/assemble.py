"""Rollout -> Episode for a tier: t3 keeps everything; t2 drops calibration and flags;
t0 keeps only the videos and the instruction (plus the ground truth, which no model reads:
it scores annotators on web-like video)."""

from __future__ import annotations

import numpy as np

from wallwm.data.episode import (
    EXTRINSICS_PREFIX,
    FLAG_KEYS,
    IMAGE_PREFIX,
    SIM_PREFIX,
    CameraSpec,
    Episode,
)
from wallwm.data.sources.sim.rollout import MOVING, Rollout

ROBOT_TYPE = "metaworld-sawyer"  # LeRobot robot_type: the embodiment models and bundles name

def to_episode(roll: Rollout, unit_id: str, tier: str, instruction: str) -> Episode:
    t = len(roll.frames["action"])
    fps = 1.0 / (roll.control_dt * roll.every)
    calibrated = tier == "t3_robot_real"
    features = {} if tier == "t0_web" else dict(roll.frames)
    if not calibrated:
        features = {k: v for k, v in features.items() if k not in FLAG_KEYS}
    cameras, videos = {}, {}
    for cam, frames in roll.images.items():
        key = IMAGE_PREFIX + cam
        videos[key] = frames
        moving = cam in MOVING
        spec = CameraSpec(key, frames.shape[1], frames.shape[2], moving=moving)
        if calibrated:
            spec.intrinsics = roll.intrinsics[cam]
            if moving:
                features[EXTRINSICS_PREFIX + cam] = (
                    roll.extrinsics[cam].reshape(t, 16).astype(np.float32)
                )
            else:
                spec.extrinsics = roll.extrinsics[cam][0]
        cameras[key] = spec
    extra = {
        "task_name": roll.task,
        "layout": roll.layout,
        "seed": roll.seed,
        "success": roll.success,
        "steps": roll.steps,
        "control_dt": roll.control_dt,
        "render_every": roll.every,
        "action_semantics": "xyz = sum of the clipped per-control-step xyz commands of the "
        "frame (0.01 m of hand target motion per unit); gripper = last command (-1 open, +1 "
        "closed)",
        "rotated_180": [c for c, r in roll.rotated.items() if r],
        "perturbation": roll.perturbation,
    }
    if tier == "t0_web":
        extra = {"task_name": roll.task, "seed": roll.seed}
    return Episode(
        source="sim",
        source_id=unit_id,
        robot_type=ROBOT_TYPE,
        tier=tier,
        task=instruction,
        fps=fps,
        timestamps=np.arange(t, dtype=np.float64) / fps,
        features={
            k: v for k, v in features.items() if tier != "t0_web" or not k.startswith(SIM_PREFIX)
        },
        videos=videos,
        cameras=cameras,
        ground_truth=list(roll.events),
        extra=extra,
    )
