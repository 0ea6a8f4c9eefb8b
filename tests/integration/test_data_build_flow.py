"""`wallwm data build --sources sim:episodes=N` against the real stack: a LeRobot v3.0 build
that reads back frame for frame, GX passing, data.dvc updated and pushed, reuse on a second
identical call, and the lineage in MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT
from wallwm.config import load_params
from wallwm.data.lerobot import LeRobotReader
from wallwm.data.sources import make_source

pytestmark = pytest.mark.integration
WALLWM = str(Path(sys.executable).parent / "wallwm")
EPISODES = 6


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh git + DVC repository to receive data.dvc (the project's own stays untouched)."""
    r = tmp_path_factory.mktemp("repo")
    subprocess.run(["git", "init", "-q"], cwd=r, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=r, check=True)
    return r


def _build(repo: Path, *extra: str) -> str:
    env = dict(os.environ)
    proc = subprocess.run(
        [WALLWM, "data", "build", "--sources", f"sim:episodes={EPISODES}", "--repo", str(repo),
         "--set", "data.workers=2", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def test_sim_build_reads_back_is_pinned_and_reused(stack, repo):
    out = _build(repo)
    assert "(new)" in out, out
    pin = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    assert pin["path"] == "data" and pin["md5"].endswith(".dir")
    data = repo / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["validation"]["success"] is True
    assert manifest["counts"]["episodes"] + manifest["counts"]["quarantined"] == EPISODES
    for rel, meta in list(manifest["files"].items())[:50]:
        assert (data / rel).stat().st_size == meta["bytes"]

    # every accepted episode reads back frame for frame against a fresh simulation
    p = load_params(ROOT / "params.yaml")
    src = make_source(f"sim:episodes={EPISODES}", p.data)
    reader = LeRobotReader(data / "t3_robot_real" / "sim")
    assert reader.info["codebase_version"] == "v3.0"
    extra = [json.loads(x) for x in
             (data / "t3_robot_real/sim/meta/episodes_extra.jsonl").read_text().splitlines()]
    for i in range(reader.num_episodes):
        unit = extra[i]["source_id"].split("sim/", 1)[-1] if "sim/" in extra[i]["source_id"] \
            else extra[i]["source_id"]
        ref = src.load(unit)
        got = reader.episode(i)
        assert got.length == ref.length and got.task == ref.task
        np.testing.assert_allclose(got.timestamps, ref.timestamps, atol=1e-4)
        for k in ("observation.state", "action"):
            np.testing.assert_array_equal(got.features[k], ref.features[k])
        for cam in ref.videos:
            frames = reader.decode_frames(cam, i, list(range(ref.length)))
            assert frames.shape == ref.videos[cam].shape
            err = np.abs(frames.astype(float) - ref.videos[cam].astype(float)).mean()
            assert err < 12, (cam, err)  # AV1 is lossy; a wrong frame is off by far more

    # pushed to the default (local) remote, and a second identical call reuses the build
    md5_before = pin["md5"]
    out2 = _build(repo)
    assert "(reused)" in out2
    assert yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"] == md5_before

    # the MLflow run holds the manifest, quarantine, GX results and the dataset entry
    import mlflow

    runs = mlflow.search_runs(experiment_names=["wallwm"], output_format="list",
                              filter_string=f"tags.`wallwm.build_id` = '{manifest['build_id']}'")
    assert len(runs) == 2
    run = runs[0]
    assert run.data.tags["wallwm.data_dvc_md5"] == md5_before
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "build")}
    assert {"build/manifest.json", "build/quarantine.jsonl"} <= names
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.digest


def test_s3_remote_push(stack, repo):
    out = _build(repo, "--set", "data.dvc_remote=s3")
    assert "pushed to s3" in out
    from components.storage import s3_client

    keys = s3_client().list_objects_v2(Bucket="wallwm-dvc").get("KeyCount", 0)
    assert keys > 0
