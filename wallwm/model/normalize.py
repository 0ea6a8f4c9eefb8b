"""Per-dimension normalization of actions and proprio state, carried inside the model.

Why in the model: the statistics (train split of the build trained on) must travel with every
checkpoint, logged model and export bundle, and a checkpoint without them must refuse to act
instead of emitting actions in the wrong units. As buffers they ride in every `state_dict`.

Units: batches hold dataset units; `WallWM.forward` normalizes internally (every action dim
then weighs the same in the loss, the gripper included), `predict` returns dataset units.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

MIN_STD = 1e-6  # a constant dimension keeps std 1: it is only shifted


class NormalizationMissing(ValueError):
    """The model has no normalization statistics (a checkpoint from before they existed, or a
    model never fitted to a build): it cannot act in dataset units."""


class Normalizer(nn.Module):
    def __init__(self, action_dim: int, state_dim: int):
        super().__init__()
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def set_stats(self, action_mean: Sequence[float], action_std: Sequence[float],
                  state_mean: Sequence[float], state_std: Sequence[float]) -> None:
        for name, val in (("action_mean", action_mean), ("action_std", action_std),
                          ("state_mean", state_mean), ("state_std", state_std)):
            buf = getattr(self, name)
            t = torch.as_tensor(np.asarray(val, np.float64), dtype=buf.dtype).reshape(-1)
            if t.shape != buf.shape:
                raise ValueError(f"normalization {name}: {tuple(t.shape)} values; the model has "
                                 f"{tuple(buf.shape)} (action_dim/state_dim of the preset)")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"normalization {name}: non-finite values {t.tolist()}")
            if name.endswith("_std"):
                t = torch.where(t < MIN_STD, torch.ones_like(t), t)
            buf.copy_(t.to(buf.device))
        self.fitted.fill_(True)

    def set_identity(self) -> None:
        """Mark as fitted with mean 0 and std 1: for synthetic batches already in model units."""
        a, s = self.action_mean.numel(), self.state_mean.numel()
        self.set_stats([0.0] * a, [1.0] * a, [0.0] * s, [1.0] * s)

    def stats(self) -> dict[str, list[float]]:
        return {k: getattr(self, k).tolist()
                for k in ("action_mean", "action_std", "state_mean", "state_std")}

    def require(self) -> None:
        if not bool(self.fitted):
            raise NormalizationMissing(
                "the model has no normalization statistics (model.norm.fitted is False): it was "
                "never fitted to a build's train split, so its actions have no units. Retrain "
                "with the current code (`wallwm train`), or call "
                "model.norm.set_stats(...) with the statistics of the build it was trained on")

    def state(self, x: Tensor) -> Tensor:
        return (x - self.state_mean) / self.state_std

    def action(self, x: Tensor) -> Tensor:
        return (x - self.action_mean) / self.action_std

    def action_inverse(self, x: Tensor) -> Tensor:
        return x * self.action_std + self.action_mean
