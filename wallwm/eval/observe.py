"""A live Meta-World state -> one dataset frame, exactly as the sim source records it.

wallwm/data/sources/sim/rollout.py records frame k before control step k*render_every:
`observation.state` = obs[:4] (float32), every camera of `data.sim.cameras` rendered by
`FastRenderer` at the dataset size, fixed cameras that look upside down rotated by 180
degrees (with their extrinsics rotated to match), intrinsics of the rendered size, and
camera-to-world extrinsics read at that moment (per frame for the cameras on the hand).
`SimObserver` does the same with the same functions; the frame's time is k / fps with
fps = 1 / (control_dt * render_every).

`rollout.simulate` records inline, so this file repeats its few recording lines (a refactor
that moves them into a `record_frame(sim, renderer, obs, ...)` the source and this file share
is described in the evaluation's report).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wallwm.data.sources.sim import cameras as cams
from wallwm.data.sources.sim.env import FastRenderer, SimEnv
from wallwm.data.sources.sim.rollout import MOVING


@dataclass
class FrameObs:
    """One dataset frame of a live episode: what a recorded dataset holds for frame `frame`.

    `privileged` is the full Meta-World observation (object and goal positions): only the
    scripted ceiling may read it; a learned policy gets what a real robot records."""

    frame: int
    time_s: float
    images: dict[str, np.ndarray]  # camera -> (H, W, 3) uint8
    intrinsics: dict[str, np.ndarray]  # camera -> (3, 3) pixels of the rendered size
    extrinsics: dict[str, np.ndarray]  # camera -> (4, 4) OpenCV camera-to-world, this frame
    state: np.ndarray  # (4,) float32: hand xyz, gripper aperture
    privileged: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


class SimObserver:
    """Renders dataset frames of `sim`; build it after `sim.reset` (the rotation is decided on
    the reset pose, as the source does). Close it (or use `with`) to free the GL context."""

    def __init__(self, sim: SimEnv, cameras: list[str] | tuple[str, ...], size: int,
                 render_every: int):
        self.sim, self.cameras, self.size = sim, list(cameras), int(size)
        self.every = int(render_every)
        self.fps = 1.0 / (float(sim.env.dt) * self.every)
        self.rotated = {c: c not in MOVING and cams.upside_down(sim.data, c) for c in cameras}
        self.intrinsics = {
            c: cams.intrinsics(float(sim.model.cam(c).fovy[0]), self.size, self.size)
            for c in cameras}
        self._renderer = FastRenderer(sim, self.size, self.size)

    def capture(self, obs: np.ndarray, frame: int) -> FrameObs:
        images, ext = {}, {}
        for c in self.cameras:
            img = self._renderer.render(c)
            images[c] = img[::-1, ::-1] if self.rotated[c] else img
            ext[c] = cams.cam_to_world(self.sim.data, c, rotated=self.rotated[c])
        return FrameObs(
            frame=int(frame), time_s=frame / self.fps, images=images,
            intrinsics={c: k.copy() for c, k in self.intrinsics.items()}, extrinsics=ext,
            state=np.asarray(obs[:4], np.float32).copy(),
            privileged=np.asarray(obs, np.float64).copy())

    def close(self) -> None:
        self._renderer.close()

    def __enter__(self) -> SimObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
