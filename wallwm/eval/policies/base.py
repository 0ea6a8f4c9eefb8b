"""The policy interface of the closed loop.

A `Policy` acts at the dataset frame rate, as a model trained on the dataset does: `reset`
starts an episode, `act(frame)` returns the dataset-frame actions to execute before it is
asked again (the receding horizon lives in the policy: it predicts a chunk and returns its
first `execute_frames` frames, or fewer where its event ends). The runner splits every frame
action into `render_every` control commands (wallwm/eval/actions.py).

A `ControlPolicy` acts at the control rate on the simulator's full observation: the scripted
expert, the ceiling, exactly as it acted when it recorded the dataset. It sees privileged
state (object and goal positions), which is why it is a ceiling and not a baseline.

Policies travel to Ray workers as a `PolicyFactory` (a small picklable callable): a worker
builds its policy once and reuses it across episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from wallwm.eval.observe import FrameObs


@dataclass
class EpisodeInfo:
    """What a policy may know about the episode it starts (no simulator state)."""

    unit_id: str
    seed: int
    condition: str
    fps: float
    render_every: int
    max_frames: int


@dataclass
class Chunk:
    """Dataset-frame actions to execute now, (n, A), n >= 1; `caption` is what the policy is
    conditioned on (the event caption or the instruction: shown in rollout videos); `mode`
    the model mode that produced it; `info` anything worth logging per chunk."""

    actions: np.ndarray
    caption: str = ""
    mode: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        a = np.asarray(self.actions, np.float64)
        if a.ndim != 2 or a.shape[0] < 1 or not np.isfinite(a).all():
            raise ValueError(f"Chunk.actions must be a finite (n >= 1, A) array; got shape "
                             f"{a.shape}")
        self.actions = a


@runtime_checkable
class Policy(Protocol):
    name: str

    def reset(self, task: str, instruction: str, episode: EpisodeInfo) -> None: ...

    def act(self, frame: FrameObs) -> Chunk: ...


@runtime_checkable
class ControlPolicy(Protocol):
    name: str
    done: bool  # the policy has finished (the runner may stop at the next frame boundary)

    def reset(self, task: str, instruction: str, episode: EpisodeInfo,
              obs: np.ndarray) -> None: ...

    def act_step(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        """(A,) command for this control step, and a caption (its phase) for the video."""
        ...


class PolicyFactory(Protocol):
    name: str

    def __call__(self) -> Policy | ControlPolicy: ...


def is_control_policy(p: object) -> bool:
    return hasattr(p, "act_step")
