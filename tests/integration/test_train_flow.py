"""`wallwm train` against the real stack: the curriculum lowers the validation loss, the MLflow
run holds params, data lineage, checkpoints, figures and the model; a killed run resumes from
its last checkpoint; the same training runs on 2 Ray Train workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
SMALL = ["--set", "train.batch_size=4", "--set", "train.val_every=5"]


def _env(stack) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def build(stack, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("trainrepo")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=repo, check=True)
    p = subprocess.run([str(BIN / "wallwm"), "data", "build", "--sources", "sim:episodes=6",
                        "--repo", str(repo)], cwd=ROOT, env=_env(stack), capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return repo / "data"


def _train(stack, build: Path, name: str, *extra: str, timeout: int = 900):
    return subprocess.run([str(BIN / "wallwm"), "train", "--build", str(build), "--run-name", name,
                           *SMALL, *extra], cwd=ROOT, env=_env(stack), capture_output=True,
                          text=True, timeout=timeout)


def _run(name: str):
    runs = mlflow.search_runs(experiment_names=["wallwm"], output_format="list",
                              filter_string=f"tags.`wallwm.train_run_name` = '{name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_curriculum_learns_and_is_tracked(stack, build):
    p = _train(stack, build, "it-train", "--set", "train.max_steps=30")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    run = _run("it-train")
    assert run.data.tags["wallwm.build_id"] and run.data.tags["wallwm.data_dvc_md5"]
    assert run.data.params["train.optimizer"] == "muon"
    assert run.inputs.dataset_inputs, "the training run links to the dataset build"
    client = mlflow.MlflowClient()
    for stage in ("video", "action"):
        sr = _run(f"it-train/{stage}")
        m = sr.data.metrics
        assert m["final_val_loss"] < m["initial_val_loss"], (stage, m)
        arts = {a.path for a in client.list_artifacts(sr.info.run_id, f"checkpoints/{stage}")}
        assert f"checkpoints/{stage}/last.ckpt" in arts and f"checkpoints/{stage}/best.ckpt" in arts
        figs = {a.path for a in client.list_artifacts(sr.info.run_id, "figures")}
        assert {"figures/boundary_frames.png", "figures/actions.png", "figures/loss.png"} <= figs
        assert client.get_metric_history(sr.info.run_id, "train_loss")
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         output_format="list")
    assert any(m.source_run_id == run.info.run_id for m in models)


def test_killed_run_resumes_from_last_checkpoint(stack, build):
    name = "it-resume"
    ckpt = Path(os.environ["WALLWM_HOME"]) / "checkpoints" / name / "video" / "last.ckpt"
    proc = subprocess.Popen([str(BIN / "wallwm"), "train", "--build", str(build), "--run-name",
                             name, *SMALL, "--set", "train.max_steps=40", "--set",
                             "train.stages=[video]"], cwd=ROOT, env=_env(stack),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 600
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    assert ckpt.exists(), "no checkpoint before the kill"
    os.killpg(proc.pid, signal.SIGKILL)  # an interruption, not a clean stop
    proc.wait()
    import torch

    step_at_kill = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < step_at_kill < 40
    p = _train(stack, build, name, "--set", "train.max_steps=40", "--set", "train.stages=[video]")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert "Restoring states from the checkpoint" in p.stdout + p.stderr
    assert "40 steps" in p.stdout
    run = _run(name)  # the same named run continued, not a second one
    assert run.info.run_id


def test_two_ray_train_workers(stack, build):
    p = _train(stack, build, "it-ray", "--set", "train.max_steps=6", "--set", "train.workers=2",
               "--set", "train.stages=[action]")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-5000:]
    sr = _run("it-ray/action")
    assert "final_val_loss" in sr.data.metrics
