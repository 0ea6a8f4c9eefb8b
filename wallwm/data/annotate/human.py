"""Hand edits over automatic annotations, and the `meta/annotations.jsonl` rows.

A human event is authoritative: it is placed verbatim, and the automatic events of its level
that it overlaps are replaced (dropped when it covers at least half of them, trimmed
otherwise). Frames left uncovered are given to the automatic neighbour (left first), so the
level stays contiguous and no human boundary ever moves; re-running the automatic pass and
merging the same edits again gives the same human boundaries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from wallwm.data.annotate.common import HUMAN, with_origin
from wallwm.data.episode import Event

ROW_KEYS = ("source_id", "episode_index")


def _merge_level(auto: list[Event], human: list[Event]) -> list[Event]:
    if not human:
        return sorted(auto, key=lambda e: e.start)
    end = max([e.end for e in auto + human])
    owner: list[Event | None] = [None] * end  # frame -> human event owning it
    for h in human:  # later edits win where edits overlap
        for k in range(max(0, h.start), min(end, h.end)):
            owner[k] = h
    kept: list[Event] = []
    for a in sorted(auto, key=lambda e: e.start):
        covered = sum(owner[k] is not None for k in range(a.start, a.end))
        if a.end <= a.start or covered * 2 >= a.end - a.start:
            continue  # replaced by the edit
        k = a.start
        while k < a.end:  # the parts of `a` no edit covers
            if owner[k] is not None:
                k += 1
                continue
            j = k
            while j < a.end and owner[j] is None:
                j += 1
            kept.append(replace(a, start=k, end=j))
            k = j
    slots: list[Event | None] = list(owner)
    for a in kept:
        for k in range(a.start, a.end):
            slots[k] = a
    kept_ids = {id(a) for a in kept}
    for k in range(end):  # extend the automatic neighbour: left, else right, else keep the old
        if slots[k] is not None:
            continue
        left = slots[k - 1] if k else None
        right = next((slots[j] for j in range(k + 1, end) if slots[j] is not None), None)
        if left is not None and id(left) in kept_ids:
            slots[k] = left
        elif right is not None and id(right) in kept_ids:
            slots[k] = right
        else:
            slots[k] = next((a for a in auto if a.start <= k < a.end), None)
    out: list[Event] = []
    k = 0
    while k < end:
        src, j = slots[k], k
        while j < end and slots[j] is src:
            j += 1
        if src is not None:
            out.append(src if (src.start, src.end) == (k, j) else replace(src, start=k, end=j))
        k = j
    return out


def merge_human(auto: list[Event], human: list[Event]) -> list[Event]:
    """`auto` with `human` edits applied level by level (human events get origin="human")."""
    human = [with_origin(h, HUMAN) for h in human]
    levels = list(dict.fromkeys([e.level for e in auto] + [h.level for h in human]))
    out: list[Event] = []
    for lvl in levels:
        out += _merge_level([e for e in auto if e.level == lvl],
                            [h for h in human if h.level == lvl])
    return out


def to_rows(source_id: str, episode_index: int, events: Iterable[Event]) -> list[dict[str, Any]]:
    return [{"source_id": source_id, "episode_index": int(episode_index), **e.to_json()}
            for e in events]


def event_from_row(row: dict[str, Any]) -> Event:
    return Event.from_json(row)


def events_by_episode(rows: Iterable[dict[str, Any]]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for r in rows:
        out.setdefault(str(r["source_id"]), []).append(event_from_row(r))
    return out


def write_annotations(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def read_annotations(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with Path(path).open() as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                row = json.loads(line)
                missing = [k for k in (*ROW_KEYS, "label", "start", "end") if k not in row]
                if missing:
                    raise ValueError(f"{path}:{n}: annotation row lacks {missing}")
                rows.append(row)
    return rows
