"""Task -> Subtask -> Action -> Segment for one episode, each level contiguous over [0, T).

* task: the whole episode, labelled with the instruction.
* subtask: the instruction's clauses ("pick up X and place it at Y" -> two); a pick splits
  where its last carry (`move`) starts, so a drop and re-grasp stays inside "pick up".
  One clause (or no split point) -> one subtask.
* action: the robot detector on robot tiers, visual change points on video tiers (or when a
  robot episode carries no usable state/action).
* segment: physical phases inside each action from the speed profile (accelerate / cruise /
  decelerate, or `still` when the hand barely moves); on video tiers, finer change points.
"""

from __future__ import annotations

import re
from itertools import pairwise

import numpy as np

from wallwm.data.annotate.common import AnnotateParams, event
from wallwm.data.annotate.robot import annotate_robot
from wallwm.data.annotate.signals import extract
from wallwm.data.annotate.video import annotate_video, change_points, visual_features
from wallwm.data.annotate.vocab import DEFAULT_VOCAB, Vocabulary
from wallwm.data.episode import Episode, Event

VIDEO_TIERS = ("t0_web", "t1_human")
CRUISE = 0.8  # fraction of an action's peak speed above which it cruises
STILL = 0.15  # peak speed (fraction of the episode's) under which an action is `still`


def clauses(task: str) -> list[str]:
    parts = [p.strip(" .") for p in re.split(r",? and then |,? then | and |; ", task) if p]
    return [p for p in parts if p] or [task]


def subtasks(task: str, actions: list[Event], length: int) -> list[Event]:
    names = clauses(task)
    cut = None
    if len(names) >= 2:
        moves = [e.start for e in actions if e.label == "move"]
        cut = moves[-1] if moves and 0 < moves[-1] < length else None
    if cut is None:
        return [event(task, 0, length, "subtask", "instruction")]
    second = " and ".join(names[1:])
    return [event(names[0], 0, cut, "subtask", "instruction"),
            event(second, cut, length, "subtask", "action_grouping")]


def speed_segments(speed: np.ndarray, actions: list[Event], min_frames: int) -> list[Event]:
    out = []
    for a in actions:
        s = speed[a.start : a.end]
        n = a.end - a.start
        if n < min_frames or s.max(initial=0.0) < STILL:
            out.append(event("still" if s.max(initial=0.0) < STILL else "motion", a.start,
                             a.end, "segment", "speed_profile"))
            continue
        fast = np.flatnonzero(s >= CRUISE * s.max())
        cuts = [(a.start, "accelerate"), (a.start + int(fast[0]), "cruise"),
                (a.start + int(fast[-1]) + 1, "decelerate"), (a.end, "")]
        for (b0, lab), (b1, _) in pairwise(cuts):
            if b1 > b0:
                out.append(event(lab, b0, b1, "segment", "speed_profile"))
    return out


def video_segments(ep: Episode, actions: list[Event], p: AnnotateParams) -> list[Event]:
    x, _ = visual_features(ep, p.video_size)
    out = []
    for a in actions:
        cps = change_points(x[a.start : a.end], p.video_penalty / 2, max(2, p.video_min_size - 1))
        bounds = [a.start, *(a.start + c for c in cps), a.end]
        for b0, b1 in pairwise(bounds):
            out.append(event("segment", b0, b1, "segment", "change_point"))
    return out


def annotate(ep: Episode, vocab: Vocabulary = DEFAULT_VOCAB,
             params: AnnotateParams | None = None) -> list[Event]:
    """All four levels for `ep` (task, subtask, action, segment), each tiling [0, T)."""
    p = params or AnnotateParams()
    t = ep.length
    if t == 0:
        return []
    sig = extract(ep) if ep.tier not in VIDEO_TIERS else None
    use_video = sig is None or not sig.has_motion
    if use_video and ep.videos:
        actions = annotate_video(ep, p)
        segments = video_segments(ep, actions, p)
    else:
        actions = annotate_robot(ep, vocab)
        speed = sig.speed() if sig is not None else np.zeros(t)
        segments = speed_segments(speed, actions, p.segment_min_frames)
    task = [event(ep.task or "task", 0, t, "task", "episode")]
    return task + subtasks(ep.task, actions, t) + actions + segments
