"""`wallwm data build --sources sim:episodes=N` against the real stack: a LeRobot v3.0 build
that reads back frame for frame, GX passing, data.dvc updated and pushed, reuse on a second
identical call, and the lineage in MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT
from wallwm.config import load_params
from wallwm.data.lerobot import LeRobotReader
from wallwm.data.sources import make_source

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=140)]  # 2 cores, serial
WALLWM = str(Path(sys.executable).parent / "wallwm")
EPISODES = 4  # one per task


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh git + DVC repository to receive data.dvc (the project's own stays untouched)."""
    r = tmp_path_factory.mktemp("repo")
    subprocess.run(["git", "init", "-q"], cwd=r, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=r, check=True)
    return r


def _build(repo: Path, *extra: str) -> str:
    # a WALLWM_HOME of this module's own (the stack's addresses come from the environment):
    # whether the first build is new must not depend on which test of this process built the
    # same sources before (tests/integration/test_train_flow.py builds them too)
    env = {**os.environ, "WALLWM_HOME": str(repo.with_name(repo.name + "-home"))}
    proc = subprocess.run(
        [WALLWM, "data", "build", "--sources", f"sim:episodes={EPISODES}", "--repo", str(repo),
         "--set", "data.workers=2", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def test_sim_build_reads_back_is_pinned_and_reused(stack, repo):
    started_ms = int(time.time() * 1000)  # other tests of this process may log the same build
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
                              filter_string=f"tags.`wallwm.build_id` = '{manifest['build_id']}'"
                              f" and attributes.start_time >= {started_ms}")
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


def test_build_where_every_episode_fails_keeps_its_records(stack, repo, tmp_path, prefect):
    """Nothing accepted: the quarantine and a failed manifest land in builds/failed/<id>/ and in
    the data build's MLflow run, the message says where, and Prefect does not retry."""
    import shutil

    import mlflow
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from tests.fixtures.lerobot_fixtures import make_v21

    root = make_v21(tmp_path / "novideo", lengths=(6, 6))
    shutil.rmtree(root / "videos")
    proc = subprocess.run(
        [WALLWM, "data", "build", "--sources", f"lerobot:path={root}", "--repo", str(repo),
         "--set", "data.workers=1"],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    failed = Path(os.environ["WALLWM_HOME"]) / "builds" / "failed"
    (kept,) = [d for d in failed.iterdir() if d.is_dir()]
    assert "no episode passed validation" in out and f"{kept}/" in out, out[-3000:]
    assert not (failed.parent / kept.name).exists()  # a failed build is never a build
    rows = [json.loads(x) for x in (kept / "quarantine.jsonl").read_text().splitlines()]
    assert [(r["check"], r["source_id"], r["tier"]) for r in rows] == [
        ("video_missing", f"novideo/{i}", "t2_robot_public") for i in range(2)]
    manifest = json.loads((kept / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["build_id"] == kept.name

    (run,) = mlflow.search_runs(experiment_names=["wallwm"], output_format="list",
                                filter_string=f"tags.`wallwm.build_id` = '{kept.name}'")
    assert run.data.tags["wallwm.build_status"] == "failed" and run.info.run_id in out
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "build")}
    assert {"build/manifest.json", "build/quarantine.jsonl"} <= names

    runs = prefect.read_task_runs(task_run_filter=TaskRunFilter(
        name=TaskRunFilterName(like_="materialize-build"),
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.FAILED]))))
    assert [r.run_count for r in runs] == [1]  # a deterministic failure is not retried
