"""The cluster-balanced sampler: determinism, DDP shares, frequencies vs theory, balance."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from wallwm.data.balance import (
    cluster_size_histogram_png,
    effective_clusters,
    normalized_entropy,
)
from wallwm.data.sampling import ClusterBalancedSampler, cluster_probabilities, event_probabilities

SIZES = [400, 200, 100, 40, 10]  # a long-tailed cluster distribution
IDS = np.repeat(np.arange(len(SIZES)), SIZES)
np.random.default_rng(0).shuffle(IDS)


def test_probabilities_follow_the_temperature():
    n = np.array(SIZES, float)
    for tau in (0.0, 0.5, 1.0):
        p = event_probabilities(IDS, tau)
        assert p.sum() == pytest.approx(1.0)
        per_cluster = np.array([p[IDS == c].sum() for c in range(len(SIZES))])
        np.testing.assert_allclose(per_cluster, n**tau / (n**tau).sum())
        assert cluster_probabilities(IDS, tau) == pytest.approx(
            dict(enumerate(per_cluster)))
    np.testing.assert_allclose(event_probabilities(IDS, 1.0), 1 / len(IDS))  # natural
    with pytest.raises(ValueError):
        event_probabilities(IDS, 1.5)


def test_deterministic_per_seed_and_epoch_and_independent_of_global_rng():
    s = ClusterBalancedSampler(IDS, 0.5, num_samples=500, seed=3)
    a = list(s)
    np.random.seed(123)
    import torch

    torch.manual_seed(99)
    assert list(s) == a
    assert list(ClusterBalancedSampler(IDS, 0.5, num_samples=500, seed=3)) == a
    s.set_epoch(1)
    b = list(s)
    assert b != a and len(b) == len(a) == 500
    assert list(ClusterBalancedSampler(IDS, 0.5, num_samples=500, seed=4)) != a


def test_ranks_partition_the_global_draw():
    n, R = 1003, 4
    shares = []
    for r in range(R):
        s = ClusterBalancedSampler(IDS, 0.3, num_samples=n, seed=7, num_replicas=R, rank=r)
        s.set_epoch(2)
        shares.append(list(s))
        assert len(s) == len(shares[-1]) == 251  # ceil(1003 / 4), equal on every rank
    glob = ClusterBalancedSampler(IDS, 0.3, num_samples=n, seed=7, num_replicas=R)
    glob.set_epoch(2)
    draw = glob.global_draw()
    assert len(draw) == 4 * 251
    # disjoint positions of one global draw, which together are the whole draw
    rebuilt = np.empty_like(draw)
    for r in range(R):
        rebuilt[r::R] = shares[r]
    np.testing.assert_array_equal(rebuilt, draw)
    with pytest.raises(ValueError):
        ClusterBalancedSampler(IDS, num_replicas=2, rank=2)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0])
def test_empirical_cluster_frequencies_match_theory(tau):
    draws = 40_000
    idx = np.fromiter(ClusterBalancedSampler(IDS, tau, num_samples=draws, seed=1), int)
    counts = np.bincount(IDS[idx], minlength=len(SIZES))
    n = np.array(SIZES, float)
    expected = draws * n**tau / (n**tau).sum()
    assert chisquare(counts, expected).pvalue > 1e-3
    np.testing.assert_allclose(counts / draws, expected / draws, atol=0.01)


def test_uniform_temperature_balances_the_stream(tmp_path):
    eff = {}
    counts = {}
    for tau in (0.0, 1.0):
        idx = np.fromiter(ClusterBalancedSampler(IDS, tau, num_samples=20_000, seed=0), int)
        counts[tau] = np.bincount(IDS[idx], minlength=len(SIZES))
        eff[tau] = effective_clusters(counts[tau])
    k = len(SIZES)
    assert abs(eff[0.0] - k) < abs(eff[1.0] - k)
    assert eff[0.0] > 4.9 and normalized_entropy(counts[0.0]) > 0.99
    assert eff[1.0] == pytest.approx(effective_clusters(SIZES), rel=0.02)
    png = cluster_size_histogram_png(SIZES, counts[0.0], tmp_path / "h.png", "tau=0")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_balance_metrics():
    assert normalized_entropy([5, 5, 5, 5]) == pytest.approx(1.0)
    assert effective_clusters([5, 5, 5, 5]) == pytest.approx(4.0)
    assert effective_clusters([7, 0, 0]) == pytest.approx(1.0)
    assert normalized_entropy([7, 0, 0]) == pytest.approx(0.0)
    assert normalized_entropy({0: 1, 1: 1}) == pytest.approx(1.0)
    assert normalized_entropy([3]) == 1.0


def test_events_with_many_items_are_not_drawn_more_often():
    """Event-stride items: cluster 0 has 10 long events of 12 items each, cluster 1 has 10
    events of 2 items. Events are what is balanced: both clusters have 10 events, so each gets
    half of the draws at every temperature, and within a cluster every event is equally likely
    with its share split over its items (counting items would give cluster 0 120/140 at tau=1
    and sqrt(120)/(sqrt(120)+sqrt(20)) = 0.71 at tau=0.5)."""
    ids, groups = [], []
    for c, (n_ev, n_items) in enumerate([(10, 12), (10, 2)]):
        for e in range(n_ev):
            ids += [c] * n_items
            groups += [f"c{c}/e{e}"] * n_items
    ids, groups = np.array(ids), np.array(groups, dtype=object)
    for tau in (0.0, 0.5, 1.0):
        p = event_probabilities(ids, tau, groups)
        assert p.sum() == pytest.approx(1.0)
        assert p[ids == 0].sum() == pytest.approx(0.5)
        per_event = {g: p[groups == g].sum() for g in set(groups)}
        np.testing.assert_allclose(list(per_event.values()), 1 / 20)
        np.testing.assert_allclose(p[ids == 0], 1 / 20 / 12)  # split evenly over its items
        assert cluster_probabilities(ids, tau, groups) == pytest.approx({0: 0.5, 1: 0.5})
    draw = np.fromiter(ClusterBalancedSampler(ids, 0.5, num_samples=20_000, seed=2,
                                              group_ids=groups), int)
    assert abs((ids[draw] == 0).mean() - 0.5) < 0.02
    # the cluster share follows the number of events: 30 events of 1 item vs 10 of 12
    ids2 = np.array([0] * 30 + [1] * 120)
    groups2 = np.array([f"a{i}" for i in range(30)] + [f"b{i // 12}" for i in range(120)])
    share = event_probabilities(ids2, 1.0, groups2)[ids2 == 0].sum()
    assert share == pytest.approx(0.75)


def test_an_event_split_across_clusters_is_refused():
    with pytest.raises(ValueError, match="'e1'.*clusters 0 and 1"):
        event_probabilities([0, 0, 1], 0.5, ["e0", "e1", "e1"])
    with pytest.raises(ValueError, match="group_ids has 2 entries for 3 items"):
        event_probabilities([0, 0, 1], 0.5, ["e0", "e1"])
