"""LeRobot v3.0 writer: many episodes per parquet / mp4 file, crash-safe appends.

Each :meth:`LeRobotWriter.add_episode` rewrites, under temp names, every file the episode
touches (data file = previous row groups + the episode's row group; video file = previous
packets remuxed + the episode's encoded packets; episodes metadata; tasks; info; stats; our
extras), then publishes them through :mod:`wallwm.data.lerobot.commit`. Memory holds one
episode's numeric arrays and one row group / packet at a time, never the dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from wallwm.config.schema import DataParams
from wallwm.data.episode import Episode
from wallwm.data.lerobot import stats as st
from wallwm.data.lerobot.commit import JOURNAL, commit, discard, recover, tmp_for
from wallwm.data.lerobot.info import (
    CAMERAS_PATH,
    CODEBASE_VERSION,
    EPISODES_PATH,
    EXTRA_PATH,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    arrow_type,
    data_keys,
    dumps,
    new_info,
    read_json,
    video_keys,
)
from wallwm.data.lerobot.video import append_video, encode_frames

TIMESTAMP_TOLERANCE_S = 1e-4
MB = 1024**2


def next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    """LeRobot's update_chunk_file_indices: next file, next chunk after chunks_size files."""
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


def _size_mb(path: Path) -> float:
    return path.stat().st_size / MB if path.exists() else 0.0


