"""The two towers: one-way coupling, stop-grad, the zero-gated cross-view branch, packing."""

from __future__ import annotations

import pytest
import torch

from wallwm.model import WallWM, WallWMConfig, WorldActionBatch, load_pretrained_video
from wallwm.model.action_stream import sequence_mask
from wallwm.model.wallwm import save_video

SMALL = dict(width=32, depth=2, heads=2, action_width=32, action_depth=2, action_heads=2,
             image_size=32, patch=8, views=2, frames=2, vocab_size=64, max_text_len=16,
             text_depth=1, vlm_depth=2, relay_depth=1, cot_latents=2, action_dim=4, state_dim=3,
             action_horizon=6, max_event_len=8, event_types=4)


def small(**kw) -> WallWMConfig:
    return WallWMConfig(**{**SMALL, **kw})


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialized parameters (adaLN, gates, heads) values, so every path
    carries signal (at init the adaLN-zero gates would make the tests vacuous). Synthetic
    batches are in model units already: identity normalization statistics."""
    g = torch.Generator().manual_seed(seed)
    if hasattr(model, "norm"):
        model.norm.set_identity()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and bool((p == 0).all()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def batch(cfg, mode="event", seed=0, **kw):
    return WorldActionBatch.synthetic(cfg, 2, mode, torch.Generator().manual_seed(seed), **kw)


def _record(modules):
    acts, hooks = {}, []
    for name, m in modules:
        def hook(_m, _i, out, name=name):
            outs = out if isinstance(out, tuple) else (out,)
            for k, o in enumerate(outs):
                if isinstance(o, torch.Tensor):
                    acts[f"{name}/{k}"] = o.detach().clone()
                elif isinstance(o, list):
                    for j, t in enumerate(o):
                        acts[f"{name}/{k}/{j}"] = t.detach().clone()
        hooks.append(m.register_forward_hook(hook))
    return acts, hooks


@pytest.mark.parametrize("mode", ["event", "unified"])
def test_action_inputs_never_change_video_activations(mode):
    torch.manual_seed(0)
    m = perturb(WallWM(small()))
    mods = [(f"video.{n}", x) for n, x in m.video.named_modules()]
    mods += [(f"text.{n}", x) for n, x in m.text.named_modules()]
    b1 = batch(m.cfg, mode)
    b2 = b1.replace(actions=torch.randn_like(b1.actions) * 3, state=torch.randn_like(b1.state),
                    event_end=torch.ones_like(b1.event_end))
    runs = []
    for b in (b1, b2):
        acts, hooks = _record(mods)
        out = m(b, generator=torch.Generator().manual_seed(1))
        for h in hooks:
            h.remove()
        runs.append((acts, out))
    (a1, o1), (a2, o2) = runs
    assert len(a1) > 4 * len(list(m.video.blocks)) and a1.keys() == a2.keys()
    for k in a1:
        assert torch.equal(a1[k], a2[k]), f"video activation {k} changed with the action inputs"
    assert torch.equal(o1["video_fm"], o2["video_fm"])
    assert not torch.equal(o1["action_fm"], o2["action_fm"])  # the action side did change


@pytest.mark.parametrize("stop", [True, False])
def test_stop_action_grad_to_video(stop):
    torch.manual_seed(0)
    m = perturb(WallWM(small(stop_action_grad_to_video=stop)))
    out = m(batch(m.cfg, "unified"), generator=torch.Generator().manual_seed(1))
    (out["action_fm"] + out["event_end"] + out["cot"]).backward()
    video = dict((n, p) for n, p in m.named_parameters() if n.split(".")[0] in ("video", "text"))
    touched = [n for n, p in video.items() if p.grad is not None and bool(p.grad.abs().sum() > 0)]
    if stop:
        assert touched == [], f"action loss reached video weights: {touched[:5]}"
    else:
        assert len(touched) > len(video) // 2  # the option is what cuts the path
    unused = {"action.event_embed.weight", "action.end_norm.weight", "action.end_norm.bias",
              "action.end_head.weight", "action.end_head.bias"}  # event-mode only
    assert all(p.grad is not None for n, p in m.named_parameters()
               if n.startswith("action.") and n not in unused)


def test_cross_view_branch_starts_as_identity():
    torch.manual_seed(0)
    m = WallWM(small())
    b = batch(m.cfg)
    ctx, cm = m.text(b.text_ids, b.text_mask, b.event_type)
    t = torch.full((2,), 0.5)
    mid = torch.zeros(2, dtype=torch.long)
    bias = m.cross_view_bias(b, True, 2)
    assert bias is not None and bool(torch.isinf(bias).any())  # the frustum mask bites
    multi, _ = m.video(b.obs, b.future, t, ctx, cm, mid, bias, cross_view=True)
    single, _ = m.video(b.obs, b.future, t, ctx, cm, mid, None, cross_view=False)
    assert torch.equal(multi, single)
    # and each view alone (the single-view tower) gives the same frames
    for v in range(2):
        alone, _ = m.video(b.obs[:, v:v + 1], b.future[:, v:v + 1], t, ctx, cm, mid, None,
                           cross_view=False)
        torch.testing.assert_close(alone[:, 0], multi[:, v], rtol=1e-5, atol=1e-6)


def test_single_view_pretrained_tower_loads_unchanged(tmp_path):
    torch.manual_seed(0)
    pre = perturb(WallWM(small()))
    path = tmp_path / "video.safetensors"
    save_video(pre, path)
    # drop the cross-view branch: what a single-view pretraining run would have written
    from safetensors.torch import load_file, save_file
    sd = {k: v for k, v in load_file(str(path)).items() if ".cross_view." not in k}
    save_file(sd, str(path))
    torch.manual_seed(1)
    m = WallWM(small())
    left = load_pretrained_video(m, path)
    assert left and all(".cross_view." in k for k in left)
    b = batch(m.cfg)
    args = (torch.full((2,), 0.3), torch.zeros(2, dtype=torch.long))
    ctx, cm = pre.text(b.text_ids, b.text_mask, b.event_type)
    want, _ = pre.video(b.obs, b.future, args[0], ctx, cm, args[1], None, cross_view=False)
    ctx2, cm2 = m.text(b.text_ids, b.text_mask, b.event_type)
    got, _ = m.video(b.obs, b.future, args[0], ctx2, cm2, args[1],
                     m.cross_view_bias(b, True, 2), cross_view=True)
    assert torch.equal(got, want)


def test_load_pretrained_video_is_strict(tmp_path):
    path = tmp_path / "v.safetensors"
    save_video(WallWM(small(width=64)), path)
    with pytest.raises(ValueError, match="file has shape"):
        load_pretrained_video(WallWM(small()), path)
    from safetensors.torch import save_file
    save_file({"video.nope": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="unexpected keys.*video.nope"):
        load_pretrained_video(WallWM(small()), path)
    with pytest.raises(FileNotFoundError):
        load_pretrained_video(WallWM(small()), tmp_path / "absent.safetensors")


def test_packed_action_stream_equals_unpacked():
    torch.manual_seed(0)
    m = perturb(WallWM(small()))
    a = m.action
    D, P, Lv = m.cfg.action_width, 2, 5
    lens = [3, 4]
    g = torch.Generator().manual_seed(2)
    ev = [dict(x=torch.randn(P + n, D, generator=g), c=torch.randn(D, generator=g),
               ctx=[torch.randn(Lv, D, generator=g) for _ in a.blocks]) for n in lens]
    alone = []
    for e, n in zip(ev, lens, strict=True):
        mask = sequence_mask(torch.zeros(1, n, dtype=torch.long), P, causal=True)
        pos = torch.cat([torch.zeros(1, P, dtype=torch.long), torch.arange(n)[None] + 1], 1)
        h = a.run_blocks(e["x"][None], e["c"].expand(1, P + n, D),
                         [c[None] for c in e["ctx"]], mask, pos)
        alone.append(h[0])
    # one packed row: [ev0 prefix+steps | ev1 prefix+steps | pad], per-event prefix and context
    L = sum(P + n for n in lens) + 2
    seg = torch.full((1, L), -1)
    pos = torch.zeros(1, L, dtype=torch.long)
    x, c = torch.zeros(1, L, D), torch.zeros(1, L, D)
    mask = torch.zeros(1, L, L, dtype=torch.bool)
    cmask = torch.zeros(1, L, len(lens) * Lv, dtype=torch.bool)
    off = 0
    for i, (e, n) in enumerate(zip(ev, lens, strict=True)):
        sl = slice(off, off + P + n)
        seg[0, sl] = i
        x[0, sl], c[0, sl] = e["x"], e["c"]
        pos[0, off + P:off + P + n] = torch.arange(n) + 1
        mask[0, sl, sl] = sequence_mask(torch.zeros(1, n, dtype=torch.long), P, True)[0]
        cmask[0, sl, i * Lv:(i + 1) * Lv] = True
        off += P + n
    for j in range(off, L):  # padding sees itself only
        mask[0, j, j] = True
        cmask[0, j, :] = True
    ctxs = [torch.cat([e["ctx"][k] for e in ev])[None] for k in range(len(a.blocks))]
    h = a.run_blocks(x, c, ctxs, mask, pos, cmask)[0]
    off = 0
    for i, n in enumerate(lens):
        torch.testing.assert_close(h[off:off + P + n], alone[i], rtol=1e-5, atol=1e-5)
        off += P + n


def test_model_packing_fields_keep_events_apart():
    """WallWM.forward with segment/position ids: a step of event 0 is unaffected by event 1."""
    torch.manual_seed(0)
    m = perturb(WallWM(small()))
    b = batch(m.cfg, event_len=8)
    seg = torch.tensor([[0, 0, 0, 1, 1, 1, 1, -1]] * 2)
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0]] * 2)
    b = b.replace(segment_ids=seg, position_ids=pos, action_mask=seg >= 0)
    torch.manual_seed(3)
    out = m.action(torch.randn(2, 8, 4), torch.full((2,), 0.5),
                   m.action.prefix(b.state, torch.zeros(2, dtype=torch.long)),
                   [torch.randn(2, 5, 32) for _ in m.action.blocks],
                   torch.zeros(2, dtype=torch.long), b.abs_time, seg, pos, causal=False)[0]
    torch.manual_seed(3)
    noisy = torch.randn(2, 8, 4)
    noisy2 = noisy.clone()
    noisy2[:, 3:] += 1.0  # change event 1 and the padding
    prefix = m.action.prefix(b.state, torch.zeros(2, dtype=torch.long))
    ctxs = [torch.randn(2, 5, 32) for _ in m.action.blocks]
    args = (torch.zeros(2, dtype=torch.long), b.abs_time, seg, pos)
    o1 = m.action(noisy, torch.full((2,), 0.5), prefix, ctxs, *args, causal=False)[0]
    o2 = m.action(noisy2, torch.full((2,), 0.5), prefix, ctxs, *args, causal=False)[0]
    assert torch.equal(o1[:, :3], o2[:, :3]) and not torch.equal(o1[:, 3:7], o2[:, 3:7])
    assert out.shape == (2, 8, 4)
    losses = m(b, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in losses.values())
