"""One-way coupling: action block i reads the features of its paired video block pi(i).

The video features (all views concatenated, all frames) are projected to the action width by a
per-layer adapter that belongs to the action side, plus embeddings of the video noise level and
of the absolute time since the episode start, and a learned view embedding (the video tower
itself has none, see video_stream.py). Nothing flows back: the video tower never sees these
modules, and with `stop_action_grad_to_video` the features are detached so the action loss
cannot move a video weight.
"""

# ruff: noqa: F722  (jaxtyping shape strings are not Python expressions)
from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from wallwm.model.layers import IOLinear, TimestepEmbedder, norm


def pair_layers(action_depth: int, video_depth: int, kind: str = "proportional") -> list[int]:
    """pi: action block i -> video block pi(i).

    proportional: pi(i) = ceil((i+1) * Dv / Da) - 1, so equal depths pair i with i and the last
    action block always reads the last video block.

    >>> pair_layers(4, 4), pair_layers(4, 2), pair_layers(2, 4)
    ([0, 1, 2, 3], [0, 0, 1, 1], [1, 3])
    """
    if kind == "proportional":
        return [math.ceil((i + 1) * video_depth / action_depth) - 1 for i in range(action_depth)]
    if kind == "last":
        return [video_depth - 1] * action_depth
    raise ValueError(f"model coupling {kind!r}: use 'proportional' or 'last'")


class VideoCoupling(nn.Module):
    def __init__(self, video_dim: int, action_dim: int, video_depth: int, action_depth: int,
                 views: int, kind: str = "proportional"):
        super().__init__()
        self.pairs = pair_layers(action_depth, video_depth, kind)
        self.norms = nn.ModuleList(norm(video_dim, True) for _ in range(action_depth))
        self.proj = nn.ModuleList(IOLinear(video_dim, action_dim) for _ in range(action_depth))
        self.noise_embed = TimestepEmbedder(action_dim)
        self.time_embed = TimestepEmbedder(action_dim, scale=10.0)
        self.view_embed = nn.Parameter(torch.zeros(views, action_dim))
        nn.init.normal_(self.view_embed, std=0.02)

    def forward(self, feats: list[Tensor], t_video: Float[Tensor, " B"],
                abs_time: Float[Tensor, " B"], detach: bool) -> list[Tensor]:
        """Video block features (B, V, T, N, Dv) per video block -> one context (B, V*T*N, Da)
        per action block."""
        extra = self.noise_embed(t_video) + self.time_embed(abs_time)  # (B, Da)
        out = []
        for i, j in enumerate(self.pairs):
            f = feats[j].detach() if detach else feats[j]  # (B, V, T, N, Dv)
            B, V, T, N, _ = f.shape
            y = self.proj[i](self.norms[i](f))  # (B, V, T, N, Da)
            y = y + self.view_embed[:V, None, None] + extra[:, None, None, None]  # (B,V,T,N,Da)
            out.append(y.reshape(B, V * T * N, -1))  # (B, V*T*N, Da) views concatenated
        return out
