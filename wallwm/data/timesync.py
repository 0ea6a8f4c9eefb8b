"""Re-align a video with the per-frame robot signals when a source recorded them on two clocks.

Public robot datasets and human/teleop recordings often carry a constant offset between the
camera stream and the action/state stream (USB camera latency, a logger started late). A
world-action model trained on such pairs learns that actions cause motion a few frames later
or, worse, before they are issued. We estimate the offset from the data itself: the robot
moves when it is commanded to, so the video's motion signal and the action magnitude rise and
fall together once aligned.

Conventions (LeRobot's): ``action[t]`` is the command issued at frame t; its effect shows
between frames t and t+1. So the motion signal is the *forward* difference,
``m[t] = mean |f[t+1] - f[t]|``, and a well-synchronised episode scores its peak at lag 0.

Sign of the lag: **positive lag = the video lags the actions** (what action[t] does is seen
at video frame t + lag); ``apply_offset(ep, lag)`` pairs ``features[t]`` with
``video[t + lag]`` and trims both ends so that every array keeps one length.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator

import numpy as np

from wallwm.data.episode import IMAGE_PREFIX, Episode, FrameSource

_GRAY = np.array([0.299, 0.587, 0.114], np.float32)


def motion_signal(frames: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    """(T,) float64 mean absolute grey-level change from frame t to t+1 (last value repeated).

    Streams the frames (an array or any iterable of (H, W, 3) uint8), so a long decoded
    video never has to sit in memory at once."""
    out: list[float] = []
    prev: np.ndarray | None = None
    for frame in frames:
        g = (
            np.asarray(frame, np.float32) @ _GRAY
            if np.ndim(frame) == 3
            else np.asarray(frame, np.float32)
        )
        if prev is not None:
            out.append(float(np.abs(g - prev).mean()))
        prev = g
    if prev is None:
        return np.zeros(0)
    out.append(out[-1] if out else 0.0)
    return np.asarray(out, np.float64)


def action_magnitude(actions: np.ndarray, dims: int = 3) -> np.ndarray:
    """(T,) norm of the first `dims` action components (the xyz deltas of the hand)."""
    a = np.asarray(actions, np.float64)
    return np.linalg.norm(a[:, :dims] if a.ndim == 2 else a[:, None], axis=1)


def hand_speed(states: np.ndarray, dims: int = 3) -> np.ndarray:
    """(T,) forward-difference speed of the first `dims` state components (last repeated)."""
    s = np.asarray(states, np.float64)
    s = s[:, :dims] if s.ndim == 2 else s[:, None]
    if len(s) < 2:
        return np.zeros(len(s))
    v = np.linalg.norm(np.diff(s, axis=0), axis=1)
    return np.r_[v, v[-1]]


def _ncc(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (no information, not a match)."""
    x = x - x.mean()
    y = y - y.mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / den if den > 1e-12 else 0.0


def lag_scores(
    motion: np.ndarray, robot: np.ndarray, max_lag: int, min_overlap: int = 8
) -> dict[int, float]:
    """NCC of the first differences of ``robot[t]`` and ``motion[t + lag]``, per lag.

    Differencing (pre-whitening) matters: a commanded speed sits at its limit most of the
    time, so the raw signals correlate almost equally at neighbouring lags; their changes
    (starts, stops) pin the lag down. The last sample of each signal is left out (the
    forward difference has no real value there); lags whose overlap is shorter than
    `min_overlap` are skipped."""
    v = np.diff(np.asarray(motion, np.float64)[:-1])
    a = np.diff(np.asarray(robot, np.float64)[:-1])
    n = min(len(v), len(a))
    v, a = v[:n], a[:n]
    scores: dict[int, float] = {}
    for lag in range(-max_lag, max_lag + 1):
        lo, hi = max(0, -lag), min(n, n - lag)
        if hi - lo < min_overlap:
            continue
        scores[lag] = _ncc(a[lo:hi], v[lo + lag : hi + lag])
    return scores


def best_lag(scores: dict[int, float]) -> tuple[int, float]:
    """Argmax of a lag -> score map; ties go to the smallest |lag| (leave data alone)."""
    if not scores:
        return 0, 0.0
    lag = max(scores, key=lambda k: (round(scores[k], 12), -abs(k)))
    return int(lag), float(scores[lag])


def robot_signal(actions: np.ndarray | None, states: np.ndarray | None = None) -> np.ndarray:
    """The robot-clock motion signal: hand speed from `states` if given, else |action xyz|."""
    if states is not None:
        return hand_speed(states)
    if actions is None:
        raise ValueError("need actions or states")
    return action_magnitude(actions)


