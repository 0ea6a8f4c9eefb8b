"""Length-aware caption drop: short events are trained caption-free more often.

A short event (a grasp of a few frames) is mostly determined by what came before it, so the
model should learn to continue it from vision alone; a long event (a carry across the table)
needs its caption to say where it goes. The drop probability rho(L) is `hi` for events of at
most `short` frames, `lo` for events of at least `long` frames, and follows a half cosine in
between (smooth, monotone, flat at both ends).

The decision is a pure function of (seed, epoch, event id): no global RNG, so a data loader
on any worker, in any order, after any restart, drops the same captions, and a new epoch
draws afresh.
"""

from __future__ import annotations

import hashlib
import math
import struct

DEFAULT_LO = 0.1
DEFAULT_HI = 0.9
DEFAULT_SHORT = 8  # frames (0.4 s at 20 fps): a grasp or release
DEFAULT_LONG = 48  # frames (2.4 s at 20 fps): a carry or a drawer pull


def caption_drop_prob(
    length: float,
    lo: float = DEFAULT_LO,
    hi: float = DEFAULT_HI,
    short: float = DEFAULT_SHORT,
    long: float = DEFAULT_LONG,
) -> float:
    """rho(L): `hi` at/below `short` frames, `lo` at/above `long`, half-cosine in between."""
    _check(lo, hi, short, long)
    if length <= short:
        return float(hi)
    if length >= long:
        return float(lo)
    x = (length - short) / (long - short)
    return float(lo + (hi - lo) * 0.5 * (1.0 + math.cos(math.pi * x)))


def _check(lo: float, hi: float, short: float, long: float) -> None:
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"caption drop: need 0 <= lo <= hi <= 1, got lo={lo}, hi={hi}")
    if not 0 <= short < long:
        raise ValueError(f"caption drop: need 0 <= short < long, got short={short}, long={long}")


def uniform(seed: int, epoch: int, event_id: str) -> float:
    """A uniform number in [0, 1) determined by (seed, epoch, event id) alone."""
    h = hashlib.blake2b(f"{seed}\x1f{epoch}\x1f{event_id}".encode(), digest_size=8).digest()
    return struct.unpack("<Q", h)[0] / 2.0**64


class CaptionDropper:
    """Decides per (epoch, event) whether the caption is kept; same answer on every worker."""

    def __init__(
        self,
        seed: int = 0,
        lo: float = DEFAULT_LO,
        hi: float = DEFAULT_HI,
        short: float = DEFAULT_SHORT,
        long: float = DEFAULT_LONG,
    ):
        _check(lo, hi, short, long)
        self.seed, self.lo, self.hi, self.short, self.long = int(seed), lo, hi, short, long

    def drop_prob(self, length: float) -> float:
        return caption_drop_prob(length, self.lo, self.hi, self.short, self.long)

    def keep(self, event_id: str, length: int, epoch: int) -> bool:
        """True = train this event with its caption; False = caption-free continuation."""
        return uniform(self.seed, epoch, event_id) >= self.drop_prob(length)

    def __repr__(self) -> str:
        return (
            f"CaptionDropper(seed={self.seed}, lo={self.lo}, hi={self.hi}, "
            f"short={self.short}, long={self.long})"
        )
