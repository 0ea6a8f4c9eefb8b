"""The four tiers of the data pyramid, each a declared schema, and the tables they are checked on.

A tier is a relaxation of the one above it:

| tier | must have | may have |
|---|---|---|
| `t0_web` | >= 1 video, a caption (task) | anything else is ignored |
| `t1_human` | >= 1 video, a caption | hand / body pose tracks |
| `t2_robot_public` | video, `observation.state`, `action` | calibration |
| `t3_robot_real` | >= 2 calibrated cameras, state, action, teleop / correction / recovery flags | |

`probe()` turns an episode into one row of the *episode table* (derived checks: lengths, frame
counts per camera, timestamp monotonicity, rotation orthonormality, finiteness, a content hash
for duplicates) and its *frame table* (every numeric per-frame column, flattened). The rules of a
tier are plain data (:class:`Rule`) so that the validation adapter can turn them into a Great
Expectations suite and every failure names the rule, the column and the value.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from wallwm.data.episode import (
    EXTRINSICS_PREFIX,
    FLAG_KEYS,
    IMAGE_PREFIX,
    SIM_PREFIX,
    TIERS,
    Episode,
)

RuleKind = Literal["exists", "not_null", "between", "in_set", "unique", "equal_columns"]


@dataclass(frozen=True)
class Rule:
    """One expectation on a table: `kind` on `column` (see the validation adapter for GX names)."""

    table: Literal["episodes", "frames"]
    kind: RuleKind
    column: str
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] = ()
    other: str = ""  # equal_columns: the column that must equal `column`
    why: str = ""

    @property
    def name(self) -> str:
        extra = f"={self.other}" if self.other else ""
        return f"{self.table}.{self.kind}:{self.column}{extra}"


@dataclass(frozen=True)
class TierSchema:
    name: str
    required_features: tuple[str, ...]
    min_cameras: int
    calibrated_cameras: int  # how many cameras must carry intrinsics + extrinsics
    fps_range: tuple[float, float] = (1.0, 240.0)
    max_abs_value: float = 1e4  # actions/state beyond this are a unit or scaling error
    optional_features: tuple[str, ...] = ()
    extra_rules: tuple[Rule, ...] = field(default_factory=tuple)

    def rules(self, episodes: pd.DataFrame, frames: pd.DataFrame) -> list[Rule]:
        """The rules for these tables (per-camera and per-feature rules follow the columns)."""
        r = [
            Rule("episodes", "in_set", "tier", values=(self.name,), why="episode is in this tier"),
            Rule("episodes", "unique", "identity",
                 why="the same input episode twice (same source, same source_id)"),
            Rule("episodes", "unique", "content_sha256", why="identical content twice (duplicate)"),
            Rule("episodes", "between", "length", min=2, why="an episode needs at least 2 frames"),
            Rule("episodes", "between", "fps", min=self.fps_range[0], max=self.fps_range[1]),
            Rule("episodes", "in_set", "timestamps_increasing", values=(True,),
                 why="timestamps must increase strictly"),
            Rule("episodes", "between", "timestamp_fps_error", max=0.05,
                 why="timestamps must follow the fps (relative error)"),
            Rule("episodes", "between", "task_chars", min=1, why="a task caption is required"),
            Rule("episodes", "between", "num_cameras", min=self.min_cameras),
            Rule("episodes", "between", "calibrated_cameras", min=self.calibrated_cameras),
            Rule("episodes", "between", "rotation_orthonormal_error", max=1e-3,
                 why="extrinsic rotations must be orthonormal with det +1"),
        ]
        for col in episodes.columns:
            if col.startswith("video_frames/"):
                r.append(Rule("episodes", "equal_columns", col, other="length",
                              why="video frame count must equal the parquet frame count"))
        for feat in self.required_features:
            r.append(Rule("episodes", "in_set", f"has/{feat}", values=(True,),
                          why=f"tier {self.name} requires feature {feat}"))
        for col in frames.columns:
            if col in ("episode_key", "frame_index"):
                continue
            if col.startswith(SIM_PREFIX) or col.startswith("flags."):
                continue
            r.append(Rule("frames", "not_null", col, why="NaN or infinite value"))
            r.append(Rule("frames", "between", col, min=-self.max_abs_value,
                          max=self.max_abs_value, why="value out of range"))
        return [*r, *self.extra_rules]


SCHEMAS: dict[str, TierSchema] = {
    "t0_web": TierSchema("t0_web", (), min_cameras=1, calibrated_cameras=0),
    "t1_human": TierSchema("t1_human", (), min_cameras=1, calibrated_cameras=0,
                           optional_features=("observation.hand_pose", "observation.body_pose")),
    "t2_robot_public": TierSchema("t2_robot_public", ("observation.state", "action"),
                                  min_cameras=1, calibrated_cameras=0),
    "t3_robot_real": TierSchema("t3_robot_real", ("observation.state", "action", *FLAG_KEYS),
                                min_cameras=2, calibrated_cameras=2),
}
assert set(SCHEMAS) == set(TIERS)


def _rotation_error(m: np.ndarray) -> float:
    """max |R Rᵀ − I| and |det R − 1| over 4x4 (..., 4, 4) camera-to-world matrices."""
    m = np.asarray(m, dtype=np.float64).reshape(-1, 4, 4)
    r = m[:, :3, :3]
    orth = np.abs(r @ np.transpose(r, (0, 2, 1)) - np.eye(3)).max(initial=0.0)
    det = np.abs(np.linalg.det(r) - 1.0).max(initial=0.0)
    return float(max(orth, det)) if np.isfinite(m).all() else float("inf")


def _frames_of(ep: Episode, key: str) -> int:
    src = ep.videos[key]
    if isinstance(src, np.ndarray):
        return int(src.shape[0])
    return sum(1 for _ in ep.frames_of(key))


def content_hash(ep: Episode) -> str:
    """sha256 over the recorded arrays (not provenance): equal content = duplicate episode."""
    h = hashlib.sha256(ep.task.encode())
    h.update(np.ascontiguousarray(ep.timestamps, dtype=np.float64).tobytes())
    for k in sorted(ep.recording_features()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(ep.features[k]).tobytes())
    for k in sorted(ep.videos):
        src = ep.videos[k]
        if isinstance(src, np.ndarray):  # sample frames: hashing whole videos is costly
            h.update(np.ascontiguousarray(src[:: max(1, len(src) // 8)]).tobytes())
    return h.hexdigest()


def identity(source: str, source_id: str) -> str:
    """An episode's identity in a build: its source (the spec, e.g. ``lerobot:path=/a/ds``) and
    its source_id. A source_id alone is not enough: two datasets in folders of the same name
    give the same ids (``ds/0``) to different episodes. Equal content is caught apart, by
    ``content_sha256``."""
    return f"{source} #{source_id}"


def probe(ep: Episode, episode_key: str, source: str | None = None
          ) -> tuple[dict[str, Any], pd.DataFrame]:
    """The episode-table row and the frame table of one episode (what the tier rules check).
    ``source`` names where it came from (the build passes the source spec; default the
    plugin name)."""
    ts = np.asarray(ep.timestamps, dtype=np.float64)
    d = np.diff(ts)
    rot_err = 0.0
    calibrated = 0
    for cam in ep.cameras.values():
        if cam.extrinsics is not None:
            rot_err = max(rot_err, _rotation_error(cam.extrinsics))
        if cam.moving and EXTRINSICS_PREFIX + cam.name in ep.features:
            rot_err = max(rot_err, _rotation_error(ep.features[EXTRINSICS_PREFIX + cam.name]))
        calibrated += int(cam.calibrated)
    row: dict[str, Any] = {
        "episode_key": episode_key,
        "source": ep.source,
        "source_id": ep.source_id,
        "identity": identity(ep.source if source is None else source, ep.source_id),
        "tier": ep.tier,
        "task": ep.task,
        "task_chars": len(ep.task.strip()),
        "length": ep.length,
        "fps": float(ep.fps),
        "timestamps_increasing": bool(len(ts) < 2 or (d > 0).all()),
        "timestamp_fps_error": float(np.abs(d * ep.fps - 1.0).max()) if len(d) else 0.0,
        "num_cameras": len([k for k in ep.videos if k.startswith(IMAGE_PREFIX)]),
        "calibrated_cameras": calibrated,
        "rotation_orthonormal_error": rot_err,
        "content_sha256": content_hash(ep),
    }
    for key in sorted(ep.videos):
        row[f"video_frames/{key}"] = _frames_of(ep, key)
    for feat in SCHEMAS[ep.tier].required_features if ep.tier in SCHEMAS else ():
        row[f"has/{feat}"] = feat in ep.features and len(ep.features[feat]) == ep.length
    cols: dict[str, np.ndarray] = {
        "episode_key": np.full(ep.length, episode_key, dtype=object),
        "frame_index": np.arange(ep.length),
    }
    for name, arr in ep.features.items():
        a = np.asarray(arr)
        if a.dtype.kind not in "fiub" or len(a) != ep.length:
            continue
        width = int(np.prod(a.shape[1:], dtype=np.int64))  # reshape(0, -1) is ambiguous
        flat = a.reshape(ep.length, width).astype(np.float64)
        flat = np.where(np.isfinite(flat), flat, np.nan)  # inf fails the not-null rule too
        if flat.shape[1] == 1:
            cols[name] = flat[:, 0]
        else:
            for j in range(flat.shape[1]):
                cols[f"{name}[{j}]"] = flat[:, j]
    return row, pd.DataFrame(cols)
