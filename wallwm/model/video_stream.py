"""The video tower: a flow-matching DiT over pixel patch tokens of multi-view frames.

Per view, the sequence is [observation frame | F noisy future frames], each frame h*w patches.
A block (DiT adaLN-zero, PixArt-style text cross-attention):

    x <- x + gate1 * SelfAttn_view(mod(norm(x)))          within one view, all its frames
    x <- x + g_cv  * W CrossViewAttn(norm(x))             across views, one frame at a time,
                                                          camera RoPE + frustum bias; g_cv = 0 at init
    x <- x + CrossAttn(norm(x), text)                     text + event-type context
    x <- x + gate2 * Mlp(mod(norm(x)))

Because g_cv starts at zero, a tower pretrained on single views computes exactly what it did
before the multi-view branch was added (tests/unit/model/test_streams.py). No view embedding is
added to the tokens for the same reason; camera identity enters only through camera RoPE.
"""

# ruff: noqa: F722  (jaxtyping shape strings are not Python expressions)
from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from wallwm.model.camera_rope import CameraRoPE
from wallwm.model.config import WallWMConfig
from wallwm.model.layers import (
    Attention,
    CrossAttention,
    IOLinear,
    Mlp,
    TimestepEmbedder,
    gate,
    modulate,
    norm,
    sincos_grid,
    sinusoid,
)
from wallwm.model.patches import patchify, unpatchify
from wallwm.model.tube_mask import apply_tube_mask

VideoFeatures = list[Tensor]  # per block: (B, V, T, N, D), T = 1 + F frames


class CrossViewBranch(nn.Module):
    """Attention across views at one frame, behind a zero-initialized per-channel gate."""

    def __init__(self, dim: int, heads: int, views: int):
        super().__init__()
        self.norm = norm(dim, True)
        self.attn = Attention(dim, heads)  # attn.proj is the W of h + g * W * CrossViewAttn(h)
        self.rope = CameraRoPE(views, dim // heads)
        self.gate = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Float[Tensor, "B V T N D"], bias: Tensor | None) -> Tensor:
        """bias: additive (B, V*N, V*N) for all frames or (B, T, V*N, V*N) per frame."""
        B, V, T, N, D = x.shape
        y = x.permute(0, 2, 1, 3, 4).reshape(B * T, V * N, D)  # (B*T, V*N, D) one frame
        slots = torch.arange(V, device=x.device).repeat_interleave(N)  # (V*N,) camera slot
        if bias is not None and bias.dim() == 3:  # one mask for every frame
            bias = bias.repeat_interleave(T, 0)[:, None]  # (B*T, 1, V*N, V*N)
        elif bias is not None:  # (B, T, V*N, V*N): a mask per frame (moving cameras)
            bias = bias.reshape(B * T, 1, V * N, V * N)
        y = self.attn(self.norm(y), bias, rope=lambda q: self.rope(q, slots))  # (B*T, V*N, D)
        y = y.reshape(B, T, V, N, D).permute(0, 2, 1, 3, 4)  # (B, V, T, N, D)
        return self.gate * y  # (B, V, T, N, D), zero at init


