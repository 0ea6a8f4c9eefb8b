"""Meta-World environments: exact seeding, contacts at every physics substep, a fast renderer.

mujoco and metaworld are imported lazily so that importing the source (for `unit_ids`,
`fingerprint` or `--help`) needs no OpenGL. `MUJOCO_GL=osmesa` must be set before the first
mujoco import; :func:`sim_modules` does that unless the caller chose a backend already.
"""

from __future__ import annotations

import ctypes.util
import os
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np

FINGER_GEOMS = ("leftpad_geom", "rightpad_geom", "leftclaw_it", "rightclaw_it")
# the body whose subtree is "the object" the fingers touch, per task
OBJECT_BODY = {
    "pick-place-v3": "obj",
    "push-v3": "obj",
    "drawer-open-v3": "drawer_link",
    "button-press-topdown-v3": "button",
}


def gl_problem() -> str | None:
    """Why rendering cannot work here (None = it can): osmesa needs Debian's libosmesa6."""
    backend = os.environ.get("MUJOCO_GL", "osmesa")
    if backend == "osmesa" and ctypes.util.find_library("OSMesa") is None:
        return "libOSMesa not found (apt-get install libosmesa6) and MUJOCO_GL=osmesa"
    return None


@cache
def sim_modules() -> tuple[ModuleType, ModuleType]:
    """(metaworld, mujoco), with the GL backend chosen before mujoco loads."""
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    if os.environ["MUJOCO_GL"] == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    import metaworld
    import mujoco

    return metaworld, mujoco


@dataclass
class SimEnv:
    """One Meta-World task env, reused across episodes (construction costs ~0.7 s)."""

    task: str
    env: Any
    train_tasks: list[Any]
    finger: np.ndarray  # bool per geom
    obj: np.ndarray  # bool per geom
    contact: bool = False  # finger-object contact in any substep since the last clear

    @property
    def model(self) -> Any:
        return self.env.model

    @property
    def data(self) -> Any:
        return self.env.data

    def reset(self, layout: int, seed: int) -> np.ndarray:
        """Bit-identical start for (layout, seed) whatever this env ran before."""
        _, mujoco = sim_modules()
        mujoco.mj_resetData(self.model, self.data)  # warm-start, ctrl, mocap: no carry-over
        self.env.set_task(self.train_tasks[layout])
        self.env.seed(seed)
        obs, _ = self.env.reset()
        if self.task == "pick-place-v3":
            # the stock goal floats 5-30 cm up; put it on the table so the task ends in a place
            self.env._target_pos = np.array(self.env._target_pos, dtype=np.float64)
            self.env._target_pos[2] = float(obs[6])
            for site in self.env._target_site_config:
                self.env._set_pos_site(*site)
            mujoco.mj_forward(self.model, self.data)
            obs = np.array(obs, dtype=np.float64)
            obs[-3:] = self.env._target_pos
        self.contact = False
        return np.asarray(obs, dtype=np.float64)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        obs, _, _, _, info = self.env.step(np.asarray(action, dtype=np.float32))
        return np.asarray(obs, dtype=np.float64), info

    def _substeps(self, ctrl: Any, n_frames: int) -> None:
        """Replaces gymnasium's `mj_step(nstep=n)`: same physics, contacts read per substep."""
        _, mujoco = sim_modules()
        m, d = self.model, self.data
        d.ctrl[:] = ctrl
        for _ in range(n_frames):
            mujoco.mj_step(m, d)
            if d.ncon and not self.contact:
                g1, g2 = d.contact.geom1, d.contact.geom2
                hit = (self.finger[g1] & self.obj[g2]) | (self.finger[g2] & self.obj[g1])
                self.contact = bool(hit.any())
        mujoco.mj_rnePostConstraint(m, d)


_ENVS: dict[tuple[str, int], SimEnv] = {}


def get_env(task: str, mt1_seed: int) -> SimEnv:
    """The process-wide env of `task` (layouts = MT1(task, seed=mt1_seed).train_tasks)."""
    key = (task, mt1_seed)
    if key not in _ENVS:
        metaworld, mujoco = sim_modules()
        mt1 = metaworld.MT1(task, seed=mt1_seed)
        env = mt1.train_classes[task]()
        m = env.model
        m.vis.quality.shadowsize = 512  # PITFALLS: ~3x faster, near-identical images
        m.vis.quality.offsamples = 0
        names = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_GEOM, i) for i in range(m.ngeom)]
        finger = np.array([n in FINGER_GEOMS for n in names])
        root = m.body(OBJECT_BODY[task]).id
        in_obj = [_in_subtree(m, int(m.geom_bodyid[i]), root) for i in range(m.ngeom)]
        sim = SimEnv(task, env, list(mt1.train_tasks), finger, np.array(in_obj))
        env._step_mujoco_simulation = sim._substeps
        _ENVS[key] = sim
    return _ENVS[key]


def _in_subtree(m: Any, body: int, root: int) -> bool:
    while body > 0:
        if body == root:
            return True
        body = int(m.body_parentid[body])
    return False


class FastRenderer:
    """RGB frames of several cameras: one osmesa context, no reflections (~20 ms a frame)."""

    def __init__(self, sim: SimEnv, height: int, width: int):
        _, mujoco = sim_modules()
        self._mj = mujoco
        self._r = mujoco.Renderer(sim.model, height, width)
        self._data = sim.data

    def render(self, camera: str, *, segmentation: bool = False) -> np.ndarray:
        r = self._r
        if segmentation:
            r.enable_segmentation_rendering()
        r.update_scene(self._data, camera=camera)
        r.scene.flags[self._mj.mjtRndFlag.mjRND_REFLECTION] = 0
        out = r.render()
        r.disable_segmentation_rendering()
        return out

    def close(self) -> None:
        self._r.close()

    def __enter__(self) -> FastRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
