"""LeRobot v2.0 / v2.1 layout: one parquet and one mp4 per episode, JSON-lines metadata.

``meta/episodes.jsonl`` (episode_index, tasks, length), ``meta/tasks.jsonl`` (task_index,
task), ``meta/episodes_stats.jsonl`` (v2.1) or ``meta/stats.json`` (v2.0). Paths use
``episode_chunk = episode_index // chunks_size``; every video starts at t = 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ValueError(f"{path}: line {n} is not JSON ({e})") from e
    return rows


class LegacyLayout:
    """Where v2.x keeps each episode's rows and video segment."""

    def __init__(self, root: Path, info: dict[str, Any]):
        self.root, self.info = root, info
        self.chunks_size = int(info.get("chunks_size", 1000))
        rows = read_jsonl(root / "meta" / "episodes.jsonl")
        self.episodes = pd.DataFrame(rows).sort_values("episode_index").reset_index(drop=True)
        stats_path = root / "meta" / "episodes_stats.jsonl"
        self._stats_path = stats_path if stats_path.exists() else None

    def tasks(self) -> list[str]:
        rows = read_jsonl(self.root / "meta" / "tasks.jsonl")
        out = [""] * (max((int(r["task_index"]) for r in rows), default=-1) + 1)
        for r in rows:
            out[int(r["task_index"])] = r["task"]
        return out

    def table(self, with_stats: bool = False) -> pd.DataFrame:
        df = self.episodes.copy()
        if with_stats and self._stats_path is not None:
            flat = []
            for r in read_jsonl(self._stats_path):
                d = {"episode_index": r["episode_index"]}
                for feat, s in r["stats"].items():
                    d.update({f"stats/{feat}/{k}": v for k, v in s.items()})
                flat.append(d)
            df = df.merge(pd.DataFrame(flat), on="episode_index", how="left")
        return df

    def data_path(self, row: dict[str, Any]) -> Path:
        i = int(row["episode_index"])
        return self.root / self.info["data_path"].format(
            episode_chunk=i // self.chunks_size, episode_index=i
        )

    def video_segment(self, key: str, row: dict[str, Any]) -> tuple[Path, float, float]:
        i = int(row["episode_index"])
        path = self.root / self.info["video_path"].format(
            episode_chunk=i // self.chunks_size, video_key=key, episode_index=i
        )
        return path, 0.0, int(row["length"]) / float(self.info["fps"])
