"""The model's own config: one flat, frozen dataclass built from `params.yaml`'s `model:` section.

Why a dataclass beside the pydantic schema: the model is pure PyTorch and must be buildable in
a test or on the `meta` device without the whole `Params` tree; `WallWMConfig.from_params`
is the one bridge (pydantic has already validated the values).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class LossWeights:
    """Weights of the four losses of `WallWM.forward` (train.loss in params.yaml)."""

    video: float = 1.0
    action: float = 1.0
    event_end: float = 0.1
    cot: float = 0.1


@dataclass(frozen=True)
class WallWMConfig:
    # --- video tower (DiT over pixel patch tokens)
    width: int = 96
    depth: int = 4
    heads: int = 4
    image_size: int = 64
    patch: int = 8
    views: int = 2
    frames: int = 2  # future frames predicted in unified mode (event mode: 1 boundary frame)
    channels: int = 3
    mlp_ratio: float = 4.0
    # --- text encoder (conditions the video tower)
    vocab_size: int = 4096
    max_text_len: int = 64
    text_depth: int = 2
    event_types: int = 16  # event type ids 0..event_types-1; -1 = none
    # --- action tower (DiT over action steps, from scratch)
    action_width: int = 64
    action_depth: int = 4
    action_heads: int = 4
    action_dim: int = 7  # continuous actions, gripper last
    state_dim: int = 8
    action_horizon: int = 16  # unified mode chunk length
    max_event_len: int = 64  # event mode: longest action sequence
    coupling: str = "proportional"  # how action block i picks its video block pi(i)
    # --- reasoning (CoT latents, unified mode)
    cot_latents: int = 8
    vlm_depth: int = 4
    relay_depth: int = 2
    # --- mechanisms
    stop_action_grad_to_video: bool = True
    frustum_mask_in_training: bool = True
    frustum_mask_at_inference: bool = False
    depth_range: tuple[float, float] = (0.05, 3.0)
    tube_mask_prob: float = 0.25
    tube_size: int = 2
    tube_loss_weight: float = 2.0
    denoise_steps: int = 10
    video_anchor_t: float = 1.0  # noise level of the one cached video pass at inference
    # training: share of the video loss's samples at exactly the anchor level, the level
    # every imagined frame starts from (logit-normal levels almost never reach t = 1)
    video_anchor_share: float = 0.25
    recompute_video: bool = False  # inference: rerun the video tower at every action step
    # what each tower's head predicts: "x" the clean sample (converted to a velocity through a
    # full-rank skip from x_t, Li & He 2025), "v" the velocity itself (needs out dim <= width)
    video_target: str = "x"
    action_target: str = "v"
    x_pred_min_t: float = 0.05  # v = (x_t - x_hat) / max(t, this): bounded near clean data
    # video x-prediction relative to the observation frame (x_hat = obs + head): a fresh tower
    # samples exactly the copy-the-observation baseline and learns what changes
    video_residual: bool = True
    # where the video loss is measured: "v" the velocity (the clean-frame error weighted 1/t^2:
    # low noise levels dominate) or "x" the clean frame itself (every level alike, so the
    # prediction from pure noise, which the boundary frame starts from, is trained as hard)
    video_loss_space: str = "x"
    # action velocity as a residual over the best linear predictor for unit-variance data
    # (normalized actions): v = F + (2t - 1) / (t^2 + (1 - t)^2) x_t, EDM-style c_skip
    # preconditioning (Karras et al. 2022); a fresh head scores the mean/variance baseline
    action_skip: bool = True
    loss: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        problems = []
        if self.image_size % self.patch:
            problems.append(f"image_size {self.image_size} not divisible by patch {self.patch}")
        if self.width % self.heads:
            problems.append(f"width {self.width} not divisible by heads {self.heads}")
        if self.action_width % self.action_heads:
            problems.append(
                f"action_width {self.action_width} not divisible by action_heads "
                f"{self.action_heads}")
        if self.video_loss_space not in ("x", "v"):
            problems.append(f"video_loss_space {self.video_loss_space!r}: use 'x' or 'v'")
        if not 0.0 <= self.video_anchor_share <= 1.0:
            problems.append(f"video_anchor_share {self.video_anchor_share} outside [0, 1]")
        if self.relay_depth > self.vlm_depth:
            problems.append(f"relay_depth {self.relay_depth} > vlm_depth {self.vlm_depth}")
        for tower, target, out, width in (
                ("video", self.video_target, self.patch_dim, self.width),
                ("action", self.action_target, self.action_dim, self.action_width)):
            if target not in ("x", "v"):
                problems.append(f"{tower}_target {target!r}: use 'x' or 'v'")
            elif target == "v" and out > width:
                problems.append(
                    f"{tower}_target 'v' with an output of {out} values per token through width "
                    f"{width}: the predicted velocity would span at most {width} of {out} "
                    f"dimensions, so the rest of the noise is never removed; use "
                    f"{tower}_target 'x' (full rank through the x_t skip), a width >= {out}"
                    + (", or a smaller patch" if tower == "video" else ""))
        if problems:
            raise ValueError("WallWMConfig: " + "; ".join(problems))

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch

    @property
    def tokens_per_frame(self) -> int:
        return self.grid * self.grid

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch * self.patch

    def replace(self, **kw: Any) -> WallWMConfig:
        return replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, params: Any, preset: str | None = None, **overrides: Any) -> WallWMConfig:
        """From a `Params` tree or its `model` section (`ModelParams`); `preset` overrides
        `model.preset`. The train.loss weights are taken when a whole `Params` is given."""
        model = getattr(params, "model", params)
        name = preset or model.preset
        if name not in model.presets:
            allowed = ", ".join(sorted(model.presets))
            raise ValueError(f"model.preset: unknown preset {name!r}; allowed: {allowed}")
        s = model.presets[name]
        kw: dict[str, Any] = dict(
            width=s.width, depth=s.depth, heads=s.heads, image_size=s.image_size, patch=s.patch,
            views=s.views, frames=s.frames, vocab_size=s.vocab_size, max_text_len=s.max_text_len,
            text_depth=s.text_depth, event_types=s.event_types, action_width=s.action_width,
            action_depth=s.action_depth, action_heads=s.action_heads or s.heads,
            action_dim=s.action_dim, state_dim=s.state_dim, action_horizon=s.action_horizon,
            max_event_len=s.max_event_len, cot_latents=s.cot_latents, vlm_depth=s.vlm_depth,
            relay_depth=s.relay_depth,
            stop_action_grad_to_video=model.stop_action_grad_to_video,
            frustum_mask_in_training=model.frustum_mask_in_training,
            frustum_mask_at_inference=model.frustum_mask_at_inference,
            depth_range=tuple(model.depth_range_m), tube_mask_prob=model.tube_mask_prob,
            tube_size=model.tube_size, tube_loss_weight=model.tube_loss_weight,
            denoise_steps=model.denoise_steps, video_anchor_t=model.video_anchor_t,
            recompute_video=model.recompute_video, video_target=model.video_target,
            action_target=model.action_target, video_residual=model.video_residual,
            video_loss_space=model.video_loss_space,
            video_anchor_share=model.video_anchor_share,
            action_skip=model.action_skip,
        )
        train = getattr(params, "train", None)
        if train is not None:
            lw = train.loss
            kw["loss"] = LossWeights(lw.video, lw.action, lw.event_end, lw.cot)
        kw.update(overrides)
        return cls(**kw)
