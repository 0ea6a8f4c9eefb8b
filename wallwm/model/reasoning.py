"""Reasoning: a small VLM that emits K continuous chain-of-thought latents, and their supervision.

The VLM is a pre-LN transformer (rotary positions) over one sequence::

    [ text tokens (Lt) | visual tokens (Nv) | <bot> ] [ latent 0 | latent 1 | ... | latent K-1 ]
      \\__________ prefix, P = Lt + Nv + 1 _________/   \\_____ latent slots, positions P..P+K-1 ___/

The prefix attends bidirectionally within itself (padded text keys masked out) and never to the
latents; latent slots attend to the whole valid prefix and causally to earlier slots. A latent is
the final-normed hidden state of its slot.

Two decoders of the latents, on the same weights:

- ``serial`` (the baseline, Coconut-style continuous CoT): slot 0 is fed the final hidden state
  of ``<bot>``; slot k>0 is fed latent k-1. K steps through all ``depth`` layers, one token each,
  with a KV cache (``K * depth`` sequential layer calls).
- ``staircase`` (Layer-Relay): only slot 0 runs the layers below the relay depth ``N_r``; its
  hidden state at depth ``N_r`` is *relayed* to every slot as its input there, plus a learned
  per-slot relay embedding ``r_k`` (parameter ``relay``, K-1 rows, zero-initialized; ``r_0 = 0``).
  The layers above ``N_r`` then run all K slots in one causal pass (``depth`` layer calls in
  all)::

        layer  depth  | s0 s1 s2 s3       s = slot; ■ = computed
               ...    | ■  ■  ■  ■        upper layers: all K slots in one pass, slot k attends
               N_r+1  | ■  ■  ■  ■        to the prefix and to slots <= k at the same layer
        ------ N_r ---+-h0─┴──┴──┘        relay: x_k(N_r) = h_0(N_r) + r_k
               ...    | ■                 lower layers: slot 0 only
               1      | ■
                        ^ fed h_<bot>(depth)

  The relay is causal (slot k reads only the prefix, h_0 and slots < k) and exact where the
  serial chain has nothing to approximate: latent 0 equals the serial latent 0 for every K and
  N_r (slot 0 sees the same inputs through the same layers), hence K = 1 is exactly serial. For
  k > 0 the relay replaces "feed latent k-1 back through all layers" by "start at depth N_r from
  slot 0's state and read slots < k by attention"; training stage (4) distils the serial teacher
  into it (``staircase_distill_loss``).

Supervision: a small causal text decoder, pretrained on captions (``pretrain_text_decoder``) and
then frozen, reads the latents (projected to its width) as a soft prefix; ``cot_loss`` is the NLL
of the chain-of-thought text. Its gradient reaches the latents and the VLM, never the decoder.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KV = tuple[Tensor, Tensor]  # keys, values: (B, H, T, d) each, rotary already applied to keys


@dataclass
class ReasoningConfig:
    width: int
    depth: int
    heads: int
    relay_depth: int  # N_r, 0 < N_r <= depth
    num_latents: int  # K
    vocab_size: int
    max_text_len: int = 64
    visual_dim: int | None = None  # visual tokens projected from visual_dim to width
    decoder_width: int | None = None  # frozen text decoder; None: same as the VLM
    decoder_depth: int = 2
    decoder_heads: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.relay_depth <= self.depth:
            raise ValueError(f"ReasoningConfig.relay_depth={self.relay_depth}: needs "
                             f"0 < relay_depth <= depth={self.depth}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"ReasoningConfig.width={self.width}: must split into heads="
                             f"{self.heads} heads of even size (rotary)")
        if self.num_latents < 1:
            raise ValueError(f"ReasoningConfig.num_latents={self.num_latents}: needs >= 1")


# ----------------------------------------------------------------------------- building blocks


class _Rotary(nn.Module):
    """Rotary position tables, grown on demand (rotate-half convention)."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self.register_buffer("cos", torch.empty(0, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(0, head_dim), persistent=False)

    def forward(self, start: int, n: int) -> tuple[Tensor, Tensor]:
        """cos, sin for positions start..start+n-1: (n, head_dim) each."""
        if self.cos.is_inference() and not torch.is_inference_mode_enabled():
            # grown under inference mode (a validation pass): autograd cannot save those
            self.cos, self.sin = self.cos.clone(), self.sin.clone()
        if start + n > self.cos.shape[0]:
            size = max(start + n, 2 * self.cos.shape[0], 128)
            inv = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float32,
                                              device=self.cos.device) / self.head_dim)
            ang = torch.outer(torch.arange(size, dtype=torch.float32, device=inv.device), inv)
            # sin carries the sign of rotate-half, so _rotate needs no negation
            self.cos = torch.cat([ang.cos(), ang.cos()], dim=-1)  # (size, d)
            self.sin = torch.cat([-ang.sin(), ang.sin()], dim=-1)  # (size, d)
        return self.cos[start:start + n], self.sin[start:start + n]


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, T, ..., H, d) rotated by position: cos, sin (T, d) from _Rotary."""
    h = x.shape[-1] // 2
    shape = (cos.shape[0],) + (1,) * (x.dim() - 3) + (cos.shape[1],)  # (T, 1.., d)
    rot = torch.cat([x[..., h:], x[..., :h]], dim=-1)
    return torch.addcmul(x * cos.view(shape), rot, sin.view(shape))


class _Block(nn.Module):
    """Pre-LN transformer block whose attention takes past keys/values (a cache or a prefix)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * width, width))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, past: KV | None,
                mask: Tensor | None) -> tuple[Tensor, KV]:
        """x (B, T, W); past keys/values (B, H, Tp, d) or None; mask bool (B|1, 1, T, Tp+T),
        True = attend, or None (attend to all). Returns x (B, T, W) and keys/values of past+x."""
        b, t, w = x.shape
        qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, w // self.heads)
        q, k = _rotate(qkv[:, :, :2], cos, sin).unbind(2)  # (B, T, H, d) each, one rotation
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), qkv[:, :, 2].transpose(1, 2)  # (B,H,T,d)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B,H,Tp+T,d)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, d)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, w))
        x = x + self.mlp(self.ln2(x))
        return x, (k, v)


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)


