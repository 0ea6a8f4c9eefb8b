"""The `sim` source: scripted Meta-World episodes with privileged ground truth.

`sim:episodes=40,tasks=pick-place-v3+push-v3,tier=t3_robot_real,seed=0,image_size=64,
perturb_prob=0.3`. Units are `<task>/<i:05d>`, round-robin over the tasks; unit i of a task
is seeded from (seed, task, i) alone, so a unit is the same episode in any build, any
process, in any order.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np

from wallwm.config.schema import DataParams
from wallwm.data.episode import Episode
from wallwm.data.sources.base import Source, SourceError, SourceSpec

TASKS = {  # task -> instruction
    "pick-place-v3": "pick up the red puck and place it at the blue goal",
    "push-v3": "push the red puck to the green goal",
    "drawer-open-v3": "open the green drawer",
    "button-press-topdown-v3": "press the red button from the top",
}
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
LAYOUTS = 50  # MT1 train tasks per task
MAX_SIZE = 480  # Meta-World's offscreen framebuffer height


def episode_seed(seed: int, task: str, i: int) -> int:
    digest = hashlib.sha256(f"{seed}/{task}/{i}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class SimSource(Source):
    """Meta-World episodes (t3 calibrated with flags; t2 without; t0 video + caption)."""

    name = "sim"
    tiers = ("t3_robot_real", "t2_robot_public", "t0_web")
    options = {
        "episodes": "number of episodes (required)",
        "tasks": "'+'-separated Meta-World tasks (default data.sim.tasks): " + "+".join(TASKS),
        "tier": "t3_robot_real (default) | t2_robot_public | t0_web",
        "seed": "base seed (default data.sim.seed)",
        "image_size": "square image side in pixels (default data.sim.image_size)",
        "perturb_prob": "probability of a disturbance per episode (default data.sim.perturb_prob)",
    }

    def __init__(self, spec: SourceSpec, params: DataParams):
        super().__init__(spec, params)
        sim = params.sim
        self.episodes = self._int("episodes", None, 1)
        self.seed = self._int("seed", sim.seed, None)
        self.image_size = self._int("image_size", sim.image_size, 1)
        if self.image_size > MAX_SIZE:
            self._bad("image_size", self.image_size, f"at most {MAX_SIZE}")
        prob = spec.get("perturb_prob")
        try:
            self.perturb_prob = sim.perturb_prob if prob is None else float(prob)
        except ValueError:
            self._bad("perturb_prob", prob, "a number in [0, 1]")
        if not 0.0 <= self.perturb_prob <= 1.0:
            self._bad("perturb_prob", prob, "a number in [0, 1]")
        raw = spec.get("tasks")
        self.tasks = list(sim.tasks) if raw is None else [t for t in raw.split("+") if t]
        for task in self.tasks or [""]:
            if task not in TASKS:
                self._bad("tasks", task, "one of " + ", ".join(TASKS))
        self.tier = spec.get("tier", "t3_robot_real")
        if self.tier not in self.tiers:
            self._bad("tier", self.tier, "one of " + ", ".join(self.tiers))
        for cam in sim.cameras:
            if cam not in CAMERAS:
                raise SourceError(
                    f"data.sim.cameras: unknown camera {cam!r}; allowed: {', '.join(CAMERAS)}",
                    field="data.sim.cameras", value=cam, check="options",
                )  # fmt: skip

    def _bad(self, option: str, value: object, expected: str) -> None:
        raise SourceError(
            f"source {self.spec}: option {option}={value!r} is invalid; expected {expected}",
            field=option, value=value, check="options",
        )  # fmt: skip

    def _int(self, option: str, default: int | None, minimum: int | None) -> int:
        raw = self.spec.get(option)
        if raw is None:
            if default is None:
                self._bad(option, None, "an integer (required)")
            return int(default)  # type: ignore[arg-type]
        try:
            value = int(raw)
        except ValueError:
            self._bad(option, raw, "an integer")
        if minimum is not None and value < minimum:
            self._bad(option, raw, f"an integer >= {minimum}")
        return value

    def fingerprint(self) -> str:
        code = hashlib.sha256()
        for path in sorted(Path(__file__).parent.glob("*.py")):
            code.update(path.name.encode() + path.read_bytes())
        payload = {
            "options": dict(sorted(self.spec.options.items())),
            "sim": self.params.sim.model_dump(),
            "versions": {p: version(p) for p in ("metaworld", "mujoco", "numpy")},
            "code": code.hexdigest(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def unit_ids(self) -> list[str]:
        n = len(self.tasks)
        return [f"{self.tasks[j % n]}/{j // n:05d}" for j in range(self.episodes)]

    def load(self, unit_id: str) -> Episode:
        task, _, idx = unit_id.partition("/")
        if task not in TASKS or not idx.isdigit():
            raise SourceError(
                f"sim unit {unit_id!r}: expected <task>/<index> with task in {', '.join(TASKS)}",
                path=unit_id, field="unit_id", value=unit_id,
            )  # fmt: skip
        from wallwm.data.sources.sim.assemble import to_episode
        from wallwm.data.sources.sim.rollout import simulate

        i, sim = int(idx), self.params.sim
        seed = episode_seed(self.seed, task, i)
        layout = int(np.random.default_rng([seed, 1]).integers(LAYOUTS))
        roll = simulate(
            task, layout, seed, mt1_seed=self.seed, cameras=list(sim.cameras),
            size=self.image_size, every=sim.render_every, max_steps=sim.max_steps,
            perturb_prob=self.perturb_prob,
        )  # fmt: skip
        return to_episode(roll, unit_id, self.tier, TASKS[task])
