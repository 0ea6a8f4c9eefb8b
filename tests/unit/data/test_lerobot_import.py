"""The `lerobot` source: lossless import, missing / short videos, tiers, fingerprints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.fixtures.lerobot_fixtures import CAMS, FPS, TASKS, encode_video, expected_arrays, frame
from tests.unit.data.conftest import shared
from wallwm.config.schema import DataParams
from wallwm.data.sources import SourceError, make_source


def src(path, **opts):
    spec = ",".join([f"path={path}"] + [f"{k}={v}" for k, v in opts.items()])
    return make_source(f"lerobot:{spec}", DataParams())


@pytest.mark.parametrize("which", ["v30", "v21"])
def test_import_is_lossless(which, v30_dataset, v21_dataset):
    root = v30_dataset if which == "v30" else v21_dataset
    s = src(root)
    ids = s.unit_ids()
    assert ids == [str(i) for i in range(len(ids))]
    for uid in ids:
        ep = s.load(uid)
        i = int(uid)
        assert ep.source == "lerobot" and ep.source_id == f"{root.name}/{i}"
        assert ep.tier == "t2_robot_public" and ep.task == TASKS[i % 2] and ep.fps == FPS
        for k, v in expected_arrays(i, ep.length).items():
            np.testing.assert_array_equal(ep.features[k], v)
        assert set(ep.videos) == set(CAMS)
        frames = list(ep.frames_of(CAMS[0]))
        assert len(frames) == ep.length
        assert np.abs(frames[-1].astype(int) - frame(0, i, ep.length - 1)).mean() < 8
    assert len(src(root, episodes=2).unit_ids()) == 2


def test_missing_and_short_videos(v21_dataset, tmp_path):
    root = shutil.copytree(v21_dataset, tmp_path / "broken")
    (root / "videos/chunk-000" / CAMS[1] / "episode_000000.mp4").unlink()
    short = root / "videos/chunk-000" / CAMS[0] / "episode_000001.mp4"
    encode_video(short, [frame(0, 1, i) for i in range(5)])  # parquet has 8 rows
    s = src(root)
    with pytest.raises(SourceError) as e:
        s.load("0")
    assert e.value.check == "video_missing" and e.value.field == CAMS[1]
    assert e.value.path.endswith("episode_000000.mp4")
    with pytest.raises(SourceError) as e:
        s.load("1")
    assert e.value.check == "frame_count" and e.value.field == CAMS[0]
    assert s.load("2").length == 5


def test_t3_needs_calibration_and_flags(v30_dataset, tmp_path):
    with pytest.raises(ValueError, match="cameras"):
        src(v30_dataset, tier="t3_robot_real")
    cams = tmp_path / "cams.json"
    cams.write_text(json.dumps({
        "front": {"height": 32, "width": 48, "intrinsics": np.eye(3).tolist(),
                  "extrinsics": np.eye(4).tolist()},
    }))
    with pytest.raises(SourceError) as e:
        src(v30_dataset, tier="t3_robot_real", cameras=cams).load("0")
    assert e.value.check == "tier" and "flags.teleop" in str(e.value)
    ep = src(v30_dataset, cameras=cams).load("0")  # t2 with calibration attached
    assert ep.cameras[CAMS[0]].calibrated and not ep.cameras[CAMS[1]].calibrated
    with pytest.raises(ValueError, match="tier"):
        src(v30_dataset, tier="t0_web")
    with pytest.raises(ValueError, match="unknown option"):
        make_source(f"lerobot:path={v30_dataset},repo_id=x", DataParams())


def test_fingerprint_tracks_content_and_options(v21_dataset, tmp_path):
    root = shutil.copytree(v21_dataset, tmp_path / "fp")
    a = src(root).fingerprint()
    assert src(root).fingerprint() == a
    assert src(root, episodes=1).fingerprint() != a
    p = root / "meta/tasks.jsonl"
    p.write_text(p.read_text(encoding="utf-8").replace("bitte", "danke"), encoding="utf-8")
    assert src(root).fingerprint() != a


def test_real_datasets_import():
    g1 = src(shared("G1-policy-train_v2.1"))
    assert len(g1.unit_ids()) == 100
    ep = g1.load("1")
    assert ep.source_id == "G1-policy-train_v2.1/1" and ep.length == 393
    assert ep.task == "Pick up the yellow bottle on the table."
    with pytest.raises(SourceError) as e:
        g1.load("0")
    assert e.value.check == "video_missing" and e.value.field == "observation.images.cam_high"
    rec = src(shared("record-test_v3.0"))
    assert rec.unit_ids() == ["0", "1", "2", "3"]
    with pytest.raises(SourceError) as e:
        rec.load("3")
    assert e.value.check == "video_missing"
