"""The action tower: a DiT over action steps, from scratch, with its own weights per layer.

Sequence: [prefix | action steps]. The prefix is conditioning only (pi0's prefix/suffix split:
it never attends to the actions): the proprio state token, then the event-type token (event
mode) or the K CoT latents (unified mode). A block:

    x <- x + g1 * SelfAttn(mod(norm(x)), mask, RoPE at position ids)
    x <- x + g2 * CrossAttn(mod(norm(x)), video features of block pi(i))     (one way)
    x <- x + g3 * Mlp(mod(norm(x)))

adaLN conditioning is per token (noise level, mode, absolute time), so a packed row may hold
events at different noise levels. Position ids restart at 1 for each event (the prefix is at 0)
and the self-attention takes a block-diagonal mask, so a packed row computes what each event
computes alone (tests/unit/model/test_streams.py).
"""

# ruff: noqa: F722  (jaxtyping shape strings are not Python expressions)
from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from wallwm.model.config import WallWMConfig
from wallwm.model.coupling import VideoCoupling
from wallwm.model.layers import (
    Attention,
    CrossAttention,
    IOLinear,
    Mlp,
    TimestepEmbedder,
    gate,
    modulate,
    norm,
    rotary,
)
from wallwm.model.video_stream import FinalLayer


class ActionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.attn = norm(dim), Attention(dim, heads)
        self.norm2, self.cross = norm(dim), CrossAttention(dim, heads)
        self.norm3, self.mlp = norm(dim), Mlp(dim, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Float[Tensor, "B L D"], c: Float[Tensor, "B L D"],
                ctx: Float[Tensor, "B Lv D"], mask: Bool[Tensor, "B L L"] | None,
                pos: Int[Tensor, "B L"], ctx_mask: Bool[Tensor, "B L Lv"] | None) -> Tensor:
        s1, sc1, g1, s2, sc2, g2, s3, sc3, g3 = self.ada(c).chunk(9, -1)  # 9 x (B, L, D)
        rope = lambda q: rotary(q, pos)  # noqa: E731  (B, H, L, Dh) at per-event positions
        x = x + gate(g1, self.attn(modulate(self.norm1(x), s1, sc1), mask, rope))  # (B, L, D)
        x = x + gate(g2, self.cross(modulate(self.norm2(x), s2, sc2), ctx, ctx_mask))  # (B,L,D)
        return x + gate(g3, self.mlp(modulate(self.norm3(x), s3, sc3)))  # (B, L, D)


