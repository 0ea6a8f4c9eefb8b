"""Task progress judged from the simulator's own state: the paper's headline metric.

A task is its ground-truth event sequence (the labels wallwm/data/sources/sim/events.py gives a
scripted episode: the expert's phases, e.g. reach -> push -> retreat). Each event has a
predicate over what the simulator knows after a control step: finger-object contact in any
physics substep, the object's pose, the hand (`tcp_center`, between the finger pads), the
gripper aperture and the distance to the goal Meta-World's own success uses. Events complete
in order: event i counts once its predicate holds after event i-1 completed. Progress is the
share completed. Nothing here reads a policy's internal state (a learned policy has no phase),
so the expert and a model are judged alike.

Thresholds follow the task's own definitions where Meta-World has one (success radius: 0.07 m
pick-place, 0.05 m push, 0.03 m drawer, 0.024 m button) and the expert's where it has none
(a held object: aperture < 0.8 with the object within 4 cm of the pads); an event that starts
at first contact in the ground truth (press, push, pull) has its approach end at that contact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from wallwm.data.sources.sim.env import SimEnv
from wallwm.data.sources.sim.experts import EXPERTS

HELD_APERTURE = 0.8  # obs[3] below this: fingers closed on something (experts.py)
HELD_DIST = 0.04  # m object to pads for "held" (experts.py: the pick-place expert's test)
NEAR = 0.03  # m pads to object for a completed reach (Meta-World's near_object, pick-place)
LIFTED = 0.04  # m above its resting height: a lift is done
CARRIED = 0.02  # m above its resting height: still carried
ON_TABLE = 0.01  # m above its resting height: set down
AWAY = 0.08  # m pads to object after a retreat
SUCCESS_RADIUS = {"pick-place-v3": 0.07, "push-v3": 0.05, "drawer-open-v3": 0.03,
                  "button-press-topdown-v3": 0.024}


@dataclass
class SimState:
    """What a predicate reads after one control step."""

    tcp: np.ndarray  # (3,) between the finger pads
    aperture: float  # obs[3], 1 open
    obj: np.ndarray  # (3,) obs[4:7]: the object (puck, drawer handle, button top)
    goal: np.ndarray  # (3,) the env's own target
    contact: bool  # a finger touched the object in any substep of the step
    rest_z: float  # the object's height at reset
    task: str

    @property
    def to_goal(self) -> float:
        """The distance Meta-World's success flag thresholds, per task."""
        if self.task == "button-press-topdown-v3":
            return float(abs(self.goal[2] - self.obj[2]))
        return float(np.linalg.norm(self.obj - self.goal))

    @property
    def at_goal(self) -> bool:
        return self.to_goal <= SUCCESS_RADIUS[self.task]

    @property
    def pads_to_obj(self) -> float:
        return float(np.linalg.norm(self.tcp - self.obj))

    @property
    def held(self) -> bool:
        return self.aperture < HELD_APERTURE and self.pads_to_obj < HELD_DIST

    @property
    def lift(self) -> float:
        return float(self.obj[2] - self.rest_z)

    @property
    def xy_to_goal(self) -> float:
        return float(np.linalg.norm(self.obj[:2] - self.goal[:2]))


Predicate = Callable[[SimState], bool]

PREDICATES: dict[str, dict[str, Predicate]] = {
    "pick-place-v3": {
        "reach": lambda s: s.pads_to_obj < NEAR,
        "grasp": lambda s: s.contact and s.held,
        "lift": lambda s: s.held and s.lift > LIFTED,
        "move": lambda s: s.lift > CARRIED and s.xy_to_goal < SUCCESS_RADIUS["push-v3"],
        "place": lambda s: s.lift < ON_TABLE and s.xy_to_goal < SUCCESS_RADIUS["push-v3"],
        "release": lambda s: not s.contact and s.aperture > HELD_APERTURE and s.at_goal,
        "retreat": lambda s: s.pads_to_obj > AWAY and s.at_goal,
    },
    "push-v3": {
        "reach": lambda s: s.contact,
        "push": lambda s: s.at_goal,
        "retreat": lambda s: not s.contact and s.pads_to_obj > AWAY and s.at_goal,
    },
    "drawer-open-v3": {
        "reach": lambda s: s.contact,
        "pull": lambda s: s.at_goal,
        "retreat": lambda s: not s.contact and s.pads_to_obj > AWAY and s.at_goal,
    },
    "button-press-topdown-v3": {
        "reach": lambda s: s.contact,
        "press": lambda s: s.at_goal,
        "retreat": lambda s: not s.contact and s.pads_to_obj > AWAY,
    },
}


def task_events(task: str) -> tuple[str, ...]:
    """The task's ground-truth action events in order (the expert's phases)."""
    try:
        return tuple(EXPERTS[task].phases)
    except KeyError:
        raise ValueError(f"task {task!r}: no ground-truth events; known tasks: "
                         f"{', '.join(EXPERTS)}") from None


@dataclass
class ProgressJudge:
    """Completes the task's events in order from the simulator's state, step by step."""

    task: str
    rest_z: float
    events: tuple[str, ...] = ()
    done_at: list[int] = field(default_factory=list)  # control step each event completed

    def __post_init__(self) -> None:
        self.events = task_events(self.task)
        missing = set(self.events) - set(PREDICATES[self.task])
        if missing:
            raise ValueError(f"task {self.task}: no predicate for events {sorted(missing)}")

    @classmethod
    def start(cls, sim: SimEnv, obs: np.ndarray) -> ProgressJudge:
        """A judge for the episode `sim` was just reset into (`obs`: the reset observation)."""
        return cls(sim.task, float(obs[6]))

    def state(self, sim: SimEnv, obs: np.ndarray, contact: bool) -> SimState:
        return SimState(np.asarray(sim.env.tcp_center, np.float64).copy(), float(obs[3]),
                        np.asarray(obs[4:7], np.float64).copy(),
                        np.asarray(sim.env._target_pos, np.float64).copy(), bool(contact),
                        self.rest_z, self.task)

    def update(self, step: int, s: SimState) -> None:
        """Judge the state after control step `step` (several events may complete at once)."""
        preds = PREDICATES[self.task]
        while len(self.done_at) < len(self.events) and preds[self.events[len(self.done_at)]](s):
            self.done_at.append(int(step))

    @property
    def current(self) -> str | None:
        """The first event not yet complete (None: all are)."""
        n = len(self.done_at)
        return self.events[n] if n < len(self.events) else None

    @property
    def completed(self) -> int:
        return len(self.done_at)

    @property
    def progress(self) -> float:
        return len(self.done_at) / len(self.events)

    @property
    def finished(self) -> bool:
        return len(self.done_at) == len(self.events)
