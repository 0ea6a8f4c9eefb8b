"""``meta/info.json`` and the feature schema, as LeRobot v3.0 writes them.

Paths and defaults mirror LeRobot's ``utils.py``; no key outside LeRobot's ``DatasetInfo`` goes
into ``info.json`` (LeRobot drops unknown keys with a warning), so our additions live in their
own files (``meta/cameras.json``, ``meta/episodes_extra.jsonl``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from wallwm.config.schema import DataParams
from wallwm.data.episode import IMAGE_PREFIX, Episode
from wallwm.data.lerobot.schema import check_names
from wallwm.data.lerobot.video import video_info

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
CAMERAS_PATH = "meta/cameras.json"
EXTRA_PATH = "meta/episodes_extra.jsonl"
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
_DTYPES = {"float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from e


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=4, ensure_ascii=False) + "\n"


def video_keys(features: dict[str, dict]) -> list[str]:
    return [k for k, f in features.items() if f.get("dtype") == "video"]


def data_keys(features: dict[str, dict]) -> list[str]:
    """Per-frame parquet columns beyond LeRobot's five default columns."""
    return [
        k for k, f in features.items()
        if f.get("dtype") not in ("video", "image") and k not in DEFAULT_FEATURES
    ]


def arrow_type(key: str, ft: dict[str, Any]) -> pa.DataType:
    """The parquet column type LeRobot (via HF datasets) uses: scalar for shape (1,),
    fixed_size_list for a 1-D shape. Bool stays bool (datasets.Value("bool"))."""
    dtype, shape = ft["dtype"], list(ft["shape"])
    if dtype not in _DTYPES:
        raise ValueError(f"feature {key!r}: dtype {dtype!r} not supported; allowed {sorted(_DTYPES)}")
    base = pa.from_numpy_dtype(np.dtype(dtype))
    if shape == [1]:
        return base
    if len(shape) == 1:
        return pa.list_(base, shape[0])
    raise ValueError(f"feature {key!r}: shape {shape} not supported (scalar or 1-D only)")


def features_from_episode(ep: Episode, fps: int, params: DataParams) -> dict[str, dict[str, Any]]:
    """LeRobot ``features`` for an episode: its per-frame arrays (dtype as they are, names as
    the source declared them), its cameras, the defaults."""
    feats: dict[str, dict[str, Any]] = {}
    for key, arr in ep.features.items():
        a = np.asarray(arr)
        if a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1):
            shape = [1]
        elif a.ndim == 2:
            shape = [int(a.shape[1])]
        else:
            raise ValueError(
                f"episode {ep.source_id}: feature {key!r} has shape {a.shape}; "
                "expected (T,) or (T, D)"
            )
        ft = {"dtype": str(a.dtype), "shape": shape, "names": ep.feature_names.get(key)}
        arrow_type(key, ft)
        check_names(key, ft, f"episode {ep.source_id}")
        feats[key] = ft
    for key in ep.videos:
        if not key.startswith(IMAGE_PREFIX):
            raise ValueError(f"episode {ep.source_id}: video key {key!r} must start {IMAGE_PREFIX}")
        cam = ep.cameras.get(key)
        if cam is not None:
            h, w = cam.height, cam.width
        else:
            h, w = next(iter(ep.frames_of(key))).shape[:2]
        feats[key] = {
            "dtype": "video",
            "shape": [int(h), int(w), 3],
            "names": ["height", "width", "channels"],
            "info": video_info(int(h), int(w), fps, params.video),
        }
    feats.update({k: dict(v) for k, v in DEFAULT_FEATURES.items()})
    return feats


def new_info(
    fps: int, features: dict[str, dict], robot_type: str | None, params: DataParams
) -> dict[str, Any]:
    """A fresh v3.0 ``info.json`` body (key order as LeRobot writes it)."""
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": 0,
        "total_frames": 0,
        "total_tasks": 0,
        "chunks_size": params.chunks_size,
        "data_files_size_in_mb": params.data_files_size_in_mb,
        "video_files_size_in_mb": params.video_files_size_in_mb,
        "fps": int(fps),
        "splits": {},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if video_keys(features) else None,
        "features": features,
    }
