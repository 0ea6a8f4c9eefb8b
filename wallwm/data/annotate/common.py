"""Small shared pieces: annotator parameters, event construction, contiguity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

from wallwm.data.episode import Event

AUTO = "auto"
HUMAN = "human"
LEVELS = ("task", "subtask", "action", "segment")


@dataclass(frozen=True)
class AnnotateParams:
    """Knobs of the annotators (defaults tuned on `sim:episodes=40,seed=0`)."""

    video_penalty: float = 0.3  # Pelt penalty per change point, in units of log(T) x feature dim
    video_min_size: int = 3  # frames per video segment at least
    video_size: int = 16  # side of the grayscale thumbnail the video features come from
    min_action_frames: int = 1  # shorter action runs merge into a neighbour
    segment_min_frames: int = 3  # an action shorter than this gets one segment

    @classmethod
    def from_section(cls, section: Any) -> AnnotateParams:
        """From `params.data.annotate` (any object with same-named attributes)."""
        names = cls.__dataclass_fields__
        return cls(**{k: getattr(section, k) for k in names if hasattr(section, k)})


def event(label: str, start: int, end: int, level: str, signal: str, caption: str = "",
          origin: str = AUTO) -> Event:
    return Event(label, int(start), int(end), level, caption or label, signal, origin)


def origin_of(e: Event) -> str:
    return e.origin


def with_origin(e: Event, origin: str) -> Event:
    return replace(e, origin=origin)


def is_contiguous(events: Sequence[Event], length: int) -> bool:
    """Whether `events` (one level) tile [0, length) without gaps or overlaps."""
    evs = sorted(events, key=lambda e: e.start)
    if not evs:
        return length == 0
    ok = evs[0].start == 0 and evs[-1].end == length
    return ok and all(a.end == b.start and a.start < a.end for a, b in pairwise(evs))


def runs(labels: Sequence[str]) -> list[tuple[str, int, int]]:
    """(label, start, end) of the maximal runs of equal labels."""
    out: list[tuple[str, int, int]] = []
    for k, lab in enumerate(labels):
        if out and out[-1][0] == lab:
            out[-1] = (lab, out[-1][1], k + 1)
        else:
            out.append((lab, k, k + 1))
    return out
