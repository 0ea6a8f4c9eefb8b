"""Dataset-frame actions <-> control-step commands, the inverse of the sim source's aggregation.

The sim source (rollout.py) records one action per dataset frame covering `render_every`
control steps: xyz = the sum of the clipped per-step xyz commands, gripper = the last grip
command. `split_frame_action` gives back `render_every` commands that aggregate to the same
frame action: the xyz sum spread evenly (the mocap then reaches the same target at the frame's
end; only its path inside the frame differs from a recorded one, which the sum no longer
holds), the grip command held for the whole frame; each command clipped to the action space.
A recorded frame action never needs the clip (|sum| <= render_every because each step was
clipped); a model's may, and then the frame moves at most `render_every` units.
"""

from __future__ import annotations

import numpy as np


def split_frame_action(action: np.ndarray, every: int, low: np.ndarray | float = -1.0,
                       high: np.ndarray | float = 1.0) -> np.ndarray:
    """(A,) frame action (xyz..., gripper last) -> (every, A) control commands, clipped."""
    a = np.asarray(action, np.float64).reshape(-1)
    if a.size < 2 or not np.isfinite(a).all():
        raise ValueError(f"split_frame_action: action {a.tolist()} must be a finite vector of "
                         f"at least 2 values (motion dims, gripper last)")
    if every < 1:
        raise ValueError(f"split_frame_action: every={every} must be >= 1")
    out = np.empty((every, a.size))
    out[:, :-1] = a[:-1] / every
    out[:, -1] = a[-1]
    return np.clip(out, low, high)


def aggregate(commands: np.ndarray, every: int) -> np.ndarray:
    """(N, A) clipped control commands -> (ceil(N / every), A) frame actions, as rollout.py
    aggregates them (the last frame may cover fewer steps)."""
    c = np.clip(np.asarray(commands, np.float64), -1.0, 1.0)
    frames = []
    for k in range(0, len(c), every):
        sl = c[k : k + every]
        frames.append(np.r_[sl[:, :-1].sum(0), sl[-1, -1]])
    return np.asarray(frames, np.float32).reshape(-1, c.shape[1])
