"""A small benchmark harness: warm-up, repeats, median and spread, and the results files.

Each `bench_*.py` exposes `FIGURES` (the keys it reports, with their description, baseline and
target) and `run() -> dict[key, Figure]`. Figures are ratios measured in one run wherever a
baseline exists: absolute times on shared machines are not comparable across runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Figure:
    key: str
    value: float
    spread: tuple[float, float]
    what: str
    baseline: str = "-"
    baseline_value: float | None = None
    target: str = "reported"
    unit: str = ""
    met: bool | None = None  # None: no target
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["spread"] = list(self.spread)
        return d


def timed(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Median seconds of `fn` over `repeats` runs after `warmup` unmeasured runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def ratio_figure(key: str, ours: list[float], base: list[float], what: str, baseline: str,
                 target: float | None, higher_is_better: bool = True, unit: str = "x",
                 notes: str = "") -> Figure:
    """A ratio ours/base (rates) with its spread from the min/max of both series."""
    m_o, m_b = statistics.median(ours), statistics.median(base)
    value = m_o / m_b
    lo, hi = min(ours) / max(base), max(ours) / min(base)
    met = None if target is None else (value >= target if higher_is_better else value <= target)
    tgt = "reported" if target is None else (f">= {target}" if higher_is_better else f"<= {target}")
    return Figure(key, round(value, 4), (round(lo, 4), round(hi, 4)), what, baseline,
                  round(m_b, 4), tgt, unit, met, notes)
