"""Score an annotation against ground truth: boundaries, frame labels, confusion.

Boundaries are the internal start frames of the action events (frame 0 is not a decision),
matched one-to-one within +-`tolerance` frames with an optimal assignment, so a prediction
near two true boundaries counts once. Label accuracy is frame-wise. `score_many` micro-averages
(sums counts over episodes) so long episodes weigh what their boundaries and frames weigh.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from wallwm.data.episode import Event

NONE = "<none>"


def frame_labels(events: Iterable[Event], length: int, level: str = "action") -> list[str]:
    """Per-frame label of `level` events (later events win overlaps; uncovered = `<none>`)."""
    out = [NONE] * length
    for e in events:
        if e.level == level:
            for k in range(max(0, e.start), min(length, e.end)):
                out[k] = e.label
    return out


def boundaries(events: Iterable[Event], level: str = "action") -> list[tuple[int, str]]:
    """(start frame, label) of every `level` event but the first."""
    evs = sorted((e for e in events if e.level == level), key=lambda e: e.start)
    return [(e.start, e.label) for e in evs if e.start > 0]


def match(pred: list[int], truth: list[int], tolerance: int) -> list[tuple[int, int]]:
    """One-to-one pairs (i_pred, i_truth) within tolerance, the most pairs, then least error."""
    if not pred or not truth:
        return []
    d = np.abs(np.subtract.outer(np.asarray(pred), np.asarray(truth))).astype(float)
    cost = np.where(d <= tolerance, d, 1e6) - 1e3 * (d <= tolerance)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if d[r, c] <= tolerance]


def _counts(pred: list[Event], truth: list[Event], tolerance: int) -> dict[str, Any]:
    length = max([e.end for e in truth if e.level == "action"] or [0])
    pb, tb = boundaries(pred), boundaries(truth)
    pairs = match([b for b, _ in pb], [b for b, _ in tb], tolerance)
    hit = {j for _, j in pairs}
    pl, tl = frame_labels(pred, length), frame_labels(truth, length)
    return {
        "tp": len(pairs),
        "n_pred": len(pb),
        "n_true": len(tb),
        "frames": length,
        "correct": sum(p == t for p, t in zip(pl, tl, strict=True)),
        "confusion": Counter(zip(tl, pl, strict=True)),
        "b_true": Counter(lab for _, lab in tb),
        "b_hit": Counter(tb[j][1] for j in hit),
    }


def _finish(c: dict[str, Any]) -> dict[str, Any]:
    tp, n_pred, n_true = c["tp"], c["n_pred"], c["n_true"]
    prec = tp / n_pred if n_pred else float(n_true == 0)
    rec = tp / n_true if n_true else float(n_pred == 0)
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    conf: dict[str, dict[str, int]] = {}
    for (t, p), n in sorted(c["confusion"].items()):
        conf.setdefault(t, {})[p] = n
    per_label = {
        t: {
            "frames": sum(row.values()),
            "accuracy": row.get(t, 0) / max(1, sum(row.values())),
            "boundaries": c["b_true"].get(t, 0),
            "boundary_recall": c["b_hit"].get(t, 0) / c["b_true"][t] if c["b_true"].get(t) else None,
        }
        for t, row in conf.items()
    }
    return {
        "boundary_precision": prec,
        "boundary_recall": rec,
        "boundary_f1": f1,
        "label_accuracy": c["correct"] / c["frames"] if c["frames"] else 1.0,
        "tp": tp,
        "n_pred": n_pred,
        "n_true": n_true,
        "frames": c["frames"],
        "confusion": conf,
        "per_label": per_label,
    }


def score(pred: list[Event], truth: list[Event], tolerance: int = 2) -> dict[str, Any]:
    """Boundary P/R/F1 (+-tolerance frames), frame label accuracy, per-label confusion and
    per-label boundary recall (by the label of the true event that starts there)."""
    return _finish(_counts(pred, truth, tolerance))


def score_many(
    pairs: Iterable[tuple[list[Event], list[Event]]], tolerance: int = 2
) -> dict[str, Any]:
    """Micro-averaged `score` over (pred, truth) pairs, plus `episodes`."""
    total: dict[str, Any] = {"tp": 0, "n_pred": 0, "n_true": 0, "frames": 0, "correct": 0,
                             "confusion": Counter(), "b_true": Counter(), "b_hit": Counter()}
    n = 0
    for pred, truth in pairs:
        c = _counts(pred, truth, tolerance)
        for k in total:
            total[k] += c[k]
        n += 1
    return {**_finish(total), "episodes": n}
