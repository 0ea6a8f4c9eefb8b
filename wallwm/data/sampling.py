"""Cluster-balanced sampling of events with a temperature.

With n_c events in cluster c, an event of c is drawn with probability proportional to
n_c^(tau - 1), so cluster c as a whole gets n_c^tau / sum_d n_d^tau:

* tau = 1: natural frequencies (every event equally likely);
* tau = 0: uniform over clusters (rare behaviours as often as common ones);
* in between: a softened balance (the usual choice, e.g. 0.5).

An event may stand as several items (event mode with `train.event_stride`: one item per
observation frame inside it). `group_ids` names each item's event: n_c then counts the distinct
events of c and an event's probability is split equally over its items, so a cluster of long
events is not drawn more often for having more items, and at tau = 1 every event (not every
item) is equally likely. Without `group_ids` every item is its own event.

Draws are with replacement (a rare cluster at tau = 0 must repeat its events), from a private
generator seeded by (seed, epoch): independent of the global RNGs, identical on every rank, so
the ranks of a DDP job cut one global draw into disjoint, equal-length shares.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def _groups(cluster_ids: Sequence[int] | np.ndarray,
            group_ids: Sequence[object] | np.ndarray | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster per item (N,), dense event index per item (N,), first item of each event
    (E,)); checks that an event lies in one cluster."""
    ids = np.asarray(cluster_ids).ravel()
    if ids.size == 0:
        raise ValueError("no events")
    if group_ids is None:
        return ids, np.arange(ids.size), np.arange(ids.size)
    groups = np.asarray(group_ids, dtype=object).ravel()
    if groups.size != ids.size:
        raise ValueError(f"group_ids has {groups.size} entries for {ids.size} items")
    _, g = np.unique(groups.astype(str), return_inverse=True)
    first = np.full(g.max() + 1, -1, np.int64)
    first[g[::-1]] = np.arange(ids.size)[::-1]
    bad = np.flatnonzero(ids != ids[first[g]])
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"event {groups[i]!r} has items in clusters {int(ids[first[g[i]]])} "
                         f"and {int(ids[i])}: an event's items must share its cluster")
    return ids, g, first


def event_probabilities(cluster_ids: Sequence[int] | np.ndarray, temperature: float,
                        group_ids: Sequence[object] | np.ndarray | None = None) -> np.ndarray:
    """p_item (N,): an event of cluster c gets n_c^(tau - 1) (n_c = distinct events of c),
    split equally over its items; sums to 1."""
    if not 0.0 <= temperature <= 1.0:
        raise ValueError(f"temperature must be in [0, 1], got {temperature}")
    ids, g, first = _groups(cluster_ids, group_ids)
    clusters, inverse = np.unique(ids, return_inverse=True)
    n_events = np.bincount(inverse[first], minlength=clusters.size)  # n_c
    items_per_event = np.bincount(g)
    w = n_events[inverse].astype(np.float64) ** (temperature - 1.0) / items_per_event[g]
    return w / w.sum()


def cluster_probabilities(cluster_ids: Sequence[int] | np.ndarray, temperature: float,
                          group_ids: Sequence[object] | np.ndarray | None = None
                          ) -> dict[int, float]:
    """{cluster: n_c^tau / sum_d n_d^tau}: the share of draws each cluster should get."""
    ids, _, first = _groups(cluster_ids, group_ids)
    clusters, sizes = np.unique(ids[first], return_counts=True)
    w = sizes.astype(np.float64) ** temperature
    return {int(c): float(x) for c, x in zip(clusters, w / w.sum(), strict=True)}


class ClusterBalancedSampler(Sampler[int]):
    """Item indices drawn with `event_probabilities`; DDP-aware, deterministic per epoch.

    `num_samples` is the global number of draws per epoch (default N); it is rounded up to a
    multiple of `num_replicas` and rank r takes draws r, r + R, r + 2R, ... of the global draw.
    """

    def __init__(self, cluster_ids: Sequence[int] | np.ndarray, temperature: float = 0.5,
                 num_samples: int | None = None, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, group_ids: Sequence[object] | np.ndarray | None = None
                 ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"bad rank {rank} of {num_replicas} replicas")
        self.cluster_ids = np.asarray(cluster_ids).ravel()
        self.temperature = float(temperature)
        self.probs = event_probabilities(self.cluster_ids, self.temperature, group_ids)
        self.num_samples = int(num_samples if num_samples is not None else len(self.cluster_ids))
        if self.num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.per_rank = math.ceil(self.num_samples / self.num_replicas)
        self.total_size = self.per_rank * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Call at the start of each epoch (on every rank) to get that epoch's draw."""
        self.epoch = int(epoch)

    def global_draw(self) -> np.ndarray:
        """This epoch's draw for all ranks (total_size,) int64; the same on every rank."""
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.choice(len(self.probs), size=self.total_size, replace=True, p=self.probs)

    def __iter__(self) -> Iterator[int]:
        share = self.global_draw()[self.rank :: self.num_replicas]
        return iter(share.tolist())

    def __len__(self) -> int:
        return self.per_rank
