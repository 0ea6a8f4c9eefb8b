"""Multi-event packing: whole events fill fixed-length rows, kept apart by a block-diagonal mask.

Events are short and vary a lot in length (a grasp is a few frames, a move dozens); one event
per row pads every row to the longest one and spends most compute on padding. Packing several
events per row (first-fit decreasing) removes almost all of it; the block-diagonal attention
mask and position ids that restart at 0 for each event make a packed row compute exactly what
each event would alone (tests/unit/data/test_packing.py checks it to float tolerance).

Conventions of a `PackedBatch` (B rows of `capacity` slots):

* `segment_ids` (B, C) int64: the event's slot number within its row (0, 1, ...), -1 on
  padding; `event_ids` (B, C): the event's index in the input list, -1 on padding;
* `position_ids` (B, C) int64: 0.. within each event (a split event's later pieces go on from
  where the previous piece stopped), 0 on padding;
* `attention_mask` (B, C, C) bool, True = query i may attend key j: same event only. A padding
  slot attends only to itself (so no softmax row is all -inf, no NaN) and no real slot attends to
  padding. `sdpa_mask()` gives (B, 1, C, C) for `F.scaled_dot_product_attention`.
* The mask is dense, O(B C^2) bools (8 rows of 4096 = 134 MB); a varlen kernel would want
  cumulative lengths instead, which `placements` gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch


class Piece(NamedTuple):
    """A frame/token range [start, end) of event `event` (a whole event or a split piece)."""

    event: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


class EventTooLongError(ValueError):
    """An event does not fit a row; pass split_long=True to cut it into capacity-long pieces."""


def _first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of indices into `lengths` (all <= capacity); longest first, ties by index."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    remaining = np.empty(0, dtype=np.int64)
    bins: list[list[int]] = []
    for i in order:
        fits = np.flatnonzero(remaining >= lengths[i])
        if fits.size:
            b = int(fits[0])
        else:
            b = len(bins)
            bins.append([])
            remaining = np.append(remaining, capacity)
        bins[b].append(i)
        remaining[b] -= lengths[i]
    return bins


def pack(lengths: Sequence[int], capacity: int, *,
         split_long: bool = False) -> list[list[int]] | list[list[Piece]]:
    """First-fit decreasing packing of event lengths into rows of `capacity` slots.

    Returns bins of event indices. An event longer than `capacity` raises EventTooLongError
    unless `split_long`, in which case it is cut into pieces of `capacity` (the last one shorter)
    and the bins hold `Piece`s instead of ints (every event then appears as one or more pieces).
    """
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    lengths = [int(x) for x in lengths]
    if any(x < 0 for x in lengths):
        raise ValueError("negative event length")
    too_long = [i for i, x in enumerate(lengths) if x > capacity]
    if not split_long:
        if too_long:
            shown = ", ".join(f"#{i} ({lengths[i]})" for i in too_long[:5])
            raise EventTooLongError(
                f"{len(too_long)} event(s) longer than capacity {capacity}: {shown}"
                f"{' ...' if len(too_long) > 5 else ''}; raise the capacity, drop them, or "
                "pack(..., split_long=True)")
        return _first_fit_decreasing(lengths, capacity)
    pieces = [Piece(i, s, min(s + capacity, n)) for i, n in enumerate(lengths)
              for s in range(0, max(n, 1), capacity)]
    bins = _first_fit_decreasing([p.length for p in pieces], capacity)
    return [[pieces[j] for j in b] for b in bins]


def _as_pieces(bin_: Sequence[int | Piece], lengths: Sequence[int]) -> list[Piece]:
    return [x if isinstance(x, Piece) else Piece(int(x), 0, int(lengths[int(x)])) for x in bin_]


def padding_fraction(bins: Sequence[Sequence[int | Piece]], lengths: Sequence[int],
                     capacity: int) -> float:
    """Share of the len(bins) * capacity slots that hold padding."""
    if not bins:
        return 0.0
    used = sum(p.length for b in bins for p in _as_pieces(b, lengths))
    return 1.0 - used / (len(bins) * capacity)


def unpacked_padding_fraction(lengths: Sequence[int], batch_size: int | None = None,
                              pad_to: int | None = None) -> float:
    """The baseline, one event per row: the padding share when the events, in the given order
    and cut into consecutive batches of `batch_size` (None: one batch), are each padded to the
    longest event of their batch (`pad_to` None) or to a fixed `pad_to` (e.g. the capacity)."""
    a = np.asarray(lengths, dtype=np.int64)
    if a.size == 0:
        return 0.0
    bs = a.size if batch_size is None else int(batch_size)
    slots = 0
    for k in range(0, a.size, bs):
        chunk = a[k : k + bs]
        slots += chunk.size * (int(chunk.max()) if pad_to is None else int(pad_to))
    return 1.0 - float(a.sum()) / slots


@dataclass
class PackedBatch:
    tokens: torch.Tensor  # (B, C, D) features or (B, C) ids
    segment_ids: torch.Tensor  # (B, C) int64, -1 = padding
    event_ids: torch.Tensor  # (B, C) int64, -1 = padding
    position_ids: torch.Tensor  # (B, C) int64
    attention_mask: torch.Tensor  # (B, C, C) bool, True = may attend
    placements: list[tuple[int, int, Piece]]  # (row, offset in row, piece)
    num_events: int

    @property
    def capacity(self) -> int:
        return int(self.segment_ids.shape[1])

    @property
    def valid(self) -> torch.Tensor:  # (B, C) bool: real tokens
        return self.segment_ids >= 0

    @property
    def padding_fraction(self) -> float:
        return 1.0 - float(self.valid.float().mean())

    def sdpa_mask(self) -> torch.Tensor:  # (B, 1, C, C), broadcasts over heads
        return self.attention_mask[:, None]

    def unpack(self, out: torch.Tensor) -> list[torch.Tensor]:
        """Per-event slices of a (B, C, ...) output, in input order (pieces re-joined)."""
        parts: list[list[tuple[int, torch.Tensor]]] = [[] for _ in range(self.num_events)]
        for row, off, p in self.placements:
            parts[p.event].append((p.start, out[row, off : off + p.length]))
        res = []
        for ps in parts:
            ps.sort(key=lambda t: t[0])
            if not ps:
                res.append(out.new_zeros((0, *out.shape[2:])))
            else:
                res.append(ps[0][1] if len(ps) == 1 else torch.cat([t for _, t in ps]))
        return res

    @classmethod
    def build(cls, items: Sequence[torch.Tensor], bins: Sequence[Sequence[int | Piece]],
              capacity: int, pad_value: float | int = 0) -> PackedBatch:
        """Lay out `items` (per event (L_i, D) or (L_i,)) as `bins` say (from `pack`)."""
        if not items:
            raise ValueError("no events")
        first = items[0]
        lengths = [int(x.shape[0]) for x in items]
        B = len(bins)
        tokens = first.new_full((B, capacity, *first.shape[1:]), pad_value)
        seg = torch.full((B, capacity), -1, dtype=torch.long)
        eid = torch.full((B, capacity), -1, dtype=torch.long)
        pos = torch.zeros((B, capacity), dtype=torch.long)
        placements: list[tuple[int, int, Piece]] = []
        for r, b in enumerate(bins):
            off = 0
            for s, p in enumerate(_as_pieces(b, lengths)):
                if off + p.length > capacity:
                    raise EventTooLongError(f"row {r} overflows capacity {capacity}")
                sl = slice(off, off + p.length)
                tokens[r, sl] = items[p.event][p.start : p.end]
                seg[r, sl] = s
                eid[r, sl] = p.event
                pos[r, sl] = torch.arange(p.start, p.end)
                placements.append((r, off, p))
                off += p.length
        return cls(tokens, seg, eid, pos, block_diagonal_mask(seg), placements, len(items))


def block_diagonal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, C) segment ids (-1 = padding) -> (B, C, C) bool: same segment; padding sees itself."""
    valid = segment_ids >= 0
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    mask = same & valid[:, :, None] & valid[:, None, :]
    eye = torch.eye(segment_ids.shape[1], dtype=torch.bool, device=segment_ids.device)
    return mask | (eye[None] & ~valid[:, :, None])


