"""Whole builds of third-party LeRobot data (issue 19, items 8-11, 13): no numeric loss across
data files, metadata kept, a build where everything fails leaves its records, a 0-frame
episode fails the length rule, and identity is content and source, not a folder name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.fixtures.lerobot_fixtures import (
    CAMS,
    expected_arrays,
    fixed_list,
    make_v21,
    make_v30,
    replace_column,
    v30_data_file,
)
from tests.unit.build.test_bad_inputs import ROOT, _validator
from wallwm.config import load_params
from wallwm.data.build import BuildFailedError, assemble, keep_failed, load_unit, make_plan
from wallwm.data.lerobot import LeRobotReader

LENGTHS = (7, 5, 9, 6)


def _build(specs: list[str], staging: Path):
    p = load_params(ROOT / "params.yaml")
    plan = make_plan(specs, p.data)
    pj = plan.params.model_dump_json()
    results = (load_unit((u.spec, pj, u.unit_id, u.key)) for u in plan.units)
    return plan, assemble(plan, results, staging, _validator())


def test_mixed_dtype_files_lose_nothing_and_keep_metadata(tmp_path):
    root = make_v30(tmp_path / "mixed")
    t = pq.read_table(v30_data_file(root, 0))  # episodes 0-2 store action as int64
    replace_column(v30_data_file(root, 0), "action",
                   fixed_list(np.rint(np.array(t["action"].to_pylist()) * 10).astype(np.int64)))
    _, res = _build([f"lerobot:path={root}"], tmp_path / "b")
    q = {x["unit_id"]: x for x in res.quarantine}
    assert sorted(q) == ["0", "1", "2"], res.quarantine
    for x in q.values():
        assert x["check"] == "schema" and x["field"] == "action" and x["value"] == "int64[3]"
        assert x["path"] == str(v30_data_file(root, 0))
        assert x["source_id"].startswith("mixed/") and x["tier"] == "t2_robot_public"
    ds = tmp_path / "b" / "t2_robot_public" / "lerobot"
    back = LeRobotReader(ds).episode(0)
    np.testing.assert_array_equal(back.features["action"],
                                  expected_arrays(3, LENGTHS[3])["action"])  # not truncated
    info = json.loads((ds / "meta/info.json").read_text(encoding="utf-8"))
    assert info["robot_type"] == "so101_follower"
    assert info["features"]["action"]["dtype"] == "float32"
    assert info["features"]["action"]["names"] == ["x", "y", "z"]
    assert info["features"]["observation.state"]["names"] == [["a", "b", "c", "d"]]


def test_every_episode_failing_leaves_quarantine_and_manifest(tmp_path):
    root = make_v21(tmp_path / "novideo", lengths=(6, 6))
    shutil.rmtree(root / "videos")
    staging = tmp_path / "staging"
    with pytest.raises(BuildFailedError) as e:
        _build([f"lerobot:path={root}"], staging)
    err = e.value
    assert "no episode passed validation" in str(err) and "video_missing" in str(err)
    assert err.records == staging
    dest = keep_failed(staging, tmp_path / "builds" / "failed" / err.build_id)
    rows = [json.loads(x) for x in (dest / "quarantine.jsonl").read_text().splitlines()]
    assert [r["unit_id"] for r in rows] == ["0", "1"]
    for r in rows:  # load failures carry the episode's identity and tier
        assert r["check"] == "video_missing" and r["tier"] == "t2_robot_public"
        assert r["source_id"] == f"novideo/{r['unit_id']}"
    m = json.loads((dest / "manifest.json").read_text())
    assert m["status"] == "failed" and m["build_id"] == err.build_id
    assert m["counts"]["episodes"] == 0 and m["counts"]["quarantined"] == 2
    assert m["counts"]["quarantined_by_check"] == {"video_missing": 2}
    assert m["sources"][0]["spec"] == f"lerobot:path={root}"
    assert m["files"]["quarantine.jsonl"]["bytes"] == (dest / "quarantine.jsonl").stat().st_size
    # picklable with its fields (Prefect may carry a task's exception across processes)
    import pickle

    again = pickle.loads(pickle.dumps(err))
    assert again.build_id == err.build_id and str(again) == str(err)


def test_failed_build_is_not_retried():
    from prefect.states import Failed

    from flows.build_dataset import materialize, plan_build

    err = BuildFailedError("no episode passed validation", build_id="x", records=None,
                           manifest={})
    for t in (materialize, plan_build):
        assert t.retries >= 1
        assert t.retry_condition_fn(t, None, Failed(data=err)) is False
        assert t.retry_condition_fn(t, None, Failed(data=OSError("disk hiccup"))) is True
    assert plan_build.retry_condition_fn(plan_build, None, Failed(data=ValueError("spec"))) \
        is False


def test_zero_frame_episode_fails_the_length_rule(tmp_path):
    root = make_v30(tmp_path / "empty", lengths=(7, 0, 9, 6))
    _, res = _build([f"lerobot:path={root}"], tmp_path / "b")
    (q,) = res.quarantine
    assert q["unit_id"] == "1", q
    assert q["check"] == "validation" and q["rule"] == "episodes.between:length" and q["value"] == 0
    assert sorted(res.episodes.episode_key) == ["0:0", "0:2", "0:3"]


def test_same_folder_name_different_content_is_not_a_duplicate(tmp_path):
    a = make_v21(tmp_path / "a" / "ds", lengths=(6, 6))
    b = make_v21(tmp_path / "b" / "ds", lengths=(6, 6), seed=7)  # same name, other content
    c = shutil.copytree(a, tmp_path / "c" / "ds")  # same name, same content: a real duplicate
    _, res = _build([f"lerobot:path={x}" for x in (a, b, c)], tmp_path / "out")
    assert sorted(res.episodes.episode_key) == ["0:0", "0:1", "1:0", "1:1"], res.quarantine
    assert len(res.quarantine) == 2
    for x in res.quarantine:
        assert x["source"] == f"lerobot:path={c}"
        assert x["rule"] == "episodes.unique:content_sha256", x
    assert sorted(res.episodes.dataset) == ["t2_robot_public/lerobot0"] * 2 + [
        "t2_robot_public/lerobot1"] * 2
    assert set(CAMS) <= set(LeRobotReader(tmp_path / "out/t2_robot_public/lerobot1").video_keys)