# ----------------------------------------------------------------------------- text decoder


class TextDecoder(nn.Module):
    """A small causal LM (trained by us on captions, then frozen) that reads a soft prefix."""

    def __init__(self, vocab_size: int, width: int, depth: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.width, self.max_len = width, max_len
        self.embed = nn.Embedding(vocab_size, width)
        self.rope = _Rotary(width // heads)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)
        _init_weights(self)

    def forward(self, ids: Tensor, mask: Tensor, prefix: Tensor | None = None) -> Tensor:
        """ids (B, L) long, mask (B, L) bool (False = padding), prefix (B, Lp, width) or None
        -> logits (B, Lp+L, V); position i predicts the token at i+1."""
        if ids.shape[1] > self.max_len:
            raise ValueError(f"TextDecoder: text length {ids.shape[1]} > max_len={self.max_len}")
        x = self.embed(ids)  # (B, L, W)
        if prefix is not None:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)  # (B, Lp+L, W)
            mask = torch.cat([mask.new_ones(prefix.shape[:2]), mask], dim=1)  # (B, Lp+L)
        t = x.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        attn = causal & mask[:, None, None, :]  # (B, 1, T, T)
        attn = attn | torch.eye(t, dtype=torch.bool, device=x.device)  # padded rows: no NaN
        cos, sin = self.rope(0, t)
        for blk in self.blocks:
            x, _ = blk(x, cos, sin, None, attn)
        return self.head(self.norm(x))  # (B, Lp+L, V)

    def freeze(self) -> None:
        """Weights fixed from now on: requires_grad False and eval mode."""
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def generate(self, prefix: Tensor, max_new: int, eos_id: int | None = None) -> Tensor:
        """Greedy decoding after a soft prefix (B, Lp, width) -> ids (B, max_new); rows that
        emitted `eos_id` keep emitting it (so a caller can cut at the first one)."""
        b = prefix.shape[0]
        ids = torch.zeros(b, 0, dtype=torch.long, device=prefix.device)
        done = torch.zeros(b, dtype=torch.bool, device=prefix.device)
        for _ in range(min(max_new, self.max_len)):
            mask = torch.ones_like(ids, dtype=torch.bool)
            nxt = self(ids, mask, prefix)[:, -1].argmax(-1)  # (B,)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done = done | (nxt == eos_id)
            ids = torch.cat([ids, nxt[:, None]], 1)
        return ids


def _lm_nll(logits: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """Mean NLL of ids (B, L) under logits (B, L, V) already aligned (logits[i] predicts ids[i])."""
    nll = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")  # (B, L)
    m = mask.to(nll.dtype)
    return (nll * m).sum() / m.sum().clamp_min(1.0)


def pretrain_text_decoder(decoder: TextDecoder, batches: Iterable[tuple[Tensor, Tensor]],
                          steps: int, lr: float) -> list[float]:
    """Train the decoder as a plain LM on caption batches (ids (B, L), mask (B, L)) for `steps`
    steps (cycling through `batches` if it is re-iterable), then freeze it. Returns the losses."""
    decoder.requires_grad_(True)
    decoder.train()
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0.0)
    losses: list[float] = []
    it = iter(batches)
    while len(losses) < steps:
        try:
            ids, mask = next(it)
        except StopIteration:
            it = iter(batches)
            try:
                ids, mask = next(it)
            except StopIteration:
                break  # a spent one-shot iterator: stop early
        logits = decoder(ids, mask)  # (B, L, V)
        loss = _lm_nll(logits[:, :-1], ids[:, 1:], mask[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    decoder.freeze()
    return losses


# ----------------------------------------------------------------------------- the VLM


@dataclass
class PrefixCache:
    """The prefix encoded once, shared by both decoders."""

    kv: list[KV]  # per layer: keys/values of the prefix, (B, H, P, d) each
    key_mask: Tensor  # (B, 1, 1, P) bool, True = valid (always built: no branch on values)
    bot: Tensor  # (B, 1, W): final-normed hidden state of <bot>, the input of latent slot 0


class ReasoningModule(nn.Module):
    """A small VLM over [text; visual; <bot>] emitting K continuous CoT latents (module doc)."""

    def __init__(self, cfg: ReasoningConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.embed = nn.Embedding(cfg.vocab_size, w)
        self.visual_in = nn.Linear(cfg.visual_dim, w) if cfg.visual_dim else nn.Identity()
        self.visual_type = nn.Parameter(torch.zeros(w))
        self.bot = nn.Parameter(torch.zeros(w))
        self.rope = _Rotary(w // cfg.heads)
        self.blocks = nn.ModuleList(_Block(w, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(w)
        _init_weights(self)
        nn.init.normal_(self.bot, std=0.02)
        # r_1..r_{K-1} added to the relayed state at depth N_r (r_0 = 0: slot 0 is exact);
        # zero-init so staircase starts as the plain relay
        self.relay = nn.Parameter(torch.zeros(cfg.num_latents - 1, w))
        dw = cfg.decoder_width or w
        self.decoder = TextDecoder(cfg.vocab_size, dw, cfg.decoder_depth,
                                   cfg.decoder_heads or cfg.heads, cfg.max_text_len)
        self.decoder.freeze()
        self.to_decoder = nn.Linear(w, dw)
        _init_weights(self.to_decoder)
        # set once the decoder is pretrained on the build's text (a CoT loss through an
        # untrained decoder sits at log V and says nothing)
        self.register_buffer("decoder_trained", torch.zeros((), dtype=torch.bool))

    def set_decoder(self, decoder: TextDecoder) -> None:
        """Plug in a pretrained text decoder (frozen here); the prefix projection is rebuilt
        if its width differs."""
        decoder.freeze()
        self.decoder_trained.fill_(True)
        if decoder.width != self.to_decoder.out_features:
            self.to_decoder = nn.Linear(self.cfg.width, decoder.width).to(self.bot.device)
            _init_weights(self.to_decoder)
        self.decoder = decoder

    def train(self, mode: bool = True) -> ReasoningModule:
        super().train(mode)
        self.decoder.eval()  # frozen, whatever the rest does
        return self

    # -- prefix

    def encode_prefix(self, text_ids: Tensor, text_mask: Tensor, visual: Tensor) -> PrefixCache:
        """text_ids (B, Lt) long, text_mask (B, Lt) bool, visual (B, Nv, visual_dim)."""
        if text_ids.shape[1] > self.cfg.max_text_len:
            raise ValueError(f"ReasoningModule: text length {text_ids.shape[1]} > "
                             f"max_text_len={self.cfg.max_text_len}")
        b = text_ids.shape[0]
        vis = self.visual_in(visual) + self.visual_type  # (B, Nv, W)
        x = torch.cat([self.embed(text_ids), vis, self.bot.expand(b, 1, -1)], dim=1)  # (B,P,W)
        p = x.shape[1]
        valid = torch.cat([text_mask.bool(), torch.ones(b, p - text_ids.shape[1],
                                                        dtype=torch.bool,
                                                        device=text_mask.device)], dim=1)
        key_mask = valid[:, None, None, :]  # (B, 1, 1, P)
        cos, sin = self.rope(0, p)
        kv = []
        for blk in self.blocks:
            x, layer_kv = blk(x, cos, sin, None, key_mask)
            kv.append(layer_kv)
        return PrefixCache(kv, key_mask, self.norm(x[:, -1:]))

    def _latent_mask(self, cache: PrefixCache, k: int) -> Tensor:
        """Mask for k latent queries over [prefix; k latents], causal among the latents:
        (B, 1, k, P+k), True = attend. E.g. P = 2, k = 3, nothing padded::

            1 1 | 1 0 0
            1 1 | 1 1 0
            1 1 | 1 1 1
        """
        lat = torch.ones(k, k, dtype=torch.bool, device=cache.bot.device).tril()
        pre = cache.key_mask.expand(-1, -1, k, -1)  # (B, 1, k, P)
        return torch.cat([pre, lat.expand(pre.shape[0], 1, k, k)], dim=-1)

    # -- decoders

    def decode_serial(self, cache: PrefixCache) -> Tensor:
        """Coconut-style: K steps through all layers with a KV cache -> (B, K, W)."""
        kv = list(cache.kv)
        p = kv[0][0].shape[2]
        x, out = cache.bot, []  # x (B, 1, W)
        for k in range(self.cfg.num_latents):
            cos, sin = self.rope(p + k, 1)
            mask = F.pad(cache.key_mask, (0, k + 1), value=True)  # (B, 1, 1, P+k+1)
            h = x
            for i, blk in enumerate(self.blocks):
                h, kv[i] = blk(h, cos, sin, kv[i], mask)
            x = self.norm(h)  # latent k, and the input of slot k+1
            out.append(x)
        return torch.cat(out, dim=1)  # (B, K, W)

    def decode_staircase(self, cache: PrefixCache) -> Tensor:
        """Layer-Relay: slot 0 alone below N_r, all K slots in one pass above -> (B, K, W)."""
        nr, kk = self.cfg.relay_depth, self.cfg.num_latents
        p = cache.kv[0][0].shape[2]
        cos, sin = self.rope(p, 1)
        mask = F.pad(cache.key_mask, (0, 1), value=True)  # (B, 1, 1, P+1)
        h = cache.bot  # (B, 1, W)
        for i in range(nr):
            h, _ = self.blocks[i](h, cos, sin, cache.kv[i], mask)
        x = torch.cat([h, h + self.relay], dim=1)  # (B, K, W): x_k(N_r) = h_0(N_r) + r_k
        cos, sin = self.rope(p, kk)
        mask = self._latent_mask(cache, kk)  # (B|1, 1, K, P+K)
        for i in range(nr, self.cfg.depth):
            x, _ = self.blocks[i](x, cos, sin, cache.kv[i], mask)
        return self.norm(x)  # (B, K, W)

    def _decode_serial_uncached(self, text_ids: Tensor, text_mask: Tensor,
                                visual: Tensor) -> Tensor:
        """Reference for tests: serial decoding recomputing the whole sequence every step."""
        cache = self.encode_prefix(text_ids, text_mask, visual)
        b = text_ids.shape[0]
        vis = self.visual_in(visual) + self.visual_type
        prefix = torch.cat([self.embed(text_ids), vis, self.bot.expand(b, 1, -1)], dim=1)
        p = prefix.shape[1]
        valid = torch.ones(b, p, dtype=torch.bool)
        valid[:, :text_ids.shape[1]] = text_mask
        lats = [cache.bot]  # the input of slot 0
        for k in range(self.cfg.num_latents):
            x = torch.cat([prefix, *lats], dim=1)  # (B, P+k+1, W)
            t = p + k + 1
            m = torch.zeros(b, 1, t, t, dtype=torch.bool)
            m[:, :, :p, :p] = valid[:, None, None, :]  # prefix: bidirectional, no latents
            m[:, :, p:, :p] = valid[:, None, None, :]
            m[:, :, p:, p:] = torch.ones(k + 1, k + 1, dtype=torch.bool).tril()
            cos, sin = self.rope(0, t)
            for blk in self.blocks:
                x, _ = blk(x, cos, sin, None, m)
            lats.append(self.norm(x[:, -1:]))
        return torch.cat(lats[1:], dim=1)

    def forward(self, text_ids: Tensor, text_mask: Tensor, visual: Tensor,
                mode: str = "staircase") -> Tensor:
        """text_ids (B, Lt) long, text_mask (B, Lt) bool, visual (B, Nv, visual_dim)
        -> latents (B, K, width)."""
        cache = self.encode_prefix(text_ids, text_mask, visual)
        if mode == "staircase":
            return self.decode_staircase(cache)
        if mode == "serial":
            return self.decode_serial(cache)
        raise ValueError(f"ReasoningModule.forward: mode={mode!r}; use 'staircase' or 'serial'")

    def cot_loss(self, latents: Tensor | None, cot_ids: Tensor, cot_mask: Tensor) -> Tensor:
        """Mean NLL of the CoT text cot_ids (B, Lc) (mask (B, Lc) bool) under the frozen decoder
        reading latents (B, K, W) as a soft prefix; the last prefix slot predicts token 0.
        latents None: a zero prefix, the decoder's prior alone (the baseline the latents must
        beat)."""
        if latents is None:
            prefix = cot_ids.new_zeros(cot_ids.shape[0], self.cfg.num_latents,
                                       self.to_decoder.out_features, dtype=torch.float32)
        else:
            prefix = self.to_decoder(latents)  # (B, K, Dw)
        kk = prefix.shape[1]
        logits = self.decoder(cot_ids, cot_mask, prefix)  # (B, K+Lc, V)
        return _lm_nll(logits[:, kk - 1:-1], cot_ids, cot_mask.bool())


    @torch.no_grad()
    def decode_text(self, latents: Tensor, max_new: int, eos_id: int | None = None) -> Tensor:
        """Greedy text ids (B, max_new) the frozen decoder reads from latents (B, K, W); the
        first id is the `<bos>` the last prefix slot predicts."""
        return self.decoder.generate(self.to_decoder(latents), max_new, eos_id)


def cot_token_accuracy(generated: Tensor, cot_ids: Tensor, cot_mask: Tensor) -> tuple[int, int]:
    """(correct, total) tokens of greedy `generated` (B, >= Lc) against the reference CoT ids
    (B, Lc) position by position, over the reference's real tokens after `<bos>`."""
    n = min(generated.shape[1], cot_ids.shape[1])
    m = cot_mask[:, 1:n].bool()
    ok = (generated[:, 1:n] == cot_ids[:, 1:n]) & m
    total = int(cot_mask[:, 1:].sum())
    return int(ok.sum()), total


def staircase_distill_loss(student_latents: Tensor, teacher_latents: Tensor) -> Tensor:
    """Stage (4): the staircase student (B, K, W) matches the serial teacher (B, K, W), detached.
    MSE after a parameter-free layer norm, so the scale of the latents cannot shrink the loss."""
    w = student_latents.shape[-1]
    s = F.layer_norm(student_latents, (w,))
    t = F.layer_norm(teacher_latents.detach(), (w,))
    return F.mse_loss(s, t)


__all__ = ["PrefixCache", "ReasoningConfig", "ReasoningModule", "TextDecoder",
           "cot_token_accuracy", "pretrain_text_decoder", "staircase_distill_loss"]