def pack_events(items: Sequence[torch.Tensor], capacity: int, *, split_long: bool = False,
                pad_value: float | int = 0) -> PackedBatch:
    """pack + build in one call: all `items` into as few rows of `capacity` as FFD finds."""
    bins = pack([int(x.shape[0]) for x in items], capacity, split_long=split_long)
    return PackedBatch.build(items, bins, capacity, pad_value)


def one_per_row(items: Sequence[torch.Tensor], pad_to: int | None = None,
                pad_value: float | int = 0) -> PackedBatch:
    """The unpacked baseline in the same layout: row i = event i, padded to the longest event
    (`pad_to` None) or to `pad_to`."""
    cap = max(int(x.shape[0]) for x in items) if pad_to is None else int(pad_to)
    return PackedBatch.build(items, [[i] for i in range(len(items))], cap, pad_value)


def sinusoidal_positions(position_ids: torch.Tensor, dim: int,
                         base: float = 10000.0) -> torch.Tensor:
    """(...,) int positions -> (..., dim) float32 sin/cos features (dim even)."""
    half = dim // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float32, device=position_ids.device) / half)
    ang = position_ids.to(torch.float32)[..., None] * freqs
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


def rotary(x: torch.Tensor, position_ids: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE on (B, H, C, Dh) queries/keys at per-token positions (B, C) (Dh even)."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)
    ang = position_ids.to(torch.float32)[:, None, :, None] * freqs  # (B, 1, C, half)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
