"""packing_waste and packing_throughput_ratio: multi-event packing on realistic event lengths.

Event lengths (frames) come from the action-level ground truth of the builds under the wallwm
home (`<home>/builds/*/**/meta/episodes_extra.jsonl`): a lognormal is fitted to them and
EVENTS lengths are drawn from it, clipped to [2, 48] frames. With fewer than 10 such events
(no build yet), the lognormal is a default fitted by eye to the sim's 3-40 frame events
(median 7 frames, sigma 0.6). Each frame is TOKENS_PER_FRAME tokens (a compressed per-frame
latent; the tiny preset's 2 views x 64 patches would not fit a CPU benchmark, and padding
shares do not change when tokens per frame and capacity scale together).

* packing_waste: padding share of FFD-packed rows of CAPACITY tokens (target <= 0.05); the
  one-event-per-row baseline (each batch of BATCH events padded to its longest event, events in
  random order, no length bucketing) is reported beside it.
* packing_throughput_ratio: real (non-padding) tokens per second of forward + backward through
  a small pre-norm transformer stack (RoPE on per-event positions, dense boolean mask in
  `scaled_dot_product_attention`) on packed rows vs the same events one per row; target >= 1.5.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import Figure, ratio_figure, timed
from wallwm.data.packing import (
    PackedBatch,
    one_per_row,
    pack,
    padding_fraction,
    rotary,
    unpacked_padding_fraction,
)

EVENTS = int(os.environ.get("WALLWM_BENCH_PACK_EVENTS", "2000"))
TRAIN_EVENTS = int(os.environ.get("WALLWM_BENCH_PACK_TRAIN_EVENTS", "256"))
REPEATS = int(os.environ.get("WALLWM_BENCH_REPEATS", "3"))
TOKENS_PER_FRAME = 8
CAPACITY = 512  # tokens per packed row (64 frames)
ROWS = 8  # packed rows per batch
BATCH = 16  # events per batch, one per row (baseline)
MIN_FRAMES, MAX_FRAMES = 2, 48
DEFAULT_LOGNORMAL = (float(np.log(7.0)), 0.6)  # (mu, sigma) of log frames


def _build_event_lengths() -> list[int]:
    """Action-event lengths (frames) from the builds' ground truth, one per distinct event."""
    try:
        from components.stack.home import wallwm_home

        root = wallwm_home() / "builds"
    except Exception:  # no stack package or no home: no builds
        return []
    seen: dict[tuple[str, str, int, int], int] = {}
    for f in sorted(root.glob("*/**/meta/episodes_extra.jsonl")):
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            for e in rec.get("ground_truth") or []:
                if e.get("level") == "action" and e["end"] > e["start"]:
                    key = (str(f.parent.parent.name), rec.get("source_id", ""), e["start"],
                           e["end"])
                    seen[key] = int(e["end"] - e["start"])
    return list(seen.values())


def event_lengths(n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """(n,) token lengths and a note on where their distribution came from."""
    observed = _build_event_lengths()
    if len(observed) >= 10:
        logs = np.log(np.asarray(observed, float))
        mu, sigma = float(logs.mean()), max(float(logs.std()), 0.1)
        src = f"lognormal fitted to {len(observed)} build action events"
    else:
        mu, sigma = DEFAULT_LOGNORMAL
        src = "default lognormal (no build with >= 10 action events)"
    frames = np.random.default_rng(seed).lognormal(mu, sigma, n)
    frames = np.clip(np.rint(frames), MIN_FRAMES, MAX_FRAMES).astype(np.int64)
    note = (f"{src}: mu={mu:.2f} sigma={sigma:.2f} -> frames median {np.median(frames):.0f}, "
            f"p95 {np.percentile(frames, 95):.0f}, max {frames.max()}; x{TOKENS_PER_FRAME} tokens")
    return frames * TOKENS_PER_FRAME, note


class Block(torch.nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.h = heads
        self.n1, self.n2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(),
                                       torch.nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, C, d = x.shape  # x (B, C, d), pos (B, C), mask (B, 1, C, C)
        q, k, v = self.qkv(self.n1(x)).view(B, C, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(rotary(q, pos), rotary(k, pos), v, attn_mask=mask)
        x = x + self.proj(a.transpose(1, 2).reshape(B, C, d))
        return x + self.mlp(self.n2(x))


def _epoch(model: torch.nn.ModuleList, batches: list[PackedBatch]) -> None:
    """Forward + backward over every batch (a loss on real tokens only)."""
    for pb in batches:
        x, mask = pb.tokens, pb.sdpa_mask()
        for blk in model:
            x = blk(x, pb.position_ids, mask)
        loss = (x.square().sum(-1) * pb.valid).sum() / pb.valid.sum()
        loss.backward()
    model.zero_grad(set_to_none=True)


def run() -> dict[str, Figure]:
    torch.manual_seed(0)
    lengths, note = event_lengths(EVENTS)
    bins = pack(lengths.tolist(), CAPACITY)
    waste = padding_fraction(bins, lengths.tolist(), CAPACITY)
    base_waste = unpacked_padding_fraction(lengths.tolist(), batch_size=BATCH)
    figs = {"packing_waste": Figure(
        "packing_waste", round(waste, 4), (round(waste, 4), round(waste, 4)),
        what=f"padding share of FFD-packed {CAPACITY}-token rows ({EVENTS} events)",
        baseline=f"one event per row, batches of {BATCH} padded to their longest",
        baseline_value=round(base_waste, 4), target="<= 0.05", unit="", met=waste <= 0.05,
        notes=f"{len(bins)} rows; {note}")}

    d, heads, depth = 64, 4, 2
    model = torch.nn.ModuleList([Block(d, heads) for _ in range(depth)])
    tl = lengths[:TRAIN_EVENTS].tolist()
    items = [torch.randn(n, d) for n in tl]
    tbins = pack(tl, CAPACITY)
    packed = [PackedBatch.build(items, tbins[i : i + ROWS], CAPACITY)
              for i in range(0, len(tbins), ROWS)]
    single = [one_per_row(items[i : i + BATCH]) for i in range(0, len(items), BATCH)]
    real = float(sum(tl))
    _, t_packed = timed(lambda: _epoch(model, packed), repeats=REPEATS)
    _, t_single = timed(lambda: _epoch(model, single), repeats=REPEATS)
    ours = [real / t for t in t_packed]
    base = [real / t for t in t_single]
    slots_p = sum(b.valid.numel() for b in packed)
    slots_s = sum(b.valid.numel() for b in single)
    fig = ratio_figure(
        "packing_throughput_ratio", ours, base,
        what=f"training tokens/s (fwd+bwd, {depth}-layer d={d} transformer, CPU), packed vs "
             "one event per row",
        baseline=f"one event per row, batches of {BATCH} padded to their longest",
        target=1.5,
        notes=f"{TRAIN_EVENTS} events, {int(real)} real tokens; slots packed {slots_p} "
              f"({1 - real / slots_p:.3f} pad) vs per-row {slots_s} ({1 - real / slots_s:.3f} "
              f"pad); tokens/s packed {[round(x) for x in ours]}, per-row "
              f"{[round(x) for x in base]}; torch threads {torch.get_num_threads()}")
    figs[fig.key] = fig
    return figs


if __name__ == "__main__":
    for f in run().values():
        print(json.dumps(f.to_json(), indent=1))
