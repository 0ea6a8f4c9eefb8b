"""The event planner of event mode: the task's next-event caption, advanced on end-of-event.

The events of a task are its ground-truth action sequence (the sim experts' phases, the labels
the build's annotator gives sim episodes); each caption is the training caption: the
`TemplateCaptioner` template of the label filled with the object and place named by the
instruction (wallwm/data/captions.py), so "push the red puck to the green goal" plans
"reach toward the red puck", "push the red puck to the green goal", "move the arm away".
The planner advances when the model predicts the end of the event, or after `max_frames`
frames of one event (a fallback for a model that never ends one). It never reads the
simulator: a real robot has no ground truth to plan from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from wallwm.data.captions import DEFAULT_OBJECT, parse_task, template_caption
from wallwm.eval.progress import task_events


def _definite(phrase: str | None) -> str | None:
    """ "a cup" -> "the cup", as wallwm/data/captions.py names what the instruction named."""
    return None if phrase is None else re.sub(r"^(a|an)\s", "the ", phrase)


def names_from_instruction(instruction: str) -> tuple[str, str | None]:
    """(object, place) the caption templates are filled with, as TemplateCaptioner does."""
    obj, place = parse_task(instruction or "")
    return _definite(obj) or DEFAULT_OBJECT, _definite(place)


def event_type_id(label: str, vocabulary: Sequence[str], event_types: int) -> int:
    """The event-type id training gave `label` (its index in data.annotate.vocabulary; -1 when
    absent or beyond the model's event_types), as wallwm/train/data.py does."""
    vocab = {str(w): i for i, w in enumerate(vocabulary)}
    i = vocab.get(label, -1)
    return -1 if i >= event_types else i


@dataclass
class EventPlanner:
    task: str
    instruction: str
    max_frames: int
    labels: tuple[str, ...] = ()
    captions: tuple[str, ...] = ()
    index: int = 0
    frames_in_event: int = 0
    history: list[tuple[str, int, str]] = field(default_factory=list)  # (label, frames, why)

    def __post_init__(self) -> None:
        if self.max_frames < 1:
            raise ValueError(f"EventPlanner: max_frames={self.max_frames} must be >= 1 "
                             f"(eval.event_max_frames)")
        self.labels = task_events(self.task)
        obj, place = names_from_instruction(self.instruction)
        self.captions = tuple(template_caption(lab, obj, place) for lab in self.labels)

    @property
    def exhausted(self) -> bool:
        return self.index >= len(self.labels)

    @property
    def label(self) -> str | None:
        return None if self.exhausted else self.labels[self.index]

    @property
    def caption(self) -> str | None:
        return None if self.exhausted else self.captions[self.index]

    @property
    def frames_left(self) -> int:
        """Frames the current event may still take before the fallback advances it."""
        return max(1, self.max_frames - self.frames_in_event)

    def executed(self, frames: int, ended: bool) -> None:
        """`frames` of the current event ran; `ended`: the model predicted its end within them.
        Advances on the predicted end or when the event has had `max_frames` frames."""
        if self.exhausted:
            return
        self.frames_in_event += int(frames)
        why = "end" if ended else "max_frames" if self.frames_in_event >= self.max_frames else ""
        if why:
            self.history.append((self.labels[self.index], self.frames_in_event, why))
            self.index += 1
            self.frames_in_event = 0
