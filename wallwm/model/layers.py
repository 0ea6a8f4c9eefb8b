"""Shared building blocks, after facebookresearch/DiT's `models.py`.

adaLN modulation, the sinusoidal timestep embedder, attention with an optional mask or additive
bias, an MLP, and RoPE at per-token positions (so packed events each restart at position 0).
"""

# ruff: noqa: F722  (jaxtyping shape strings are not Python expressions)
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn


def modulate(x: Float[Tensor, "B L D"], shift: Tensor, scale: Tensor) -> Float[Tensor, "B L D"]:
    """adaLN: shift/scale are (B, D) per sample or (B, L, D) per token."""
    if shift.dim() == 2:
        shift, scale = shift[:, None], scale[:, None]
    return x * (1 + scale) + shift


def gate(g: Tensor, y: Float[Tensor, "B L D"]) -> Float[Tensor, "B L D"]:
    """The adaLN-zero gate, (B, D) or (B, L, D)."""
    return (g[:, None] if g.dim() == 2 else g) * y


def sinusoid(x: Float[Tensor, "*S"], dim: int, max_period: float = 10000.0) -> Tensor:
    """(*S,) real values -> (*S, dim) cos/sin features (DiT's timestep_embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device) / half)
    args = x.float()[..., None] * freqs  # (*S, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (*S, 2*half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
    return emb


class IOLinear(nn.Linear):
    """A Linear that maps into or out of the hidden width (inputs, heads): trained by AdamW,
    never Muon (see `param_groups_for_muon`)."""


class TimestepEmbedder(nn.Module):
    """Scalar (noise level in [0, 1], or seconds) -> (B, D) through sinusoid + MLP.

    `scale` maps the scalar to the sinusoid's range: 1000 for noise levels (DiT's steps), 10 for
    seconds so that sub-second differences stay visible.
    """

    def __init__(self, hidden: int, freq_dim: int = 256, scale: float = 1000.0):
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(IOLinear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Float[Tensor, "*S"]) -> Float[Tensor, "*S D"]:
        return self.mlp(sinusoid(t * self.scale, self.freq_dim))


def sincos_grid(grid: int, dim: int) -> Float[Tensor, "N D"]:
    """Fixed 2-D sin/cos position table for a grid x grid patch layout (row-major)."""
    r, c = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    half = dim // 2
    emb = torch.cat([sinusoid(r.reshape(-1), half), sinusoid(c.reshape(-1), dim - half)], -1)
    return emb  # (grid*grid, dim)


def rotary(x: Float[Tensor, "B H L Dh"], pos: Int[Tensor, "B L"], base: float = 10000.0) -> Tensor:
    """RoPE at per-token integer positions (B, L); Dh even."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)
    ang = pos.float()[:, None, :, None] * freqs  # (B, 1, L, half)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def segment_mask(segment_ids: Int[Tensor, "B L"]) -> Bool[Tensor, "B L L"]:
    """Block-diagonal mask from segment ids (-1 = padding, which only sees itself).

    >>> segment_mask(torch.tensor([[0, 0, 1, -1]])).int()[0]
    tensor([[1, 1, 0, 0],
            [1, 1, 0, 0],
            [0, 0, 1, 0],
            [0, 0, 0, 1]], dtype=torch.int32)
    """
    valid = segment_ids >= 0
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & valid[:, :, None] & valid[:, None]
    eye = torch.eye(segment_ids.shape[1], dtype=torch.bool, device=segment_ids.device)
    return same | (eye & ~valid[:, :, None])


RopeFn = Callable[[Tensor], Tensor]


class Attention(nn.Module):
    """Multi-head self-attention. `mask`: bool (B, L, L) True = may attend, or an additive float
    bias broadcastable to (B, H, L, L); `rope`: applied to queries and keys."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Float[Tensor, "B L D"], mask: Tensor | None = None,
                rope: RopeFn | None = None) -> Float[Tensor, "B L D"]:
        B, L, D = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.heads, D // self.heads)  # (B, L, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, L, Dh)
        if rope is not None:
            q, k = rope(q), rope(k)  # (B, H, L, Dh)
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]  # (B, 1, L, L) broadcast over heads
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, Dh)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))  # (B, L, D)


class CrossAttention(nn.Module):
    """Queries from x (dim), keys/values from a context (ctx_dim); `mask` bool (B, Lq, Lk)."""

    def __init__(self, dim: int, heads: int, ctx_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(ctx_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Float[Tensor, "B Lq D"], ctx: Float[Tensor, "B Lk C"],
                mask: Tensor | None = None) -> Float[Tensor, "B Lq D"]:
        B, Lq, D = x.shape
        Lk, H = ctx.shape[1], self.heads
        q = self.q(x).reshape(B, Lq, H, D // H).transpose(1, 2)  # (B, H, Lq, Dh)
        kv = self.kv(ctx).reshape(B, Lk, 2, H, D // H)  # (B, Lk, 2, H, Dh)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, H, Lk, Dh)
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]  # (B, 1, Lq, Lk)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Lq, Dh)
        return self.proj(y.transpose(1, 2).reshape(B, Lq, D))  # (B, Lq, D)


class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def norm(dim: int, affine: bool = False) -> nn.LayerNorm:
    """LayerNorm without affine where adaLN supplies shift/scale (DiT)."""
    return nn.LayerNorm(dim, elementwise_affine=affine, eps=1e-6)
