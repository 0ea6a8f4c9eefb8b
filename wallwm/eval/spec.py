"""What an environment offers and what a model was trained on, and the check that they fit.

A model acts through the same interface its training data was recorded with: the cameras (by
name, in the model's view order), the frame size, the action and state vectors, the frame
rate (a dataset-frame action is a sum over `render_every` control steps, so a model trained
at another rate would command the wrong displacement) and the embodiment (LeRobot's
`robot_type`). `check_fit` refuses a mismatch before any episode runs, naming every field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wallwm.data.episode import IMAGE_PREFIX

# The `robot_type` of the sim source's datasets (wallwm/data/sources/sim/assemble.py), the
# embodiment that params `export.embodiment` and `registry.embodiments` name too.
SIM_EMBODIMENT = "metaworld-sawyer"
SIM_ACTION_DIM = 4  # mocap dx, dy, dz (0.01 m per unit per control step), grip command
SIM_STATE_DIM = 4  # hand xyz, gripper aperture: obs[:4], as `observation.state` records it


class PolicyMismatchError(ValueError):
    """A model that cannot act in this environment; the message names every mismatch."""


@dataclass(frozen=True)
class EnvSpec:
    """The interface of the closed-loop environment (one Meta-World task family)."""

    cameras: tuple[str, ...]
    image_size: int  # rendered square frame side, as the sim source records it
    control_dt: float
    render_every: int
    action_dim: int = SIM_ACTION_DIM
    state_dim: int = SIM_STATE_DIM
    embodiment: str = SIM_EMBODIMENT

    @property
    def fps(self) -> float:
        return 1.0 / (self.control_dt * self.render_every)

    @classmethod
    def from_sim_params(cls, sim: Any, control_dt: float) -> EnvSpec:
        """From `data.sim` (SimParams): the same cameras, size and rate the builds record."""
        return cls(tuple(sim.cameras), int(sim.image_size), float(control_dt),
                   int(sim.render_every))


@dataclass(frozen=True)
class ModelContract:
    """What a model was trained on: its views in order, the dataset's frame size, vectors,
    rate and embodiment, and the event vocabulary its event-type ids index."""

    cameras: tuple[str, ...]
    image_size: int
    action_dim: int
    state_dim: int
    fps: float
    embodiment: str
    vocabulary: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["cameras"], d["vocabulary"] = list(self.cameras), list(self.vocabulary)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelContract:
        return cls(tuple(d["cameras"]), int(d["image_size"]), int(d["action_dim"]),
                   int(d["state_dim"]), float(d["fps"]), str(d["embodiment"]),
                   tuple(d.get("vocabulary", ())))

    @classmethod
    def from_dataset(cls, root: Path | str, views: int, vocabulary: Sequence[str] = ()
                     ) -> ModelContract:
        """From one LeRobot dataset of a build (`<build>/<tier>/<name>`): the first `views`
        cameras in sorted key order, which is how wallwm/train/data.py picks a model's views."""
        root = Path(root)
        info_path = root / "meta" / "info.json"
        try:
            info = json.loads(info_path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{info_path}: no such file; pass the folder of one "
                                    f"LeRobot dataset of the build (<build>/<tier>/<name>)"
                                    ) from None
        feats = info.get("features", {})
        keys = sorted(k for k, f in feats.items() if f.get("dtype") == "video")
        if len(keys) < views:
            raise PolicyMismatchError(f"{info_path}: {len(keys)} camera(s) {keys}; the model "
                                      f"has views={views}")
        keys = keys[:views]
        sizes = {tuple(feats[k]["shape"][:2]) for k in keys}
        if len(sizes) != 1 or len(next(iter(sizes))) != 2 or len(set(next(iter(sizes)))) != 1:
            raise PolicyMismatchError(f"{info_path}: camera frames {sorted(sizes)}; the "
                                      f"evaluation renders one square size for every view")
        for name in ("action", "observation.state"):
            if name not in feats:
                raise PolicyMismatchError(f"{info_path}: no `{name}` feature; a model trained "
                                          f"on it cannot act in a robot environment")
        return cls(
            cameras=tuple(k.removeprefix(IMAGE_PREFIX) for k in keys),
            image_size=int(next(iter(sizes))[0]),
            action_dim=_dim(feats["action"]), state_dim=_dim(feats["observation.state"]),
            fps=float(info["fps"]), embodiment=str(info.get("robot_type") or ""),
            vocabulary=tuple(vocabulary))


def _dim(feature: dict[str, Any]) -> int:
    n = 1
    for s in feature["shape"]:
        n *= int(s)
    return n


def check_fit(contract: ModelContract, env: EnvSpec, model_cfg: Any | None = None) -> None:
    """Raise PolicyMismatchError listing every way the model does not fit `env`.

    `model_cfg` (a WallWMConfig) is checked against the contract too: its views, action and
    state dims must be the ones the contract says it was trained with."""
    problems: list[str] = []
    if sorted(contract.cameras) != sorted(env.cameras):
        problems.append(f"cameras: the model was trained on {list(contract.cameras)}, the "
                        f"environment renders {list(env.cameras)} (data.sim.cameras)")
    if contract.image_size != env.image_size:
        problems.append(f"image size: the model was trained on {contract.image_size}x"
                        f"{contract.image_size} frames, the environment renders "
                        f"{env.image_size}x{env.image_size} (data.sim.image_size)")
    for what, mine, theirs in (("action dim", contract.action_dim, env.action_dim),
                               ("state dim", contract.state_dim, env.state_dim)):
        if mine != theirs:
            problems.append(f"{what}: the model has {mine}, the environment {theirs}")
    if abs(contract.fps - env.fps) > 1e-6 * max(1.0, env.fps):
        problems.append(f"frame rate: the model was trained at {contract.fps:g} fps, the "
                        f"environment records {env.fps:g} fps (control rate "
                        f"{1 / env.control_dt:g} Hz / data.sim.render_every={env.render_every})"
                        )
    if contract.embodiment != env.embodiment:
        problems.append(f"embodiment: the model was trained on robot_type "
                        f"{contract.embodiment!r}, the environment is {env.embodiment!r}")
    if model_cfg is not None:
        for what, have, want in (("views", model_cfg.views, len(contract.cameras)),
                                 ("action_dim", model_cfg.action_dim, contract.action_dim),
                                 ("state_dim", model_cfg.state_dim, contract.state_dim)):
            if have != want:
                problems.append(f"model {what}: the network has {have}, its contract "
                                f"{want} (model.presets.<preset>.{what})")
    if problems:
        raise PolicyMismatchError("the model does not fit the environment: "
                                  + "; ".join(problems))
