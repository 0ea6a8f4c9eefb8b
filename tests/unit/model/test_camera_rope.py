"""Camera RoPE: orthogonal, relative (q.k depends only on the slot pair), growable."""

from __future__ import annotations

import pytest
import torch

from wallwm.model.camera_rope import CameraRoPE


def test_norm_preserved_and_shapes():
    torch.manual_seed(0)
    rope = CameraRoPE(3, 16)
    x = torch.randn(2, 4, 6, 16)
    for ids in (torch.tensor([0, 1, 2, 0, 1, 2]), torch.randint(0, 3, (2, 6))):
        y = rope(x, ids)
        assert y.shape == x.shape
        assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    with pytest.raises(ValueError):
        CameraRoPE(2, 7)


def test_relative_rotation_depends_only_on_slot_pair():
    """q.k after rotation = q^T R_a^T R_b k: unchanged when both slots' angles move together."""
    torch.manual_seed(0)
    rope = CameraRoPE(4, 8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    a, b = torch.tensor([1]), torch.tensor([3])
    dot = (rope(q, a) * rope(k, b)).sum()
    # same vectors, same slot pair, different token positions and batch rows: same score
    qs, ks = q.expand(2, 1, 5, 8), k.expand(2, 1, 5, 8)
    ids_q, ids_k = torch.full((2, 5), 1), torch.full((2, 5), 3)
    dots = (rope(qs, ids_q) * rope(ks, ids_k)).sum(-1)
    assert torch.allclose(dots, dot.expand_as(dots), atol=1e-5)
    # shifting every slot's angles by one common offset leaves all scores unchanged (relative)
    with torch.no_grad():
        shift = torch.randn(4)
        for row in rope.angles:
            row.add_(shift)
    assert torch.allclose((rope(q, a) * rope(k, b)).sum(), dot, atol=1e-5)
    # same slot: plain dot product
    assert torch.allclose((rope(q, a) * rope(k, a)).sum(), (q * k).sum(), atol=1e-5)


def test_add_slot_and_gradients():
    torch.manual_seed(0)
    rope = CameraRoPE(2, 8)
    old = [p.detach().clone() for p in rope.parameters()]
    assert rope.add_slot() == 2 and rope.num_slots == 3
    assert all(torch.equal(o, p) for o, p in zip(old, list(rope.parameters())[:2], strict=True))
    x = torch.randn(1, 2, 3, 8, requires_grad=True)
    rope(x, torch.tensor([0, 1, 2])).pow(2).sum().backward()  # norm-only loss: zero angle grad
    (rope(x, torch.tensor([0, 1, 2]))[..., 0]).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rope.parameters())
    # slots differ at init: one vector gets a different code in each slot
    v = torch.randn(1, 1, 1, 8).expand(1, 1, 3, 8)
    y = rope(v, torch.tensor([0, 1, 2]))[0, 0]
    assert not torch.allclose(y[0], y[1]) and not torch.allclose(y[1], y[2])
