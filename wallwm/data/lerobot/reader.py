"""Read LeRobot datasets (v3.0 natively, v2.0/v2.1 through :mod:`legacy`) into Episodes.

Nothing loads a whole dataset: an episode's rows come from its data file with a pyarrow
filter on ``episode_index`` (row groups are per episode, so the filter prunes them), and its
frames decode lazily from its own segment of the shared mp4, seeking by timestamp.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from wallwm.data.episode import CameraSpec, Episode, Event
from wallwm.data.lerobot.info import (
    CAMERAS_PATH,
    DEFAULT_FEATURES,
    EPISODES_PATH,
    EXTRA_PATH,
    INFO_PATH,
    TASKS_PATH,
    data_keys,
    read_json,
    video_keys,
)
from wallwm.data.lerobot.legacy import LegacyLayout, read_jsonl
from wallwm.data.lerobot.schema import MetadataError, check_columns
from wallwm.data.lerobot.video import DEFAULT_TOLERANCE_S, decode_at, iter_frames


def read_tasks_parquet(path: Path) -> list[str]:
    """Tasks by task_index. The string sits in the ``task`` column (LeRobot 0.6 names the
    index) or in ``__index_level_0__`` (older lerobot-record wrote an unnamed index)."""
    t = pq.read_table(path)
    names = t.column_names
    col = next((c for c in ("task", "__index_level_0__") if c in names), None)
    if col is None or "task_index" not in names:
        raise ValueError(f"{path}: expected columns task_index and task; found {names}")
    out: dict[int, str] = dict(
        zip(t.column("task_index").to_pylist(), t.column(col).to_pylist(), strict=True)
    )
    return [out[i] for i in sorted(out)]


class V3Layout:
    """Where v3.0 keeps an episode: a row range of a shared data file, a video segment.

    Sparse metadata is legal: a third-party exporter may leave out the per-camera
    ``from_timestamp`` / ``to_timestamp`` columns. Episodes share a video file back to back in
    episode order (how LeRobot writes them), so a missing segment is derived from the lengths
    of the episodes before it in the same file and the fps; what cannot be derived (the file an
    episode's video is in) is a :class:`MetadataError` naming the metadata file and column.
    """

    def __init__(self, root: Path, info: dict[str, Any]):
        self.root, self.info = root, info
        self.files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
        if not self.files:
            raise FileNotFoundError(f"{root / EPISODES_PATH}: no episode metadata files")
        cols = [c for c in pq.read_schema(self.files[0]).names if not c.startswith("stats/")]
        parts, self.meta_file = [], {}
        for f in self.files:  # a later file may lack optional columns of the first one
            have = set(pq.read_schema(f).names)
            part = pq.read_table(f, columns=[c for c in cols if c in have])
            parts.append(part.to_pandas())
            self.meta_file.update({int(i): f for i in part.column("episode_index").to_pylist()})
        self.episodes = pd.concat(parts).sort_values("episode_index").reset_index(drop=True)
        self._derived: dict[str, dict[int, tuple[float, float, float]]] = {}

    def tasks(self) -> list[str]:
        return read_tasks_parquet(self.root / TASKS_PATH)

    def table(self, with_stats: bool = False) -> pd.DataFrame:
        if not with_stats:
            return self.episodes.copy()
        return pd.concat([pq.read_table(f).to_pandas() for f in self.files]).sort_values(
            "episode_index").reset_index(drop=True)

    def data_path(self, row: dict[str, Any]) -> Path:
        return self.root / self.info["data_path"].format(
            chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
        )

    def _located(self, key: str, row: dict[str, Any]) -> tuple[int, int]:
        i = int(row["episode_index"])
        for col in (f"videos/{key}/chunk_index", f"videos/{key}/file_index"):
            if _absent(row.get(col)):
                meta = self.meta_file.get(i, self.root / EPISODES_PATH)
                raise MetadataError(
                    f"{meta}: column {col!r} is {'absent' if col not in row else 'null'} for "
                    f"episode {i}, so the video of camera {key!r} cannot be located (which "
                    f"file of videos/{key}/ holds it); add the column (LeRobot writes "
                    f"videos/<camera>/chunk_index, file_index, from_timestamp, to_timestamp)",
                    path=meta, column=col)
        return int(row[f"videos/{key}/chunk_index"]), int(row[f"videos/{key}/file_index"])

    def segment_derived(self, key: str, row: dict[str, Any]) -> bool:
        """True when meta/episodes does not give this episode's segment of camera ``key``."""
        return any(_absent(row.get(f"videos/{key}/{x}_timestamp")) for x in ("from", "to"))

    def derived_segments(self, key: str) -> dict[int, tuple[float, float, float]]:
        """episode -> (from, to, end of its file's last episode), from lengths and fps: the
        episodes of one file back to back in episode order."""
        if key not in self._derived:
            fps = float(self.info["fps"])
            offsets: dict[tuple[int, int], float] = {}
            seg: dict[int, tuple[float, float]] = {}
            where: dict[int, tuple[int, int]] = {}
            for row in self.episodes.to_dict("records"):
                i, f = int(row["episode_index"]), self._located(key, row)
                start = offsets.get(f, 0.0)
                offsets[f] = start + int(row["length"]) / fps
                seg[i], where[i] = (start, offsets[f]), f
            self._derived[key] = {i: (a, b, offsets[where[i]]) for i, (a, b) in seg.items()}
        return self._derived[key]

    def video_segment(self, key: str, row: dict[str, Any]) -> tuple[Path, float, float]:
        chunk, file = self._located(key, row)
        path = self.root / self.info["video_path"].format(
            video_key=key, chunk_index=chunk, file_index=file
        )
        start, end = row.get(f"videos/{key}/from_timestamp"), row.get(f"videos/{key}/to_timestamp")
        n = int(row["length"]) / float(self.info["fps"])
        if _absent(start) and _absent(end):
            start, end, _ = self.derived_segments(key)[int(row["episode_index"])]
        elif _absent(end):
            end = float(start) + n
        elif _absent(start):
            start = float(end) - n
        return path, float(start), float(end)


def _absent(v: Any) -> bool:
    """A metadata value that is not there: a missing column or a null / NaN cell."""
    return v is None or (np.isscalar(v) and bool(pd.isna(v)))


def column_to_numpy(col: pa.ChunkedArray) -> np.ndarray:
    """Scalar column -> (T,); fixed/variable list column -> (T, D)."""
    arr = col.combine_chunks()
    if pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type):
        n = len(arr)
        flat = arr.flatten().to_numpy(zero_copy_only=False)
        if n:
            return flat.reshape(n, -1)
        width = arr.type.list_size if pa.types.is_fixed_size_list(arr.type) else 0
        return flat.reshape(0, width)
    return arr.to_numpy(zero_copy_only=False)


