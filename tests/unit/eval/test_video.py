"""Rollout videos decode back as H.264 MP4 at the dataset rate, captions drawn."""

from __future__ import annotations

import av
import numpy as np
import pytest

from wallwm.eval.video import BANNER, compose, episode_video, write_mp4


def test_episode_video_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    frames = [({"corner": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
                "gripperPOV": np.full((64, 64, 3), 200, np.uint8)}, "reach toward the red puck",
               "judged: 0/3 done, at reach") for _ in range(12)]
    p = episode_video(tmp_path / "v.mp4", frames, ["corner", "gripperPOV"], 20.0, "expert", 4)
    with av.open(str(p)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and float(s.average_rate) == 20.0
        got = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(got) == 12 and got[0].shape == (64 * 4 + BANNER, 2 * 64 * 4, 3)
    # the right view is flat grey 200 and survives the codec; the banner carries light text
    assert abs(float(got[0][BANNER + 20 :, 300:].mean()) - 200) < 4
    assert got[0][:BANNER].max() > 150
    assert not list(tmp_path.glob(".*"))  # no temp file left


def test_compose_text_and_errors(tmp_path):
    img = {"a": np.zeros((8, 8, 3), np.uint8)}
    blank = compose(img, ["a"], ["", ""], 8)
    text = compose(img, ["a"], ["some caption", "judged"], 8)
    assert blank[:BANNER].max() < 50 < text[:BANNER].max()
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(tmp_path / "x.mp4", [], 20)
    with pytest.raises(ValueError, match="even sides"):
        write_mp4(tmp_path / "x.mp4", [np.zeros((9, 8, 3), np.uint8)], 20)
