"""A hand-edited boundary survives a rebuild: the edit file is an input of the build (it changes
the build id) and the automatic pass never moves a human boundary."""

from __future__ import annotations

import json

import pytest

from tests.unit.build.test_bad_inputs import _build

pytest.importorskip("metaworld")


def _actions(path, source_id):
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [r for r in rows if r["source_id"] == source_id and r["level"] == "action"]


def test_human_boundary_survives_rebuild(tmp_path):
    spec = "sim:episodes=1,tasks=pick-place-v3,perturb_prob=0"
    plan1, _ = _build(spec, tmp_path / "a")
    ann = tmp_path / "a" / "t3_robot_real" / "sim" / "meta" / "annotations.jsonl"
    rows = [json.loads(x) for x in ann.read_text().splitlines()]
    sid = rows[0]["source_id"]
    acts = _actions(ann, sid)
    assert len(acts) >= 3 and all(r["origin"] == "auto" for r in acts)

    # a reviewer moves the end of the second action (and so the start of the third) by 2 frames
    edited = dict(acts[1], end=acts[1]["end"] + 2, origin="human", signal="human")
    human = tmp_path / "human.jsonl"
    human.write_text(json.dumps(edited) + "\n")

    plan2, _ = _build(spec, tmp_path / "b", sets=[f"data.annotate.human_file={human}"])
    assert plan2.build_id != plan1.build_id  # the edit file is part of the build's identity
    after = _actions(tmp_path / "b" / "t3_robot_real" / "sim" / "meta" / "annotations.jsonl", sid)
    mine = [r for r in after if r["origin"] == "human"]
    assert len(mine) == 1 and (mine[0]["start"], mine[0]["end"]) == (edited["start"], edited["end"])
    nxt = next(r for r in after if r["start"] == edited["end"])  # neighbours follow the edit
    assert nxt["origin"] == "auto"
    starts = sorted(r["start"] for r in after)
    assert starts[0] == 0 and len(set(starts)) == len(starts)  # still a tiling of the episode

    # an unchanged edit file gives the same build again (reuse), a missing one a clear error
    plan3, _ = _build(spec, tmp_path / "c", sets=[f"data.annotate.human_file={human}"])
    assert plan3.build_id == plan2.build_id
    with pytest.raises(ValueError, match="data.annotate.human_file"):
        _build(spec, tmp_path / "d", sets=[f"data.annotate.human_file={tmp_path / 'nope.jsonl'}"])
