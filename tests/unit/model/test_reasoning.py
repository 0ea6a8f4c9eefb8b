"""The reasoning module: serial vs staircase decoding, the frozen text decoder, the losses."""

from __future__ import annotations

import pytest
import torch

from wallwm.model.reasoning import (
    ReasoningConfig,
    ReasoningModule,
    TextDecoder,
    pretrain_text_decoder,
    staircase_distill_loss,
)

V, LT, NV, VD = 50, 8, 6, 12


def _cfg(**kw) -> ReasoningConfig:
    base = dict(width=32, depth=4, heads=4, relay_depth=2, num_latents=5, vocab_size=V,
                max_text_len=16, visual_dim=VD)
    return ReasoningConfig(**{**base, **kw})


def _inputs(b: int = 2, padded: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, LT), generator=g)
    mask = torch.ones(b, LT, dtype=torch.bool)
    if padded:
        mask[-1, LT // 2:] = False
    return ids, mask, torch.randn(b, NV, VD, generator=g)


def _model(seed: int = 0, **kw) -> ReasoningModule:
    torch.manual_seed(seed)
    m = ReasoningModule(_cfg(**kw))
    with torch.no_grad():  # non-zero relay embeddings: the trained case, not the init
        m.relay.normal_(std=0.1)
    return m


@pytest.mark.parametrize("mode", ["serial", "staircase"])
def test_shapes(mode):
    m = _model()
    lat = m(*_inputs(b=3), mode=mode)
    assert lat.shape == (3, 5, 32)
    assert torch.isfinite(lat).all()


def test_bad_config_and_mode():
    with pytest.raises(ValueError, match="relay_depth"):
        _cfg(relay_depth=0)
    with pytest.raises(ValueError, match="relay_depth"):
        _cfg(relay_depth=5)
    with pytest.raises(ValueError, match="mode"):
        _model()(*_inputs(), mode="parallel")


@pytest.mark.parametrize("padded", [False, True])
def test_serial_kv_cache_equals_uncached(padded):
    m = _model().eval()
    ids, mask, vis = _inputs(padded=padded)
    with torch.no_grad():
        cached = m(ids, mask, vis, mode="serial")
        naive = m._decode_serial_uncached(ids, mask, vis)
    torch.testing.assert_close(cached, naive, atol=1e-5, rtol=1e-5)


def test_padding_is_ignored():
    """Padded text tokens change nothing, whatever their ids."""
    m = _model().eval()
    ids, mask, vis = _inputs()
    ids2 = ids.clone()
    ids2[~mask] = (ids2[~mask] + 7) % V
    for mode in ("serial", "staircase"):
        torch.testing.assert_close(m(ids, mask, vis, mode=mode), m(ids2, mask, vis, mode=mode))


@pytest.mark.parametrize("relay_depth", [1, 2, 3, 4])
def test_staircase_exact_identities(relay_depth):
    """Latent 0 is exact for every K and N_r, so K = 1 is exactly serial; later latents differ."""
    m = _model(relay_depth=relay_depth).eval()
    x = _inputs()
    ser, sta = m(*x, mode="serial"), m(*x, mode="staircase")
    torch.testing.assert_close(sta[:, 0], ser[:, 0], atol=1e-5, rtol=1e-5)
    assert (sta[:, 1:] - ser[:, 1:]).abs().max() > 1e-2
    one = _model(relay_depth=relay_depth, num_latents=1).eval()
    torch.testing.assert_close(one(*x, mode="staircase"), one(*x, mode="serial"),
                               atol=1e-5, rtol=1e-5)


def test_staircase_is_causal():
    """Slot k depends on the relay embeddings of slots <= k only."""
    m = _model().eval()
    x = _inputs()
    before = m(*x, mode="staircase")
    with torch.no_grad():
        m.relay[2] += torch.randn(32)  # r_3 (r_0 = 0 is not stored); random: LN ignores shifts
    after = m(*x, mode="staircase")
    torch.testing.assert_close(after[:, :3], before[:, :3])
    assert (after[:, 3:] - before[:, 3:]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["serial", "staircase"])
def test_cot_loss_trains_the_vlm_not_the_decoder(mode):
    m = _model()
    lat = m(*_inputs(), mode=mode)
    cot = torch.randint(0, V, (2, 7))
    cmask = torch.ones(2, 7, dtype=torch.bool)
    cmask[0, 5:] = False
    loss = m.cot_loss(lat, cot, cmask)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in m.decoder.parameters())
    assert not any(p.requires_grad for p in m.decoder.parameters())
    for name in ("blocks.0.qkv.weight", "embed.weight", "visual_in.weight", "to_decoder.weight"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name
    m.train()
    assert not m.decoder.training


def test_set_decoder_freezes_and_adapts_width():
    m = _model()
    dec = TextDecoder(V, width=24, depth=1, heads=2, max_len=16)
    m.set_decoder(dec)
    assert m.to_decoder.out_features == 24
    assert not any(p.requires_grad for p in dec.parameters()) and not dec.training
    lat = m(*_inputs())
    loss = m.cot_loss(lat, torch.randint(0, V, (2, 4)), torch.ones(2, 4, dtype=torch.bool))
    loss.backward()
    assert m.to_decoder.weight.grad is not None


def test_pretrain_text_decoder_lowers_the_loss():
    torch.manual_seed(0)
    # a tiny caption set: three fixed "sentences", right-padded
    caps = [[1, 5, 6, 7, 8, 2], [1, 9, 10, 11, 2, 0], [1, 5, 12, 13, 14, 2]]
    ids = torch.tensor(caps)
    mask = ids != 0
    mask[:, 0] = True
    dec = TextDecoder(V, width=32, depth=2, heads=4, max_len=16)
    losses = pretrain_text_decoder(dec, [(ids, mask)], steps=60, lr=3e-3)
    assert len(losses) == 60
    assert losses[-1] < 0.5 * losses[0]
    assert not dec.training and not any(p.requires_grad for p in dec.parameters())


@pytest.mark.parametrize("mode", ["serial", "staircase"])
def test_gradient_reaches_the_first_layer(mode):
    """An action loss on the latents reaches the VLM's first layer and the inputs."""
    m = _model()
    ids, mask, vis = _inputs()
    vis.requires_grad_(True)
    lat = m(ids, mask, vis, mode=mode)
    (lat * torch.randn_like(lat)).sum().backward()
    assert m.blocks[0].qkv.weight.grad.abs().sum() > 0
    assert m.blocks[0].mlp[0].weight.grad.abs().sum() > 0
    assert vis.grad.abs().sum() > 0


def test_staircase_distillation_decreases():
    """Stage (4): the staircase student moves towards the serial teacher (fixed targets)."""
    torch.manual_seed(0)
    m = ReasoningModule(_cfg())
    with torch.no_grad():  # layers that do real work (as after pretraining), so the gap is real
        for p in m.blocks.parameters():
            if p.ndim == 2:
                p.normal_(std=0.15)
    x = _inputs()
    with torch.no_grad():
        teacher = m(*x, mode="serial")
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-4)
    losses = []
    for _ in range(20):
        loss = staircase_distill_loss(m(*x, mode="staircase"), teacher)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    t = teacher.clone().requires_grad_(True)
    staircase_distill_loss(m(*x, mode="staircase"), t).backward()
    assert t.grad is None  # the teacher is detached
