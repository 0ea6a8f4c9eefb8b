"""Scripted experts with explicit phases, extended so every task ends cleanly.

Stock Meta-World experts decide from the current observation alone; ours keep that (so they
re-plan after a perturbation) plus two latches each (lifted, releasing/released) that make
place -> release -> retreat happen once. The phase each step returns is the expert's intent,
the privileged signal the ground-truth events start from. Grip commands are -1 or +1 only:
the stock 0 reopens so slowly that a dropped object can stay stuck (PITFALLS).
"""

from __future__ import annotations

import numpy as np

ACTIONS = (
    "reach", "grasp", "lift", "move", "place", "release", "retreat",
    "push", "pull", "press", "open",
)  # fmt: skip
OPEN, CLOSE = -1.0, 1.0
HALF = 0.6  # the stock push grip: fingers straddle the puck instead of sitting on it
RETREAT_UP = 0.12  # m the hand rises after finishing
RETREAT_STEPS = 30  # give up rising after this many steps (e.g. a knock pinned the arm)


def _move(hand: np.ndarray, target: np.ndarray, p: float) -> np.ndarray:
    return np.clip(p * (np.asarray(target) - hand), -1.0, 1.0)


class Expert:
    """Base: `act(obs)` -> ((4,) action, phase label); `done` once the retreat is over."""

    phases: tuple[str, ...] = ()

    def __init__(self, obs: np.ndarray):
        self.done = False
        self._retreat_from: np.ndarray | None = None
        self._retreat_steps = 0

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        raise NotImplementedError

    def order(self, phase: str) -> int:
        return self.phases.index(phase)

    def _retreat(self, hand: np.ndarray, grip: float = OPEN) -> tuple[np.ndarray, str]:
        if self._retreat_from is None:
            self._retreat_from = hand.copy()
        target = self._retreat_from + np.array([0.0, 0.0, RETREAT_UP])
        self._retreat_steps += 1
        if np.linalg.norm(target - hand) < 0.02 or self._retreat_steps >= RETREAT_STEPS:
            self.done = True
        return np.r_[_move(hand, target, 10.0), grip], "retreat"


class PickPlaceExpert(Expert):
    """reach -> grasp -> lift -> move -> place -> release -> retreat, goal on the table."""

    phases = ("reach", "grasp", "lift", "move", "place", "release", "retreat")
    CARRY = 0.12  # m the object is carried above its resting height

    def __init__(self, obs: np.ndarray):
        super().__init__(obs)
        self.rest_z = float(obs[6])
        self.lifted = self.releasing = self.released = False
        self._release_steps = self._place_steps = self._stalls = 0
        self._last_z: float | None = None

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        hand, aperture, obj, goal = obs[:3], float(obs[3]), obs[4:7], obs[-3:]
        if self.released:
            return self._retreat(hand)
        if self.releasing:
            self._release_steps += 1
            if aperture > 0.9 or self._release_steps >= 15:
                self.released = True
            return np.r_[0.0, 0.0, 0.0, OPEN], "release"
        held = aperture < 0.8 and np.linalg.norm(obj - (hand - [0.0, 0.0, 0.045])) < 0.04
        if not held:
            self.lifted = False
            grasp_at = obj + np.array([-0.005, 0.0, 0.0])
            if np.linalg.norm(hand[:2] - grasp_at[:2]) > 0.02:
                return np.r_[_move(hand, grasp_at + [0, 0, 0.1], 10.0), OPEN], "reach"
            if abs(hand[2] - grasp_at[2]) > 0.05:
                return np.r_[_move(hand, grasp_at + [0, 0, 0.03], 10.0), OPEN], "reach"
            return np.r_[0.0, 0.0, 0.0, CLOSE], "grasp"
        carry_z = hand[2] + (self.rest_z + self.CARRY - obj[2])
        if not self.lifted:
            if obj[2] < self.rest_z + self.CARRY - 0.02:
                return np.r_[_move(hand, [hand[0], hand[1], carry_z], 10.0), CLOSE], "lift"
            self.lifted = True
        to_goal = goal[:2] - obj[:2]
        if np.linalg.norm(to_goal) > 0.015 and obj[2] > self.rest_z + 0.03:
            target = np.r_[hand[:2] + to_goal, carry_z]
            return np.r_[_move(hand, target, 10.0), CLOSE], "move"
        stalled = self._last_z is not None and self._last_z - hand[2] < 5e-4
        self._last_z, self._place_steps = float(hand[2]), self._place_steps + 1
        self._stalls = self._stalls + 1 if stalled else 0
        if obj[2] - self.rest_z > 0.004 and self._stalls < 3 and self._place_steps < 40:
            target = np.r_[hand[:2] + to_goal, hand[2] - (obj[2] - self.rest_z) - 0.01]
            return np.r_[_move(hand, target, 10.0), CLOSE], "place"
        self.releasing = True
        return np.r_[0.0, 0.0, 0.0, OPEN], "release"


