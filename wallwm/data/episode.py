"""The one in-memory episode every source yields and every writer/validator takes.

Conventions (the LeRobot feature names where LeRobot has one):

* per-frame arrays in ``Episode.features``, each of length T (one row per dataset frame):
  ``observation.state`` float32 (T, S), ``action`` float32 (T, A),
  ``observation.extrinsics.<cam>`` float32 (T, 16) for a moving camera (row-major 4x4
  camera-to-world, OpenCV axes: x right, y down, z forward),
  ``flags.teleop`` / ``flags.correction`` / ``flags.recovery`` bool (T,) on t3,
  ``sim.*`` simulator-only signals (contacts, object poses, expert phase) that a real
  recording lacks: the annotator must never read them; they exist to score it.
* videos in ``Episode.videos[key]`` with ``key`` = ``observation.images.<cam>``, uint8
  (T, H, W, 3), frame i shown at ``timestamps[i]`` (or a callable that yields the frames, for
  sources too large to hold in memory).
* ``timestamps`` float64 (T,) seconds from the episode start, strictly increasing.
* ``robot_type`` and ``feature_names`` (per feature, LeRobot's ``names``: which joint is which
  dimension) as the source declares them; the writer keeps both in ``info.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TIERS = ("t0_web", "t1_human", "t2_robot_public", "t3_robot_real")
IMAGE_PREFIX = "observation.images."
EXTRINSICS_PREFIX = "observation.extrinsics."
SIM_PREFIX = "sim."
FLAG_KEYS = ("flags.teleop", "flags.correction", "flags.recovery")

FrameSource = np.ndarray | Callable[[], Iterator[np.ndarray]]


@dataclass
class CameraSpec:
    """One camera. `intrinsics` None = uncalibrated; `moving` = extrinsics are per frame."""

    key: str  # observation.images.<name>
    height: int
    width: int
    intrinsics: np.ndarray | None = None  # (3, 3) pixels
    extrinsics: np.ndarray | None = None  # (4, 4) camera-to-world, static cameras only
    moving: bool = False

    @property
    def name(self) -> str:
        return self.key.removeprefix(IMAGE_PREFIX)

    @property
    def calibrated(self) -> bool:
        return self.intrinsics is not None and (self.moving or self.extrinsics is not None)

    def to_json(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "width": self.width,
            "intrinsics": None if self.intrinsics is None else np.asarray(self.intrinsics).tolist(),
            "extrinsics": None if self.extrinsics is None else np.asarray(self.extrinsics).tolist(),
            "extrinsics_feature": EXTRINSICS_PREFIX + self.name if self.moving else None,
        }

    @classmethod
    def from_json(cls, key: str, d: dict[str, Any]) -> CameraSpec:
        return cls(
            key=key,
            height=int(d["height"]),
            width=int(d["width"]),
            intrinsics=None
            if d.get("intrinsics") is None
            else np.asarray(d["intrinsics"], np.float64),
            extrinsics=None
            if d.get("extrinsics") is None
            else np.asarray(d["extrinsics"], np.float64),
            moving=d.get("extrinsics_feature") is not None,
        )


@dataclass
class Event:
    """A labelled frame range [start, end) of an episode (ground truth or annotation)."""

    label: str
    start: int
    end: int
    level: str = "action"  # subtask | action | segment
    caption: str = ""
    signal: str = ""  # what set the boundary (gripper, contact, speed_min, change_point, human...)
    origin: str = "auto"  # auto | human | ground_truth: a human boundary is never overwritten

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "start": self.start,
            "end": self.end,
            "level": self.level,
            "caption": self.caption,
            "signal": self.signal,
            "origin": self.origin,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Event:
        return cls(
            label=str(d["label"]),
            start=int(d["start"]),
            end=int(d["end"]),
            level=str(d.get("level", "action")),
            caption=str(d.get("caption", "")),
            signal=str(d.get("signal", "")),
            origin=str(d.get("origin", "auto")),
        )


@dataclass
class Episode:
    source: str  # plugin name: sim | lerobot | video_folder
    source_id: str  # unique and stable within the source (duplicate detection, caching)
    tier: str
    task: str
    fps: float
    timestamps: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    videos: dict[str, FrameSource] = field(default_factory=dict)
    cameras: dict[str, CameraSpec] = field(default_factory=dict)
    ground_truth: list[Event] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-able provenance (seed, env, ...)
    robot_type: str | None = None  # LeRobot's robot_type, e.g. "so101_follower"
    feature_names: dict[str, Any] = field(default_factory=dict)  # feature -> LeRobot `names`

    @property
    def length(self) -> int:
        return int(len(self.timestamps))

    def frames_of(self, key: str) -> Iterator[np.ndarray]:
        src = self.videos[key]
        if callable(src):
            yield from src()
        else:
            yield from src

    def recording_features(self) -> dict[str, np.ndarray]:
        """The features a real recording would hold (everything but `sim.*`)."""
        return {k: v for k, v in self.features.items() if not k.startswith(SIM_PREFIX)}