class LeRobotReader:
    """One LeRobot dataset folder; same API for v3.0 and v2.x."""

    def __init__(self, root: Path | str, tolerance_s: float = DEFAULT_TOLERANCE_S):
        self.root = Path(root)
        self.tolerance_s = tolerance_s
        self.info: dict[str, Any] = read_json(self.root / INFO_PATH)
        self.version: str = str(self.info.get("codebase_version", ""))
        if self.version.startswith("v2"):
            self._layout: V3Layout | LegacyLayout = LegacyLayout(self.root, self.info)
        elif self.version == "v3.0":
            self._layout = V3Layout(self.root, self.info)
        else:
            raise ValueError(
                f"{self.root / INFO_PATH}: codebase_version {self.version!r}; "
                "readable: v2.0, v2.1, v3.0"
            )
        self.tasks: list[str] = self._layout.tasks()
        self._rows = {int(r["episode_index"]): r for r in self._layout.episodes.to_dict("records")}
        self._extra: dict[int, dict[str, Any]] | None = None
        cams = self.root / CAMERAS_PATH
        self._cameras: dict[str, Any] = read_json(cams) if cams.exists() else {}

    # ------------------------------------------------------------------ metadata
    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.info["features"]

    @property
    def video_keys(self) -> list[str]:
        return video_keys(self.features)

    @property
    def num_episodes(self) -> int:
        return len(self._rows)

    @property
    def episode_indices(self) -> list[int]:
        return sorted(self._rows)

    def episode_table(self, with_stats: bool = False) -> pd.DataFrame:
        """One row per episode (LeRobot's meta/episodes columns; stats/* on request)."""
        return self._layout.table(with_stats)

    def cameras(self) -> dict[str, CameraSpec]:
        """From meta/cameras.json when present, else uncalibrated specs from the features."""
        out = {}
        for key in self.video_keys:
            if key in self._cameras:
                out[key] = CameraSpec.from_json(key, self._cameras[key])
            else:
                h, w = self.features[key]["shape"][:2]
                out[key] = CameraSpec(key=key, height=int(h), width=int(w))
        return out

    def _row(self, i: int) -> dict[str, Any]:
        try:
            return self._rows[int(i)]
        except KeyError:
            raise KeyError(
                f"{self.root}: no episode {i} (episodes {min(self._rows)}..{max(self._rows)})"
            ) from None

    def _extras(self) -> dict[int, dict[str, Any]]:
        if self._extra is None:
            p = self.root / EXTRA_PATH
            self._extra = {int(r["episode_index"]): r for r in read_jsonl(p)} if p.exists() else {}
        return self._extra

    # ------------------------------------------------------------------ data
    def data_path(self, i: int) -> Path:
        return self._layout.data_path(self._row(i))

    def video_segment(self, key: str, i: int) -> tuple[Path, float, float]:
        """(mp4 path, from_timestamp, to_timestamp) of episode i's frames for camera ``key``."""
        return self._layout.video_segment(key, self._row(i))

    def derived_file_end(self, key: str, i: int) -> float | None:
        """When meta/episodes leaves out episode i's segment of camera ``key`` (so it was derived
        from the lengths): where the episodes of its video file end, by the same derivation, to
        be compared with the file's real duration. None when the segment was given."""
        lay = self._layout
        if not isinstance(lay, V3Layout) or not lay.segment_derived(key, self._row(i)):
            return None
        return lay.derived_segments(key)[int(i)][2]

    def meta_path(self, i: int) -> Path:
        """The metadata file that describes episode i."""
        if isinstance(self._layout, V3Layout):
            return self._layout.meta_file.get(int(i), self.root / EPISODES_PATH)
        return self.root / "meta" / "episodes.jsonl"

    def read_rows(self, i: int, columns: list[str] | None = None) -> pa.Table:
        path = self.data_path(i)
        if not path.exists():
            raise FileNotFoundError(f"{path}: data file of episode {i} is missing")
        t = pq.read_table(path, columns=columns, filters=[("episode_index", "==", int(i))])
        return t.sort_by("frame_index") if "frame_index" in t.column_names else t

    def missing_videos(self) -> list[tuple[int, str]]:
        """(episode, camera key) pairs whose video file is absent."""
        return [
            (i, k)
            for i in self.episode_indices
            for k in self.video_keys
            if not self.video_segment(k, i)[0].exists()
        ]

    def decode_frames(
        self, camera_key: str, episode_index: int, frame_indices: Sequence[int]
    ) -> np.ndarray:
        """uint8 (N, H, W, 3) frames of one episode, by timestamp (seek, not full decode)."""
        path, start, _ = self.video_segment(camera_key, episode_index)
        ts = self.read_rows(episode_index, ["timestamp", "frame_index"]).column("timestamp")
        ts = ts.to_numpy().astype(np.float64)
        return decode_at(path, [start + ts[int(f)] for f in frame_indices], self.tolerance_s)

    def iter_frames(self, camera_key: str, episode_index: int) -> Iterator[np.ndarray]:
        """Every frame of one episode in order, streamed from its video segment."""
        path, start, _ = self.video_segment(camera_key, episode_index)
        ts = self.read_rows(episode_index, ["timestamp", "frame_index"]).column("timestamp")
        yield from iter_frames(path, start + ts.to_numpy().astype(np.float64), self.tolerance_s)

    def episode(self, i: int) -> Episode:
        """Episode i: per-frame features from its rows; videos as lazy decoders. Cameras whose
        video file is missing are left out of ``videos`` and listed in
        ``extra["missing_videos"]``."""
        row = self._row(i)
        t = self.read_rows(i)
        if t.num_rows != int(row["length"]):
            raise ValueError(
                f"{self.data_path(i)}: episode {i} has {t.num_rows} rows; meta says length "
                f"{row['length']}"
            )
        declared = data_keys(self.features)
        check_columns(self.data_path(i), self.features, declared, t, self.root / INFO_PATH)
        feats = {k: column_to_numpy(t.column(k)) for k in declared}
        for k in t.column_names:  # columns present in the file but not declared
            if k not in feats and k not in DEFAULT_FEATURES:
                feats[k] = column_to_numpy(t.column(k))
        ts = t.column("timestamp").to_numpy().astype(np.float64)
        tasks = list(row.get("tasks") if row.get("tasks") is not None else [])
        if "task_index" in t.column_names and t.num_rows and self.tasks:
            task = self.tasks[int(t.column("task_index")[0].as_py())]
        else:
            task = tasks[0] if tasks else ""
        videos, missing = {}, []
        for key in self.video_keys:
            path, start, _ = self.video_segment(key, i)
            if path.exists():
                videos[key] = _lazy(path, start + ts, self.tolerance_s)
            else:
                missing.append(key)
        ex = self._extras().get(int(i), {})
        extra = dict(ex.get("extra", {}))
        extra.update({"dataset": self.root.name, "episode_index": int(i),
                      "codebase_version": self.version})
        if len(tasks) > 1:
            extra["tasks"] = tasks
        if missing:
            extra["missing_videos"] = missing
        return Episode(
            source=ex.get("source", "lerobot"),
            source_id=ex.get("source_id", f"{self.root.name}/{i}"),
            tier=ex.get("tier", "t2_robot_public"),
            task=task,
            fps=float(self.fps),
            timestamps=ts,
            features=feats,
            videos=videos,
            cameras=self.cameras(),
            ground_truth=[Event(**e) for e in ex.get("ground_truth", [])],
            extra=extra,
            robot_type=self.info.get("robot_type"),
            feature_names={k: self.features[k]["names"] for k in declared
                           if self.features[k].get("names") is not None},
        )


def _lazy(path: Path, times: np.ndarray, tol: float):
    """A re-iterable frame source: each call decodes the segment afresh."""
    return lambda: iter_frames(path, times, tol)
