"""Accuracy of a reduced-precision bundle against FP32: cosine per action dimension and global.

A global cosine can hide one broken output channel under per-tensor scales (PITFALLS.md), so
the gate reads the *worst dimension*: for each action dimension, the cosine between the FP32
and the low-precision actions (normalized units, where every dimension weighs the same) over
every valid step of every held-out event; the global cosine is over all of them flattened.
GR00T gates FP8 at >= 0.98 and BF16 at >= 0.99 (export.fp8_min_cosine, bf16_min_cosine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(a @ b / (na * nb))


@dataclass
class Agreement:
    per_dim: list[float]
    global_cosine: float
    max_abs: float
    samples: int

    @property
    def worst(self) -> float:
        return min(self.per_dim)

    @property
    def worst_dim(self) -> int:
        return int(np.argmin(self.per_dim))

    def to_json(self) -> dict:
        return {"per_dim": self.per_dim, "worst": self.worst, "worst_dim": self.worst_dim,
                "global": self.global_cosine, "max_abs": self.max_abs, "samples": self.samples}


def agreement(ref: Sequence[np.ndarray], got: Sequence[np.ndarray],
              masks: Sequence[np.ndarray]) -> Agreement:
    """ref/got: (B, La, A) actions per batch; masks: (B, La) valid steps."""
    r = np.concatenate([x[m] for x, m in zip(ref, masks, strict=True)])  # (N, A)
    g = np.concatenate([x[m] for x, m in zip(got, masks, strict=True)])
    if r.size == 0:
        raise ValueError("agreement: no valid steps to compare")
    return Agreement([cosine(r[:, d], g[:, d]) for d in range(r.shape[1])], cosine(r, g),
                     float(np.abs(r - g).max()), int(r.shape[0]))