def estimate_offset(
    frames: np.ndarray | Iterable[np.ndarray],
    actions: np.ndarray | None,
    max_lag: int = 5,
    *,
    states: np.ndarray | None = None,
    response_lag: int = 0,
    min_overlap: int = 8,
) -> tuple[int, float]:
    """(lag_frames, score): the lag maximising the NCC of video motion with robot motion.

    Positive lag = the video lags the actions. `score` is the NCC at that lag, in [-1, 1];
    a low score (say < 0.3) means the signals say little: keep the episode as it is.

    The robot signal is the action magnitude (norm of the xyz deltas) unless `states` is
    given, in which case it is the hand speed from ``observation.state`` xyz. Prefer states
    when a source has them: the camera sees where the hand *is*, and an arm follows its
    commands with a response latency, so an action-based estimate on perfectly synchronised
    data reads that latency (one frame at 20 fps on the Meta-World sim). Pass it as
    `response_lag` (frames) to have it subtracted; the state-based estimate needs none."""
    robot = robot_signal(actions, states)
    shift = 0 if states is not None else response_lag
    scores = lag_scores(motion_signal(frames), robot, max_lag + abs(shift), min_overlap)
    return best_lag({k - shift: v for k, v in scores.items() if abs(k - shift) <= max_lag})


def _shift_frames(src: FrameSource, start: int, n: int) -> FrameSource:
    if not callable(src):
        return np.asarray(src)[start : start + n]

    def frames() -> Iterator[np.ndarray]:
        for i, f in enumerate(src()):
            if i >= start + n:
                return
            if i >= start:
                yield f

    return frames


def apply_offset(ep: Episode, lag: int, score: float | None = None) -> Episode:
    """A new episode whose ``features[t]`` is paired with ``video[t + lag]``.

    Both ends are trimmed (|lag| frames in all) so every per-frame array and every video
    keeps one length; timestamps restart at the episode's first one. Everything in
    `features` moves with the robot clock (state, action, flags, per-frame extrinsics that
    come from the arm's kinematics); ground-truth events, labelled on that clock too, are
    shifted and clipped with it. The applied offset is recorded in
    ``extra["time_sync"] = {"lag_frames", "score"}`` (lags of repeated calls add up)."""
    lag = int(lag)
    t = ep.length
    n = t - abs(lag)
    if n <= 0:
        raise ValueError(f"{ep.source_id}: lag {lag} leaves no frame of {t}")
    f0, v0 = max(0, -lag), max(0, lag)  # first feature row / first video frame kept
    features = {k: np.asarray(v)[f0 : f0 + n] for k, v in ep.features.items()}
    videos = {k: _shift_frames(src, v0, n) for k, src in ep.videos.items()}
    events = []
    for e in ep.ground_truth:
        s, end = max(0, e.start - f0), min(n, e.end - f0)
        if end > s:
            events.append(dataclasses.replace(e, start=s, end=end))
    extra = dict(ep.extra)
    prev = extra.get("time_sync") or {}
    extra["time_sync"] = {
        "lag_frames": int(prev.get("lag_frames", 0)) + lag,
        "score": None if score is None else float(score),
    }
    return dataclasses.replace(
        ep,
        timestamps=np.asarray(ep.timestamps)[:n].copy(),
        features=features,
        videos=videos,
        ground_truth=events,
        extra=extra,
    )


def estimate_episode_offset(
    ep: Episode,
    cameras: list[str] | None = None,
    max_lag: int = 5,
    *,
    use_state: bool = True,
    response_lag: int = 0,
) -> tuple[int, float]:
    """The lag of `ep`'s videos against its robot signals, lag scores averaged over cameras.

    A static camera sees the arm move, a wrist camera sees the world move with the arm;
    averaging the two score curves removes most of the single-camera misses."""
    states = ep.features.get("observation.state") if use_state else None
    actions = ep.features.get("action")
    robot = robot_signal(actions, states)
    keys = [c if c.startswith(IMAGE_PREFIX) else IMAGE_PREFIX + c for c in cameras or ep.videos]
    total: dict[int, float] = {}
    for key in keys:
        for lag, sc in lag_scores(
            motion_signal(ep.frames_of(key)), robot, max_lag + abs(response_lag)
        ).items():
            total[lag] = total.get(lag, 0.0) + sc / len(keys)
    shift = 0 if states is not None else response_lag
    return best_lag({k - shift: v for k, v in total.items() if abs(k - shift) <= max_lag})


def sync_episode(
    ep: Episode,
    cameras: list[str] | None = None,
    max_lag: int = 5,
    min_score: float = 0.3,
) -> Episode:
    """Estimate the offset over `cameras` (default all) and apply it when convincing.

    Below `min_score` the episode keeps its alignment but the estimate is still recorded
    (``applied`` False), so a build can report how many episodes were uncertain."""
    if not ep.videos or ("action" not in ep.features and "observation.state" not in ep.features):
        return ep
    lag, score = estimate_episode_offset(ep, cameras, max_lag)
    applied = score >= min_score
    out = apply_offset(ep, lag if applied else 0, score)
    out.extra["time_sync"].update(estimated_lag=lag, applied=applied)
    return out


__all__ = [
    "action_magnitude",
    "apply_offset",
    "best_lag",
    "estimate_episode_offset",
    "estimate_offset",
    "hand_speed",
    "lag_scores",
    "motion_signal",
    "robot_signal",
    "sync_episode",
]
