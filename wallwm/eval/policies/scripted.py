"""Reference policies: the scripted expert (ceiling), zero actions (floor), and a replay of
recorded dataset actions (the test that the action splitting inverts the sim source's
aggregation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wallwm.data.captions import template_caption
from wallwm.data.sources.sim.experts import EXPERTS, Expert
from wallwm.eval.observe import FrameObs
from wallwm.eval.policies.base import Chunk, EpisodeInfo
from wallwm.eval.policies.planner import names_from_instruction


class ExpertPolicy:
    """The sim source's scripted expert (wallwm/data/sources/sim/experts.py), per control step
    on the full observation, as it recorded the dataset; `done` after its retreat."""

    name = "expert"

    def __init__(self) -> None:
        self._expert: Expert | None = None
        self._names: tuple[str, str | None] = ("the object", None)

    def reset(self, task: str, instruction: str, episode: EpisodeInfo, obs: np.ndarray) -> None:
        try:
            self._expert = EXPERTS[task](obs)
        except KeyError:
            raise ValueError(f"ExpertPolicy: no expert for task {task!r}; known: "
                             f"{', '.join(EXPERTS)}") from None
        self._names = names_from_instruction(instruction)

    @property
    def done(self) -> bool:
        return bool(self._expert is not None and self._expert.done)

    def act_step(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        if self._expert is None:
            raise RuntimeError("ExpertPolicy.act_step before reset")
        action, phase = self._expert.act(obs)
        return np.asarray(action, np.float64), template_caption(phase, *self._names)


class ZeroPolicy:
    """All-zero frame actions (the hand holds still, grip command 0): the floor."""

    name = "zero"

    def __init__(self, action_dim: int = 4, execute_frames: int = 4):
        self.action_dim, self.k = int(action_dim), int(execute_frames)

    def reset(self, task: str, instruction: str, episode: EpisodeInfo) -> None:
        self._caption = instruction

    def act(self, frame: FrameObs) -> Chunk:
        return Chunk(np.zeros((self.k, self.action_dim)), caption=self._caption, mode="zero")


class ReplayPolicy:
    """Replays recorded dataset-frame actions (T, A), `execute_frames` at a time; past the end
    it holds still with the last grip command."""

    name = "replay"

    def __init__(self, actions: np.ndarray, execute_frames: int = 4):
        self.actions = np.asarray(actions, np.float64)
        if self.actions.ndim != 2 or len(self.actions) == 0:
            raise ValueError(f"ReplayPolicy: actions must be (T >= 1, A); got "
                             f"{self.actions.shape}")
        self.k = int(execute_frames)

    def reset(self, task: str, instruction: str, episode: EpisodeInfo) -> None:
        self._caption = instruction

    def act(self, frame: FrameObs) -> Chunk:
        t = frame.frame
        if t < len(self.actions):
            return Chunk(self.actions[t : t + self.k], caption=self._caption, mode="replay")
        hold = np.zeros((1, self.actions.shape[1]))
        hold[0, -1] = self.actions[-1, -1]
        return Chunk(hold, caption=self._caption, mode="replay")


@dataclass(frozen=True)
class ExpertFactory:
    name: str = "expert"

    def __call__(self) -> ExpertPolicy:
        return ExpertPolicy()


@dataclass(frozen=True)
class ZeroFactory:
    action_dim: int = 4
    execute_frames: int = 4
    name: str = "zero"

    def __call__(self) -> ZeroPolicy:
        return ZeroPolicy(self.action_dim, self.execute_frames)


@dataclass(frozen=True)
class ReplayFactory:
    actions: tuple[tuple[float, ...], ...]
    execute_frames: int = 4
    name: str = "replay"

    def __call__(self) -> ReplayPolicy:
        return ReplayPolicy(np.asarray(self.actions), self.execute_frames)
