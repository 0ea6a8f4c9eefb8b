"""WALL-WM: the world-action model, video tower + action tower + reasoning on one set of weights.

    text ids ─► TextEncoder ─► ctx ─┐
    obs, noisy future ─► VideoStream (DiT, cross-view branch) ─► future velocity  [video_fm]
                                 │ features of every block (one way, optionally detached)
                                 ▼
    state, event type | CoT latents, noisy actions ─► ActionStream ─► action velocity [action_fm]
                                                                   └► end-of-event   [event_end]
    instruction + obs features ─► ReasoningModule ─► K CoT latents (unified mode)   [cot]

Event mode: next-event description (+ type) -> boundary frame and a variable-length action
sequence (causal within the event, padding masked). Unified mode: instruction -> CoT latents ->
fixed-length chunk of `action_horizon`. The two modes differ only in inputs and masks.

Inference (`predict`): the video tower runs once at the anchor noise level and its coupled
features serve all `denoise_steps` action steps; `recompute_video=True` reruns it every step
(video and action denoised jointly), the baseline of benchmarks/bench_video_cache.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wallwm.model.action_stream import ActionStream
from wallwm.model.batch import ModelInputError, WorldActionBatch, check_batch
from wallwm.model.config import LossWeights, WallWMConfig
from wallwm.model.flow_matching import (
    euler_step,
    interpolate,
    sample_t,
    timesteps,
    velocity_target,
    weighted_mse,
)
from wallwm.model.frustum import attention_bias, frustum_mask_batch
from wallwm.model.layers import IOLinear
from wallwm.model.patches import patchify
from wallwm.model.reasoning import ReasoningConfig, ReasoningModule
from wallwm.model.text import TextEncoder
from wallwm.model.tube_mask import sample_tube_mask, tube_loss_weights
from wallwm.model.video_stream import VideoStream

MODE_ID = {"event": 0, "unified": 1}


class WallWM(nn.Module):
    def __init__(self, cfg: WallWMConfig):
        super().__init__()
        self.cfg = cfg
        self.text = TextEncoder(cfg.vocab_size, cfg.width, cfg.text_depth, cfg.heads,
                                cfg.max_text_len, cfg.event_types, cfg.mlp_ratio)
        self.video = VideoStream(cfg)
        self.action = ActionStream(cfg)
        self.reasoning = ReasoningModule(ReasoningConfig(
            width=cfg.width, depth=cfg.vlm_depth, heads=cfg.heads, relay_depth=cfg.relay_depth,
            num_latents=cfg.cot_latents, vocab_size=cfg.vocab_size,
            max_text_len=cfg.max_text_len, visual_dim=cfg.width))
        self._frustum_cache: dict[bytes, Tensor] = {}

    # ------------------------------------------------------------------ parameter sets
    def video_parameters(self) -> list[nn.Parameter]:
        """The video side: video tower and its text encoder (frozen in action pretraining)."""
        return [*self.text.parameters(), *self.video.parameters()]

    def action_parameters(self) -> list[nn.Parameter]:
        """The action tower, including its coupling adapters."""
        return list(self.action.parameters())

    def reasoning_parameters(self) -> list[nn.Parameter]:
        """The VLM branch, without its frozen text decoder."""
        return [p for n, p in self.reasoning.named_parameters() if not n.startswith("decoder.")]

    # ------------------------------------------------------------------ pieces
    def _cross_view_bias(self, b: WorldActionBatch, training: bool) -> Tensor | None:
        """Additive (B, V*N, V*N) frustum bias, or None (off, or no calibrated camera)."""
        on = self.cfg.frustum_mask_in_training if training else self.cfg.frustum_mask_at_inference
        if not on or not bool(b.calibrated.any()):
            return None
        key = b"".join(t.detach().cpu().numpy().tobytes()
                       for t in (b.intrinsics, b.extrinsics, b.calibrated))
        mask = self._frustum_cache.get(key)
        if mask is None:
            mask = frustum_mask_batch(b.intrinsics, b.extrinsics, b.calibrated,
                                      (self.cfg.image_size, self.cfg.image_size), self.cfg.patch,
                                      self.cfg.depth_range)
            if len(self._frustum_cache) > 64:
                self._frustum_cache.clear()
            self._frustum_cache[key] = mask
        return attention_bias(mask.to(b.obs.device), b.obs.dtype)  # (B, V*N, V*N)

    def _event_type(self, b: WorldActionBatch) -> Tensor:
        if b.event_type is None:
            return torch.full((b.batch_size,), -1, dtype=torch.long, device=b.obs.device)
        return b.event_type

    def _ids(self, b: WorldActionBatch, mode: str) -> Tensor:
        return torch.full((b.batch_size,), MODE_ID[mode], dtype=torch.long, device=b.obs.device)

    def _cot(self, b: WorldActionBatch, feats: list[Tensor]) -> Tensor:
        """K CoT latents from the instruction and the observation frame's video features."""
        vis = feats[-1][:, :, 0]  # (B, V, N, Dv) observation-frame tokens, last block
        vis = vis.reshape(vis.shape[0], -1, vis.shape[-1])  # (B, V*N, Dv)
        if self.cfg.stop_action_grad_to_video:
            vis = vis.detach()
        return self.reasoning(b.text_ids, b.text_mask.bool(), vis)  # (B, K, Dv)

    def _action_ids(self, b: WorldActionBatch, La: int) -> tuple[Tensor, Tensor]:
        """segment ids (-1 padding) and position ids of the action steps."""
        if b.segment_ids is not None and b.position_ids is not None:
            return b.segment_ids, b.position_ids
        B, dev = b.batch_size, b.obs.device
        mask = b.action_mask if b.action_mask is not None else torch.ones(
            B, La, dtype=torch.bool, device=dev)
        seg = torch.where(mask.bool(), 0, -1)
        pos = torch.arange(La, device=dev)[None].expand(B, La)
        return seg, pos

    # ------------------------------------------------------------------ training
    def forward(self, batch: WorldActionBatch, generator: torch.Generator | None = None,
                loss_weights: LossWeights | None = None) -> dict[str, Tensor]:
        """Losses of one batch: video_fm, action_fm, event_end, cot and their weighted `loss`."""
        cfg, b, mode = self.cfg, batch, batch.mode
        check_batch(b, cfg, need_targets=True, need_calibration=self._needs_calibration(True))
        lw = loss_weights or cfg.loss
        assert b.future is not None and b.actions is not None and b.action_mask is not None
        B, V, Fn = b.future.shape[:3]
        dev = b.obs.device
        # video tower: its own noise level, anchor-level for a share of samples (inference uses it)
        t_v = sample_t(B, generator, "logit_normal").to(dev)
        anchor = torch.rand(B, generator=generator).to(dev) < cfg.anchor_prob
        t_v = torch.where(anchor, torch.full_like(t_v, cfg.video_anchor_t), t_v)  # (B,)
        noise_v = torch.randn(b.future.shape, generator=generator).to(dev)
        x_v = interpolate(b.future, noise_v, t_v)  # (B, V, F, 3, H, W)
        tube = None
        if self.training and cfg.tube_mask_prob > 0:
            tube = sample_tube_mask(B, V, Fn + 1, cfg.grid, cfg.grid, cfg.tube_mask_prob,
                                    cfg.tube_size, generator, dev)  # (B, V, 1+F, h, w)
        ctx, ctx_mask = self.text(b.text_ids, b.text_mask.bool(), self._event_type(b))
        mode_id = self._ids(b, mode)
        v_pred, feats = self.video(b.obs, x_v, t_v, ctx, ctx_mask, mode_id,
                                   self._cross_view_bias(b, self.training), tube)
        w = None if tube is None else tube_loss_weights(tube[:, :, 1:], cfg.tube_loss_weight)
        target_v = velocity_target(b.future, noise_v)
        video_fm = weighted_mse(patchify(v_pred, cfg.patch),  # (B, V, F, N, P)
                                patchify(target_v, cfg.patch),
                                None if w is None else w.flatten(3))  # (B, V, F, N)
        # action tower: independent noise level, reads the video features one way
        La = b.actions.shape[1]
        t_a = sample_t(B, generator, "beta").to(dev)
        noise_a = torch.randn(b.actions.shape, generator=generator).to(dev)
        x_a = interpolate(b.actions, noise_a, t_a)  # (B, La, A)
        ctxs = self.action.coupling(feats, t_v, b.abs_time, cfg.stop_action_grad_to_video)
        cot_latents = self._cot(b, feats) if mode == "unified" else None
        prefix = self.action.prefix(b.state, mode_id, self._event_type(b), cot_latents)
        seg, pos = self._action_ids(b, La)
        v_a, end_logits = self.action(x_a, t_a, prefix, ctxs, mode_id, b.abs_time, seg, pos,
                                      causal=mode == "event")
        valid = b.action_mask.bool() & (seg >= 0)  # (B, La)
        action_fm = weighted_mse(v_a, velocity_target(b.actions, noise_a), valid)
        zero = v_a.new_zeros(())
        event_end = zero
        if mode == "event" and b.event_end is not None:
            bce = F.binary_cross_entropy_with_logits(end_logits, b.event_end.float(),
                                                     reduction="none")  # (B, La)
            event_end = (bce * valid).sum() / valid.sum().clamp_min(1)
        cot = zero
        if cot_latents is not None and b.cot_ids is not None and b.cot_mask is not None:
            cot = self.reasoning.cot_loss(cot_latents, b.cot_ids, b.cot_mask.bool())
        loss = (lw.video * video_fm + lw.action * action_fm + lw.event_end * event_end
                + lw.cot * cot)
        return {"loss": loss, "video_fm": video_fm, "action_fm": action_fm,
                "event_end": event_end, "cot": cot}

    def _needs_calibration(self, training: bool) -> bool:
        return self.cfg.frustum_mask_in_training if training else self.cfg.frustum_mask_at_inference

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, batch: WorldActionBatch, mode: str | None = None, steps: int | None = None,
                recompute_video: bool | None = None, return_video: bool = True,
                generator: torch.Generator | None = None) -> dict[str, Any]:
        """Sample actions (and the future frames) for `mode` ("event" | "unified").

        -> actions (B, La, A); action_mask (B, La) bool (event mode: up to and including the
        first step whose end probability > 0.5); end_prob (B, La); frames (B, V, F, 3, H, W) or
        None; cot_latents (B, K, D) or None. Video features are computed once at the anchor
        noise level and reused by every action step unless `recompute_video`.
        """
        cfg, b = self.cfg, batch
        mode = mode or b.mode
        steps = steps or cfg.denoise_steps
        recompute = cfg.recompute_video if recompute_video is None else recompute_video
        check_batch(b, cfg, need_targets=False, need_calibration=self._needs_calibration(False),
                    mode=mode)
        B, V = b.obs.shape[:2]
        dev, S = b.obs.device, cfg.image_size
        Fn = 1 if mode == "event" else cfg.frames
        La = cfg.max_event_len if mode == "event" else cfg.action_horizon
        mode_id, et = self._ids(b, mode), self._event_type(b)
        ctx, ctx_mask = self.text(b.text_ids, b.text_mask.bool(), et)
        bias = self._cross_view_bias(b, training=False)
        x_v = torch.randn(B, V, Fn, cfg.channels, S, S, generator=generator).to(dev)
        x_a = torch.randn(B, La, cfg.action_dim, generator=generator).to(dev)
        seg = torch.zeros(B, La, dtype=torch.long, device=dev)
        pos = torch.arange(La, device=dev)[None].expand(B, La)

        def video_at(t: float) -> tuple[Tensor, list[Tensor], Tensor]:
            """velocity, coupled contexts per action block, last block's features."""
            tt = torch.full((B,), t, device=dev)
            v, feats = self.video(b.obs, x_v, tt, ctx, ctx_mask, mode_id, bias)
            return v, self.action.coupling(feats, tt, b.abs_time, False), feats[-1]

        sched = timesteps(steps)  # (t, dt) from t = 1 down
        anchor_k = next((k for k, (t, _) in enumerate(sched)
                         if t <= cfg.video_anchor_t + 1e-6), len(sched) - 1)
        if not recompute:  # denoise the video down to the anchor, cache that pass's features
            for t, dt in sched[:anchor_k]:
                x_v = euler_step(x_v, video_at(t)[0], dt)
            v_anchor, ctxs, last = video_at(sched[anchor_k][0])
        prefix = cot = None
        end_logits = x_a.new_zeros(B, La)
        for t, dt in sched:
            if recompute:  # joint denoising: the video tower at its current level, every step
                v, ctxs, last = video_at(t)
                x_v = euler_step(x_v, v, dt)
            if prefix is None:
                cot = self._cot(b, [last]) if mode == "unified" else None
                prefix = self.action.prefix(b.state, mode_id, et, cot)
            t_a = torch.full((B,), t, device=dev)
            v_a, end_logits = self.action(x_a, t_a, prefix, ctxs, mode_id, b.abs_time,
                                          seg, pos, causal=mode == "event")
            x_a = euler_step(x_a, v_a, dt)  # (B, La, A)
        frames = None
        if return_video:
            if not recompute:  # finish the video from the cached anchor pass
                x_v = euler_step(x_v, v_anchor, sched[anchor_k][1])
                for t, dt in sched[anchor_k + 1:]:
                    x_v = euler_step(x_v, video_at(t)[0], dt)
            frames = x_v.clamp(-1, 1)  # (B, V, F, 3, H, W)
        end_prob = torch.sigmoid(end_logits)
        if mode == "event":
            ended = (end_prob > 0.5).long()
            after = (ended.cumsum(1) - ended) > 0  # steps after the first predicted end
            action_mask = ~after
        else:
            action_mask = torch.ones(B, La, dtype=torch.bool, device=dev)
        return {"actions": x_a, "action_mask": action_mask, "end_prob": end_prob,
                "frames": frames, "cot_latents": cot, "mode": mode}


