"""Per-episode event work, run on the Ray worker right after loading: time synchronization,
the four-level annotation, captions, hand edits merged in, and the score against ground truth.

The annotator reads only what a recording holds (DESIGN.md section 6); ground truth, when a
simulator supplies it, is used only to score the result.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from wallwm.config.schema import DataParams
from wallwm.data.annotate import (
    AnnotateParams,
    Vocabulary,
    annotate,
    events_by_episode,
    merge_human,
    read_annotations,
)
from wallwm.data.captions import make_captioner
from wallwm.data.episode import Episode, Event
from wallwm.data.timesync import sync_episode

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _human_edits(path: str) -> dict[str, list[Event]]:
    return events_by_episode(read_annotations(path))


def _captioner(p: DataParams):
    a = p.annotate
    if a.captioner == "http":
        return make_captioner("http", url=a.vlm_url, model=a.vlm_model)
    return make_captioner("template")


def annotate_episode(ep: Episode, p: DataParams) -> tuple[Episode, list[Event], dict[str, Any]]:
    """(possibly re-synced episode, events of every level, report). Ground truth is not read
    here; the assembler scores the result against it."""
    report: dict[str, Any] = {}
    a = p.annotate
    has_actions = "action" in ep.features or "observation.state" in ep.features
    if a.time_sync and has_actions and ep.videos:
        ep = sync_episode(ep, max_lag=a.time_sync_max_lag, min_score=a.time_sync_min_score)
        report["time_sync"] = ep.extra.get("time_sync")
    vocab = Vocabulary.from_list(a.vocabulary)
    params = AnnotateParams(video_penalty=a.video_penalty, video_min_size=a.video_min_size)
    events = annotate(ep, vocab, params)
    events = _captioner(p).caption(ep, events)
    if a.human_file:
        human = _human_edits(str(Path(a.human_file).resolve())).get(ep.source_id)
        if human:
            events = merge_human(events, human)
            report["human_events"] = len(human)
    return ep, events, report
