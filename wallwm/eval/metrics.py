"""Closed-loop metrics: success with 95% Wilson intervals, task progress, steps to success.

Cells are (policy, task, condition); "all" pools the tasks of a (policy, condition) (every
task has the same episode count, so the pooled rate is the mean over tasks). The Wilson score
interval (scipy's `binomtest(...).proportion_ci(method="wilson")`) keeps its coverage at the
small counts and the 0 / 1 rates a floor and a ceiling produce, where the normal interval
collapses to a point. Progress intervals are normal-approximation intervals of the mean
(progress is a share per episode, not a Bernoulli trial).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from scipy.stats import binomtest, norm

from wallwm.eval.episode import EpisodeResult

ALL = "all"


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of `successes` out of `n` (no continuity correction)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson: need 0 <= successes <= n and n > 0; got {successes}/{n}")
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence,
                                                         method="wilson")
    return float(ci.low), float(ci.high)


def mean_interval(values: Sequence[float], confidence: float = 0.95
                  ) -> tuple[float, float, float]:
    """(mean, low, high): normal approximation, clipped to [0, 1]; one value: a point."""
    m = float(statistics.fmean(values))
    if len(values) < 2:
        return m, m, m
    half = float(norm.ppf(0.5 + confidence / 2)) * statistics.stdev(values) / math.sqrt(
        len(values))
    return m, max(0.0, m - half), min(1.0, m + half)


def cell(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    n = len(results)
    k = sum(r.success for r in results)
    lo, hi = wilson(k, n)
    pm, plo, phi = mean_interval([r.progress for r in results])
    steps = [r.steps_to_success for r in results if r.steps_to_success is not None]
    disturbed = [r for r in results if r.disturbance is not None]
    return {
        "n": n, "successes": k, "success": k / n, "success_lo": lo, "success_hi": hi,
        "success_end": sum(r.success_end for r in results) / n,
        "progress": pm, "progress_lo": plo, "progress_hi": phi,
        "steps_to_success_median": statistics.median(steps) if steps else None,
        "steps_to_success_mean": statistics.fmean(steps) if steps else None,
        "disturbed": sum(bool(r.disturbance.get("fired")) for r in disturbed) if disturbed
        else None,
    }


def summarize(results: Iterable[EpisodeResult]) -> list[dict[str, Any]]:
    """One row per (policy, task, condition) and per (policy, "all", condition), in first-seen
    order of policies, tasks and conditions."""
    results = list(results)
    policies = list(dict.fromkeys(r.policy for r in results))
    tasks = list(dict.fromkeys(r.task for r in results))
    conditions = list(dict.fromkeys(r.condition for r in results))
    rows = []
    for p in policies:
        for c in conditions:
            for t in [*tasks, ALL]:
                sel = [r for r in results if r.policy == p and r.condition == c
                       and (t == ALL or r.task == t)]
                if sel:
                    rows.append({"policy": p, "task": t, "condition": c, **cell(sel)})
    return rows


def lookup(rows: Sequence[dict[str, Any]], policy: str, task: str, condition: str
           ) -> dict[str, Any] | None:
    return next((r for r in rows if r["policy"] == policy and r["task"] == task
                 and r["condition"] == condition), None)
