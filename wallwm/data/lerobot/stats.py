"""Per-episode and aggregated feature statistics in LeRobot's layout.

Numeric features: per-dimension min/max/mean/std/count and q01..q99 over the episode's frames.
Video features: per-channel stats in [0, 1] with shape (3, 1, 1), over a sample of frames
(LeRobot samples too; ``estimate_num_samples``). Aggregation weights by count, as LeRobot's
``aggregate_feature_stats`` does (quantiles included, approximately).
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QKEYS = tuple(f"q{int(q * 100):02d}" for q in QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count", *QKEYS)


def numeric_stats(arr: np.ndarray) -> dict[str, np.ndarray]:
    a = np.asarray(arr)
    a = a.reshape(len(a), -1).astype(np.float64)
    out = {
        "min": a.min(0),
        "max": a.max(0),
        "mean": a.mean(0),
        "std": a.std(0),
        "count": np.array([len(a)], np.int64),
    }
    qs = np.quantile(a, QUANTILES, axis=0)
    for k, q in zip(QKEYS, qs, strict=True):
        out[k] = q
    return out


def sample_positions(n: int, min_samples: int = 100, max_samples: int = 10_000) -> set[int]:
    """Which frames feed image stats (LeRobot's estimate_num_samples heuristic)."""
    lo = min(min_samples, n)
    k = max(lo, min(int(n**0.75), max_samples))
    return set(np.round(np.linspace(0, n - 1, k)).astype(int).tolist()) if n else set()


def downsample(img: np.ndarray, target: int = 150, threshold: int = 300) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= threshold:
        return img
    f = int(w / target) if w > h else int(h / target)
    return img[::f, ::f]


def image_stats(frames: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-channel stats of uint8 (H, W, 3) frames, scaled to [0, 1], shapes (3, 1, 1)."""
    px = np.concatenate([f.reshape(-1, 3) for f in frames]).astype(np.float64) / 255.0
    s = numeric_stats(px)
    out = {k: v.reshape(3, 1, 1) for k, v in s.items() if k != "count"}
    out["count"] = np.array([len(frames)], np.int64)
    return out


def aggregate(stats_list: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Count-weighted merge of per-feature stats (LeRobot's aggregate_stats)."""
    keys: list[str] = []
    for s in stats_list:
        keys += [k for k in s if k not in keys]
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in keys:
        parts = [s[key] for s in stats_list if key in s]
        counts = np.stack([np.asarray(p["count"], np.float64) for p in parts])
        means = np.stack([np.asarray(p["mean"], np.float64) for p in parts])
        while counts.ndim < means.ndim:
            counts = counts[..., None]
        total = counts.sum(0)
        mean = (means * counts).sum(0) / total
        var = np.stack([np.asarray(p["std"], np.float64) ** 2 for p in parts])
        var = ((var + (means - mean) ** 2) * counts).sum(0) / total
        agg = {
            "min": np.min(np.stack([p["min"] for p in parts]), 0),
            "max": np.max(np.stack([p["max"] for p in parts]), 0),
            "mean": mean,
            "std": np.sqrt(var),
            "count": np.asarray(sum(int(np.asarray(p["count"]).sum()) for p in parts)).reshape(1),
        }
        for q in QKEYS:
            if all(q in p for p in parts):
                agg[q] = (np.stack([p[q] for p in parts]) * counts).sum(0) / total
        out[key] = agg
    return out


def to_jsonable(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def from_jsonable(d: dict[str, dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    return {k: {s: np.atleast_1d(np.asarray(v)) for s, v in v2.items()} for k, v2 in d.items()}


def flat_columns(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """``stats/<feature>/<stat>`` columns of ``meta/episodes`` (lists, like LeRobot)."""
    return {
        f"stats/{k}/{s}": np.asarray(v).tolist() for k, d in stats.items() for s, v in d.items()
    }
