"""Video encode / append / decode with PyAV, the way LeRobot v3.0 stores videos.

Many episodes share one mp4 per camera: an episode occupies ``[from_timestamp, to_timestamp)``
of the file and its frame i is shown at ``from_timestamp + timestamp[i]``. An mp4 cannot be
appended in place, so :func:`append_video` writes a *new* file holding the previous packets
(remuxed, not re-encoded) followed by the new episode's packets shifted by the offset; the
caller renames it over the old file inside its commit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole config per file otherwise

import av
import numpy as np

from wallwm.config.schema import VideoParams

LIBSVTAV1_DEFAULT_PRESET = 12  # LeRobot's default preset for libsvtav1
DEFAULT_TOLERANCE_S = 1e-4  # LeRobot's default timestamp tolerance

logging.getLogger("libav").setLevel(logging.ERROR)


class VideoError(ValueError):
    """A video that cannot be read or does not hold the frames its metadata promises."""

    def __init__(self, message: str, *, path: str = "", check: str = "video"):
        super().__init__(message)
        self.path, self.check = path, check


def codec_options(video: VideoParams) -> dict[str, str]:
    """Encoder options as LeRobot's VideoEncoderConfig.get_codec_options builds them."""
    opts = {"g": str(video.gop), "crf": str(video.crf)}
    if video.codec == "libsvtav1":
        opts["preset"] = str(LIBSVTAV1_DEFAULT_PRESET)
    return opts


def video_info(height: int, width: int, fps: int, video: VideoParams) -> dict[str, object]:
    """The ``info`` block LeRobot 0.6 records for a video feature (stream + encoder fields).

    ``video.is_depth_map`` is the pre-0.6 spelling, kept so older readers see it too.
    """
    codec = {"libsvtav1": "av1", "h264": "h264", "hevc": "hevc"}[video.codec]
    info: dict[str, object] = {
        "video.height": height,
        "video.width": width,
        "video.codec": codec,
        "video.pix_fmt": video.pix_fmt,
        "video.is_depth_map": False,
        "video.fps": int(fps),
        "video.channels": 3,
        "has_audio": False,
        "video.g": video.gop,
        "video.crf": video.crf,
        "is_depth_map": False,
    }
    if video.codec == "libsvtav1":
        info["video.preset"] = LIBSVTAV1_DEFAULT_PRESET
    return info


def encode_frames(
    path: Path, frames: Iterable[np.ndarray], fps: int, video: VideoParams, expect: int
) -> Iterator[np.ndarray]:
    """Encode uint8 (H, W, 3) frames into a fresh mp4 at ``path``; yields each frame it encoded
    (so the caller can sample stats while streaming). Raises if the count differs from ``expect``.
    """
    n = 0
    with av.open(str(path), "w", format="mp4") as out:
        stream = None
        for frame in frames:
            arr = np.ascontiguousarray(frame)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise VideoError(
                    f"{path}: frame {n} has dtype {arr.dtype} shape {arr.shape}; "
                    "expected uint8 (H, W, 3)",
                    path=str(path),
                    check="frame_shape",
                )
            if stream is None:
                stream = out.add_stream(video.codec, rate=int(fps), options=codec_options(video))
                stream.width, stream.height = arr.shape[1], arr.shape[0]
                stream.pix_fmt = video.pix_fmt
                stream.time_base = Fraction(1, int(fps))
            vf = av.VideoFrame.from_ndarray(arr, format="rgb24")
            vf.pts = n
            vf.time_base = Fraction(1, int(fps))
            for packet in stream.encode(vf):
                out.mux(packet)
            n += 1
            yield arr
        if stream is None:
            raise VideoError(f"{path}: no frames to encode", path=str(path), check="frame_count")
        for packet in stream.encode():
            out.mux(packet)
    if n != expect:
        raise VideoError(
            f"{path}: {n} video frames but the episode has {expect} timestamps",
            path=str(path),
            check="frame_count",
        )


