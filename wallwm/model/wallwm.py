"""WALL-WM: the world-action model, video tower + action tower + reasoning on one set of weights.

    text ids ─► TextEncoder ─► ctx ─┐
    obs, noisy future ─► VideoStream (DiT, cross-view branch) ─► future x̂ / velocity  [video_fm]
                                 │ features of every block (one way, optionally detached)
                                 ▼
    state, event type | CoT latents, noisy actions ─► ActionStream ─► action velocity [action_fm]
                                                                   └► end-of-event   [event_end]
    instruction + obs features ─► ReasoningModule ─► K CoT latents (unified mode)   [cot]

Event mode: next-event description (+ type) -> boundary frame and a variable-length action
sequence (causal within the event, padding masked). Unified mode: instruction -> CoT latents ->
fixed-length chunk of `action_horizon`. The two modes differ only in inputs and masks.

The inference interface (what `predict`, evaluation, distillation and ONNX export use), pure
tensors with no Python-side caches and no branches on tensor values:

    cond = model.encode(batch, mode, video_noise)     # text, obs, CoT latents, cross-view bias,
                                                      # the coupled video features at the anchor
    v, end_logits = model.action_velocity(x_t, t, cond)   # one action denoising step
    v_video = model.video_velocity(x_t, t, cond)          # one video denoising step
    out = model.sample(cond, noise, steps)                # Euler from t = 1 with explicit noise

Training and deployment see the action tower in the same condition: its coupled video features
always come from one video pass at the anchor noise level (`video_anchor_t`; 1.0 = the future
frames are pure noise, so no ground-truth future ever reaches the action tower), exactly what
`encode` computes; the video loss trains the tower at random noise levels on its own pass.
Actions and state are normalized inside (`model.norm`, the train split's statistics, saved in
every checkpoint); batches and `predict` are in dataset units.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
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
    expand_t,
    interpolate,
    sample_t,
    timesteps,
    velocity_target,
    weighted_mse,
)
from wallwm.model.frustum import attention_bias, frustum_mask_batch
from wallwm.model.layers import IOLinear
from wallwm.model.normalize import NormalizationMissing, Normalizer
from wallwm.model.patches import patchify
from wallwm.model.reasoning import ReasoningConfig, ReasoningModule
from wallwm.model.text import TextEncoder
from wallwm.model.tube_mask import sample_tube_mask, tube_loss_weights
from wallwm.model.video_stream import VideoStream

MODE_ID = {"event": 0, "unified": 1}


@dataclass
class Cond:
    """What the samplers need, computed once per observation (the export's encoder outputs).

    obs (B, V, 3, H, W); ctx (B, Lt+1, D), ctx_mask (B, Lt+1) bool: the video tower's text and
    event-type context; mode_id (B,) long; abs_time (B,); prefix (B, P, Da): the action tower's
    state + event-type token (event) or state + K CoT latents (unified); action_ctx: one
    (B, V*T*N, Da) coupled video context per action block, from the anchor pass; bias
    (B, T, V*N, V*N) additive cross-view bias or None; cot (B, K, D) or None.
    """

    mode: str
    obs: Tensor
    ctx: Tensor
    ctx_mask: Tensor
    mode_id: Tensor
    abs_time: Tensor
    prefix: Tensor
    action_ctx: list[Tensor]
    bias: Tensor | None = None
    cot: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.obs.shape[0])

    def tensors(self) -> dict[str, Tensor]:
        """Flat, named tensors (the export's encoder outputs): action_ctx.i per block."""
        out: dict[str, Tensor] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "action_ctx":
                out.update({f"action_ctx.{i}": c for i, c in enumerate(v)})
            elif isinstance(v, Tensor):
                out[f.name] = v
        return out

    @classmethod
    def from_tensors(cls, mode: str, t: dict[str, Tensor]) -> Cond:
        n = sum(1 for k in t if k.startswith("action_ctx."))
        return cls(mode=mode, obs=t["obs"], ctx=t["ctx"], ctx_mask=t["ctx_mask"],
                   mode_id=t["mode_id"], abs_time=t["abs_time"], prefix=t["prefix"],
                   action_ctx=[t[f"action_ctx.{i}"] for i in range(n)], bias=t.get("bias"),
                   cot=t.get("cot"))


def linear_gain(t: Tensor, like: Tensor) -> Tensor:
    """(2t - 1) / (t^2 + (1 - t)^2), broadcast to `like`: E[v | x_t] = gain * x_t for
    zero-mean unit-variance data (x_t = t n + (1 - t) x_0, v = n - x_0)."""
    tt = expand_t(t, like)
    return (2 * tt - 1) / (tt.pow(2) + (1 - tt).pow(2))


def to_velocity(out: Tensor, x_t: Tensor, t: Tensor, target: str, min_t: float) -> Tensor:
    """A head's output -> velocity. target "v": the output is the velocity; "x": the output is
    the clean sample x̂ and v = (x_t - x̂) / t (clamped at `min_t`), full rank through x_t."""
    if target == "v":
        return out
    return (x_t - out) / expand_t(t.clamp_min(min_t), x_t)


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
        self.norm = Normalizer(cfg.action_dim, cfg.state_dim)

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
    def cross_view_bias(self, b: WorldActionBatch, on: bool, frames: int) -> Tensor | None:
        """Additive (B, T, V*N, V*N) frustum bias for T = `frames` frames (observation first),
        or None when `on` is False. Calibration is per sample; a moving camera's extrinsics may
        be per frame, (B, V, T, 4, 4), and then each frame gets its own mask."""
        if not on or b.intrinsics is None or b.extrinsics is None:
            return None
        if not bool(b.calibrated.any()):  # host-side (the mask is computed outside any graph)
            return None
        hw, cfg = (self.cfg.image_size, self.cfg.image_size), self.cfg
        ext = b.extrinsics
        if ext.dim() == 4:  # static for the item: one mask serves every frame
            m = frustum_mask_batch(b.intrinsics, ext, b.calibrated, hw, cfg.patch,
                                   cfg.depth_range)  # (B, VN, VN)
            mask = m[:, None].expand(-1, frames, -1, -1)
        else:
            if ext.shape[2] != frames:
                raise ModelInputError(
                    f"batch.extrinsics has {ext.shape[2]} frames of poses; the video tower "
                    f"sees {frames} (observation + future): give one pose per frame")
            mask = torch.stack([frustum_mask_batch(b.intrinsics, ext, b.calibrated, hw,
                                                   cfg.patch, cfg.depth_range, frame=t)
                                for t in range(frames)], 1)  # (B, T, VN, VN)
        return attention_bias(mask.to(b.obs.device), b.obs.dtype)

    def _event_type(self, b: WorldActionBatch) -> Tensor:
        if b.event_type is None:
            return torch.full((b.batch_size,), -1, dtype=torch.long, device=b.obs.device)
        return b.event_type

    def _ids(self, b: WorldActionBatch, mode: str) -> Tensor:
        return torch.full((b.batch_size,), MODE_ID[mode], dtype=torch.long, device=b.obs.device)

    def future_frames(self, mode: str) -> int:
        return 1 if mode == "event" else self.cfg.frames

    def action_len(self, mode: str) -> int:
        return self.cfg.max_event_len if mode == "event" else self.cfg.action_horizon

    def _video_out(self, obs: Tensor, x_t: Tensor, t: Tensor, ctx: Tensor, ctx_mask: Tensor,
                   mode_id: Tensor, bias: Tensor | None, tube: Tensor | None = None
                   ) -> tuple[Tensor, list[Tensor]]:
        """Velocity of the noisy future (B, V, F, 3, H, W) and every block's features."""
        out, feats = self.video(obs, x_t, t, ctx, ctx_mask, mode_id, bias, tube)
        if self.cfg.video_target == "x" and self.cfg.video_residual:
            out = out + obs[:, :, None]  # x̂ = observation + predicted change
        return to_velocity(out, x_t, t, self.cfg.video_target, self.cfg.x_pred_min_t), feats

    def _anchor(self, b: WorldActionBatch, mode: str, ctx: Tensor, ctx_mask: Tensor,
                mode_id: Tensor, bias: Tensor | None, video_noise: Tensor,
                future: Tensor | None = None) -> list[Tensor]:
        """Every video block's features at the anchor level `video_anchor_t`: the one video
        pass the action tower reads. The future input is `video_noise` at anchor 1; below it,
        `future` (training: the truth noised to the anchor) or, at inference, the model's own
        sample denoised from 1 down to the anchor with the `denoise_steps` schedule."""
        cfg, B, dev = self.cfg, b.batch_size, b.obs.device
        ta = float(cfg.video_anchor_t)
        if ta >= 1.0 - 1e-6:
            x = video_noise
        elif future is not None:
            x = interpolate(future, video_noise, torch.full((B,), ta, device=dev))
        else:
            x = video_noise
            for t, dt in timesteps(cfg.denoise_steps):
                if t <= ta + 1e-6:
                    break
                v, _ = self._video_out(b.obs, x, torch.full((B,), t, device=dev), ctx, ctx_mask,
                                       mode_id, bias)
                x = euler_step(x, v, dt)
        _, feats = self._video_out(b.obs, x, torch.full((B,), ta, device=dev), ctx, ctx_mask,
                                   mode_id, bias)
        return feats

    def visual_tokens(self, b: WorldActionBatch, mode: str, video_noise: Tensor) -> Tensor:
        """The observation-frame tokens (B, V*N, D) of the last video block of the anchor pass:
        what the reasoning module reads (no gradient to the video side)."""
        with torch.no_grad():
            et, mode_id = self._event_type(b), self._ids(b, mode)
            ctx, ctx_mask = self.text(b.text_ids, b.text_mask.bool(), et)
            last = self._anchor(b, mode, ctx, ctx_mask, mode_id, None, video_noise)[-1]
        return last[:, :, 0].reshape(b.batch_size, -1, last.shape[-1])

    def _cot(self, b: WorldActionBatch, last: Tensor, mode: str = "staircase") -> Tensor:
        """K CoT latents from the instruction and the observation-frame tokens of the last
        video block (B, V, T, N, Dv) of the anchor pass."""
        vis = last[:, :, 0]  # (B, V, N, Dv) observation-frame tokens
        vis = vis.reshape(vis.shape[0], -1, vis.shape[-1])  # (B, V*N, Dv)
        if self.cfg.stop_action_grad_to_video:
            vis = vis.detach()
        return self.reasoning(b.text_ids, b.text_mask.bool(), vis, mode=mode)  # (B, K, Dv)

    def _condition(self, b: WorldActionBatch, mode: str, bias_on: bool,
                   video_noise: Tensor, future: Tensor | None = None,
                   with_cot: bool = True, state_normalized: bool = False) -> Cond:
        """`encode` without its checks: the training path calls it with the training-time mask
        setting (and the truth below the anchor), validation with the inference setting, the
        ONNX export with `state_normalized` (its host normalizes, see wallwm/release)."""
        cfg = self.cfg
        et, mode_id = self._event_type(b), self._ids(b, mode)
        bias = self.cross_view_bias(b, bias_on, 1 + video_noise.shape[2])
        # with stop_action_grad_to_video no action loss can reach the video side: no graph
        grad = torch.is_grad_enabled() and not cfg.stop_action_grad_to_video
        with torch.set_grad_enabled(grad):
            ctx, ctx_mask = self.text(b.text_ids, b.text_mask.bool(), et)
            feats = self._anchor(b, mode, ctx, ctx_mask, mode_id, bias, video_noise, future)
        ta = torch.full((b.batch_size,), float(cfg.video_anchor_t), device=b.obs.device)
        action_ctx = self.action.coupling(feats, ta, b.abs_time, cfg.stop_action_grad_to_video)
        cot = self._cot(b, feats[-1]) if mode == "unified" and with_cot else None
        state = b.state if state_normalized else self.norm.state(b.state)
        prefix = self.action.prefix(state, mode_id, et, cot)
        return Cond(mode, b.obs, ctx, ctx_mask, mode_id, b.abs_time, prefix, action_ctx, bias,
                    cot)

    # ------------------------------------------------------------------ inference interface
    def encode(self, batch: WorldActionBatch, mode: str | None = None,
               video_noise: Tensor | None = None,
               generator: torch.Generator | None = None) -> Cond:
        """The condition of one observation batch (dataset units in, see `Cond`).

        video_noise (B, V, F, 3, H, W), F = 1 (event) or `frames` (unified): the future frames'
        noise of the anchor pass; drawn from `generator` when None."""
        mode = mode or batch.mode
        self.norm.require()
        check_batch(batch, self.cfg, need_targets=False,
                    need_calibration=self.cfg.frustum_mask_at_inference, mode=mode)
        if video_noise is None:
            video_noise = self.draw_noise(batch, mode, generator)[0]
        return self._condition(batch, mode, self.cfg.frustum_mask_at_inference, video_noise)

    def draw_noise(self, batch: WorldActionBatch, mode: str,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(video noise (B, V, F, 3, H, W), action noise (B, La, A)), in this order from
        `generator` (on the CPU, so a seed gives the same noise on any device)."""
        cfg, B, V = self.cfg, batch.batch_size, batch.obs.shape[1]
        S, dev = cfg.image_size, batch.obs.device
        xv = torch.randn(B, V, self.future_frames(mode), cfg.channels, S, S, generator=generator)
        xa = torch.randn(B, self.action_len(mode), cfg.action_dim, generator=generator)
        return xv.to(dev), xa.to(dev)

    def action_velocity(self, x_t: Tensor, t: Tensor, cond: Cond) -> tuple[Tensor, Tensor]:
        """One action step: x_t (B, La, A) normalized actions at noise level t (B,) ->
        velocity (B, La, A) and end-of-event logits (B, La)."""
        B, La = x_t.shape[:2]
        seg = torch.zeros(B, La, dtype=torch.long, device=x_t.device)
        pos = torch.arange(La, device=x_t.device)[None].expand(B, La)
        out, end = self.action(x_t, t, cond.prefix, cond.action_ctx, cond.mode_id, cond.abs_time,
                               seg, pos, causal=cond.mode == "event")
        return self._action_v(out, x_t, t), end

    def _action_v(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The action head's output -> velocity (skip term, x- or v-target)."""
        cfg = self.cfg
        if cfg.action_target == "v" and cfg.action_skip:
            out = out + linear_gain(t, x_t) * x_t
        return to_velocity(out, x_t, t, cfg.action_target, cfg.x_pred_min_t)

    def video_velocity(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """One video step: x_t (B, V, F, 3, H, W) at noise level t (B,) -> velocity."""
        return self._video_out(cond.obs, x_t, t, cond.ctx, cond.ctx_mask, cond.mode_id,
                               cond.bias)[0]

    def sample(self, cond: Cond, noise: Tensor, steps: int | None = None
               ) -> dict[str, Tensor]:
        """Euler from t = 1 with the given action noise (B, La, A) -> normalized actions
        (B, La, A) and the last step's end logits (B, La). Deterministic given its inputs."""
        x = noise
        end = x.new_zeros(x.shape[:2])
        for t, dt in timesteps(steps or self.cfg.denoise_steps):
            v, end = self.action_velocity(x, torch.full(x.shape[:1], t, device=x.device), cond)
            x = euler_step(x, v, dt)
        return {"actions": x, "end_logits": end}

    def sample_video(self, cond: Cond, noise: Tensor, steps: int | None = None) -> Tensor:
        """The imagined future frames (B, V, F, 3, H, W) in [-1, 1] from video noise."""
        x = noise
        for t, dt in timesteps(steps or self.cfg.denoise_steps):
            x = euler_step(x, self.video_velocity(
                x, torch.full(x.shape[:1], t, device=x.device), cond), dt)
        return x.clamp(-1, 1)

    # ------------------------------------------------------------------ training
    def forward(self, batch: WorldActionBatch, generator: torch.Generator | None = None,
                loss_weights: LossWeights | None = None) -> dict[str, Tensor]:
        """Losses of one batch (dataset units in): video_fm, action_fm, event_end, cot and their
        weighted `loss`, plus `baseline/*`: trivial predictors scored on the same noise draws
        (never part of `loss`). Only the towers a nonzero weight needs are run."""
        cfg, b, mode = self.cfg, batch, batch.mode
        check_batch(b, cfg, need_targets=True, need_calibration=cfg.frustum_mask_in_training)
        lw = loss_weights or cfg.loss
        assert b.future is not None and b.actions is not None and b.action_mask is not None
        B, V, Fn = b.future.shape[:3]
        dev = b.obs.device
        zero = b.obs.new_zeros(())
        losses = {"video_fm": zero, "action_fm": zero, "event_end": zero, "cot": zero}
        et, mode_id = self._event_type(b), self._ids(b, mode)
        if lw.video > 0:  # the video tower at its own random noise level, tube-masked
            ctx, ctx_mask = self.text(b.text_ids, b.text_mask.bool(), et)
            t_v = sample_t(B, generator, "logit_normal").to(dev)
            noise_v = torch.randn(b.future.shape, generator=generator).to(dev)
            at_anchor = torch.rand(B, generator=generator).to(dev) < cfg.video_anchor_share
            t_v = torch.where(at_anchor, torch.full_like(t_v, cfg.video_anchor_t), t_v)
            x_v = interpolate(b.future, noise_v, t_v)  # (B, V, F, 3, H, W)
            tube = None
            if self.training and cfg.tube_mask_prob > 0:
                tube = sample_tube_mask(B, V, Fn + 1, cfg.grid, cfg.grid, cfg.tube_mask_prob,
                                        cfg.tube_size, generator, dev)  # (B, V, 1+F, h, w)
            bias = self.cross_view_bias(b, cfg.frustum_mask_in_training, 1 + Fn)
            v_pred, _ = self._video_out(b.obs, x_v, t_v, ctx, ctx_mask, mode_id, bias, tube)
            w = None if tube is None else tube_loss_weights(tube[:, :, 1:], cfg.tube_loss_weight)
            w = None if w is None else w.flatten(3)  # (B, V, F, N)
            # "x": velocity errors times t are clean-frame errors (x̂ = x_t - t v), every level
            # alike; "v": as they are (the clean-frame error weighted 1 / t^2)
            scale = (t_v.clamp_min(cfg.x_pred_min_t) if cfg.video_loss_space == "x"
                     else torch.ones_like(t_v)).view(B, 1, 1, 1, 1, 1)
            target = patchify(velocity_target(b.future, noise_v) * scale, cfg.patch)  # B,V,F,N,P
            losses["video_fm"] = weighted_mse(patchify(v_pred * scale, cfg.patch), target, w)
            with torch.no_grad():  # trivial baselines on the same draws (reported, not trained)
                copy = b.obs[:, :, None].expand_as(b.future)  # x̂ = the observation frame
                v_copy = to_velocity(copy, x_v, t_v, "x", cfg.x_pred_min_t)
                losses["baseline/video_fm_copy_obs"] = weighted_mse(
                    patchify(v_copy * scale, cfg.patch), target, w)
                losses["baseline/video_fm_zero_v"] = weighted_mse(torch.zeros_like(target),
                                                                  target, w)
        need_cot = mode == "unified" and lw.cot > 0 and b.cot_ids is not None
        if lw.action > 0 or lw.event_end > 0 or need_cot:
            noise_v = torch.randn(b.future.shape, generator=generator).to(dev)
            cond = self._condition(b, mode, cfg.frustum_mask_in_training, noise_v, b.future)
            if lw.action > 0 or lw.event_end > 0:
                losses.update(self.action_losses(b, cond, generator))
            if need_cot:
                assert cond.cot is not None and b.cot_mask is not None
                losses["cot"] = self.reasoning.cot_loss(cond.cot, b.cot_ids, b.cot_mask.bool())
                with torch.no_grad():
                    losses["baseline/cot_no_latents"] = self.reasoning.cot_loss(
                        None, b.cot_ids, b.cot_mask.bool())
        losses["loss"] = (lw.video * losses["video_fm"] + lw.action * losses["action_fm"]
                          + lw.event_end * losses["event_end"] + lw.cot * losses["cot"])
        return losses

    def action_losses(self, b: WorldActionBatch, cond: Cond,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Flow-matching loss of the action tower (normalized units) and the end-of-event BCE
        under `cond`: training passes its training-condition cond, validation the deployment
        one from `encode`, with the same noise draws."""
        assert b.actions is not None and b.action_mask is not None
        B, La = b.actions.shape[:2]
        dev = b.obs.device
        a = self.norm.action(b.actions)  # (B, La, A)
        t_a = sample_t(B, generator, "beta").to(dev)
        noise_a = torch.randn(a.shape, generator=generator).to(dev)
        x_a = interpolate(a, noise_a, t_a)  # (B, La, A)
        seg, pos = self._action_ids(b, La)
        out, end_logits = self.action(x_a, t_a, cond.prefix, cond.action_ctx, cond.mode_id,
                                      b.abs_time, seg, pos, causal=cond.mode == "event")
        v_a = self._action_v(out, x_a, t_a)
        valid = b.action_mask.bool() & (seg >= 0)  # (B, La)
        target = velocity_target(a, noise_a)
        res = {"action_fm": weighted_mse(v_a, target, valid), "event_end": v_a.new_zeros(())}
        with torch.no_grad():  # trivial baselines on the same draws (reported, not trained)
            # v = 0 (the zero-initialized head): 1 + E[a^2]; the best predictor that knows only
            # each dimension's mean 0 and variance 1 (normalized units): E[v | x_t] =
            # (t - (1 - t)) / (t^2 + (1 - t)^2) x_t, loss E_t[1 / (t^2 + (1 - t)^2)] per dim
            res["baseline/action_fm_zero_v"] = weighted_mse(torch.zeros_like(target), target,
                                                            valid)
            res["baseline/action_fm_mean_var"] = weighted_mse(linear_gain(t_a, x_a) * x_a,
                                                              target, valid)
        if cond.mode == "event" and b.event_end is not None:
            bce = F.binary_cross_entropy_with_logits(end_logits, b.event_end.float(),
                                                     reduction="none")  # (B, La)
            res["event_end"] = (bce * valid).sum() / valid.sum().clamp_min(1)
        return res

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

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, batch: WorldActionBatch, mode: str | None = None, steps: int | None = None,
                recompute_video: bool | None = None, return_video: bool = True,
                generator: torch.Generator | None = None,
                noise: tuple[Tensor, Tensor] | None = None) -> dict[str, Any]:
        """Sample actions in dataset units (and the future frames) for `mode`.

        -> actions (B, La, A); action_mask (B, La) bool (event mode: up to and including the
        first step whose end probability > 0.5); end_prob (B, La); frames (B, V, F, 3, H, W) or
        None; cot_latents (B, K, D) or None. `noise` = (video, action) noise, else drawn from
        `generator` (`draw_noise`). Built on `encode` + `sample` (+ `sample_video`);
        `recompute_video` instead reruns the video tower at every step at the current level
        (joint denoising, the baseline of benchmarks/bench_video_cache.py)."""
        cfg = self.cfg
        mode = mode or batch.mode
        steps = steps or cfg.denoise_steps
        recompute = cfg.recompute_video if recompute_video is None else recompute_video
        xv, xa = noise if noise is not None else self.draw_noise(batch, mode, generator)
        cond = self.encode(batch, mode, video_noise=xv)
        frames = None
        if recompute:
            out, frames = self._joint_sample(batch, cond, xv, xa, steps)
        else:
            out = self.sample(cond, xa, steps)
            if return_video:
                frames = self.sample_video(cond, xv, steps)
        end_prob = torch.sigmoid(out["end_logits"])
        if mode == "event":
            ended = (end_prob > 0.5).long()
            action_mask = ~((ended.cumsum(1) - ended) > 0)  # through the first predicted end
        else:
            action_mask = torch.ones_like(end_prob, dtype=torch.bool)
        return {"actions": self.norm.action_inverse(out["actions"]),
                "actions_normalized": out["actions"], "action_mask": action_mask,
                "end_prob": end_prob, "frames": frames if return_video else None,
                "cot_latents": cond.cot, "mode": mode}

    def _joint_sample(self, b: WorldActionBatch, cond: Cond, xv: Tensor, xa: Tensor,
                      steps: int) -> tuple[dict[str, Tensor], Tensor]:
        """Video and actions denoised together: the video tower runs at every step at the
        current level and the action tower reads that pass (no cache)."""
        B, dev = b.batch_size, b.obs.device
        end = xa.new_zeros(xa.shape[:2])
        for t, dt in timesteps(steps):
            tt = torch.full((B,), t, device=dev)
            v, feats = self._video_out(b.obs, xv, tt, cond.ctx, cond.ctx_mask, cond.mode_id,
                                       cond.bias)
            ctxs = self.action.coupling(feats, tt, b.abs_time, False)
            step = Cond(cond.mode, cond.obs, cond.ctx, cond.ctx_mask, cond.mode_id,
                        cond.abs_time, cond.prefix, ctxs, cond.bias, cond.cot)
            va, end = self.action_velocity(xa, tt, step)
            xv, xa = euler_step(xv, v, dt), euler_step(xa, va, dt)
        return {"actions": xa, "end_logits": end}, xv.clamp(-1, 1)

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


__all__ = ["Cond", "ModelInputError", "NormalizationMissing", "WallWM", "build",
           "linear_gain", "load_pretrained_video", "param_groups_for_muon", "save_video",
           "to_velocity", "video_state_dict"]
