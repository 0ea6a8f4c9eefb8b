"""A small bidirectional text encoder for the video tower's conditioning.

Token ids come from the data build's BPE tokenizer (vocabulary size `model.presets.*.vocab_size`);
the event type (or none) is appended as one extra context token, so event mode and unified mode
share every weight.
"""

# ruff: noqa: F722  (jaxtyping shape strings are not Python expressions)
from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from wallwm.model.layers import Attention, Mlp, norm


class TextLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.attn = norm(dim, True), Attention(dim, heads)
        self.norm2, self.mlp = norm(dim, True), Mlp(dim, mlp_ratio)

    def forward(self, x: Float[Tensor, "B L D"], mask: Bool[Tensor, "B L L"]) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)  # (B, L, D)
        return x + self.mlp(self.norm2(x))  # (B, L, D)


class TextEncoder(nn.Module):
    def __init__(self, vocab: int, dim: int, depth: int, heads: int, max_len: int,
                 event_types: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.vocab, self.max_len = vocab, max_len
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(max_len, dim))
        self.event = nn.Embedding(event_types + 1, dim)  # last row: "no event type"
        self.layers = nn.ModuleList(TextLayer(dim, heads, mlp_ratio) for _ in range(depth))
        self.out_norm = norm(dim, True)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.tok.weight, std=0.02)

    def forward(self, ids: Int[Tensor, "B Lt"], mask: Bool[Tensor, "B Lt"],
                event_type: Int[Tensor, " B"]) -> tuple[Tensor, Tensor]:
        """-> context (B, Lt+1, D) and its key mask (B, Lt+1); the last token is the event type."""
        B, Lt = ids.shape
        x = self.tok(ids) + self.pos[:Lt]  # (B, Lt, D)
        et = torch.where(event_type < 0, self.event.num_embeddings - 1, event_type)  # (B,)
        x = torch.cat([x, self.event(et)[:, None]], 1)  # (B, Lt+1, D)
        keep = torch.cat([mask, mask.new_ones(B, 1)], 1)  # (B, Lt+1) event token always kept
        att = keep[:, None, :].expand(B, Lt + 1, Lt + 1)  # (B, Lt+1, Lt+1) keys = real tokens
        for layer in self.layers:
            x = layer(x, att)  # (B, Lt+1, D)
        return self.out_norm(x), keep