class LeRobotWriter:
    """Append episodes to a LeRobot v3.0 dataset; see the module docstring for the protocol."""

    def __init__(self, root: Path, params: DataParams):
        self.root, self.params = Path(root), params
        self.info: dict[str, Any] = read_json(self.root / INFO_PATH)
        if self.info.get("codebase_version") != CODEBASE_VERSION:
            raise ValueError(
                f"{self.root / INFO_PATH}: codebase_version "
                f"{self.info.get('codebase_version')!r}; the writer appends to v3.0 only"
            )
        self.features: dict[str, dict] = self.info["features"]
        self._schema = pa.schema(
            [(k, arrow_type(k, self.features[k])) for k in self._columns()]
        )
        self.tasks = self._load_tasks()
        sp = self.root / STATS_PATH
        self.stats = st.from_jsonable(read_json(sp)) if sp.exists() else {}
        self.cameras: dict[str, Any] = (
            read_json(self.root / CAMERAS_PATH) if (self.root / CAMERAS_PATH).exists() else {}
        )
        self.last = self._last_episode()
        self._stale = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        root: Path | str,
        fps: int,
        features: dict[str, dict],
        *,
        robot_type: str | None = None,
        params: DataParams | None = None,
    ) -> LeRobotWriter:
        """Start an empty dataset at ``root`` (must not hold one already)."""
        root, params = Path(root), params or DataParams()
        if (root / INFO_PATH).exists():
            raise FileExistsError(f"{root / INFO_PATH}: a dataset exists; use LeRobotWriter.open")
        for k in data_keys(features):
            arrow_type(k, features[k])
        info = new_info(fps, features, robot_type, params)
        commit_pairs = []
        tmp = tmp_for(root / INFO_PATH)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(dumps(info), encoding="utf-8")
        commit_pairs.append((tmp, root / INFO_PATH))
        commit(root, commit_pairs)
        return cls(root, params)

    @classmethod
    def open(cls, root: Path | str, params: DataParams | None = None) -> LeRobotWriter:
        """Reopen a v3.0 dataset for appending, finishing or undoing an interrupted commit.
        Size limits and chunks_size stay those recorded in its info.json."""
        root = Path(root)
        if not (root / INFO_PATH).exists():
            raise FileNotFoundError(f"{root / INFO_PATH}: no LeRobot dataset here")
        recover(root)
        return cls(root, params or DataParams())

    # ------------------------------------------------------------------ state
    def _columns(self) -> list[str]:
        return data_keys(self.features) + [
            "timestamp", "frame_index", "episode_index", "index", "task_index"
        ]

    def _load_tasks(self) -> dict[str, int]:
        path = self.root / TASKS_PATH
        if not path.exists():
            return {}
        from wallwm.data.lerobot.reader import read_tasks_parquet

        return {t: i for i, t in enumerate(read_tasks_parquet(path))}

    def _last_episode(self) -> dict[str, Any] | None:
        files = sorted((self.root / "meta" / "episodes").glob("*/*.parquet"))
        if not files:
            return None
        t = pq.read_table(files[-1], columns=None)
        row = t.slice(t.num_rows - 1, 1).to_pylist()[0]
        return {k: v for k, v in row.items() if not k.startswith("stats/")}

    @property
    def num_episodes(self) -> int:
        return int(self.info["total_episodes"])

    # ------------------------------------------------------------------ append
    def add_episode(self, ep: Episode) -> int:
        """Append one episode; returns its index. All-or-nothing (see module docstring)."""
        if self._stale or (self.root / JOURNAL).exists():
            # an earlier publish failed half-way: finish it and reload what is on disk
            recover(self.root)
            self.__init__(self.root, self.params)
        index = self.num_episodes
        self._check(ep)
        pairs: list[tuple[Path, Path]] = []
        scratch: list[Path] = []
        try:
            meta = self._write_data(ep, index, pairs)
            ep_stats = self._numeric_stats(ep, index, meta["dataset_from_index"])
            for key in video_keys(self.features):
                vmeta, vstats = self._write_video(ep, key, pairs, scratch)
                meta.update(vmeta)
                ep_stats[key] = vstats
            self._write_metadata(ep, index, meta, ep_stats, pairs)
            commit(self.root, pairs)
        except BaseException:
            # journal written = the episode is committed; open()/the next add rolls it forward
            published = (self.root / JOURNAL).exists()
            discard(scratch + ([] if published else [t for t, _ in pairs]))
            self._stale = published
            raise
        discard(scratch)
        # committed: adopt the new state (untouched on failure, so a retry starts clean)
        self.info, self.stats, self.cameras, self.tasks, self.last = self._after
        return index

    def finalize(self) -> None:
        """Nothing is left open between episodes (every commit writes complete files with
        their footers); kept for parity with LeRobot's API."""
        recover(self.root)

    # ------------------------------------------------------------------ pieces
    def _check(self, ep: Episode) -> None:
        where = f"episode {ep.source_id!r}"
        if ep.length == 0:
            raise ValueError(f"{where}: no frames")
        fps = int(self.info["fps"])
        if abs(float(ep.fps) - fps) > 1e-6:
            raise ValueError(f"{where}: fps {ep.fps} differs from the dataset's {fps}")
        ts = np.asarray(ep.timestamps, np.float64)
        dev = np.abs(ts - np.arange(len(ts)) / fps)
        if dev.max() > TIMESTAMP_TOLERANCE_S:
            i = int(dev.argmax())
            raise ValueError(
                f"{where}: timestamps[{i}] = {ts[i]} is not {i}/{fps}; LeRobot videos are constant "
                "rate, so resample the episode to the dataset fps first"
            )
        want, have = set(data_keys(self.features)), set(ep.features)
        if want != have:
            raise ValueError(
                f"{where}: features {sorted(have)} differ from the dataset's {sorted(want)}"
            )
        for k in sorted(want):
            a = np.asarray(ep.features[k])
            ft = self.features[k]
            shape = [1] if a.ndim == 1 or a.shape[1:] == (1,) else list(a.shape[1:])
            if len(a) != ep.length or shape != list(ft["shape"]):
                raise ValueError(
                    f"{where}: feature {k!r} shape {a.shape}; expected ({ep.length}, {ft['shape']})"
                )
            if a.dtype != np.dtype(ft["dtype"]):  # never cast: int64 <- float32 truncates
                raise ValueError(
                    f"{where}: feature {k!r} has dtype {a.dtype} but the dataset's is "
                    f"{ft['dtype']} (set by its first episode); writing it would cast and "
                    "lose values: give episodes of another dtype their own dataset, or convert "
                    "them losslessly at the source"
                )
            names = ep.feature_names.get(k)
            if names is not None and names != ft.get("names"):
                raise ValueError(
                    f"{where}: feature {k!r} names {names} differ from the dataset's "
                    f"{ft.get('names')}; the same column would mean other joints"
                )
        if set(ep.videos) != set(video_keys(self.features)):
            raise ValueError(
                f"{where}: videos {sorted(ep.videos)} differ from the dataset's "
                f"{sorted(video_keys(self.features))}"
            )

    def _table(self, ep: Episode, index: int, start: int, task_index: int) -> pa.Table:
        n = ep.length
        cols: dict[str, pa.Array] = {}
        for k in data_keys(self.features):
            a = np.asarray(ep.features[k])  # dtype checked equal in _check: no cast
            typ = self._schema.field(k).type
            if pa.types.is_fixed_size_list(typ):
                flat = pa.array(np.ascontiguousarray(a).reshape(-1), type=typ.value_type)
                cols[k] = pa.FixedSizeListArray.from_arrays(flat, typ.list_size)
            else:
                cols[k] = pa.array(a.reshape(-1), type=typ)
        cols["timestamp"] = pa.array(np.asarray(ep.timestamps, np.float32))
        cols["frame_index"] = pa.array(np.arange(n, dtype=np.int64))
        cols["episode_index"] = pa.array(np.full(n, index, np.int64))
        cols["index"] = pa.array(np.arange(start, start + n, dtype=np.int64))
        cols["task_index"] = pa.array(np.full(n, task_index, np.int64))
        return pa.table(cols, schema=self._schema)

    def _task_index(self, task: str) -> int:
        return self.tasks.get(task, len(self.tasks))

    def _write_data(self, ep: Episode, index: int, pairs: list) -> dict[str, Any]:
        start = int(self.last["dataset_to_index"]) if self.last else 0
        table = self._table(ep, index, start, self._task_index(ep.task))
        chunk, file = 0, 0
        previous: Path | None = None
        if self.last is not None:
            chunk, file = int(self.last["data/chunk_index"]), int(self.last["data/file_index"])
            cur = self.root / self.info["data_path"].format(chunk_index=chunk, file_index=file)
            rows = pq.read_metadata(cur).num_rows
            size = _size_mb(cur)
            if size + size / max(rows, 1) * ep.length >= self.info["data_files_size_in_mb"]:
                chunk, file = next_file(chunk, file, self.info["chunks_size"])
            else:
                previous = cur
        final = self.root / self.info["data_path"].format(chunk_index=chunk, file_index=file)
        tmp = tmp_for(final)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        pairs.append((tmp, final))
        with pq.ParquetWriter(tmp, self._schema, compression="snappy") as w:
            if previous is not None:
                pf = pq.ParquetFile(previous)
                for g in range(pf.num_row_groups):  # one row group per episode, as LeRobot
                    w.write_table(pf.read_row_group(g).cast(self._schema))
            w.write_table(table)
        return {
            "data/chunk_index": chunk,
            "data/file_index": file,
            "dataset_from_index": start,
            "dataset_to_index": start + ep.length,
        }

    def _numeric_stats(self, ep: Episode, index: int, start: int) -> dict[str, dict]:
        n = ep.length
        out = {k: st.numeric_stats(np.asarray(ep.features[k])) for k in data_keys(self.features)}
        out["timestamp"] = st.numeric_stats(np.asarray(ep.timestamps, np.float32))
        out["frame_index"] = st.numeric_stats(np.arange(n))
        out["episode_index"] = st.numeric_stats(np.full(n, index))
        out["index"] = st.numeric_stats(np.arange(start, start + n))
        out["task_index"] = st.numeric_stats(np.full(n, self._task_index(ep.task)))
        return out

    def _write_video(
        self, ep: Episode, key: str, pairs: list, scratch: list[Path]
    ) -> tuple[dict[str, Any], dict]:
        fps = int(self.info["fps"])
        chunk, file, offset = 0, 0, 0.0
        previous: Path | None = None
        if self.last is not None and f"videos/{key}/chunk_index" in self.last:
            chunk = int(self.last[f"videos/{key}/chunk_index"])
            file = int(self.last[f"videos/{key}/file_index"])
            previous = self.root / self.info["video_path"].format(
                video_key=key, chunk_index=chunk, file_index=file
            )
            offset = float(self.last[f"videos/{key}/to_timestamp"])
        final_of = lambda c, f: self.root / self.info["video_path"].format(  # noqa: E731
            video_key=key, chunk_index=c, file_index=f
        )
        episode_mp4 = final_of(chunk, file).with_name(f"episode-{key}.mp4.commit-tmp")
        episode_mp4.parent.mkdir(parents=True, exist_ok=True)
        scratch.append(episode_mp4)
        keep = st.sample_positions(ep.length)
        sampled = [
            st.downsample(f)
            for i, f in enumerate(
                encode_frames(episode_mp4, ep.frames_of(key), fps, self.params.video, ep.length)
            )
            if i in keep
        ]
        if previous is not None and (
            _size_mb(previous) + _size_mb(episode_mp4) >= self.info["video_files_size_in_mb"]
        ):
            chunk, file = next_file(chunk, file, self.info["chunks_size"])
            previous, offset = None, 0.0
        final = final_of(chunk, file)
        tmp = tmp_for(final)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        pairs.append((tmp, final))
        append_video(previous, episode_mp4, tmp, offset)
        duration = float(ep.timestamps[-1]) + 1.0 / fps
        meta = {
            f"videos/{key}/chunk_index": chunk,
            f"videos/{key}/file_index": file,
            f"videos/{key}/from_timestamp": offset,
            f"videos/{key}/to_timestamp": offset + duration,
        }
        return meta, st.image_stats(sampled)

    def _write_metadata(
        self, ep: Episode, index: int, meta: dict[str, Any], ep_stats: dict, pairs: list
    ) -> None:
        root = self.root
        # meta/episodes: previous rows of the current file + this row (or a new file)
        chunk, file = 0, 0
        previous: pa.Table | None = None
        if self.last is not None:
            chunk = int(self.last["meta/episodes/chunk_index"])
            file = int(self.last["meta/episodes/file_index"])
            cur = root / EPISODES_PATH.format(chunk_index=chunk, file_index=file)
            if _size_mb(cur) * (1 + 1 / max(index, 1)) >= self.info["data_files_size_in_mb"]:
                chunk, file = next_file(chunk, file, self.info["chunks_size"])
            else:
                previous = pq.read_table(cur)
        row = {"episode_index": index, "tasks": [ep.task], "length": ep.length, **meta}
        row.update(st.flat_columns(ep_stats))
        row["meta/episodes/chunk_index"] = chunk
        row["meta/episodes/file_index"] = file
        table = pa.Table.from_pylist([row])
        if previous is not None:
            table = pa.concat_tables([previous, table.select(previous.column_names).cast(
                previous.schema)])
        final = root / EPISODES_PATH.format(chunk_index=chunk, file_index=file)
        self._put(pairs, final, lambda p: pq.write_table(table, p, compression="snappy"))

        # tasks
        if ep.task not in self.tasks:
            tasks = {**self.tasks, ep.task: len(self.tasks)}
            df = pd.DataFrame(
                {"task_index": list(tasks.values())}, index=pd.Index(list(tasks), name="task")
            )
            self._put(pairs, root / TASKS_PATH, lambda p: df.to_parquet(p))
        else:
            tasks = self.tasks

        # info + stats
        info = dict(self.info)
        info["total_episodes"] = index + 1
        info["total_frames"] = int(info["total_frames"]) + ep.length
        info["total_tasks"] = len(tasks)
        info["splits"] = {"train": f"0:{index + 1}"}
        self._put(pairs, root / INFO_PATH, lambda p: p.write_text(dumps(info), encoding="utf-8"))
        agg = st.aggregate([self.stats, ep_stats]) if self.stats else ep_stats
        self._put(
            pairs, root / STATS_PATH,
            lambda p: p.write_text(dumps(st.to_jsonable(agg)), encoding="utf-8"),
        )

        # our additions: cameras and per-episode provenance
        cams = dict(self.cameras)
        cams.update({k: c.to_json() for k, c in ep.cameras.items()})
        if cams != self.cameras:
            self._put(pairs, root / CAMERAS_PATH,
                      lambda p: p.write_text(dumps(cams), encoding="utf-8"))
        extra = {
            "episode_index": index,
            "source": ep.source,
            "source_id": ep.source_id,
            "tier": ep.tier,
            "extra": ep.extra,
            "ground_truth": [e.to_json() for e in ep.ground_truth],
        }
        old = (root / EXTRA_PATH).read_bytes() if (root / EXTRA_PATH).exists() else b""
        line = (json.dumps(extra, ensure_ascii=False, default=_jsonable) + "\n").encode()
        self._put(pairs, root / EXTRA_PATH, lambda p: p.write_bytes(old + line))
        last = {k: v for k, v in row.items() if not k.startswith("stats/")}
        self._after = (info, agg, cams, tasks, last)

    def _put(self, pairs: list, final: Path, write) -> None:
        tmp = tmp_for(final)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        pairs.append((tmp, final))
        write(tmp)



def _jsonable(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON-able: {type(o).__name__}")