class VideoBlock(nn.Module):
    def __init__(self, dim: int, heads: int, views: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.attn = norm(dim), Attention(dim, heads)
        self.cross_view = CrossViewBranch(dim, heads, views)
        self.norm_txt, self.txt = norm(dim, True), CrossAttention(dim, heads)
        self.norm2, self.mlp = norm(dim), Mlp(dim, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-zero: the block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Float[Tensor, "B V T N D"], c: Float[Tensor, "B D"],
                ctx: Float[Tensor, "B Lc D"], ctx_mask: Bool[Tensor, "B Lc"],
                bias: Tensor | None, cross_view: bool = True) -> Tensor:
        B, V, T, N, D = x.shape
        cv = c.repeat_interleave(V, 0)  # (B*V, D) one condition per view sequence
        s1, sc1, g1, s2, sc2, g2 = self.ada(cv).chunk(6, -1)  # 6 x (B*V, D)
        h = x.reshape(B * V, T * N, D)  # (B*V, T*N, D) each view alone
        h = h + gate(g1, self.attn(modulate(self.norm1(h), s1, sc1)))  # (B*V, T*N, D)
        if cross_view:
            h = h + self.cross_view(h.reshape(B, V, T, N, D), bias).reshape(B * V, T * N, D)
        kv = ctx.repeat_interleave(V, 0)  # (B*V, Lc, D)
        km = ctx_mask.repeat_interleave(V, 0)[:, None]  # (B*V, 1, Lc) keys only
        h = h + self.txt(self.norm_txt(h), kv, km)  # (B*V, T*N, D)
        h = h + gate(g2, self.mlp(modulate(self.norm2(h), s2, sc2)))  # (B*V, T*N, D)
        return h.reshape(B, V, T, N, D)


class FinalLayer(nn.Module):
    """DiT's final layer: adaLN + zero-initialized linear to the output size."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = norm(dim)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = IOLinear(dim, out)
        for m in (self.ada[1], self.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Float[Tensor, "B L D"], c: Tensor) -> Float[Tensor, "B L O"]:
        shift, scale = self.ada(c).chunk(2, -1)  # 2 x (B, D) or (B, L, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, L, O)


class VideoStream(nn.Module):
    def __init__(self, cfg: WallWMConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.width
        self.patch_in = IOLinear(cfg.patch_dim, D)
        self.register_buffer("pos", sincos_grid(cfg.grid, D), persistent=False)  # (N, D)
        self.register_buffer("frame_pos", sinusoid(torch.arange(cfg.frames + 1), D),
                             persistent=False)  # (1 + frames, D); 0 = observation
        self.mask_token = nn.Parameter(torch.zeros(D))
        self.t_embed = TimestepEmbedder(D)
        self.mode_embed = nn.Embedding(2, D)  # 0 event, 1 unified
        self.blocks = nn.ModuleList(
            VideoBlock(D, cfg.heads, cfg.views, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(D, cfg.patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.mode_embed.weight, std=0.02)

    def forward(
        self,
        obs: Float[Tensor, "B V C H W"],
        future: Float[Tensor, "B V F C H W"],
        t: Float[Tensor, " B"],
        ctx: Float[Tensor, "B Lc D"],
        ctx_mask: Bool[Tensor, "B Lc"],
        mode_id: Int[Tensor, " B"],
        bias: Tensor | None = None,  # (B, VN, VN) or (B, T, VN, VN) additive
        tube: Bool[Tensor, "B V T h w"] | None = None,
        cross_view: bool = True,
    ) -> tuple[Float[Tensor, "B V F C H W"], VideoFeatures]:
        """Velocity of the noisy future frames, and every block's output features."""
        cfg = self.cfg
        B, V, F_, C, H, W = future.shape
        g, p = cfg.grid, cfg.patch
        frames = torch.cat([obs[:, :, None], future], 2)  # (B, V, T, C, H, W), T = 1 + F
        x = self.patch_in(patchify(frames, p))  # (B, V, T, N, D)
        T, N, D = x.shape[2], x.shape[3], x.shape[4]
        if tube is not None:
            x = apply_tube_mask(x.reshape(B, V, T, g, g, D), tube, self.mask_token)
            x = x.reshape(B, V, T, N, D)  # (B, V, T, N, D) masked patches -> mask token
        x = x + self.pos[None, None, None] + self.frame_pos[:T][None, None, :, None]  # (B,V,T,N,D)
        c = self.t_embed(t) + self.mode_embed(mode_id)  # (B, D)
        feats: VideoFeatures = []
        for blk in self.blocks:
            x = blk(x, c, ctx, ctx_mask, bias, cross_view)  # (B, V, T, N, D)
            feats.append(x)
        y = x[:, :, 1:].reshape(B, V * F_ * N, D)  # (B, V*F*N, D) future tokens only
        y = self.final(y, c).reshape(B, V, F_, N, -1)  # (B, V, F, N, C*p*p)
        return unpatchify(y, p, C, H, W), feats  # (B, V, F, C, H, W)
