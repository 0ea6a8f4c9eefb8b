"""Flow matching (rectified flow), the convention of openpi's pi0 for both towers.

    x_t = t * noise + (1 - t) * x_0,    t = 1 pure noise, t = 0 data
    target velocity u = noise - x_0,    sampling: x <- x + dt * v with dt = -1/N from t = 1

The paper's video tower uses Wan-style v-prediction; with this linear path the velocity is the
same quantity. Each tower samples its own t (asymmetric schedules).
"""

# ruff: noqa: F722  (jaxtyping shape strings are not Python expressions)
from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def sample_t(batch: int, generator: torch.Generator | None = None, kind: str = "logit_normal",
             device: torch.device | str = "cpu") -> Float[Tensor, " B"]:
    """Noise levels in (0, 1): logit-normal (SD3, video) or Beta(1.5, 1) skewed to noise (pi0,
    actions)."""
    if kind == "logit_normal":
        z = torch.randn(batch, generator=generator, device=device)
        return torch.sigmoid(z).clamp(1e-4, 1 - 1e-4)
    if kind == "beta":
        u = torch.rand(batch, generator=generator, device=device)
        # inverse CDF of Beta(1.5, 1): x^(1/1.5), scaled into (0.001, 0.999) as in pi0
        return 0.001 + 0.998 * u.pow(1 / 1.5)
    if kind == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    raise ValueError(f"unknown noise-level distribution {kind!r}")


def expand_t(t: Float[Tensor, " B"], like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable to `like`."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def interpolate(x0: Tensor, noise: Tensor, t: Float[Tensor, " B"]) -> Tensor:
    """The noisy input x_t."""
    tt = expand_t(t, x0)
    return tt * noise + (1 - tt) * x0


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    return noise - x0


def euler_step(x: Tensor, v: Tensor, dt: float) -> Tensor:
    return x + dt * v


def weighted_mse(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error averaged over the last dim, then a weighted mean over the rest
    (weight 0 = ignored, e.g. padding); 0 when nothing has weight."""
    err = (pred.float() - target.float()).pow(2).mean(-1)
    if weight is None:
        return err.mean()
    w = weight.float().expand_as(err)
    return (err * w).sum() / w.sum().clamp_min(1e-8)


def timesteps(steps: int) -> list[tuple[float, float]]:
    """(t, dt) for `steps` Euler steps from t = 1 to t = 0."""
    dt = -1.0 / steps
    return [(1.0 + k * dt, dt) for k in range(steps)]
