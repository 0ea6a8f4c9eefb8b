"""What a third-party LeRobot dataset declares against what it holds (issue 19, items 8, 9, 11,
12): dtype, width and names of every data file's columns, sparse v3.0 episode metadata, and the
video container's frame rate. A mismatch is an error naming the file, column, declared and found
value, never a cast; metadata (names, robot_type) survives the import and the write."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.fixtures.lerobot_fixtures import (
    CAMS,
    FPS,
    V30_META,
    drop_meta_columns,
    encode_video,
    expected_arrays,
    fixed_list,
    frame,
    make_v21,
    make_v30,
    reencode_v30_video,
    replace_column,
    v30_data_file,
    v30_video_file,
)
from tests.unit.data.conftest import shared
from tests.unit.data.test_lerobot_format import make_episode
from wallwm.config.schema import DataParams
from wallwm.data.lerobot import LeRobotReader, LeRobotWriter, features_from_episode
from wallwm.data.sources import SourceError, make_source

LENGTHS = (7, 5, 9, 6)


def src(path, **opts):
    spec = ",".join([f"path={path}"] + [f"{k}={v}" for k, v in opts.items()])
    return make_source(f"lerobot:{spec}", DataParams())


def _edit_info(root, fn) -> None:
    p = root / "meta/info.json"
    info = json.loads(p.read_text(encoding="utf-8"))
    fn(info)
    p.write_text(json.dumps(info, indent=4, ensure_ascii=False), encoding="utf-8")


# ----------------------------------------------------------------------------- item 8: schema


def test_a_file_storing_another_dtype_is_named_not_cast(tmp_path):
    root = make_v30(tmp_path / "mixed")
    # file-000 (episodes 0-2) stores `action` as int64; info.json and file-001 say float32
    t = pq.read_table(v30_data_file(root, 0))
    ints = np.rint(np.array(t["action"].to_pylist()) * 10).astype(np.int64)
    replace_column(v30_data_file(root, 0), "action", fixed_list(ints))
    s = src(root)
    with pytest.raises(SourceError) as e:
        s.load("1")
    err = e.value
    assert err.check == "schema" and err.field == "action"
    assert err.path == str(v30_data_file(root, 0)) and err.value == "int64[3]"
    msg = str(err)
    assert "data/chunk-000/file-000.parquet" in msg and "'action'" in msg
    assert "declared float32[3]" in msg and "found int64[3]" in msg
    ep = s.load("3")  # file-001 holds what info.json declares: imported exactly
    np.testing.assert_array_equal(ep.features["action"], expected_arrays(3, LENGTHS[3])["action"])
    assert ep.features["action"].dtype == np.float32


@pytest.mark.parametrize("layout", ["fixed_size_list", "list"])
def test_a_state_wider_than_declared_is_named(tmp_path, layout):
    """info.json declares float32[17]; the file holds 41 doubles per row."""
    root = make_v30(tmp_path / "wide")
    _edit_info(root, lambda info: info["features"]["observation.state"].update(
        shape=[17], names=[f"j{i}" for i in range(17)]))
    rng = np.random.default_rng(0)
    for f in (0, 1):
        n = pq.read_metadata(v30_data_file(root, f)).num_rows
        wide = rng.normal(size=(n, 41))  # float64
        col = fixed_list(wide) if layout == "fixed_size_list" else pa.array(wide.tolist())
        replace_column(v30_data_file(root, f), "observation.state", col)
    with pytest.raises(SourceError) as e:
        src(root).load("3")
    err = e.value
    assert err.check == "schema" and err.field == "observation.state"
    assert err.path == str(v30_data_file(root, 1))
    msg = str(err)
    assert "declared float32[17]" in msg and "found float64[41]" in msg, msg


def test_names_that_do_not_fit_the_shape_are_named(tmp_path):
    root = make_v30(tmp_path / "names")
    _edit_info(root, lambda info: info["features"]["action"].update(names=["x", "y"]))
    with pytest.raises(SourceError) as e:
        src(root).load("0")
    assert e.value.check == "schema" and e.value.field == "action"
    assert "2 names" in str(e.value) and "[3]" in str(e.value)


def test_a_declared_column_missing_from_a_file_is_named(tmp_path):
    root = make_v30(tmp_path / "gone")
    t = pq.read_table(v30_data_file(root, 1))
    pq.write_table(t.drop_columns(["next.done"]), v30_data_file(root, 1))
    s = src(root)
    with pytest.raises(SourceError) as e:
        s.load("3")
    assert e.value.check == "schema" and e.value.field == "next.done"
    assert "found no such column" in str(e.value)
    assert s.load("0").length == LENGTHS[0]


def test_writer_never_casts_to_the_first_episodes_dtype(tmp_path):
    first, _ = make_episode(0, 6)
    first.features["action"] = np.rint(first.features["action"] * 10).astype(np.int64)
    second, _ = make_episode(1, 6)  # float32 actions with fractions
    root = tmp_path / "ds"
    w = LeRobotWriter.create(root, FPS, features_from_episode(first, FPS, DataParams()),
                             params=DataParams())
    w.add_episode(first)
    with pytest.raises(ValueError, match=r"'action' has dtype float32 but the dataset's is int64"):
        w.add_episode(second)
    assert LeRobotReader(root).num_episodes == 1  # nothing half-written, nothing truncated


# ----------------------------------------------------------------------------- item 9: metadata


def test_names_and_robot_type_survive_import_and_write(v30_dataset, tmp_path):
    ep = src(v30_dataset).load("0")
    assert ep.robot_type == "so101_follower"
    assert ep.feature_names["action"] == ["x", "y", "z"]
    assert ep.feature_names["observation.state"] == [["a", "b", "c", "d"]]
    feats = features_from_episode(ep, FPS, DataParams())
    assert feats["action"]["names"] == ["x", "y", "z"]
    out = tmp_path / "out"
    w = LeRobotWriter.create(out, FPS, feats, robot_type=ep.robot_type, params=DataParams())
    w.add_episode(ep)
    info = json.loads((out / "meta/info.json").read_text(encoding="utf-8"))
    assert info["robot_type"] == "so101_follower"
    assert info["features"]["observation.state"]["names"] == [["a", "b", "c", "d"]]
    back = LeRobotReader(out).episode(0)
    assert back.robot_type == "so101_follower" and back.feature_names == ep.feature_names


def test_writer_rejects_other_names_for_a_feature(tmp_path):
    ep, _ = make_episode(0, 6)
    ep.feature_names = {"action": ["a0", "a1", "a2", "a3"]}
    w = LeRobotWriter.create(tmp_path / "ds", FPS, features_from_episode(ep, FPS, DataParams()),
                             params=DataParams())
    w.add_episode(ep)
    other, _ = make_episode(1, 6)
    other.feature_names = {"action": ["a3", "a2", "a1", "a0"]}  # same width, other joints
    with pytest.raises(ValueError, match="names"):
        w.add_episode(other)


def test_real_record_test_keeps_names_and_robot_type():
    root = shared("record-test_v3.0")
    info = json.loads((root / "meta/info.json").read_text(encoding="utf-8"))
    ep = LeRobotReader(root).episode(0)
    assert ep.robot_type == "so101_follower"
    feats = features_from_episode(ep, 30, DataParams())
    for k in ("action", "observation.state"):
        assert feats[k]["names"] == info["features"][k]["names"]
        assert feats[k]["names"][-1] == "gripper.pos"


def test_real_g1_nested_names_pass_the_schema_check():
    s = src(shared("G1-policy-train_v2.1"))
    ep = s.load("1")
    assert ep.robot_type == "Unitree_G1_Inspire"
    assert len(ep.feature_names["action"][0]) == 26


# ----------------------------------------------------------------------------- item 11: sparse


def test_sparse_v30_meta_derives_segments_from_lengths(tmp_path):
    root = make_v30(tmp_path / "sparse")
    full = LeRobotReader(root)
    want = {(i, c): full.video_segment(c, i) for i in range(4) for c in CAMS}
    drop_meta_columns(root, tuple(f"videos/{c}/{x}_timestamp" for c in CAMS
                                  for x in ("from", "to")))
    r = LeRobotReader(root)
    for (i, c), (path, a, b) in want.items():
        got = r.video_segment(c, i)
        assert got[0] == path and got[1] == pytest.approx(a) and got[2] == pytest.approx(b)
    ep = src(root).load("1")  # second episode of a shared file: derived offset 0.7 s
    frames = list(ep.frames_of(CAMS[1]))
    assert len(frames) == LENGTHS[1]
    assert np.abs(frames[-1].astype(int) - frame(1, 1, LENGTHS[1] - 1)).mean() < 8


def test_sparse_v30_meta_that_cannot_locate_a_video_names_file_and_column(tmp_path):
    root = make_v30(tmp_path / "nofile")
    drop_meta_columns(root, (f"videos/{CAMS[1]}/",))
    with pytest.raises(SourceError) as e:
        src(root).load("0")
    err = e.value
    assert err.check == "metadata" and err.path == str(root / V30_META)
    assert err.field == f"videos/{CAMS[1]}/chunk_index"
    assert "meta/episodes/chunk-000/file-000.parquet" in str(err)


def test_derived_segments_that_disagree_with_the_video_are_named(tmp_path):
    """Without from/to timestamps the segments come from the lengths; a video that is longer
    than those lengths add up to means they cannot be trusted: say so, naming the columns."""
    root = make_v30(tmp_path / "gap")
    drop_meta_columns(root, tuple(f"videos/{c}/{x}_timestamp" for c in CAMS
                                  for x in ("from", "to")))
    encode_video(v30_video_file(root, CAMS[0], 0),
                 [frame(0, 0, i) for i in range(LENGTHS[0] + LENGTHS[1] + 4)])
    with pytest.raises(SourceError) as e:
        src(root).load("0")
    err = e.value
    assert err.check == "metadata" and err.path == str(root / V30_META)
    assert err.field == f"videos/{CAMS[0]}/from_timestamp"
    assert "1.600" in str(err) and "1.200" in str(err)


# ----------------------------------------------------------------------------- item 12: fps


def test_video_at_another_container_rate_is_caught_up_front(tmp_path):
    root = make_v30(tmp_path / "fps25")
    n = reencode_v30_video(root, 0, 0, 25, (0, 1), LENGTHS)  # same 1.2 s, at 25 fps
    s = src(root)
    with pytest.raises(SourceError) as e:
        s.load("0")
    err = e.value
    path = v30_video_file(root, CAMS[0], 0)
    assert err.check == "video_fps" and err.path == str(path) and err.field == CAMS[0]
    msg = str(err)
    assert str(path) in msg and f"{n} frames" in msg and "1.200 s" in msg
    assert "container 25 fps" in msg and "info.json fps 10" in msg
    assert "the video is wrong" in msg
    assert s.load("2").length == LENGTHS[2]  # file-001 is fine


def test_info_fps_wrong_when_video_and_timestamps_agree(tmp_path):
    root = make_v21(tmp_path / "v21")
    n = 6
    for c, cam in enumerate(CAMS):  # one frame per row, at 25 fps; timestamps at 25 fps too
        encode_video(root / f"videos/chunk-000/{cam}/episode_000000.mp4",
                     [frame(c, 0, i) for i in range(n)], fps=25)
    replace_column(root / "data/chunk-000/episode_000000.parquet", "timestamp",
                   pa.array((np.arange(n) / 25).astype(np.float32)))
    with pytest.raises(SourceError) as e:
        src(root).load("0")
    msg = str(e.value)
    assert e.value.check == "video_fps"
    assert "container 25 fps" in msg and "info.json fps 10" in msg
    assert "info.json is wrong" in msg, msg