def append_video(previous: Path | None, episode: Path, out_path: Path, offset_s: float) -> None:
    """Write ``out_path`` = packets of ``previous`` (if any) + packets of ``episode`` shifted by
    ``offset_s`` seconds. Stream copy only: nothing is re-encoded."""
    sources = ([previous] if previous is not None else []) + [episode]
    with av.open(str(out_path), "w", format="mp4", options={"movflags": "faststart"}) as out:
        ostream = None
        for i, src in enumerate(sources):
            with av.open(str(src)) as inp:
                istream = inp.streams.video[0]
                if ostream is None:
                    ostream = out.add_stream_from_template(istream, opaque=True)
                    ostream.time_base = istream.time_base
                shift = round(offset_s / istream.time_base) if i == len(sources) - 1 and previous else 0
                for packet in inp.demux(istream):
                    if packet.dts is None:
                        continue
                    packet.pts = None if packet.pts is None else packet.pts + shift
                    packet.dts += shift
                    packet.stream = ostream
                    out.mux(packet)


@dataclass(frozen=True)
class StreamInfo:
    """What a container says about its first video stream (no decoding)."""

    frames: int  # 0 when the container does not record it
    fps: float  # average frame rate; 0.0 when unknown
    duration: float  # seconds; 0.0 when unknown


def stream_info(path: Path) -> StreamInfo:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        rate = s.average_rate or s.guessed_rate
        duration = float(s.duration * s.time_base) if s.duration else float(c.duration or 0) / 1e6
        return StreamInfo(int(s.frames), float(rate) if rate else 0.0, duration)


def probe(path: Path) -> tuple[int, int, float]:
    """(frames, time_base denominator, duration seconds) of the first video stream."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        duration = float(s.duration * s.time_base) if s.duration else float(c.duration or 0) / 1e6
        return int(s.frames), int(s.time_base.denominator), duration


def _nearest(
    path: Path, targets: Sequence[float], tolerance_s: float
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (target position, rgb frame) for sorted ``targets`` (seconds in the file), seeking to
    the keyframe before the first and decoding forward only as far as the last."""
    if not targets:
        return
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base
        c.seek(max(0, round(targets[0] / tb) - 1), backward=True, any_frame=False, stream=stream)
        k = 0
        prev: tuple[float, av.VideoFrame] | None = None
        for frame in c.decode(stream):
            if frame.pts is None:
                continue
            ts = float(frame.pts * tb)
            while k < len(targets):
                t = targets[k]
                if ts < t - tolerance_s:
                    break  # frame is before the target: decode further
                best = (ts, frame)
                if prev is not None and abs(prev[0] - t) < abs(ts - t):
                    best = prev
                if abs(best[0] - t) > tolerance_s:
                    raise VideoError(
                        f"{path}: no frame within {tolerance_s}s of t={t:.6f}s "
                        f"(nearest {best[0]:.6f}s)",
                        path=str(path),
                        check="timestamp",
                    )
                yield k, best[1].to_ndarray(format="rgb24")
                k += 1
            if k == len(targets):
                return
            prev = (ts, frame)
        if k < len(targets):
            raise VideoError(
                f"{path}: video ends before t={targets[k]:.6f}s "
                f"({len(targets) - k} of {len(targets)} requested frames missing)",
                path=str(path),
                check="frame_count",
            )


def iter_frames(path: Path, times_s: Sequence[float], tolerance_s: float) -> Iterator[np.ndarray]:
    """Frames at increasing times ``times_s`` (seconds in the file), streamed."""
    for _, arr in _nearest(path, list(times_s), tolerance_s):
        yield arr


def decode_at(path: Path, times_s: Sequence[float], tolerance_s: float) -> np.ndarray:
    """Frames at arbitrary times (any order), as uint8 (N, H, W, 3)."""
    order = np.argsort(np.asarray(times_s, np.float64), kind="stable")
    sorted_t = [float(times_s[i]) for i in order]
    out: list[np.ndarray | None] = [None] * len(sorted_t)
    for k, arr in _nearest(path, sorted_t, tolerance_s):
        out[int(order[k])] = arr
    return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)
