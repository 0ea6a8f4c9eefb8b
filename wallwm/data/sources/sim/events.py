"""Ground-truth events from privileged signals, per control step, then per dataset frame.

The expert's phase gives the intent; physics sharpens the boundaries a viewer would draw:
a `lift` starts when the object leaves the table (before that the fingers are still closing:
`grasp`); `release` lasts while a finger still touches the object; `press`/`push`/`pull`
start at the first finger contact of their run (the approach before it is `reach`). A frame
takes the label most of its control steps carry (ties: the later), so the action events are
contiguous and cover the episode.
"""

from __future__ import annotations

from collections import Counter
from itertools import groupby

import numpy as np

from wallwm.data.episode import Event

LIFT_DZ = 0.005  # m above its resting height at which the object counts as lifted
CONTACT_STARTS = ("press", "push", "pull")

SUBTASKS: dict[str, tuple[str, ...]] = {
    "pick-place-v3": ("pick up the red puck", "place it at the blue goal"),
    "push-v3": ("push the red puck to the green goal",),
    "drawer-open-v3": ("open the green drawer",),
    "button-press-topdown-v3": ("press the red button",),
}
SIGNAL = {
    "grasp": "gripper",
    "lift": "object_lift",
    "release": "gripper",
    "retreat": "contact",
    "press": "contact",
    "push": "contact",
    "pull": "contact",
}


def step_labels(
    phases: list[str], contact: np.ndarray, obj_z: np.ndarray, rest_z: float
) -> list[str]:
    """Refine the expert phase of every control step with contacts and the object's height.

    `contact[s]`/`obj_z[s]` describe step s (any substep / after the step)."""
    labels = list(phases)
    for s, lab in enumerate(labels):
        if lab == "lift" and obj_z[s] < rest_z + LIFT_DZ:
            labels[s] = "grasp"
    for s in range(1, len(labels)):
        if labels[s] == "retreat" and labels[s - 1] == "release" and contact[s]:
            labels[s] = "release"
    s = 0
    for lab, run in groupby(list(labels)):
        n = len(list(run))
        if lab in CONTACT_STARTS and contact[s : s + n].any():
            first = s + int(np.argmax(contact[s : s + n]))
            labels[s:first] = ["reach"] * (first - s)
        s += n
    return labels


def frame_labels(labels: list[str], every: int) -> list[str]:
    out = []
    for k in range(0, len(labels), every):
        counts = Counter(labels[k : k + every])
        best = max(counts.values())
        out.append([lab for lab in labels[k : k + every] if counts[lab] == best][-1])
    return out


def action_events(labels: list[str]) -> list[Event]:
    events, start = [], 0
    for lab, run in groupby(labels):
        n = len(list(run))
        sig = SIGNAL.get(lab, "expert_phase") if start else "episode_start"
        events.append(Event(lab, start, start + n, "action", lab, sig, "ground_truth"))
        start += n
    return events


def subtask_events(task: str, labels: list[str]) -> list[Event]:
    """One event per subtask; pick-place splits where the last carry (`move`) starts."""
    names, n = SUBTASKS[task], len(labels)
    if len(names) == 1:
        return [Event(names[0], 0, n, "subtask", names[0], "expert_phase", "ground_truth")]
    starts = [k for k in range(n) if labels[k] == "move" and (k == 0 or labels[k - 1] != "move")]
    cut = starts[-1] if starts else n
    return [
        Event(names[0], 0, cut, "subtask", names[0], "expert_phase", "ground_truth"),
        Event(names[1], cut, n, "subtask", names[1], "expert_phase", "ground_truth"),
    ][: 2 if cut < n else 1]
