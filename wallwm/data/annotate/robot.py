"""Robot-tier action events from state, action and gripper (never `sim.*`, never ground truth).

Two grammars, chosen from the instruction (else from the gripper's behaviour):

* pick: reach -> grasp -> lift -> move -> place -> release -> retreat. The gripper closing
  starts `grasp` (on the first still frame of the close command), the hand rising while closed
  starts `lift` (the object leaves its support), a carry dominated by horizontal motion starts
  `move`, a commanded descent starts `place`, the gripper opening while still starts `release`
  and the hand rising after it starts `retreat`. The gripper opening while the hand is still
  carrying is a drop: back to `reach`.
* contact: reach -> <verb> -> retreat with the verb from the instruction (press, push, pull,
  ...). `press` starts where the last descent reaches cruise speed (the approach before it is
  `reach`); a sideways verb starts where the lowered hand starts moving sideways (and keeps
  doing so); `retreat` starts where the hand is commanded up. A retreat followed by another
  descent and contact was a re-approach: it becomes `reach`.

Thresholds are fractions of the episode's peak speed (see `signals`).
"""

from __future__ import annotations

import numpy as np

from wallwm.data.annotate.common import event, runs
from wallwm.data.annotate.signals import Signals, extract
from wallwm.data.annotate.vocab import DEFAULT_VOCAB, Vocabulary
from wallwm.data.episode import Episode, Event

MOVE = 0.37  # |motion| along the dominant axis that counts as moving on purpose
STILL = 0.15  # |motion| under which the hand is still
LIFT = 0.3  # upward velocity that counts as rising (object lift / retreat)
DESCENT = 0.3  # downward velocity that counts as a descent
CRUISE = 0.7  # fraction of a descent's peak speed where `press` starts
SIDEWAYS = 0.4  # horizontal velocity that starts a push/pull

PICK_WORDS = ("pick", "place", "put ", "lift", "grasp", "carry", "stack")
VERBS = (("press", "press"), ("button", "press"), ("push", "push"), ("pull", "pull"),
         ("open", "open"), ("close", "close"), ("slide", "push"), ("turn", "push"))


def task_grammar(task: str) -> tuple[str, str]:
    """(grammar, contact verb) from the instruction: ('pick', '') | ('contact', verb) |
    ('auto', '') when the words say nothing."""
    t = f" {task.lower()} "
    if any(w in t for w in PICK_WORDS):
        return "pick", ""
    for word, verb in VERBS:
        if word in t:
            if verb == "open" and "drawer" in t:
                return "contact", "pull"  # a drawer opens by pulling its handle
            if verb == "close" and "drawer" in t:
                return "contact", "push"
            return "contact", verb
    return "auto", ""


def _pick(sig: Signals) -> tuple[list[str], dict[int, str]]:
    t = sig.length
    m = sig.motion if sig.motion is not None else np.zeros((t, 3))
    v = sig.vel if sig.vel is not None else m
    closed = sig.closed if sig.closed is not None else np.zeros(t, bool)
    labels, why, state = [], {}, "reach"
    for k in range(t):
        c, prev_c = bool(closed[k]), bool(closed[k - 1]) if k else False
        still = float(np.linalg.norm(m[k])) < STILL
        xy, z = float(np.linalg.norm(m[k, :2])), float(m[k, 2])
        new, cue = state, ""
        if state in ("reach", "retreat") and c and (still or prev_c):
            new, cue = "grasp", "gripper_close"
        elif state == "grasp":
            if not c:
                new, cue = "reach", "gripper_open"
            elif v[k, 2] > LIFT:
                new, cue = "lift", "lift"
        elif state in ("lift", "move"):
            if not c:
                new, cue = ("release" if still else "reach"), "gripper_open"
            elif state == "lift" and xy > MOVE and xy > abs(z):
                new, cue = "move", "direction_change"
            elif z < -MOVE and -z > xy:
                new, cue = "place", "direction_change"
        elif state == "place" and not c and (still or not prev_c):
            new, cue = "release", "gripper_open"
        elif state == "release":
            if c and still:
                new, cue = "grasp", "gripper_close"
            elif z > MOVE or (sig.aperture is not None and sig.aperture[k] > 0.95 and not still):
                new, cue = "retreat", "hand_rise"
        if new != state:
            why[k] = cue
            state = new
        labels.append(state)
    return labels, why


def _press_starts(v: np.ndarray) -> set[int]:
    """Frames where a descent run reaches `CRUISE` of its peak downward speed."""
    out = set()
    for lab, a, b in runs(list(v[:, 2] < -DESCENT)):
        if lab and b - a >= 2:
            down = -v[a:b, 2]
            out.add(a + int(np.argmax(down >= CRUISE * down.max())))
    return out


def _contact(sig: Signals, verb: str) -> tuple[list[str], dict[int, str]]:
    t = sig.length
    m = sig.motion if sig.motion is not None else np.zeros((t, 3))
    v = sig.vel if sig.vel is not None else m
    hxy = np.linalg.norm(v[:, :2], axis=1)
    press = _press_starts(v) if verb == "press" else set()
    labels, why, state, descended, since = [], {}, "reach", False, 0
    for k in range(t):
        rise = m[k, 2] > MOVE and m[k, 2] > np.linalg.norm(m[k, :2])
        new, cue = state, ""
        if state in ("reach", "retreat"):
            if v[k, 2] < -DESCENT:
                descended = True
            elif v[k, 2] > LIFT and v[k, 2] > hxy[k]:
                descended = False
            nxt = min(k + 1, t - 1)
            sideways = hxy[k] > SIDEWAYS and hxy[nxt] > max(SIDEWAYS, v[nxt, 2])
            if (k in press) if verb == "press" else (descended and sideways):
                new, cue = verb, "speed_profile" if verb == "press" else "direction_change"
                if state == "retreat":  # that retreat was a re-approach
                    labels[since:k] = ["reach"] * (k - since)
                    why.pop(since, None)
        elif rise:
            new, cue, descended = "retreat", "hand_rise", False
        if new != state:
            why[k] = cue
            state, since = new, k
        labels.append(state)
    return labels, why


def _speed_minima(speed: np.ndarray) -> set[int]:
    s = np.r_[np.inf, speed, np.inf]
    return {k for k in range(len(speed)) if s[k + 1] <= s[k] and s[k + 1] <= s[k + 2]}


def annotate_robot(ep: Episode, vocab: Vocabulary = DEFAULT_VOCAB) -> list[Event]:
    """Contiguous action events covering [0, T); `signal` names the cue at each start."""
    t = ep.length
    if t == 0:
        return []
    sig = extract(ep)
    if not sig.has_motion:
        return [event("unknown", 0, t, "action", "episode_start")]
    grammar, verb = task_grammar(ep.task)
    if grammar == "auto":
        closes = sig.closed is not None and bool(sig.closed.any() and not sig.closed.all())
        grammar, verb = ("pick", "") if closes else ("contact", "move")
    labels, why = _pick(sig) if grammar == "pick" else _contact(sig, verb)
    minima = _speed_minima(sig.speed())
    out = []
    for lab, a, b in runs(labels):
        cue = why.get(a, "") if a else "episode_start"
        if cue == "direction_change" and ({a - 1, a, a + 1} & minima):
            cue = "speed_min"
        out.append(event(vocab.name(lab), a, b, "action", cue or "speed_min"))
    return out
