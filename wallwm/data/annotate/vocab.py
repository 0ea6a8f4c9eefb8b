"""The fixed action vocabulary every annotator and scorer speaks.

Labels are plain verbs so that captions, sampling clusters and scores stay comparable across
sources; the list is extendable (a `Vocabulary` is built from any list, later from params) but
an annotator only emits labels that are in it, with `unknown` for what it cannot name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

DEFAULT_ACTIONS: tuple[str, ...] = (
    "reach",  # move the open hand towards something
    "grasp",  # close the fingers on an object
    "lift",  # raise a held object off its support
    "move",  # carry a held object
    "place",  # lower a held object onto its target
    "release",  # open the fingers, letting go
    "retreat",  # move the empty hand away after finishing
    "push",  # move an object by pressing against its side
    "pull",  # move an object (handle, drawer) towards the robot
    "press",  # push down on something (button)
    "open",  # open an articulated object
    "close",  # close an articulated object
    "idle",  # no motion
)
GENERIC = ("segment", "motion", "unknown")  # labels of the video-only detector and fallbacks


@dataclass(frozen=True)
class Vocabulary:
    """An ordered set of action labels (plus the generic ones, always allowed)."""

    actions: tuple[str, ...] = DEFAULT_ACTIONS
    generic: tuple[str, ...] = field(default=GENERIC)

    @classmethod
    def from_list(cls, labels: Iterable[str]) -> Vocabulary:
        seen: list[str] = []
        for lab in labels:
            lab = str(lab).strip().lower()
            if not lab:
                raise ValueError("empty action label in the vocabulary")
            if lab not in seen:
                seen.append(lab)
        return cls(tuple(seen))

    def __contains__(self, label: object) -> bool:
        return label in self.actions or label in self.generic

    def __iter__(self) -> Iterator[str]:
        return iter(self.actions)

    def __len__(self) -> int:
        return len(self.actions)

    def index(self, label: str) -> int:
        return self.actions.index(label)

    def name(self, label: str) -> str:
        """`label` if the vocabulary has it, else `unknown` (an annotator never invents labels)."""
        return label if label in self else "unknown"

    @classmethod
    def from_section(cls, section: object) -> Vocabulary:
        """From `params.data.annotate.vocabulary` (the default list when absent)."""
        labels = getattr(section, "vocabulary", None)
        return cls.from_list(labels) if labels else cls()

    def extend(self, labels: Iterable[str]) -> Vocabulary:
        return Vocabulary.from_list([*self.actions, *labels])


DEFAULT_VOCAB = Vocabulary()