class ActionStream(nn.Module):
    def __init__(self, cfg: WallWMConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.action_width
        self.action_in = IOLinear(cfg.action_dim, D)
        self.state_in = IOLinear(cfg.state_dim, D)
        self.cot_in = IOLinear(cfg.width, D)  # CoT latents (reasoning width = video width)
        self.event_embed = nn.Embedding(cfg.event_types + 1, D)  # last row: no event type
        self.prefix_type = nn.Parameter(torch.zeros(3, D))  # state, event type, CoT latent
        self.t_embed = TimestepEmbedder(D)
        self.time_embed = TimestepEmbedder(D, scale=10.0)
        self.mode_embed = nn.Embedding(2, D)
        self.coupling = VideoCoupling(cfg.width, D, cfg.depth, cfg.action_depth, cfg.views,
                                      cfg.coupling)
        self.blocks = nn.ModuleList(
            ActionBlock(D, cfg.action_heads, cfg.mlp_ratio) for _ in range(cfg.action_depth))
        self.final = FinalLayer(D, cfg.action_dim)
        self.end_norm = norm(D, True)
        self.end_head = IOLinear(D, 1)  # end-of-event logit per step
        for p in (self.prefix_type, self.event_embed.weight, self.mode_embed.weight):
            nn.init.normal_(p, std=0.02)

    # -- building the sequence
    def prefix(self, state: Float[Tensor, "B S"], mode_id: Int[Tensor, " B"],
               event_type: Int[Tensor, " B"] | None = None,
               cot: Float[Tensor, "B K Dr"] | None = None) -> Float[Tensor, "B P D"]:
        """[state token, event-type token] (event mode) or [state token, K CoT latents]."""
        toks = [self.state_in(state)[:, None] + self.prefix_type[0]]  # (B, 1, D)
        if cot is None:
            et = event_type if event_type is not None else torch.full_like(mode_id, -1)
            et = torch.where(et < 0, self.event_embed.num_embeddings - 1, et)  # (B,)
            toks.append(self.event_embed(et)[:, None] + self.prefix_type[1])  # (B, 1, D)
        else:
            toks.append(self.cot_in(cot) + self.prefix_type[2])  # (B, K, D)
        return torch.cat(toks, 1)  # (B, P, D)

    def condition(self, t_action: Float[Tensor, " B"], mode_id: Int[Tensor, " B"],
                  abs_time: Float[Tensor, " B"]) -> Float[Tensor, "B D"]:
        """Per-sample adaLN condition; expand to (B, L, D) (or mix per token when packing)."""
        return self.t_embed(t_action) + self.mode_embed(mode_id) + self.time_embed(abs_time)

    # -- the blocks
    def run_blocks(self, x: Float[Tensor, "B L D"], c: Float[Tensor, "B L D"],
                   ctxs: list[Tensor], mask: Bool[Tensor, "B L L"] | None,
                   pos: Int[Tensor, "B L"], ctx_mask: Bool[Tensor, "B L Lv"] | None = None,
                   ) -> Float[Tensor, "B L D"]:
        """The tower on a built sequence; ctxs[i] (B, Lv, D) is block i's video context."""
        for blk, ctx in zip(self.blocks, ctxs, strict=True):
            x = blk(x, c, ctx, mask, pos, ctx_mask)  # (B, L, D)
        return x

    def heads(self, h: Float[Tensor, "B La D"], c: Float[Tensor, "B La D"]
              ) -> tuple[Float[Tensor, "B La A"], Float[Tensor, "B La"]]:
        """Velocity of the action steps and the end-of-event logits."""
        v = self.final(h, c)  # (B, La, A)
        end = self.end_head(self.end_norm(h))[..., 0]  # (B, La)
        return v, end

    def forward(self, noisy: Float[Tensor, "B La A"], t_action: Float[Tensor, " B"],
                prefix: Float[Tensor, "B P D"], ctxs: list[Tensor], mode_id: Int[Tensor, " B"],
                abs_time: Float[Tensor, " B"], segment_ids: Int[Tensor, "B La"],
                position_ids: Int[Tensor, "B La"], causal: bool,
                ) -> tuple[Float[Tensor, "B La A"], Float[Tensor, "B La"]]:
        """segment_ids: -1 = padding (sees itself and the prefix only); causal: each step sees
        earlier steps of its event only (event mode, so padding after the end never matters)."""
        B, La, _ = noisy.shape
        P = prefix.shape[1]
        x = torch.cat([prefix, self.action_in(noisy)], 1)  # (B, P+La, D)
        c = self.condition(t_action, mode_id, abs_time)[:, None].expand(B, P + La, -1)
        mask = sequence_mask(segment_ids, P, causal)  # (B, P+La, P+La)
        pos = torch.cat([position_ids.new_zeros(B, P), position_ids + 1], 1)  # (B, P+La)
        h = self.run_blocks(x, c, ctxs, mask, pos)  # (B, P+La, D)
        return self.heads(h[:, P:], c[:, P:])  # (B, La, A), (B, La)


def sequence_mask(segment_ids: Int[Tensor, "B La"], prefix: int, causal: bool
                  ) -> Bool[Tensor, "B L L"]:
    """[prefix | actions] mask, True = may attend. Prefix sees prefix only; a step sees the
    prefix and the steps of its own segment (earlier ones only when causal); padding (-1) sees
    the prefix and itself.

    >>> sequence_mask(torch.tensor([[0, 0, 1, -1]]), 1, causal=False).int()[0]
    tensor([[1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 0, 0, 1, 0],
            [1, 0, 0, 0, 1]], dtype=torch.int32)
    """
    B, La = segment_ids.shape
    L = prefix + La
    dev = segment_ids.device
    valid = segment_ids >= 0
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & valid[:, :, None]  # (B,La,La)
    eye = torch.eye(La, dtype=torch.bool, device=dev)
    same = same | eye
    if causal:
        same = same & torch.ones(La, La, dtype=torch.bool, device=dev).tril()
    mask = torch.zeros(B, L, L, dtype=torch.bool, device=dev)
    mask[:, :, :prefix] = True
    mask[:, prefix:, prefix:] = same
    return mask
