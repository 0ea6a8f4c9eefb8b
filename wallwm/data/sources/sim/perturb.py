"""Injected disturbances the expert must recover from, and where the recovery ends.

A disturbance fires a few steps into a chosen expert phase. The recovery lasts until the
expert is back on track: its phase has moved past the one it was in, or it fell back (a drop,
a lost hook) and came back to it, or the disturbance itself is undone (the hand is no longer
displaced along the knock; the hand-object offset is back within 2 cm). Capped at 60 steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wallwm.data.sources.sim.env import SimEnv, sim_modules

# task -> (kind, phase it fires in)
KINDS: dict[str, tuple[tuple[str, str], ...]] = {
    "pick-place-v3": (("push_object", "reach"), ("open_gripper", "move"), ("knock_hand", "move")),
    "push-v3": (("push_object", "push"), ("knock_hand", "push")),
    "drawer-open-v3": (("knock_hand", "pull"),),
    "button-press-topdown-v3": (("knock_hand", "reach"),),
}
OPEN_STEPS = 8  # steps the grip is forced open by an open_gripper disturbance
MAX_RECOVERY = 60


@dataclass
class Perturbation:
    kind: str
    phase: str
    delay: int  # steps into `phase` before it fires
    vector: np.ndarray  # displacement (m) for knock_hand / push_object
    step: int | None = None  # control step it fired at
    end: int | None = None  # first control step after the recovery
    _seen: int = 0
    _order: int = 0
    _fell_back: bool = False
    _hand: Any = None
    _rel: Any = None

    def due(self, phase: str) -> bool:
        if self.step is not None or phase != self.phase:
            return False
        self._seen += 1
        return self._seen > self.delay

    def fire(self, sim: SimEnv, step: int, order: int, obs: np.ndarray) -> None:
        """Disturb the simulation now; `obs` is the observation before the disturbance."""
        self.step, self._order = step, order
        self._hand, self._rel = obs[:3].copy(), obs[:3] - obs[4:7]
        d, m = sim.data, sim.model
        if self.kind == "knock_hand":
            d.mocap_pos[0] += self.vector
        elif self.kind == "push_object":
            adr = int(m.jnt_qposadr[m.body_jntadr[m.body("obj").id]])
            dof = int(m.jnt_dofadr[m.body_jntadr[m.body("obj").id]])
            d.qpos[adr : adr + 2] += self.vector[:2]
            d.qvel[dof : dof + 6] = 0.0
        sim_modules()[1].mj_forward(m, d)

    def grip_override(self, step: int) -> float | None:
        fired = self.step is not None and self.kind == "open_gripper"
        return -1.0 if fired and step < self.step + OPEN_STEPS else None  # type: ignore[operator]

    def recovering(self, step: int, order: int, obs: np.ndarray) -> bool:
        """Whether control step `step` (acting on `obs`) is still part of the recovery."""
        if self.step is None or self.end is not None:
            return False
        if step <= self.step + 1:
            return True
        self._fell_back |= order < self._order
        back = order > self._order or (self._fell_back and order >= self._order)
        if not back and order == self._order and not self._fell_back:
            if self.kind == "knock_hand":
                n = self.vector / np.linalg.norm(self.vector)
                back = float((obs[:3] - self._hand) @ n) < 0.01
            elif self.kind == "push_object":
                back = float(np.linalg.norm(obs[:3] - obs[4:7] - self._rel)) < 0.02
        if back or step >= self.step + MAX_RECOVERY:
            self.end = step
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "phase": self.phase,
            "vector": [round(float(v), 4) for v in self.vector],
            "fired": self.step is not None,
            "step": self.step,
            "recovery_end_step": self.end,
        }


def plan(task: str, rng: np.random.Generator, prob: float) -> Perturbation | None:
    """Draw whether and how this episode is disturbed (always the same draws, for stability)."""
    fire, pick, delay, angle = rng.random(), rng.integers(1 << 16), rng.integers(0, 4), rng.random()
    mag = rng.uniform(0.05, 0.08)
    if fire >= prob:
        return None
    kind, phase = KINDS[task][int(pick) % len(KINDS[task])]
    a = 2 * np.pi * angle
    lift = 0.03 if kind == "knock_hand" else 0.0
    vec = np.array([mag * np.cos(a), mag * np.sin(a), lift])
    return Perturbation(kind, phase, int(delay), vec)
