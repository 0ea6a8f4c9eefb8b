"""video_folder: videos + caption sidecars become t0/t1 episodes; bad files are quarantined."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.lerobot_fixtures import encode_video, frame
from tests.unit.build.test_bad_inputs import _build
from wallwm.config import load_params
from wallwm.data.lerobot import LeRobotReader
from wallwm.data.sources import SourceError, make_source

ROOT = Path(__file__).resolve().parents[3]


def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "clips"
    d.mkdir()
    for i in range(4):
        encode_video(d / f"clip{i}.mp4", [frame(0, i, t) for t in range(8 + i)])
    (d / "clip0.txt").write_text("a person opens a drawer\n")
    (d / "clip1.json").write_text(json.dumps({"caption": "挥手 👋", "source_url": "x",
                                             "hand_pose": np.zeros((9, 6)).tolist()}))
    # clip2: no sidecar; clip3: truncated
    (d / "clip3.txt").write_text("stacking cups")
    v = d / "clip3.mp4"
    v.write_bytes(v.read_bytes()[:200])
    return d


def test_episodes_and_errors(tmp_path):
    d = _folder(tmp_path)
    p = load_params(ROOT / "params.yaml")
    src = make_source(f"video_folder:path={d},tier=t1_human,size=16x24", p.data)
    assert src.unit_ids() == ["clip0.mp4", "clip1.mp4", "clip2.mp4", "clip3.mp4"]
    ep = src.load("clip1.mp4")
    assert ep.task == "挥手 👋" and ep.tier == "t1_human" and ep.length == 9
    assert ep.videos["observation.images.main"].shape == (9, 16, 24, 3)
    assert ep.features["observation.hand_pose"].shape == (9, 6)
    assert ep.extra["source_url"] == "x"
    with pytest.raises(SourceError, match="no caption sidecar") as e:
        src.load("clip2.mp4")
    assert e.value.check == "caption_missing"
    with pytest.raises(SourceError) as e:
        src.load("clip3.mp4")
    assert e.value.check == "video_unreadable"
    with pytest.raises(ValueError, match="expected HxW"):
        make_source(f"video_folder:path={d},size=big", p.data)
    with pytest.raises(ValueError, match="allowed: t0_web, t1_human"):
        make_source(f"video_folder:path={d},tier=t3_robot_real", p.data)
    f1 = src.fingerprint()
    (d / "clip0.txt").write_text("a person closes a drawer\n")
    assert src.fingerprint() != f1


def test_build_from_video_folder(tmp_path):
    d = _folder(tmp_path)
    plan, res = _build(f"video_folder:path={d},size=16x24", tmp_path / "b")
    assert sorted(res.episodes.source_id) == ["clips/clip0.mp4", "clips/clip1.mp4"]
    assert {q["check"] for q in res.quarantine} == {"caption_missing", "video_unreadable"}
    r = LeRobotReader(tmp_path / "b" / "t0_web" / "video_folder")
    assert r.num_episodes == 2 and set(r.tasks) == {"a person opens a drawer", "挥手 👋"}
    frames = r.decode_frames("observation.images.main", 0, [0, 7])
    assert frames.shape == (2, 16, 24, 3)