class PushExpert(Expert):
    """reach -> push -> retreat (the stock push expert, gripper half-closed then opened)."""

    phases = ("reach", "push", "retreat")

    def __init__(self, obs: np.ndarray):
        super().__init__(obs)
        self.finished = False

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        hand, obj, goal = obs[:3], obs[4:7], obs[-3:]
        if self.finished or np.linalg.norm(obj[:2] - goal[:2]) < 0.03:
            self.finished = True
            return self._retreat(hand)
        at = obj + np.array([-0.005, 0.0, 0.0])
        if np.linalg.norm(hand[:2] - at[:2]) > 0.02:
            return np.r_[_move(hand, at + [0, 0, 0.2], 10.0), OPEN], "reach"
        if abs(hand[2] - at[2]) > 0.045:
            grip = HALF if abs(hand[2] - obj[2]) <= 0.10 else OPEN
            return np.r_[_move(hand, at + [0, 0, 0.03], 10.0), grip], "reach"
        return np.r_[_move(hand, goal, 10.0), HALF], "push"


class DrawerOpenExpert(Expert):
    """reach -> pull -> retreat (stock drawer expert: hook the handle, pull it to the goal)."""

    phases = ("reach", "pull", "retreat")

    def __init__(self, obs: np.ndarray):
        super().__init__(obs)
        self.finished = False

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        hand, handle, goal = obs[:3], obs[4:7] + np.array([0.0, 0.0, -0.02]), obs[-3:]
        if self.finished or abs(obs[5] - goal[1]) < 0.01:
            self.finished = True
            return self._retreat(hand)
        if np.linalg.norm(hand[:2] - handle[:2]) > 0.06:
            return np.r_[_move(hand, handle + [0, 0, 0.3], 4.0), OPEN], "reach"
        if abs(hand[2] - handle[2]) > 0.04:
            return np.r_[_move(hand, handle, 4.0), OPEN], "reach"
        return np.r_[_move(hand, handle + [0, -0.06, 0], 50.0), OPEN], "pull"


class ButtonTopdownExpert(Expert):
    """reach -> press -> retreat (stock top-down button expert, gripper closed)."""

    phases = ("reach", "press", "retreat")

    def __init__(self, obs: np.ndarray):
        super().__init__(obs)
        self.finished = False

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        hand, button, goal = obs[:3], obs[4:7], obs[-3:]
        if self.finished or button[2] - goal[2] < 0.02:
            self.finished = True
            return self._retreat(hand, CLOSE)
        if np.linalg.norm(hand[:2] - button[:2]) > 0.04:
            return np.r_[_move(hand, button + [0, 0, 0.1], 25.0), CLOSE], "reach"
        return np.r_[_move(hand, button, 25.0), CLOSE], "press"


EXPERTS: dict[str, type[Expert]] = {
    "pick-place-v3": PickPlaceExpert,
    "push-v3": PushExpert,
    "drawer-open-v3": DrawerOpenExpert,
    "button-press-topdown-v3": ButtonTopdownExpert,
}
