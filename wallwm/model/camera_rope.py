"""Camera RoPE: a learnable, calibration-free rotary identity per camera slot.

Each camera slot owns one row of head_dim/2 rotation angles; queries and keys of a slot's tokens
are rotated by them, so q.k between two tokens depends on their slots only through the angle
difference (a relative, RoPE-like code) and rotations keep norms. No calibration is read: a new
camera is a new row (`add_slot`), and old rows are untouched parameters, so an existing
optimizer keeps their state (add the new row to it with `add_param_group`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CameraRoPE(nn.Module):
    def __init__(self, num_slots: int, head_dim: int, init_scale: float = 0.02) -> None:
        """Rows start at standard RoPE angles for position = slot id, plus N(0, init_scale)
        noise: slots are told apart from the first step, and all angles stay learnable."""
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim must be even, got {head_dim}")
        self.head_dim, self.init_scale = head_dim, init_scale
        half = head_dim // 2
        self.register_buffer("inv_freq", 10000.0 ** (-torch.arange(half) / half),
                             persistent=False)
        self.angles = nn.ParameterList()
        for _ in range(num_slots):
            self.add_slot()

    @property
    def num_slots(self) -> int:
        return len(self.angles)

    def _init_row(self, slot: int) -> Tensor:
        inv = self.inv_freq
        return slot * inv + self.init_scale * torch.randn(inv.shape, device=inv.device)

    def add_slot(self) -> int:
        """Grow the table by one row (a new parameter); returns the new slot id."""
        slot = len(self.angles)
        self.angles.append(nn.Parameter(self._init_row(slot)))
        return slot

    def forward(self, x: Tensor, slot_ids: Tensor) -> Tensor:
        """x (B, heads, L, head_dim), slot_ids (L,) or (B, L) long -> x rotated per slot.

        Pairs (x[..., k], x[..., k + head_dim/2]) are rotated by angle k of the token's slot.
        """
        table = torch.stack(list(self.angles))  # (S, half)
        ang = table[slot_ids.to(table.device)]  # (L, half) or (B, L, half)
        if ang.dim() == 3:
            ang = ang[:, None]  # (B, 1, L, half)
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
