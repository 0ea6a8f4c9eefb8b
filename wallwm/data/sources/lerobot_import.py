"""Import a local LeRobot dataset (v2.0, v2.1 or v3.0) episode by episode, without loss.

Camera keys, fps, task strings, robot_type, every per-frame feature (dtype, width and names as
info.json declares them: a data file that stores something else is quarantined, never cast)
and each episode's length are kept as they are; videos stay lazy (decoded when the episode's
frames are read), after the container's frame rate, duration and frame count are checked
against info.json and the metadata. Calibration can be attached from a ``cameras`` JSON file
({camera key or name: CameraSpec.to_json()}), which ``t3_robot_real`` requires together with
the per-frame flags.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar

import av
import numpy as np

from wallwm.config.schema import DataParams
from wallwm.data.episode import FLAG_KEYS, IMAGE_PREFIX, CameraSpec, Episode
from wallwm.data.lerobot.reader import LeRobotReader
from wallwm.data.lerobot.schema import MetadataError, SchemaError
from wallwm.data.lerobot.video import StreamInfo, VideoError, stream_info
from wallwm.data.sources.base import Source, SourceError, SourceSpec
from wallwm.data.sources.digest import update_with_file

CODE_VERSION = "lerobot_import/2"
RATE_TOLERANCE = 1e-3  # relative: 30 vs 29.97 fps drifts past LeRobot's 1e-4 s in ~90 frames


class LeRobotSource(Source):
    name = "lerobot"
    tiers = ("t2_robot_public", "t3_robot_real")
    options: ClassVar[dict[str, str]] = {
        "path": "local LeRobot dataset folder (required; no hub download)",
        "tier": "t2_robot_public (default) or t3_robot_real (needs cameras= and flags.*)",
        "cameras": "JSON file {camera: {height,width,intrinsics,extrinsics,...}} to attach",
        "episodes": "load at most this many episodes (the first ones)",
    }

    def __init__(self, spec: SourceSpec, params: DataParams):
        super().__init__(spec, params)
        path = spec.get("path")
        if not path:
            raise ValueError(f"source {spec}: option path= is required (a local LeRobot folder)")
        self.root = Path(path).expanduser()
        if not (self.root / "meta" / "info.json").exists():
            raise ValueError(f"source {spec}: {self.root / 'meta' / 'info.json'} does not exist")
        self.tier = spec.get("tier", "t2_robot_public") or "t2_robot_public"
        if self.tier not in self.tiers:
            raise ValueError(f"source {spec}: tier={self.tier!r}; allowed: {', '.join(self.tiers)}")
        cams = spec.get("cameras")
        if self.tier == "t3_robot_real" and not cams:
            raise ValueError(f"source {spec}: tier=t3_robot_real needs cameras=<calibration json>")
        self.cameras_path = Path(cams).expanduser() if cams else None
        limit = spec.get("episodes")
        try:
            self.limit = int(limit) if limit else None
        except ValueError:
            raise ValueError(f"source {spec}: episodes={limit!r} is not an integer") from None
        self._reader: LeRobotReader | None = None
        self._streams: dict[Path, StreamInfo] = {}

    @property
    def reader(self) -> LeRobotReader:
        if self._reader is None:
            self._reader = LeRobotReader(self.root)
        return self._reader

    def _calibration(self) -> dict[str, CameraSpec]:
        if self.cameras_path is None:
            return {}
        try:
            raw = json.loads(self.cameras_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SourceError(f"{self.cameras_path}: unreadable cameras file ({e})",
                              path=str(self.cameras_path), check="cameras") from e
        out = {}
        for k, d in raw.items():
            key = k if k.startswith(IMAGE_PREFIX) else IMAGE_PREFIX + k
            try:
                out[key] = CameraSpec.from_json(key, d)
            except (KeyError, TypeError, ValueError) as e:
                raise SourceError(f"{self.cameras_path}: camera {k!r} invalid ({e})",
                                  path=str(self.cameras_path), field=k, check="cameras") from e
        return out

    def fingerprint(self) -> str:
        """meta/ files and data files by content, videos by size + first/last MiB, options."""
        h = hashlib.sha256(CODE_VERSION.encode())
        h.update(json.dumps(sorted(self.spec.options.items())).encode())
        for sub, whole in (("meta", True), ("data", True), ("videos", False)):
            for p in sorted((self.root / sub).rglob("*")):
                if p.is_file():
                    h.update(str(p.relative_to(self.root)).encode())
                    update_with_file(h, p, whole)
        if self.cameras_path is not None:
            update_with_file(h, self.cameras_path, True)
        return h.hexdigest()

    def unit_ids(self) -> list[str]:
        ids = [str(i) for i in self.reader.episode_indices]
        return ids[: self.limit] if self.limit is not None else ids

    def unit_identity(self, unit_id: str) -> dict[str, str]:
        return {"source_id": f"{self.root.name}/{unit_id}", "tier": self.tier}

    def load(self, unit_id: str) -> Episode:
        r = self.reader
        i = int(unit_id)
        try:
            ep = r.episode(i)
        except SchemaError as e:
            raise SourceError(str(e), path=e.path, field=e.column, value=e.found,
                              check="schema") from e
        except MetadataError as e:
            raise SourceError(str(e), path=e.path, field=e.column, value=i,
                              check="metadata") from e
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise SourceError(str(e), path=str(r.data_path(i)) if i in r.episode_indices else str(r.root),
                              field="episode_index", value=i, check="data") from e
        for key in r.video_keys:
            path, start, end = r.video_segment(key, i)
            if key not in ep.videos:
                raise SourceError(f"{path}: video of episode {i} camera {key!r} is missing",
                                  path=str(path), field=key, value=i, check="video_missing")
            stream = self._stream(path, key, i)
            self._check_rate(stream, path, key, ep.timestamps)
            self._check_derived(stream, path, key, i)
            self._check_frames(stream, path, key, i, ep.length, start, end)
            ep.videos[key] = _checked(ep.videos[key], path, key, i)
        ep.source, ep.tier = self.name, self.tier
        ep.source_id = self.unit_identity(unit_id)["source_id"]
        calib = self._calibration()
        for key, spec in calib.items():
            if key in ep.cameras:
                ep.cameras[key] = spec
        if self.tier == "t3_robot_real":
            self._check_t3(ep, calib)
        return ep

    def _stream(self, path: Path, key: str, i: int) -> StreamInfo:
        """The container's own account of a video (cached: episodes share files)."""
        if path not in self._streams:
            try:
                self._streams[path] = stream_info(path)
            except (av.FFmpegError, IndexError) as e:
                raise SourceError(f"{path}: unreadable video ({e})", path=str(path), field=key,
                                  value=i, check="video_unreadable") from e
        return self._streams[path]

    def _check_rate(self, s: StreamInfo, path: Path, key: str, timestamps: np.ndarray) -> None:
        """The container's frame rate must be info.json's: a video timed at 25 fps under an
        info.json of 10 fps passes a frame count and then misses every timestamp when decoded.
        Of the three accounts (info.json, the container, the parquet timestamps) the odd one
        out is named as the wrong one."""
        fps = float(self.reader.fps)
        if s.fps <= 0 or abs(s.fps - fps) <= RATE_TOLERANCE * fps:
            return
        declared = self.reader.features[key].get("info", {}).get("video.fps")
        d = np.diff(np.asarray(timestamps, np.float64))
        data_fps = 1.0 / float(np.median(d)) if len(d) and np.median(d) > 0 else None

        def near(a: float | None, b: float) -> bool:
            return a is not None and abs(a - b) <= RATE_TOLERANCE * b

        if near(data_fps, s.fps):
            verdict = (f"info.json is wrong: the video and the parquet timestamps agree on "
                       f"{s.fps:g} fps; set fps (and video.fps of {key}) to {s.fps:g} in "
                       "meta/info.json")
        elif near(data_fps, fps):
            verdict = (f"the video is wrong: info.json and the parquet timestamps agree on "
                       f"{fps:g} fps; re-encode the video at {fps:g} fps (one frame per row)")
        else:
            seen = "none" if data_fps is None else f"{data_fps:.3g} fps"
            verdict = (f"info.json, the video and the parquet timestamps ({seen}) all "
                       "disagree; re-export the dataset")
        raise SourceError(
            f"{path}: container {s.fps:g} fps ({s.frames} frames, {s.duration:.3f} s) but "
            f"info.json fps {fps:g} (features.{key}.info video.fps {declared}); {verdict}",
            path=str(path), field=key, value=s.fps, check="video_fps")

    def _check_derived(self, s: StreamInfo, path: Path, key: str, i: int) -> None:
        """Segments derived from lengths (sparse meta/episodes) hold only if the file is as long
        as its episodes add up to; otherwise their offsets are unknown: say which columns."""
        end = self.reader.derived_file_end(key, i)
        if end is None or s.duration <= 0 or abs(s.duration - end) <= 1.0 / self.reader.fps:
            return
        meta = self.reader.meta_path(i)
        col = f"videos/{key}/from_timestamp"
        raise SourceError(
            f"{meta}: columns {col!r} and 'videos/{key}/to_timestamp' are absent, and the "
            f"segments derived from the episode lengths end at {end:.3f} s while {path} lasts "
            f"{s.duration:.3f} s, so where episode {i} starts in it is unknown; add the "
            "from/to timestamps to meta/episodes", path=str(meta), field=col, value=i,
            check="metadata")

    def _check_frames(self, s: StreamInfo, path: Path, key: str, i: int, length: int,
                      start: float, end: float) -> None:
        """Cheap frame-count check from the container, before anything decodes."""
        fps = self.reader.fps
        frames, dur = s.frames, s.duration
        seg = round((end - start) * fps)
        one_per_episode = self.reader.version.startswith("v2")  # v2.x: one mp4 per episode
        held = frames if one_per_episode and frames else seg
        short = dur > 0 and dur + 0.5 / fps < end  # the file ends before the segment does
        if seg != length or held != length or short:
            raise SourceError(
                f"{path}: episode {i} camera {key!r} has {length} rows but its video holds "
                f"{held if not short else round((dur - start) * fps)} frames "
                f"(segment {start:.3f}-{end:.3f}s, file {dur:.3f}s)",
                path=str(path), field=key, value=held, check="frame_count")

    def _check_t3(self, ep: Episode, calib: dict[str, CameraSpec]) -> None:
        missing = [k for k in FLAG_KEYS if k not in ep.features]
        uncal = [k for k in ep.videos if k not in calib or not calib[k].calibrated]
        if missing or uncal:
            raise SourceError(
                f"{self.root}: episode {ep.source_id} is not t3_robot_real: missing flags "
                f"{missing}, uncalibrated cameras {uncal}", path=str(self.root),
                field=",".join(missing + uncal), check="tier")


def _checked(src, path: Path, key: str, i: int):
    """Wrap a lazy frame source so decoding faults surface as SourceError."""

    def gen():
        try:
            yield from src()
        except VideoError as e:
            raise SourceError(str(e), path=str(path), field=key, value=i,
                              check="frame_count" if e.check == "frame_count" else "video") from e
    return gen
