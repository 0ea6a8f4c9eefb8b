"""Rollout videos: both cameras side by side, the policy's caption and the judged event on top.

MP4 with H.264 (`libx264`, yuv420p, faststart) through PyAV's wheel, which carries the encoder.
Why MP4/H.264 and not GIF: MLflow 3.17's artifact view plays `.mp4` in a `<video>` element
(its viewer maps mp4/mov/mkv/webm/avi to a video player), and H.264 in yuv420p is the one
codec every browser decodes; the build's AV1 would need AV1 decode support in the viewer's
browser. Frames are upscaled by an integer factor (nearest) so 64-px renders stay legible.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BANNER = 34  # px of caption strip above the images (two lines)


def compose(images: dict[str, np.ndarray], cameras: Sequence[str], lines: Sequence[str],
            scale: int = 4) -> np.ndarray:
    """(H*scale + BANNER, W*scale*V, 3) uint8: the views in `cameras` order, text on top;
    both sides even (yuv420p)."""
    row = np.concatenate([images[c] for c in cameras], axis=1)
    row = row.repeat(scale, axis=0).repeat(scale, axis=1)
    h, w = row.shape[:2]
    canvas = Image.new("RGB", (w + w % 2, h + BANNER + (h + BANNER) % 2), (16, 16, 16))
    canvas.paste(Image.fromarray(np.ascontiguousarray(row)), (0, BANNER))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    for i, text in enumerate(lines[:2]):
        draw.text((4, 3 + 15 * i), _fit(draw, text, font, w - 8), fill=(240, 240, 240),
                  font=font)
    return np.asarray(canvas)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def write_mp4(path: Path | str, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Encode (H, W, 3) uint8 frames (all one size, even sides) as H.264 MP4, atomically."""
    import av

    if not frames:
        raise ValueError(f"write_mp4 {path}: no frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"write_mp4 {path}: frames are {w}x{h}; yuv420p needs even sides")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".mp4")
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": "23", "preset": "veryfast"}
            for f in frames:
                if f.shape[:2] != (h, w):
                    raise ValueError(f"write_mp4 {path}: frame {f.shape} differs from "
                                     f"{(h, w, 3)}")
                for pkt in stream.encode(av.VideoFrame.from_ndarray(
                        np.ascontiguousarray(f, np.uint8), format="rgb24")):
                    out.mux(pkt)
            for pkt in stream.encode():
                out.mux(pkt)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def episode_video(path: Path | str, video: Sequence[tuple[dict[str, np.ndarray], str, str]],
                  cameras: Sequence[str], fps: float, title: str, scale: int = 4) -> Path:
    """One episode's recorded frames (EpisodeResult.video) -> an MP4 at the dataset rate."""
    frames = [compose(imgs, cameras, [f"{title} | {caption}", judged], scale)
              for imgs, caption, judged in video]
    return write_mp4(path, frames, fps)
