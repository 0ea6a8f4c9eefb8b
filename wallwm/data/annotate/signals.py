"""Per-frame cues from what a recording holds: state, action, gripper. Never `sim.*`.

Every cue has a fallback so a missing column degrades the annotation instead of failing:
intended motion = the action's xyz (else the state velocity one frame ahead: the hand lags
its command by about a frame), realised velocity = state differences (else the intended
motion), gripper closed = the gripper command (else the aperture's level and trend). Motions
are divided by the episode's robust peak speed so thresholds are fractions of it, whatever the
units of the robot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import median_filter

from wallwm.data.episode import Episode

STATE, ACTION = "observation.state", "action"
PEAK_Q = 90  # percentile of the per-frame speed taken as the episode's peak
APERTURE_STEP = 0.02  # aperture change per frame (of its range) that counts as moving fingers


@dataclass
class Signals:
    length: int
    motion: np.ndarray | None = None  # (T, 3) intended hand motion per frame / peak
    vel: np.ndarray | None = None  # (T, 3) realised hand velocity per frame / peak
    closed: np.ndarray | None = None  # (T,) bool, gripper commanded or seen closing/closed
    aperture: np.ndarray | None = None  # (T,) smoothed, 1 = open (rescaled to [0, 1])
    used: dict[str, str] = field(default_factory=dict)  # cue -> the column it came from

    @property
    def has_motion(self) -> bool:
        return self.motion is not None

    def speed(self) -> np.ndarray:
        v = self.vel if self.vel is not None else self.motion
        return np.zeros(self.length) if v is None else np.linalg.norm(v, axis=1)


def _normalise(x: np.ndarray) -> np.ndarray:
    peak = float(np.percentile(np.linalg.norm(x, axis=1), PEAK_Q)) if len(x) else 0.0
    return x / peak if peak > 1e-9 else x * 0.0


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if not np.isfinite(x).all():  # a dropped sample: hold the last good value
        x = x.copy()
        for k in range(len(x)):
            bad = ~np.isfinite(x[k])
            x[k, bad] = x[k - 1, bad] if k else 0.0
    return x


def _closed_from_command(cmd: np.ndarray) -> np.ndarray | None:
    lo, hi = float(np.percentile(cmd, 2)), float(np.percentile(cmd, 98))
    if lo < 0 < hi:
        return cmd > 0
    if hi - lo < 0.2:  # constant: the command says nothing about this episode's gripper
        return np.full(len(cmd), hi > 0)
    return cmd > (lo + hi) / 2


def _closed_from_aperture(ap: np.ndarray) -> np.ndarray:
    """Closing (falling) or low; a fall is traced back to where it started."""
    d = np.r_[np.diff(ap), 0.0]
    closed = (ap < 0.8) | (d < -APERTURE_STEP)
    opening = d > APERTURE_STEP
    return closed & ~opening


def extract(ep: Episode) -> Signals:
    feats = ep.recording_features()
    t = ep.length
    sig = Signals(t)
    state = feats.get(STATE)
    action = feats.get(ACTION)
    pos = ap = cmd = act_xyz = None
    if state is not None and state.ndim == 2 and state.shape[1] >= 3 and len(state) == t:
        pos = _finite(state[:, :3])
        if state.shape[1] >= 4:
            ap = _finite(state[:, 3:4])[:, 0]
    if action is not None and action.ndim == 2 and action.shape[1] >= 3 and len(action) == t:
        act_xyz = _finite(action[:, :3])
        if action.shape[1] >= 4:
            cmd = _finite(action[:, 3:4])[:, 0]
    if pos is not None and t >= 2:
        v = np.diff(pos, axis=0)
        v = np.r_[v, v[-1:]]
        sig.vel = _normalise(v)
        sig.used["vel"] = STATE
    if act_xyz is not None:
        sig.motion = _normalise(act_xyz)
        sig.used["motion"] = ACTION
    elif sig.vel is not None:
        sig.motion = np.r_[sig.vel[1:], sig.vel[-1:]]
        sig.used["motion"] = STATE + " (velocity, one frame ahead)"
    if sig.vel is None and sig.motion is not None:
        sig.vel = sig.motion
        sig.used["vel"] = ACTION
    if ap is not None and t >= 3:
        lo, hi = float(np.percentile(ap, 1)), float(np.percentile(ap, 99))
        ap = median_filter(ap, size=3, mode="nearest")
        if hi - lo > 0.1:
            inside = lo >= -0.05 and hi <= 1.05  # already 0 closed .. 1 open
            sig.aperture = np.clip(ap if inside else (ap - lo) / (hi - lo), 0.0, 1.0)
    if cmd is not None:
        sig.closed = _closed_from_command(cmd)
        sig.used["closed"] = ACTION + "[gripper]"
    elif sig.aperture is not None:
        sig.closed = _closed_from_aperture(sig.aperture)
        sig.used["closed"] = STATE + "[aperture]"
    return sig
