"""A folder of videos with caption sidecars -> t0_web (video + caption) or t1_human episodes.

Each `<name>.mp4` (also .mkv/.webm/.mov) needs a sidecar `<name>.txt` (the caption) or
`<name>.json` (`{"caption": "...", "hand_pose": [[...], ...]}`; `hand_pose`/`body_pose` give
t1 pose tracks, one row per frame). Frames are decoded once, optionally resized to one size
so the videos can share a LeRobot dataset, and time-stamped at the stream's frame rate.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar

import av
import numpy as np

from wallwm.data.episode import IMAGE_PREFIX, CameraSpec, Episode
from wallwm.data.sources.base import Source, SourceError, SourceSpec
from wallwm.data.sources.digest import file_digest

CODE_VERSION = "video_folder/1"
EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov")


class VideoFolderSource(Source):
    name: ClassVar[str] = "video_folder"
    tiers: ClassVar[tuple[str, ...]] = ("t0_web", "t1_human")
    options: ClassVar[dict[str, str]] = {
        "path": "folder of videos with .txt/.json caption sidecars (required)",
        "tier": "t0_web (default) or t1_human",
        "size": "HxW to resize every video to (default: keep; mixed sizes then fail to write)",
        "camera": "camera name for the video key (default: main)",
        "max_seconds": "cut each video after this many seconds (default: no cut)",
    }

    def __init__(self, spec: SourceSpec, params):
        super().__init__(spec, params)
        path = spec.get("path")
        if not path:
            raise ValueError(f"source {spec}: option path=<folder> is required")
        self.root = Path(path).expanduser()
        if not self.root.is_dir():
            raise ValueError(f"source {spec}: path {self.root} is not a folder")
        self.tier = spec.get("tier", "t0_web") or "t0_web"
        if self.tier not in self.tiers:
            raise ValueError(f"source {spec}: tier {self.tier!r}; allowed: {', '.join(self.tiers)}")
        size = spec.get("size")
        self.size: tuple[int, int] | None = None
        if size:
            try:
                h, w = (int(x) for x in size.lower().split("x"))
            except ValueError:
                raise ValueError(f"source {spec}: size {size!r}: expected HxW, e.g. 96x128") from None
            self.size = (h, w)
        self.camera = spec.get("camera", "main") or "main"
        ms = spec.get("max_seconds")
        self.max_seconds = float(ms) if ms else None

    def _videos(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.suffix.lower() in EXTENSIONS)

    def _sidecar(self, video: Path) -> Path | None:
        for ext in (".json", ".txt"):
            if (p := video.with_suffix(ext)).exists():
                return p
        return None

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{CODE_VERSION}|{self.spec}".encode())
        for v in self._videos():
            h.update(str(v.relative_to(self.root)).encode())
            h.update(file_digest(v, whole=False).encode())
            if side := self._sidecar(v):
                h.update(file_digest(side, whole=True).encode())
        return h.hexdigest()

    def unit_ids(self) -> list[str]:
        return [str(v.relative_to(self.root)) for v in self._videos()]

    def _caption(self, video: Path) -> tuple[str, dict]:
        side = self._sidecar(video)
        if side is None:
            raise SourceError(f"{video}: no caption sidecar ({video.stem}.txt or .json)",
                              path=str(video), field="caption", check="caption_missing")
        if side.suffix == ".txt":
            return side.read_text(encoding="utf-8").strip(), {}
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except ValueError as e:
            raise SourceError(f"{side}: not valid JSON ({e})", path=str(side), field="caption",
                              check="caption_unreadable") from None
        cap = meta.get("caption") if isinstance(meta, dict) else None
        if not isinstance(cap, str):
            raise SourceError(f"{side}: needs a string field `caption`", path=str(side),
                              field="caption", value=type(cap).__name__, check="caption_missing")
        return cap.strip(), meta

    def _decode(self, video: Path) -> tuple[np.ndarray, float]:
        frames = []
        try:
            with av.open(str(video)) as c:
                stream = c.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                if not rate:
                    raise SourceError(f"{video}: no frame rate in the stream", path=str(video),
                                      field="fps", check="video_unreadable")
                fps = float(rate)
                limit = int(self.max_seconds * fps) if self.max_seconds else None
                for fr in c.decode(stream):
                    if self.size:
                        fr = fr.reformat(width=self.size[1], height=self.size[0])
                    frames.append(fr.to_ndarray(format="rgb24"))
                    if limit and len(frames) >= limit:
                        break
        except SourceError:
            raise
        except (av.error.FFmpegError, OSError) as e:
            raise SourceError(f"{video}: unreadable video ({e})", path=str(video),
                              field=IMAGE_PREFIX + self.camera, check="video_unreadable") from None
        if len(frames) < 2:
            raise SourceError(f"{video}: {len(frames)} decodable frame(s)", path=str(video),
                              field=IMAGE_PREFIX + self.camera, value=len(frames),
                              check="video_unreadable")
        return np.stack(frames), round(fps)

    def unit_identity(self, unit_id: str) -> dict[str, str]:
        return {"source_id": f"{self.root.name}/{unit_id}", "tier": self.tier}

    def load(self, unit_id: str) -> Episode:
        video = self.root / unit_id
        if not video.is_file():
            raise SourceError(f"{video}: no such video", path=str(video), check="video_missing")
        caption, meta = self._caption(video)
        frames, fps = self._decode(video)
        n, h, w = frames.shape[:3]
        features: dict[str, np.ndarray] = {}
        if self.tier == "t1_human":
            for key in ("hand_pose", "body_pose"):
                if key in meta:
                    a = np.asarray(meta[key], dtype=np.float32)
                    if a.ndim != 2 or len(a) != n:
                        raise SourceError(
                            f"{video.with_suffix('.json')}: {key} has shape {a.shape}; expected "
                            f"({n}, D), one row per video frame", path=str(video), field=key,
                            value=list(a.shape), check="frame_count")
                    features[f"observation.{key}"] = a
        key = IMAGE_PREFIX + self.camera
        return Episode(
            source=self.name, source_id=self.unit_identity(unit_id)["source_id"], tier=self.tier,
            task=caption, fps=float(fps), timestamps=np.arange(n) / fps, features=features,
            videos={key: frames}, cameras={key: CameraSpec(key, h, w)},
            extra={"file": unit_id, **{k: v for k, v in meta.items()
                                       if k not in ("caption", "hand_pose", "body_pose")}},
        )
