"""Event and unified mode on one set of weights; the cached video features at inference."""

from __future__ import annotations

import pytest
import torch

from tests.unit.model.test_streams import batch, perturb, small
from wallwm.model import WallWM, param_groups_for_muon
from wallwm.model.layers import IOLinear


def test_one_model_switches_modes_between_chunks():
    torch.manual_seed(0)
    m = perturb(WallWM(small())).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    b = batch(m.cfg, "event", with_targets=False)
    ev = m.predict(b, mode="event", steps=3, generator=torch.Generator().manual_seed(0))
    un = m.predict(b, mode="unified", steps=3, generator=torch.Generator().manual_seed(0))
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert ev["actions"].shape == (2, m.cfg.max_event_len, m.cfg.action_dim)
    assert un["actions"].shape == (2, m.cfg.action_horizon, m.cfg.action_dim)
    assert ev["frames"].shape == (2, 2, 1, 3, 32, 32)  # the boundary frame per view
    assert un["frames"].shape == (2, 2, m.cfg.frames, 3, 32, 32)
    assert un["cot_latents"].shape == (2, m.cfg.cot_latents, m.cfg.width)
    for out in (ev, un):
        assert torch.isfinite(out["actions"]).all() and torch.isfinite(out["frames"]).all()
        assert out["frames"].abs().max() <= 1
        assert out["action_mask"][:, 0].all()  # at least one step
    assert un["action_mask"].all()


def test_each_mode_uses_a_subset_of_one_state_dict():
    torch.manual_seed(0)
    m = perturb(WallWM(small()))
    keys = set(m.state_dict())
    names = {id(p): n for n, p in m.named_parameters()}
    used = {}
    for mode in ("event", "unified"):
        m.zero_grad(set_to_none=True)
        m(batch(m.cfg, mode), generator=torch.Generator().manual_seed(0))["loss"].backward()
        used[mode] = {n for n, p in m.named_parameters() if p.grad is not None}
        assert used[mode] <= keys
    assert used["event"] & used["unified"]  # shared weights
    assert {n for n in used["unified"] if n.startswith("reasoning.")}  # CoT path only there
    assert not {n for n in used["event"] if n.startswith("reasoning.")}
    groups = {names[id(p)] for p in (*m.video_parameters(), *m.action_parameters(),
                                     *m.reasoning_parameters())}
    assert groups <= keys
    assert not {n for n in groups if n.startswith("reasoning.decoder.")}  # frozen decoder


def test_event_padding_is_out_of_the_loss():
    torch.manual_seed(0)
    m = perturb(WallWM(small()))
    b = batch(m.cfg, "event")
    pad = ~b.action_mask
    assert pad.any()
    b2 = b.replace(actions=torch.where(pad[..., None], 9.0, b.actions),
                   event_end=torch.where(pad, 1.0, b.event_end))
    o1 = m(b, generator=torch.Generator().manual_seed(0))
    o2 = m(b2, generator=torch.Generator().manual_seed(0))
    for k in ("action_fm", "event_end"):
        torch.testing.assert_close(o1[k], o2[k])


def test_video_tower_runs_once_with_the_cache():
    torch.manual_seed(0)
    m = perturb(WallWM(small())).eval()
    b = batch(m.cfg, "unified", with_targets=False)
    calls = []
    h = m.video.register_forward_hook(lambda *a: calls.append(1))
    steps = 4
    cached = m.predict(b, steps=steps, return_video=False,
                       generator=torch.Generator().manual_seed(0))
    n_cached = len(calls)
    calls.clear()
    fresh = m.predict(b, steps=steps, recompute_video=True, return_video=False,
                      generator=torch.Generator().manual_seed(0))
    h.remove()
    # cached: the one anchor pass of `encode`; joint: that pass (CoT latents) + one per step
    assert n_cached == 1 and len(calls) == steps + 1
    assert torch.isfinite(fresh["actions"]).all() and torch.isfinite(cached["actions"]).all()
    assert not torch.equal(fresh["actions"], cached["actions"])  # later steps saw new features


@pytest.mark.parametrize("anchor", [1.0, 0.5])
def test_anchor_level_is_configurable(anchor):
    m = WallWM(small(video_anchor_t=anchor)).eval()
    m.norm.set_identity()
    out = m.predict(batch(m.cfg, "event", with_targets=False), steps=4)
    assert torch.isfinite(out["actions"]).all() and out["frames"].shape[2] == 1


def test_muon_groups_by_module_type():
    m = WallWM(small())
    muon, adamw = param_groups_for_muon(m)
    ids_m, ids_a = {id(p) for p in muon}, {id(p) for p in adamw}
    assert not ids_m & ids_a
    assert ids_m | ids_a == {id(p) for p in m.parameters() if p.requires_grad}
    assert id(m.video.blocks[0].attn.qkv.weight) in ids_m
    assert id(m.action.blocks[0].mlp.fc1.weight) in ids_m
    for p in (m.text.tok.weight, m.video.blocks[0].attn.qkv.bias, m.video.mask_token,
              m.video.blocks[0].cross_view.gate, m.video.patch_in.weight,
              m.action.final.linear.weight, m.action.end_head.weight):
        assert id(p) in ids_a
    assert all(not isinstance(mod, IOLinear) or id(mod.weight) in ids_a for mod in m.modules())
    assert all(p.dim() == 2 for p in muon)
