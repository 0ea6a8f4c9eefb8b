"""Cluster balance metrics: how evenly a dataset (or a sampled stream) covers its clusters.

The sampler's temperature trades natural frequencies for cluster coverage; these numbers (and
the before/after histogram, an MLflow artifact) are how a build or a run reports that trade.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

Counts = Sequence[float] | np.ndarray | Mapping[int, float]


def _as_array(counts: Counts) -> np.ndarray:
    """Counts as a float array; a mapping {cluster_id: count} is laid out by sorted id."""
    if isinstance(counts, Mapping):
        counts = [counts[k] for k in sorted(counts)]
    a = np.asarray(counts, dtype=np.float64).ravel()
    if (a < 0).any():
        raise ValueError("counts must be non-negative")
    return a


def entropy(counts: Counts) -> float:
    """Shannon entropy (nats) of the distribution the counts define; 0 for an empty one."""
    a = _as_array(counts)
    total = a.sum()
    if total <= 0:
        return 0.0
    p = a[a > 0] / total
    return float(-(p * np.log(p)).sum())


def normalized_entropy(counts: Counts) -> float:
    """Entropy / log(K), K = len(counts) (empty clusters count: a stream that never visits a
    cluster is less balanced). 1 = uniform over the K clusters; 1.0 by convention when K <= 1."""
    a = _as_array(counts)
    if len(a) <= 1:
        return 1.0
    return entropy(a) / float(np.log(len(a)))


def effective_clusters(counts: Counts) -> float:
    """exp(entropy): the number of equally likely clusters with the same entropy (1..K)."""
    return float(np.exp(entropy(counts)))


def cluster_size_histogram_png(counts_before: Counts, counts_after: Counts, path: str | Path,
                               title: str = "cluster sizes") -> Path:
    """Side-by-side bars of cluster shares before (natural) and after (sampled) balancing,
    clusters ordered by natural size; the legend carries the effective number of clusters."""
    import matplotlib

    matplotlib.use("Agg")  # headless; harmless if already selected
    import matplotlib.pyplot as plt

    b, a = _as_array(counts_before), _as_array(counts_after)
    if len(b) != len(a):
        raise ValueError(f"before has {len(b)} clusters, after {len(a)}")
    order = np.argsort(-b, kind="stable")
    pb = b[order] / max(b.sum(), 1e-12)
    pa = a[order] / max(a.sum(), 1e-12)
    x = np.arange(len(b))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(b) + 2), 3.2), dpi=100)
    w = 0.42
    ax.bar(x - w / 2, pb, w, label=f"before (eff. {effective_clusters(b):.2f})")
    ax.bar(x + w / 2, pa, w, label=f"after (eff. {effective_clusters(a):.2f})")
    ax.set_xticks(x, [str(int(i)) for i in order], fontsize=7)
    ax.set_xlabel("cluster (by natural size)")
    ax.set_ylabel("share")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
