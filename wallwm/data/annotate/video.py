"""Video-only events (t0/t1 tiers, no actions): change points on per-frame visual features.

Each frame becomes a small grayscale thumbnail of every camera plus its motion energy (the mean
absolute difference to the previous frame); thumbnails are reduced by PCA and scaled by their
leading component (so noise directions stay small), motion energies by their spread, so the
Pelt penalty means the same for any image size or camera count. A segment is labelled
`motion` when its mean motion energy is above the episode's median, else `segment`.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from wallwm.data.annotate.common import AnnotateParams, event
from wallwm.data.episode import IMAGE_PREFIX, Episode, Event

MAX_DIM = 8  # PCA components kept


def thumbnails(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size*size) float grayscale, block-averaged."""
    x = np.asarray(frames, np.float32)
    g = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114 if x.ndim == 4 else x
    t, h, w = g.shape
    sh, sw = max(1, h // size), max(1, w // size)
    g = g[:, : sh * (h // sh), : sw * (w // sw)]
    g = g.reshape(t, h // sh, sh, w // sw, sw).mean((2, 4))
    return g.reshape(t, -1) / 255.0


def visual_features(ep: Episode, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(T, D) standardised features of all cameras (thumbnails by PCA, per-camera motion
    energy) and (T,) the raw motion energy averaged over cameras."""
    parts, motion = [], []
    for key in sorted(k for k in ep.videos if k.startswith(IMAGE_PREFIX)):
        th = thumbnails(np.stack(list(ep.frames_of(key))), size)
        parts.append(th)
        diff = np.abs(np.diff(th, axis=0)).mean(1)
        motion.append(np.r_[diff[:1], diff] if len(diff) else np.zeros(len(th)))
    if not parts:
        return np.zeros((ep.length, 0)), np.zeros(ep.length)
    x = np.concatenate(parts, 1)
    x = x - x.mean(0)
    if len(x) > 2:
        u, sv, _ = np.linalg.svd(x, full_matrices=False)
        k = int(min(MAX_DIM, np.sum(sv > 1e-6 * max(sv[0], 1e-12))))
        x = u[:, :k] * sv[:k]
    lead = float(x[:, 0].std()) if x.shape[1] else 0.0
    x = x / lead if lead > 1e-9 else x  # one scale: weak (noise) components stay weak
    m = np.stack(motion, 1)
    sd = m.std(0)
    return np.concatenate([x, m / np.where(sd > 1e-9, sd, 1.0)], 1), m.mean(1)


def change_points(x: np.ndarray, penalty: float, min_size: int) -> list[int]:
    """Internal change points of (T, D) features by Pelt (l2 cost), sorted."""
    import ruptures as rpt

    t = len(x)
    if t < 2 * min_size or x.shape[1] == 0:
        return []
    algo = rpt.Pelt(model="l2", min_size=min_size, jump=1).fit(x)
    pen = penalty * np.log(t) * x.shape[1]
    return [int(b) for b in algo.predict(pen=pen) if 0 < b < t]


def annotate_video(ep: Episode, params: AnnotateParams | None = None) -> list[Event]:
    """Contiguous action-level events from visual change points alone (signal change_point)."""
    p = params or AnnotateParams()
    t = ep.length
    if t == 0:
        return []
    x, energy = visual_features(ep, p.video_size)
    cuts = [0, *change_points(x, p.video_penalty, p.video_min_size), t]
    med = float(np.median(energy))
    out = []
    for a, b in pairwise(cuts):
        label = "motion" if float(energy[a:b].mean()) > med else "segment"
        out.append(event(label, a, b, "action", "change_point" if a else "episode_start"))
    return out
