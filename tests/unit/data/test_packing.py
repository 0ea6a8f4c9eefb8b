"""Multi-event packing: FFD bins, the packed layout, and packed attention == per-event attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wallwm.data.packing import (
    EventTooLongError,
    PackedBatch,
    Piece,
    block_diagonal_mask,
    one_per_row,
    pack,
    pack_events,
    padding_fraction,
    rotary,
    sinusoidal_positions,
    unpacked_padding_fraction,
)


def test_ffd_places_every_event_once_within_capacity():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=300).tolist()
    bins = pack(lengths, 64)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    lower = -(-sum(lengths) // 64)  # no packing beats total / capacity
    assert lower <= len(bins) <= 11 / 9 * lower + 1  # FFD's worst-case bound
    assert padding_fraction(bins, lengths, 64) == pytest.approx(
        1 - sum(lengths) / (64 * len(bins)))
    assert pack(lengths, 64) == bins  # deterministic


def test_small_exact_case_and_baselines():
    bins = pack([5, 3, 2, 6, 4], 10)
    assert bins == [[3, 4], [0, 1, 2]]  # 6 4 | 5 3 2: longest first, first bin that fits
    assert padding_fraction(bins, [5, 3, 2, 6, 4], 10) == 0.0
    assert padding_fraction(pack([5, 3, 2, 6, 4], 12), [5, 3, 2, 6, 4], 12) == pytest.approx(
        1 - 20 / 24)
    # one event per row: padded to the longest of each batch, or to a fixed length
    assert unpacked_padding_fraction([5, 3, 2, 6, 4]) == pytest.approx(1 - 20 / 30)
    assert unpacked_padding_fraction([5, 3, 2, 6], batch_size=2) == pytest.approx(1 - 16 / 22)
    assert unpacked_padding_fraction([5, 3], pad_to=10) == pytest.approx(0.6)


def test_too_long_raises_unless_split():
    with pytest.raises(EventTooLongError, match="longer than capacity 8"):
        pack([3, 20, 4], 8)
    bins = pack([3, 20, 4], 8, split_long=True)
    pieces = sorted((p for b in bins for p in b), key=lambda p: (p.event, p.start))
    assert pieces == [Piece(0, 0, 3), Piece(1, 0, 8), Piece(1, 8, 16), Piece(1, 16, 20),
                      Piece(2, 0, 4)]
    items = [torch.arange(n, dtype=torch.float32)[:, None] for n in (3, 20, 4)]
    pb = PackedBatch.build(items, bins, 8)
    back = pb.unpack(pb.tokens)
    for a, b in zip(items, back, strict=True):
        torch.testing.assert_close(a, b)
    # a split event's positions go on from where the previous piece stopped
    pos_of_1 = torch.cat([pb.position_ids[pb.event_ids == 1]]).sort().values
    assert pos_of_1.tolist() == list(range(20))


def test_layout_ids_mask_and_roundtrip():
    items = [torch.full((n, 2), float(i)) for i, n in enumerate([4, 2, 3, 1])]
    pb = pack_events(items, 6)
    assert pb.tokens.shape == (2, 6, 2) and pb.attention_mask.shape == (2, 6, 6)
    assert pb.valid.sum() == 10 and pb.padding_fraction == pytest.approx(2 / 12)
    for r in range(2):
        seg = pb.segment_ids[r]
        for i in range(6):
            for j in range(6):
                same = bool(seg[i] >= 0 and seg[i] == seg[j])
                pad_self = bool(seg[i] < 0 and i == j)
                assert bool(pb.attention_mask[r, i, j]) == (same or pad_self)
    # positions restart at 0 per event; tokens land where the event ids say
    for e, x in enumerate(items):
        where = pb.event_ids == e
        assert sorted(pb.position_ids[where].tolist()) == list(range(len(x)))
        assert torch.all(pb.tokens[where] == e)
    for a, b in zip(items, pb.unpack(pb.tokens), strict=True):
        torch.testing.assert_close(a, b)
    ids = pack_events([torch.arange(3), torch.arange(5)], 9, pad_value=-7)  # token ids
    assert ids.tokens.shape == (1, 9) and ids.tokens[0, -1] == -7
    base = one_per_row(items)
    assert base.tokens.shape == (4, 4, 2) and base.padding_fraction == pytest.approx(6 / 16)


def test_padding_rows_give_no_nan():
    seg = torch.tensor([[0, 0, -1, -1], [-1, -1, -1, -1]])
    m = block_diagonal_mask(seg)[:, None]
    q = torch.randn(2, 1, 4, 8)
    out = F.scaled_dot_product_attention(q, q, q, attn_mask=m)
    assert torch.isfinite(out).all()


class TinyBlock(torch.nn.Module):
    """Pre-norm self-attention + MLP with RoPE on q/k (per-event positions)."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.h = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(),
                                       torch.nn.Linear(4 * d, d))

    def forward(self, x, pos, mask):  # x (B, C, d), pos (B, C), mask (B, 1, C, C) or None
        B, C, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, C, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        q, k = rotary(q, pos), rotary(k, pos)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(a.transpose(1, 2).reshape(B, C, d))
        return x + self.mlp(self.norm2(x))


def test_packed_attention_equals_each_event_alone():
    torch.manual_seed(0)
    d = 32
    blocks = torch.nn.ModuleList([TinyBlock(d) for _ in range(2)]).eval()
    lengths = [7, 3, 12, 1, 5, 9, 4, 2]
    items = [torch.randn(n, d) for n in lengths]

    def run(x, pos, mask):
        x = x + sinusoidal_positions(pos, d)  # absolute per-event positions too
        for b in blocks:
            x = b(x, pos, mask)
        return x

    with torch.no_grad():
        pb = pack_events(items, 16)
        assert len(pb.placements) == len(items) and pb.tokens.shape[0] < len(items)
        packed = pb.unpack(run(pb.tokens, pb.position_ids, pb.sdpa_mask()))
        for x, got in zip(items, packed, strict=True):
            alone = run(x[None], torch.arange(len(x))[None], None)[0]
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)
            assert torch.isfinite(got).all()
