"""Event annotation: Task -> Subtask -> Action -> Segment from what a recording holds.

Robot tiers use state/action/gripper signals (`robot`), video tiers use visual change points
(`video`); `hierarchy.annotate` assembles the levels, `human.merge_human` applies hand edits
that later automatic passes never move, and `score` grades an annotation against the
simulator's ground truth (which no annotator reads).
"""

from wallwm.data.annotate.common import AnnotateParams, is_contiguous
from wallwm.data.annotate.hierarchy import annotate
from wallwm.data.annotate.human import (
    events_by_episode,
    merge_human,
    read_annotations,
    to_rows,
    write_annotations,
)
from wallwm.data.annotate.robot import annotate_robot
from wallwm.data.annotate.score import score, score_many
from wallwm.data.annotate.video import annotate_video
from wallwm.data.annotate.vocab import DEFAULT_VOCAB, Vocabulary

__all__ = [
    "DEFAULT_VOCAB",
    "AnnotateParams",
    "Vocabulary",
    "annotate",
    "annotate_robot",
    "annotate_video",
    "events_by_episode",
    "is_contiguous",
    "merge_human",
    "read_annotations",
    "score",
    "score_many",
    "to_rows",
    "write_annotations",
]
