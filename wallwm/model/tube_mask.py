"""Tube masking in training: hide one view's patch block across all frames.

Masking the same patches in every frame (a tube) stops the video tower from copying them from a
neighbouring frame, so it has to recover them from the other views, which is what trains the
cross-view branch; the loss on masked patches is up-weighted (lambda_mask) for the same reason.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_tube_mask(batch: int, views: int, frames: int, h: int, w: int, prob: float,
                     size: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> Tensor:
    """bool (B, V, F, h, w), True = masked. With probability `prob` per sample one view
    (uniform) gets a size x size block (uniform position, inside the grid) in every frame;
    otherwise nothing. Sampled on the CPU (so a CPU `generator` is deterministic), then moved."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    if not 1 <= size <= min(h, w):
        raise ValueError(f"tube size {size} does not fit a {h}x{w} patch grid")
    mask = torch.zeros(batch, views, frames, h, w, dtype=torch.bool)
    hit = torch.rand(batch, generator=generator) < prob
    view = torch.randint(views, (batch,), generator=generator)
    row = torch.randint(h - size + 1, (batch,), generator=generator)
    col = torch.randint(w - size + 1, (batch,), generator=generator)
    for b in torch.nonzero(hit)[:, 0].tolist():
        r, c = int(row[b]), int(col[b])
        mask[b, int(view[b]), :, r:r + size, c:c + size] = True
    return mask if device is None else mask.to(device)


def apply_tube_mask(tokens: Tensor, mask: Tensor, mask_token: Tensor) -> Tensor:
    """tokens (B, V, F, h, w, D), mask (B, V, F, h, w) -> tokens with masked positions replaced
    by the learnable mask_token (D,) (gradient flows to it)."""
    return torch.where(mask[..., None].to(tokens.device), mask_token.to(tokens.dtype), tokens)


def tube_loss_weights(mask: Tensor, weight: float) -> Tensor:
    """float (B, V, F, h, w): 1, or `weight` (lambda_mask) on masked patches."""
    ones = torch.ones(mask.shape, dtype=torch.float32, device=mask.device)
    return ones.masked_fill(mask, float(weight))
