"""LeRobot reading (hand-laid v3.0 / v2.1, real shared datasets) and the v3.0 writer."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.fixtures.lerobot_fixtures import CAMS, FPS, TASKS, expected_arrays, frame
from tests.unit.data.conftest import shared
from wallwm.config.schema import DataParams
from wallwm.data.episode import CameraSpec, Episode, Event
from wallwm.data.lerobot import LeRobotReader, LeRobotWriter, features_from_episode
from wallwm.data.lerobot import commit as commit_mod
from wallwm.data.lerobot import writer as writer_mod

# ----------------------------------------------------------------------------- hand-laid datasets


@pytest.mark.parametrize("which,lengths", [("v30", (7, 5, 9, 6)), ("v21", (6, 8, 5))])
def test_hand_laid_dataset_reads_back(which, lengths, v30_dataset, v21_dataset):
    root = v30_dataset if which == "v30" else v21_dataset
    r = LeRobotReader(root)
    assert r.fps == FPS and r.num_episodes == len(lengths)
    assert r.tasks == TASKS and r.video_keys == list(CAMS)
    assert r.missing_videos() == []
    for i, n in enumerate(lengths):
        ep = r.episode(i)
        want = expected_arrays(i, n)
        assert ep.length == n and ep.task == TASKS[i % 2] and ep.fps == FPS
        np.testing.assert_allclose(ep.timestamps, np.arange(n) / FPS, atol=1e-6)
        for k, v in want.items():
            np.testing.assert_array_equal(ep.features[k], v)
        assert ep.features["next.done"].dtype == bool
        assert set(ep.videos) == set(CAMS) and set(ep.cameras) == set(CAMS)
        for c, cam in enumerate(CAMS):
            frames = list(ep.frames_of(cam))
            assert len(frames) == n
            for j in (0, n - 1):
                assert np.abs(frames[j].astype(int) - frame(c, i, j)).mean() < 8
    got = r.decode_frames(CAMS[1], len(lengths) - 1, [3, 0])
    assert got.shape == (2, 32, 48, 3)
    assert np.abs(got[0].astype(int) - frame(1, len(lengths) - 1, 3)).mean() < 8


def test_episode_table_and_missing_video(v21_dataset, tmp_path):
    import shutil

    root = shutil.copytree(v21_dataset, tmp_path / "copy")
    (root / "videos/chunk-000" / CAMS[0] / "episode_000001.mp4").unlink()
    r = LeRobotReader(root)
    assert r.missing_videos() == [(1, CAMS[0])]
    ep = r.episode(1)
    assert ep.extra["missing_videos"] == [CAMS[0]] and list(ep.videos) == [CAMS[1]]
    t = r.episode_table(with_stats=True)
    assert list(t["episode_index"]) == [0, 1, 2] and "stats/action/mean" in t.columns


# ----------------------------------------------------------------------------- real datasets


def test_real_g1_v21():
    r = LeRobotReader(shared("G1-policy-train_v2.1"))
    assert r.version == "v2.1" and r.num_episodes == 100 and r.fps == 30
    missing = r.missing_videos()
    assert len(missing) == 98 and {e for e, _ in missing}.isdisjoint({1, 2})
    ep = r.episode(1)
    assert ep.length == 393 and ep.features["observation.state"].shape == (393, 26)
    assert sum(1 for _ in ep.frames_of("observation.images.cam_high")) == 393
    assert r.episode(0).extra["missing_videos"] == ["observation.images.cam_high"]


def test_real_record_test_v30():
    r = LeRobotReader(shared("record-test_v3.0"))
    assert r.num_episodes == 4 and r.tasks == ["Pick the orange cube and place it in the box"]
    assert sum(r.episode(i).length for i in range(4)) == 1492
    assert len(r.missing_videos()) == 8
    ep = r.episode(2)
    assert ep.features["action"].shape[1] == 6 and ep.features["action"].dtype == np.float32


# ----------------------------------------------------------------------------- writer


def smooth(T: int, cam: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32]
    t = np.arange(T)[:, None, None]
    r = (x[None] * 5 + t * 4 + seed * 10) % 256
    g = np.broadcast_to(y[None] * 6 + cam * 40, r.shape)
    b = np.full_like(r, 80 + seed * 20)
    return np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)


def make_episode(seed: int, T: int, task: str = TASKS[0], lazy: bool = False) -> Episode:
    rng = np.random.default_rng(seed)
    vids = {f"observation.images.cam{c}": smooth(T, c, seed) for c in range(2)}
    videos = {k: (lambda v=v: iter(v)) if lazy else v for k, v in vids.items()}
    return Episode(
        source="sim", source_id=f"sim/{seed}", tier="t2_robot_public", task=task, fps=FPS,
        timestamps=np.arange(T) / FPS,
        features={
            "observation.state": rng.normal(size=(T, 5)).astype(np.float32),
            "action": rng.normal(size=(T, 4)).astype(np.float32),
            "flags.teleop": rng.random(T) < 0.5,
        },
        videos=videos,
        cameras={"observation.images.cam0": CameraSpec("observation.images.cam0", 32, 32,
                                                        intrinsics=np.eye(3), extrinsics=np.eye(4)),
                 "observation.images.cam1": CameraSpec("observation.images.cam1", 32, 32)},
        ground_truth=[Event("grasp", 1, 3, caption="grab")],
        extra={"seed": seed},
    ), vids


PARAMS = DataParams(data_files_size_in_mb=1, video_files_size_in_mb=1, chunks_size=2)


def small_params(monkeypatch):
    """Roll files over after ~2 episodes: 1 MB limits, with MB shrunk to a few KB."""
    monkeypatch.setattr(writer_mod, "MB", 6_000)


def write(root, episodes):
    first = episodes[0][0]
    w = LeRobotWriter.create(root, FPS, features_from_episode(first, FPS, PARAMS),
                             robot_type="sawyer", params=PARAMS)
    for ep, _ in episodes:
        w.add_episode(ep)
    w.finalize()
    return w


def check_roundtrip(root, episodes):
    r = LeRobotReader(root)
    assert r.num_episodes == len(episodes)
    for i, (ep, vids) in enumerate(episodes):
        got = r.episode(i)
        assert got.source_id == ep.source_id and got.tier == ep.tier and got.task == ep.task
        assert got.extra["seed"] == ep.extra["seed"] and got.ground_truth == ep.ground_truth
        np.testing.assert_array_equal(got.timestamps, ep.timestamps.astype(np.float32))
        for k, v in ep.features.items():
            np.testing.assert_array_equal(got.features[k], v)
            assert got.features[k].dtype == v.dtype
        for k, v in vids.items():
            frames = np.stack(list(got.frames_of(k)))
            assert frames.shape == v.shape
            assert np.abs(frames.astype(int) - v).mean() < 8
        assert got.cameras["observation.images.cam0"].calibrated
        assert not got.cameras["observation.images.cam1"].calibrated
    return r


def test_writer_roundtrip_rolls_files(tmp_path, monkeypatch):
    small_params(monkeypatch)
    eps = [make_episode(s, 12 + s, TASKS[s % 2], lazy=s % 2 == 1) for s in range(5)]
    root = tmp_path / "ds"
    write(root, eps)
    r = check_roundtrip(root, eps)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 5
    assert info["total_frames"] == sum(e.length for e, _ in eps) and info["total_tasks"] == 2
    assert info["splits"] == {"train": "0:5"}
    assert info["features"]["flags.teleop"] == {"dtype": "bool", "shape": [1], "names": None}
    assert info["features"]["observation.images.cam0"]["info"]["video.codec"] == "av1"
    t = r.episode_table()
    assert t["data/file_index"].nunique() > 1 and t["data/chunk_index"].max() >= 1
    vf = t[["videos/observation.images.cam0/chunk_index",
            "videos/observation.images.cam0/file_index"]].drop_duplicates()
    assert 1 < len(vf) < 5  # several episodes per video file, and rollover
    # timestamps: contiguous segments inside a video file
    for _, g in t.groupby(["videos/observation.images.cam0/chunk_index",
                           "videos/observation.images.cam0/file_index"]):
        starts = g["videos/observation.images.cam0/from_timestamp"].to_numpy()
        ends = g["videos/observation.images.cam0/to_timestamp"].to_numpy()
        assert starts[0] == 0 and np.allclose(starts[1:], ends[:-1])
        np.testing.assert_allclose(ends - starts, g["length"].to_numpy() / FPS)
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.schema.field("observation.state").type.list_size == 5
    assert str(data.schema.field("flags.teleop").type) == "bool"
    assert data.column("index").to_pylist()[0] == 0
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pandas()
    assert list(tasks.index) == TASKS[:2] and list(tasks["task_index"]) == [0, 1]
    stats = json.loads((root / "meta/stats.json").read_text())
    assert np.asarray(stats["observation.images.cam0"]["mean"]).shape == (3, 1, 1)
    assert stats["action"]["count"] == [sum(e.length for e, _ in eps)]
    ep_meta = pq.read_table(sorted((root / "meta/episodes").glob("*/*.parquet"))[0])
    assert "stats/action/q99" in ep_meta.column_names
    assert json.loads((root / "meta/cameras.json").read_text())["observation.images.cam0"][
        "intrinsics"] == np.eye(3).tolist()


def test_append_via_open(tmp_path, monkeypatch):
    small_params(monkeypatch)
    eps = [make_episode(s, 10, TASKS[0]) for s in range(4)]
    root = tmp_path / "ds"
    write(root, eps[:2])
    w = LeRobotWriter.open(root, PARAMS)
    assert w.add_episode(eps[2][0]) == 2 and w.add_episode(eps[3][0]) == 3
    check_roundtrip(root, eps)
    assert LeRobotReader(root).episode_table()["dataset_to_index"].iloc[-1] == 40


def snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_crash_before_publish_leaves_dataset_unchanged(tmp_path, monkeypatch):
    small_params(monkeypatch)
    eps = [make_episode(s, 10) for s in range(3)]
    root = tmp_path / "ds"
    w = write(root, eps[:2])
    before = snapshot(root)

    def boom(*a, **k):
        raise RuntimeError("injected crash in the video encoder")
        yield

    monkeypatch.setattr(writer_mod, "encode_frames", boom)
    with pytest.raises(RuntimeError, match="injected"):
        w.add_episode(eps[2][0])
    assert snapshot(root) == before
    # a hard crash (no cleanup) leaves temp files: open() deletes them
    (root / "data/chunk-000/file-001.parquet.commit-tmp").write_bytes(b"partial")
    LeRobotWriter.open(root, PARAMS)
    assert snapshot(root) == before
    check_roundtrip(root, eps[:2])


def test_crash_mid_rename_rolls_forward(tmp_path, monkeypatch):
    small_params(monkeypatch)
    eps = [make_episode(s, 10) for s in range(3)]
    root = tmp_path / "ds"
    w = write(root, eps[:2])
    calls = {"n": 0}
    real = os.replace

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("injected crash during publish")
        real(src, dst)

    monkeypatch.setattr(commit_mod.os, "replace", flaky)
    with pytest.raises(OSError, match="injected"):
        w.add_episode(eps[2][0])
    monkeypatch.setattr(commit_mod.os, "replace", real)
    assert (root / "meta/.commit.json").exists()
    LeRobotWriter.open(root, PARAMS)
    assert not (root / "meta/.commit.json").exists()
    assert not list(root.rglob("*.commit-tmp"))
    check_roundtrip(root, eps)
    w.add_episode(make_episode(3, 10)[0])  # the old writer finishes the commit, then appends
    assert LeRobotReader(root).num_episodes == 4


def test_writer_rejects_bad_episodes(tmp_path):
    ep, _ = make_episode(0, 6)
    w = LeRobotWriter.create(tmp_path / "ds", FPS, features_from_episode(ep, FPS, PARAMS),
                             params=PARAMS)
    bad, _ = make_episode(1, 6)
    bad.timestamps = bad.timestamps * 1.5
    with pytest.raises(ValueError, match="timestamps"):
        w.add_episode(bad)
    bad, _ = make_episode(1, 6)
    del bad.features["action"]
    with pytest.raises(ValueError, match="features"):
        w.add_episode(bad)
    with pytest.raises(FileExistsError):
        LeRobotWriter.create(tmp_path / "ds", FPS, {}, params=PARAMS)
