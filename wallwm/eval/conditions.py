"""The three closed-loop conditions, all on eval layouts no build holds (wallwm/eval/seeds.py).

* `new_layout`: the task's own instruction.
* `rephrased`: a held-out paraphrase of it (wallwm/eval/paraphrases.py).
* `recovery`: the task's instruction, and mid-event the world is disturbed with the sim
  source's own mechanism (wallwm/data/sources/sim/perturb.py, the disturbances its recovery
  segments were recorded with). Where the task's object is free (pick-place, push) the object
  is moved (`push_object`, 5-8 cm in a random direction); the drawer and the button are fixed
  to the table, so there the hand is knocked instead (`knock_hand`, the only disturbance the
  source has for them). A learned policy has no phase, so the trigger is the judged event
  (wallwm/eval/progress.py): the disturbance fires once the episode has spent
  `min_steps` + the source's own 0-3 step delay in the event the source disturbs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wallwm.data.sources.sim.perturb import KINDS, Perturbation, plan
from wallwm.data.sources.sim.source import TASKS
from wallwm.eval.paraphrases import paraphrase

CONDITION_NAMES = ("new_layout", "rephrased", "recovery")


def instruction_for(condition: str, task: str, index: int) -> str:
    if condition not in CONDITION_NAMES:
        raise ValueError(f"unknown condition {condition!r}; use one of {CONDITION_NAMES}")
    if task not in TASKS:
        raise ValueError(f"task {task!r}: no instruction; known tasks: {', '.join(TASKS)}")
    return paraphrase(task, index) if condition == "rephrased" else TASKS[task]


def recovery_kind(task: str) -> tuple[str, str]:
    """(kind, event it fires in): the object moved where the source can move it, else the
    hand knocked."""
    kinds = KINDS[task]
    return next((k for k in kinds if k[0] == "push_object"), kinds[0])


@dataclass
class Disturbance:
    """A sim-source `Perturbation` and when it fires: `at_step` (a recorded episode's control
    step, for replays) or, when None, by the judged event as `Perturbation.due` counts it."""

    pert: Perturbation
    at_step: int | None = None

    def due(self, step: int, event: str | None) -> bool:
        if self.at_step is not None:
            return self.pert.step is None and step == self.at_step
        return self.pert.due(event or "")

    def to_json(self) -> dict:
        return {**self.pert.to_json(), "trigger": "step" if self.at_step is not None
                else "event"}


def recovery_disturbance(task: str, seed: int, min_steps: int) -> Disturbance:
    """The disturbance of one recovery episode, drawn with the source's `plan` (its delay,
    direction and 5-8 cm magnitude) from the episode seed; it fires once its event has lasted
    `min_steps` + that delay."""
    drawn = plan(task, np.random.default_rng([seed, 2]), 1.0)
    assert drawn is not None  # prob 1.0 always draws one
    kind, phase = recovery_kind(task)
    vec = np.array(drawn.vector, np.float64)
    vec[2] = 0.03 if kind == "knock_hand" else 0.0  # the source lifts a knock by 3 cm
    return Disturbance(Perturbation(kind, phase, int(min_steps) + drawn.delay, vec))


def replay_disturbance(record: dict) -> Disturbance:
    """A recorded episode's disturbance (`extra["perturbation"]` of a sim episode), fired at
    the control step it fired at (its vector as recorded: rounded to 0.1 mm)."""
    step = record.get("step")
    if not record.get("fired") or step is None:
        raise ValueError(f"perturbation record {record}: it never fired; nothing to replay")
    pert = Perturbation(str(record["kind"]), str(record["phase"]), 0,
                        np.asarray(record["vector"], np.float64))
    return Disturbance(pert, at_step=int(step))
