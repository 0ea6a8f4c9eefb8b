"""Each bad input planted into an otherwise good source is quarantined with the check that
failed and the value; the good episodes are built, and an interrupted build changes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.fixtures.lerobot_fixtures import CAMS, make_v21
from wallwm.config import load_params
from wallwm.data.build import assemble, load_unit, make_plan
from wallwm.data.build.publish import publish, published_build_id
from wallwm.data.lerobot import LeRobotReader
from wallwm.util.atomic import atomic_dir

ROOT = Path(__file__).resolve().parents[3]
N = 11


def _validator():
    from flows.build_dataset import gx_validator

    return gx_validator


def _ep_parquet(root: Path, ep: int) -> Path:
    return root / f"data/chunk-{ep // 2:03d}/episode_{ep:06d}.parquet"


def _video(root: Path, ep: int, cam: str) -> Path:
    return root / f"videos/chunk-{ep // 2:03d}/{cam}/episode_{ep:06d}.mp4"


def _rewrite(path: Path, fn) -> None:
    t = pq.read_table(path)
    pq.write_table(fn(t), path)


def _set_column(t: pa.Table, name: str, values) -> pa.Table:
    i = t.schema.get_field_index(name)
    return t.set_column(i, name, values)


@pytest.fixture()
def planted(tmp_path) -> tuple[Path, dict[int, str]]:
    """A v2.1 dataset of N episodes with one kind of damage in each of episodes 1..7 and 9."""
    root = make_v21(tmp_path / "ds", lengths=(6,) * N)
    bad: dict[int, str] = {}

    v = _video(root, 1, CAMS[0])  # 1: truncated mp4
    v.write_bytes(v.read_bytes()[: v.stat().st_size // 3])
    bad[1] = "video"

    _rewrite(_ep_parquet(root, 2), lambda t: t.drop_columns(["action"]))  # 2: missing column
    bad[2] = "action"

    def nan_action(t):
        a = np.array(t["action"].to_pylist(), dtype=np.float32)
        a[3, 1] = np.nan
        return _set_column(t, "action", pa.FixedSizeListArray.from_arrays(pa.array(a.ravel()), 3))

    _rewrite(_ep_parquet(root, 3), nan_action)  # 3: NaN action
    bad[3] = "action"

    def inf_action(t):
        a = np.array(t["action"].to_pylist(), dtype=np.float32)
        a[0, 0] = np.inf
        return _set_column(t, "action", pa.FixedSizeListArray.from_arrays(pa.array(a.ravel()), 3))

    _rewrite(_ep_parquet(root, 4), inf_action)  # 4: infinite action
    bad[4] = "action"

    # 5: the video has fewer frames than the parquet
    from tests.fixtures.lerobot_fixtures import encode_video, frame

    encode_video(_video(root, 5, CAMS[1]), [frame(1, 5, i) for i in range(4)])
    bad[5] = "frame"

    _video(root, 6, CAMS[1]).unlink()  # 6: a camera in info.json with no video
    bad[6] = "video"

    def backwards(t):
        ts = np.array(t["timestamp"].to_pylist(), dtype=np.float32)
        ts[2], ts[3] = ts[3], ts[2]
        return _set_column(t, "timestamp", pa.array(ts))

    _rewrite(_ep_parquet(root, 7), backwards)  # 7: non-monotonic timestamps
    bad[7] = "timestamp"

    # 9: a duplicate of episode 8 (same content, another index): the later copy is rejected
    for cam in CAMS:
        shutil.copy(_video(root, 8, cam), _video(root, 9, cam))
    t8 = pq.read_table(_ep_parquet(root, 8))
    t9 = pq.read_table(_ep_parquet(root, 9))
    dup = t8
    for col in ("episode_index", "index"):
        dup = _set_column(dup, col, t9[col])
    pq.write_table(dup, _ep_parquet(root, 9))
    meta = root / "meta" / "episodes.jsonl"
    lines = [json.loads(x) for x in meta.read_text().splitlines()]
    lines[9]["tasks"] = lines[8]["tasks"]
    meta.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    bad[9] = "unique"
    return root, bad


def _build(spec: str, staging: Path, sets=()):
    p = load_params(ROOT / "params.yaml", sets=list(sets))
    plan = make_plan([spec], p.data)
    pj = plan.params.model_dump_json()
    results = (load_unit((u.spec, pj, u.unit_id, u.key)) for u in plan.units)
    return plan, assemble(plan, results, staging, _validator())


def test_each_bad_input_is_quarantined_and_the_rest_is_built(planted, tmp_path):
    root, bad = planted
    plan, res = _build(f"lerobot:path={root}", tmp_path / "build")
    q = {int(x["unit_id"]): x for x in res.quarantine}
    assert set(q) == set(bad), json.dumps(res.quarantine, indent=1, default=str)
    for ep, word in bad.items():
        entry = q[ep]
        text = json.dumps(entry, default=str).lower()
        assert word in text, (ep, entry)
        assert entry.get("rule") or entry.get("path"), entry  # names what failed, and where
    good = sorted(int(k.split(":")[1]) for k in res.episodes.episode_key)
    assert good == [0, 8, 10]
    counts = res.manifest["counts"]
    assert counts["episodes"] == 3 and counts["quarantined"] == len(bad)
    assert q[3]["value"] == "NaN or inf" and q[4]["value"] == "NaN or inf"
    lines = (tmp_path / "build" / "quarantine.jsonl").read_text().splitlines()
    assert len(lines) == len(bad)
    # the built dataset is LeRobot v3.0 and reads back
    ds = tmp_path / "build" / "t2_robot_public" / "lerobot"
    r = LeRobotReader(ds)
    assert r.info["codebase_version"] == "v3.0" and r.num_episodes == 3
    assert (tmp_path / "build" / "gx").is_dir()
    docs = list((tmp_path / "build" / "gx").rglob("index.html"))
    assert docs, "GX Data Docs are written into the build folder"


def test_non_orthonormal_calibration_is_rejected(tmp_path):
    root = make_v21(tmp_path / "ds", lengths=(6, 6))
    R = np.eye(4)
    R[0, 0] = 2.0  # a scaled axis: not a rotation
    cams = {c: {"height": 32, "width": 48, "intrinsics": np.eye(3).tolist(),
                "extrinsics": R.tolist(), "extrinsics_feature": None} for c in CAMS}
    (tmp_path / "cams.json").write_text(json.dumps(cams))
    with pytest.raises(RuntimeError, match="no episode passed validation") as e:
        _build(f"lerobot:path={root},cameras={tmp_path / 'cams.json'}", tmp_path / "b")
    assert "rotation_orthonormal_error" in str(e.value)


def test_interrupted_build_leaves_previous_build_and_output(tmp_path, monkeypatch):
    root = make_v21(tmp_path / "ds", lengths=(6, 6, 6))
    builds = tmp_path / "builds"
    plan, res = _build(f"lerobot:path={root}", builds / "first.tmp")
    (builds / "first.tmp").rename(builds / plan.build_id)
    out = tmp_path / "data"
    publish(builds / plan.build_id, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    import importlib

    asm = importlib.import_module("wallwm.data.build.assemble")

    def crash(*a, **k):
        raise KeyboardInterrupt("killed mid-build")

    monkeypatch.setattr(asm, "_manifest", crash)
    with pytest.raises(KeyboardInterrupt), atomic_dir(builds / "second") as staging:
        _build(f"lerobot:path={root}", staging, sets=["data.val_fraction=0.5"])
    assert not (builds / "second").exists()
    assert sorted(p.name for p in builds.iterdir()) == [plan.build_id]
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and published_build_id(out) == plan.build_id