# ---------------------------------------------------------------------- pretrained video tower
def video_state_dict(model: WallWM) -> dict[str, Tensor]:
    """The video side's weights (`text.*`, `video.*`) as stored by `save_video`."""
    return {k: v for k, v in model.state_dict().items() if k.split(".")[0] in ("text", "video")}


def save_video(model: WallWM, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in video_state_dict(model).items()},
              str(path))


def load_pretrained_video(model: WallWM, path: str | Path,
                          allow_missing_cross_view: bool = True) -> list[str]:
    """Load `text.*` / `video.*` weights from a local safetensors file, strictly.

    Every key must exist in the model with the same shape, and every video-side key of the model
    must be in the file, except (when `allow_missing_cross_view`) the cross-view branches: a
    single-view tower loads into a multi-view model, whose zero gates keep it unchanged.
    Returns the keys left at their initial values. Raises ValueError listing every problem.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_pretrained_video: no file at {path}")
    sd = load_file(str(path))
    own = video_state_dict(model)
    problems = []
    unexpected = sorted(set(sd) - set(own))
    if unexpected:
        problems.append(f"unexpected keys (not in the video tower): {unexpected[:10]}"
                        + (f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else ""))
    missing = sorted(k for k in set(own) - set(sd)
                     if not (allow_missing_cross_view and ".cross_view." in k))
    if missing:
        problems.append(f"missing keys: {missing[:10]}"
                        + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    for k in sorted(set(sd) & set(own)):
        if tuple(sd[k].shape) != tuple(own[k].shape):
            problems.append(f"{k}: file has shape {tuple(sd[k].shape)}, model needs "
                            f"{tuple(own[k].shape)} (check the preset's width/patch/views)")
    if problems:
        raise ValueError(f"load_pretrained_video({path}): " + "; ".join(problems))
    model.load_state_dict(sd, strict=False)
    return sorted(set(own) - set(sd))


# ---------------------------------------------------------------------- optimizer groups
def param_groups_for_muon(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(muon, adamw): Muon takes the weights of hidden nn.Linear layers (attention, MLP, adaLN);
    AdamW takes everything else: embeddings, norms, biases, free parameters (gates, camera RoPE,
    positions), and the input/output layers (`IOLinear`: patch/action/state inputs, heads, the
    reasoning module's visual input and decoder projection). Frozen parameters go in neither.
    Selection is by module type, not by ndim."""
    io_names = {"reasoning.visual_in", "reasoning.to_decoder"}
    muon: list[nn.Parameter] = []
    seen: set[int] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and not isinstance(mod, IOLinear) and name not in io_names:
            w = mod.weight
            if w.requires_grad and id(w) not in seen:
                muon.append(w)
                seen.add(id(w))
    adamw = []
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            adamw.append(p)
            seen.add(id(p))
    return muon, adamw


def build(params: Any = None, preset: str | None = None, device: str | torch.device = "cpu",
          **overrides: Any) -> WallWM:
    """A model from `Params` / `ModelParams` (or the default config when None); device "meta"
    builds without memory (parameter counts)."""
    cfg = WallWMConfig(**overrides) if params is None else WallWMConfig.from_params(
        params, preset, **overrides)
    with torch.device(device):
        return WallWM(cfg)


__all__ = ["ModelInputError", "WallWM", "build", "load_pretrained_video",
           "param_groups_for_muon", "save_video", "video_state_dict"]
