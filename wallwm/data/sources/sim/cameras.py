"""Exact pinhole calibration of MuJoCo cameras, in the convention the stored images use.

MuJoCo renders a perfect pinhole: square pixels, vertical field of view `fovy`, principal point
at the image centre, camera looking along its -z with y up. We store OpenCV axes (x right,
y down, z forward), camera-to-world. Fixed cameras whose image "up" points at the floor
(corner..corner4 in Meta-World) are stored rotated by 180 degrees so they look upright; a
rotation (not a mirror) keeps them a valid pinhole camera: u' = W-1-u, v' = H-1-v, which is
R' = R @ diag(-1,-1,1) with the centred principal point unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_MJ_TO_CV = np.diag([1.0, -1.0, -1.0])
_ROT180 = np.diag([-1.0, -1.0, 1.0])
UPSIDE_DOWN_MIN = 0.3  # world-up component along the image's down axis that calls for a flip


def intrinsics(fovy_deg: float, height: int, width: int) -> np.ndarray:
    f = (height / 2.0) / np.tan(np.deg2rad(fovy_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def cam_to_world(data: Any, camera: str, *, rotated: bool = False) -> np.ndarray:
    """4x4 OpenCV camera-to-world of `camera` at the current state of `data`."""
    cam = data.cam(camera)
    rot = np.asarray(cam.xmat, np.float64).reshape(3, 3) @ _MJ_TO_CV
    if rotated:
        rot = rot @ _ROT180
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot, np.asarray(cam.xpos, np.float64)
    return out


def upside_down(data: Any, camera: str) -> bool:
    """True when the image's down axis (OpenCV +y) points up in the world."""
    return bool(cam_to_world(data, camera)[2, 1] > UPSIDE_DOWN_MIN)


def project(points: np.ndarray, k: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """(N, 3) world points -> (N, 3) of (u, v, depth) pixels, u right, v down, (0, 0) = centre
    of the top-left pixel."""
    pts = np.atleast_2d(points)
    w2c = np.linalg.inv(c2w)
    cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ k.T
    return np.column_stack([uv[:, :2] / uv[:, 2:3], cam[:, 2]])
