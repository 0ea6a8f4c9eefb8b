"""`WorldActionBatch`: what the model reads, one batch of events (event mode) or chunks
(unified mode). The data side produces it; `check_batch` guards the model's boundary with errors
that name the field, the shape seen and the shape expected.

Shapes (B batch, V views, F future frames, H = W = image_size, Lt text, La action steps,
A action dim, S state dim, Lc CoT text):

    obs          (B, V, 3, H, W) float in [-1, 1]   current observation, one frame per view
    future       (B, V, F, 3, H, W) float | None    targets: F = 1 boundary frame (event mode)
                                                    or F <= frames (unified mode); None = predict
    text_ids     (B, Lt) long, text_mask (B, Lt) bool   next-event description / instruction
    event_type   (B,) long, -1 = none
    state        (B, S) float                       proprio state, dataset units
    actions      (B, La, A) float | None            continuous actions, gripper last, dataset units
                                                    (the model normalizes: wallwm/model/normalize.py)
    action_mask  (B, La) bool                       False = padding (out of every loss)
    event_end    (B, La) float                      1 at the event's last step (event mode)
    intrinsics   (B, V, 3, 3), extrinsics (B, V, 4, 4) camera-to-world, or (B, V, T, 4, 4)
                 per frame (T = 1 + F: observation, then the future frames; moving cameras),
                 calibrated (B, V) bool
    abs_time     (B,) float                         seconds from the episode start
    mode         "event" | "unified"
    cot_ids, cot_mask  (B, Lc) | None               chain-of-thought text (unified mode)
    segment_ids, position_ids  (B, La) | None       packing: -1 padding; positions restart per
                                                    event (wallwm/data/packing.py)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from wallwm.model.config import WallWMConfig

MODES = ("event", "unified")


class ModelInputError(ValueError):
    """A batch that does not fit the model: names the field, what it got and what it needs."""


@dataclass
class WorldActionBatch:
    obs: Tensor
    text_ids: Tensor
    text_mask: Tensor
    state: Tensor
    intrinsics: Tensor
    extrinsics: Tensor
    calibrated: Tensor
    abs_time: Tensor
    mode: str = "event"
    future: Tensor | None = None
    event_type: Tensor | None = None
    actions: Tensor | None = None
    action_mask: Tensor | None = None
    event_end: Tensor | None = None
    cot_ids: Tensor | None = None
    cot_mask: Tensor | None = None
    segment_ids: Tensor | None = None
    position_ids: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.obs.shape[0])

    def to(self, device: torch.device | str) -> WorldActionBatch:
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device) if isinstance(v, Tensor) else v
        return WorldActionBatch(**kw)

    def replace(self, **kw: Any) -> WorldActionBatch:
        return replace(self, **kw)

    @classmethod
    def synthetic(cls, cfg: WallWMConfig, batch_size: int = 2, mode: str = "event",
                  generator: torch.Generator | None = None, with_targets: bool = True,
                  event_len: int | None = None) -> WorldActionBatch:
        """Random but well-formed: cameras on a circle looking at the origin (calibrated, so the
        frustum mask is real), event lengths varying in event mode, CoT text in unified mode."""
        if mode not in MODES:
            raise ModelInputError(f"mode={mode!r}: use one of {MODES}")
        g = generator
        B, V, S = batch_size, cfg.views, cfg.image_size
        F = 1 if mode == "event" else cfg.frames
        La = (event_len or min(12, cfg.max_event_len)) if mode == "event" else cfg.action_horizon
        Lt = min(8, cfg.max_text_len)

        def img(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=g) * 2 - 1

        intr, ext = look_at_cameras(V, S)
        b = cls(
            obs=img(B, V, 3, S, S),
            text_ids=torch.randint(cfg.vocab_size, (B, Lt), generator=g),
            text_mask=torch.arange(Lt)[None].expand(B, Lt) < torch.randint(2, Lt + 1, (B, 1),
                                                                            generator=g),
            state=torch.randn(B, cfg.state_dim, generator=g),
            intrinsics=intr[None].expand(B, V, 3, 3).clone(),
            extrinsics=ext[None].expand(B, V, 4, 4).clone(),
            calibrated=torch.ones(B, V, dtype=torch.bool),
            abs_time=torch.rand(B, generator=g) * 10,
            mode=mode,
            event_type=torch.randint(-1, cfg.event_types, (B,), generator=g),
        )
        if not with_targets:
            return b
        b.future = img(B, V, F, 3, S, S)
        b.actions = torch.randn(B, La, cfg.action_dim, generator=g).clamp(-1, 1)
        if mode == "event":
            lengths = torch.randint(max(1, La // 2), La + 1, (B,), generator=g)
            b.action_mask = torch.arange(La)[None] < lengths[:, None]
            b.event_end = (torch.arange(La)[None] == lengths[:, None] - 1).float()
        else:
            b.action_mask = torch.ones(B, La, dtype=torch.bool)
            b.event_end = torch.zeros(B, La)
            Lc = min(6, cfg.max_text_len)
            b.cot_ids = torch.randint(cfg.vocab_size, (B, Lc), generator=g)
            b.cot_mask = torch.ones(B, Lc, dtype=torch.bool)
        return b


def look_at_cameras(views: int, image_size: int, radius: float = 1.0
                    ) -> tuple[Tensor, Tensor]:
    """(V, 3, 3) pinhole intrinsics and (V, 4, 4) camera-to-world poses (OpenCV axes) on a
    circle around the origin, 45 degrees apart, all looking at it."""
    f = float(image_size)
    c = (image_size - 1) / 2
    intr = torch.tensor([[f, 0, c], [0, f, c], [0, 0, 1]], dtype=torch.float32)
    poses = []
    for v in range(views):
        a = math.radians(45.0 * v)
        eye = torch.tensor([radius * math.sin(a), -radius * math.cos(a), 0.5])
        z = -eye / eye.norm()  # forward, towards the origin
        x = torch.linalg.cross(z, torch.tensor([0.0, 0.0, 1.0]))
        x = x / x.norm()
        y = torch.linalg.cross(z, x)  # down
        m = torch.eye(4)
        m[:3, :3] = torch.stack([x, y, z], 1)
        m[:3, 3] = eye
        poses.append(m)
    return intr.expand(views, 3, 3).clone(), torch.stack(poses)


def _shape(name: str, t: Tensor | None, want: tuple[int | None, ...], hint: str = "") -> None:
    if t is None:
        raise ModelInputError(f"batch.{name} is missing; expected shape {_fmt(want)}{hint}")
    if t.dim() != len(want) or any(w is not None and s != w for s, w in zip(t.shape, want,
                                                                              strict=False)):
        raise ModelInputError(
            f"batch.{name} has shape {tuple(t.shape)}; expected {_fmt(want)}{hint}")


def _fmt(want: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"


def check_batch(b: WorldActionBatch, cfg: WallWMConfig, *, need_targets: bool,
                need_calibration: bool, mode: str | None = None) -> None:
    """Raise ModelInputError on the first field that does not fit `cfg`."""
    mode = mode or b.mode
    if mode not in MODES:
        raise ModelInputError(f"batch.mode={mode!r}: use one of {MODES}")
    if b.obs.dim() != 5:
        raise ModelInputError(f"batch.obs has shape {tuple(b.obs.shape)}; expected (B, V, 3, H, W)")
    B, V, C, H, W = b.obs.shape
    if V != cfg.views:
        raise ModelInputError(
            f"batch.obs has {V} views; the model was built for views={cfg.views} "
            f"(model.presets.<preset>.views)")
    if H % cfg.patch or W % cfg.patch:
        raise ModelInputError(
            f"batch.obs images are {H}x{W}, not divisible by the patch size {cfg.patch}")
    if (H, W) != (cfg.image_size, cfg.image_size) or C != cfg.channels:
        raise ModelInputError(
            f"batch.obs images are {C}x{H}x{W}; the model expects "
            f"{cfg.channels}x{cfg.image_size}x{cfg.image_size} (resize in the data loader)")
    if not b.obs.is_floating_point():
        raise ModelInputError(f"batch.obs has dtype {b.obs.dtype}; expected float in [-1, 1]")
    _shape("text_ids", b.text_ids, (B, None))
    if b.text_ids.dtype != torch.long:
        raise ModelInputError(f"batch.text_ids has dtype {b.text_ids.dtype}; expected int64")
    Lt = b.text_ids.shape[1]
    if Lt > cfg.max_text_len:
        raise ModelInputError(f"batch.text_ids has {Lt} tokens > max_text_len {cfg.max_text_len}")
    _shape("text_mask", b.text_mask, (B, Lt))
    _shape("state", b.state, (B, cfg.state_dim), " (model.presets.<preset>.state_dim)")
    _shape("abs_time", b.abs_time, (B,))
    _shape("calibrated", b.calibrated, (B, V))
    if need_calibration and bool(b.calibrated.any()):
        hint = " (cameras are marked calibrated and frustum masking is on)"
        _shape("intrinsics", b.intrinsics, (B, V, 3, 3), hint)
        if b.extrinsics is None or b.extrinsics.shape[:2] != (B, V) or tuple(
                b.extrinsics.shape[-2:]) != (4, 4) or b.extrinsics.dim() not in (4, 5):
            _shape("extrinsics", b.extrinsics, (B, V, 4, 4),
                   hint + "; or (B, V, T, 4, 4), one pose per frame (moving cameras)")
        cal = b.calibrated.bool()
        k = b.intrinsics[cal]
        if not bool(torch.isfinite(k).all()) or bool((k[:, 2, 2] == 0).any()):
            raise ModelInputError(
                "batch.intrinsics: a camera marked calibrated has missing (NaN or zero) "
                "intrinsics; set batch.calibrated False for it or supply its calibration")
        if not bool(torch.isfinite(b.extrinsics[cal]).all()):
            raise ModelInputError(
                "batch.extrinsics: a camera marked calibrated has missing (NaN) extrinsics; "
                "set batch.calibrated False for it or supply its calibration")
    if b.event_type is not None:
        _shape("event_type", b.event_type, (B,))
        if int(b.event_type.max()) >= cfg.event_types:
            raise ModelInputError(f"batch.event_type has id {int(b.event_type.max())} >= "
                                  f"event_types {cfg.event_types}")
    if not need_targets:
        return
    F = 1 if mode == "event" else cfg.frames
    if b.future is None or b.future.dim() != 6 or b.future.shape[2] > cfg.frames:
        _shape("future", b.future, (B, V, F, C, H, W), f" (at most frames={cfg.frames})")
    _shape("future", b.future, (B, V, None, C, H, W))
    _shape("actions", b.actions, (B, None, cfg.action_dim),
           " (the last dim is the action dim, model.presets.<preset>.action_dim)")
    assert b.actions is not None
    La = b.actions.shape[1]
    if mode == "unified" and La != cfg.action_horizon:
        raise ModelInputError(f"batch.actions has {La} steps; unified mode needs a chunk of "
                              f"action_horizon={cfg.action_horizon}")
    if mode == "event" and b.segment_ids is None and La > cfg.max_event_len:
        raise ModelInputError(f"batch.actions has {La} steps > max_event_len "
                              f"{cfg.max_event_len}")
    _shape("action_mask", b.action_mask, (B, La))
    if b.event_end is not None:
        _shape("event_end", b.event_end, (B, La))
    if b.segment_ids is not None or b.position_ids is not None:
        _shape("segment_ids", b.segment_ids, (B, La), " (packing needs both ids)")
        _shape("position_ids", b.position_ids, (B, La), " (packing needs both ids)")
    if b.cot_ids is not None:
        _shape("cot_mask", b.cot_mask, tuple(b.cot_ids.shape))
