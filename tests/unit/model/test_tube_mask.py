"""Tube masking: probability, size, same patches in every frame, one view, determinism."""

from __future__ import annotations

import pytest
import torch

from wallwm.model.tube_mask import apply_tube_mask, sample_tube_mask, tube_loss_weights

B, V, F, H, W = 4000, 3, 4, 6, 5


def test_tube_shape_size_frames_and_one_view():
    g = torch.Generator().manual_seed(0)
    m = sample_tube_mask(B, V, F, H, W, prob=0.3, size=2, generator=g)
    assert m.shape == (B, V, F, H, W) and m.dtype == torch.bool
    hit = m.flatten(1).any(1)
    assert abs(hit.float().mean().item() - 0.3) < 0.03  # 3 sigma at n = 4000 is ~0.022
    assert (m.flatten(2).any(2).sum(1) <= 1).all()  # at most one view per sample
    assert torch.equal(m, m[:, :, :1].expand_as(m))  # the same patches in every frame
    per_frame = m[hit][:, :, 0]  # (hits, V, H, W) -> one 2x2 square
    assert (per_frame.flatten(1).sum(1) == 4).all()
    rows, cols = per_frame.any(1).any(2), per_frame.any(1).any(1)
    assert (rows.sum(1) == 2).all() and (cols.sum(1) == 2).all()
    # every view and every position is drawn
    views = m[hit].flatten(2).any(2).float().argmax(1)
    assert set(views.tolist()) == set(range(V))
    assert per_frame.any(1).float().mean(0).min() > 0


def test_deterministic_and_edge_cases():
    a = sample_tube_mask(8, V, F, H, W, 0.5, 3, torch.Generator().manual_seed(7))
    b = sample_tube_mask(8, V, F, H, W, 0.5, 3, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not sample_tube_mask(16, V, F, H, W, 0.0, 2).any()
    assert sample_tube_mask(16, V, F, H, W, 1.0, 2).flatten(1).any(1).all()
    with pytest.raises(ValueError):
        sample_tube_mask(1, V, F, H, W, 0.5, 6)


def test_apply_and_weights():
    g = torch.Generator().manual_seed(1)
    m = sample_tube_mask(4, 2, 2, 3, 3, 1.0, 2, g)
    tok = torch.randn(4, 2, 2, 3, 3, 5)
    mt = torch.nn.Parameter(torch.randn(5))
    out = apply_tube_mask(tok, m, mt)
    assert torch.equal(out[m], mt.detach().expand(int(m.sum()), 5))
    assert torch.equal(out[~m], tok[~m])
    out.sum().backward()
    assert torch.allclose(mt.grad, torch.full((5,), float(m.sum())))
    w = tube_loss_weights(m, 2.0)
    assert w.dtype == torch.float32 and torch.equal(w[m], torch.full_like(w[m], 2.0))
    assert (w[~m] == 1).all()
