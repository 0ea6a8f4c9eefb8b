"""Policies of the closed loop: the interface, the scripted ceiling and floor, replays, the
event planner and the model policy (imported lazily: it needs torch and the model)."""

from wallwm.eval.policies.base import (
    Chunk,
    ControlPolicy,
    EpisodeInfo,
    Policy,
    PolicyFactory,
    is_control_policy,
)
from wallwm.eval.policies.planner import EventPlanner, event_type_id, names_from_instruction
from wallwm.eval.policies.scripted import (
    ExpertFactory,
    ExpertPolicy,
    ReplayFactory,
    ReplayPolicy,
    ZeroFactory,
    ZeroPolicy,
)

__all__ = ["Chunk", "ControlPolicy", "EpisodeInfo", "EventPlanner", "ExpertFactory",
           "ExpertPolicy", "Policy", "PolicyFactory", "ReplayFactory", "ReplayPolicy",
           "ZeroFactory", "ZeroPolicy", "event_type_id", "is_control_policy",
           "names_from_instruction"]
