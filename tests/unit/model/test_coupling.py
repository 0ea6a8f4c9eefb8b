"""pi: which video block each action block reads; unequal depths; the coupled context."""

from __future__ import annotations

import pytest
import torch

from tests.unit.model.test_streams import batch, perturb, small
from wallwm.model import WallWM, pair_layers


@pytest.mark.parametrize("da, dv, want", [
    (4, 4, [0, 1, 2, 3]), (4, 2, [0, 0, 1, 1]), (2, 4, [1, 3]), (3, 5, [1, 3, 4]), (1, 3, [2]),
])
def test_proportional_pairing(da, dv, want):
    assert pair_layers(da, dv) == want
    assert pair_layers(da, dv, "last") == [dv - 1] * da


def test_pairing_is_monotone_and_ends_at_the_top():
    for da in range(1, 9):
        for dv in range(1, 9):
            p = pair_layers(da, dv)
            assert p == sorted(p) and p[-1] == dv - 1 and 0 <= p[0] and len(p) == da


def test_unknown_pairing_is_an_error():
    with pytest.raises(ValueError, match="proportional"):
        pair_layers(2, 2, "random")


@pytest.mark.parametrize("depth, action_depth", [(3, 2), (2, 3)])
def test_unequal_depths_train_and_predict(depth, action_depth):
    torch.manual_seed(0)
    m = perturb(WallWM(small(depth=depth, action_depth=action_depth)))
    assert m.action.coupling.pairs == pair_layers(action_depth, depth)
    out = m(batch(m.cfg, "event"), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    pred = m.eval().predict(batch(m.cfg, "event", with_targets=False), steps=2,
                            return_video=False)
    assert pred["frames"] is None and torch.isfinite(pred["actions"]).all()


def test_context_concatenates_views_and_reads_its_paired_block():
    torch.manual_seed(0)
    m = perturb(WallWM(small(depth=2, action_depth=4)))
    c = m.action.coupling
    B, V, T, N, D = 2, 2, 3, 16, 32
    feats = [torch.randn(B, V, T, N, D) for _ in range(2)]
    t, at = torch.rand(B), torch.rand(B) * 5
    ctxs = c(feats, t, at, detach=False)
    assert len(ctxs) == 4 and all(x.shape == (B, V * T * N, 32) for x in ctxs)
    feats2 = [feats[0], feats[1] + 1]  # only video block 1 changes: action blocks 2, 3 read it
    ctxs2 = c(feats2, t, at, detach=False)
    assert [torch.equal(a, b) for a, b in zip(ctxs, ctxs2, strict=True)] == [
        True, True, False, False]
    # noise level and absolute time reach the context
    assert not torch.equal(c(feats, t + 0.1, at, False)[0], ctxs[0])
    assert not torch.equal(c(feats, t, at + 1.0, False)[0], ctxs[0])


def test_detach_cuts_the_graph():
    m = WallWM(small())
    f = [torch.randn(1, 2, 2, 16, 32, requires_grad=True) for _ in range(2)]
    sum(x.sum() for x in m.action.coupling(f, torch.rand(1), torch.rand(1), detach=True)
        ).backward()
    assert all(x.grad is None for x in f)
