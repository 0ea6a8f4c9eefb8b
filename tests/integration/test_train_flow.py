"""`wallwm train` against the real stack: the MLflow run holds params, data lineage (of the
build trained on), checkpoints, figures, baselines, deployment-condition and sampled figures
and a self-contained model; a killed run resumes from its last checkpoint; a resume with other
params is refused; 2 Ray Train workers keep their checkpoints in the stack's S3 (across two
Ray nodes, killed and resumed from S3: tests/integration/test_ray_multinode.py)."""

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
from tests.unit.distill.world import MICRO

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=320)]  # 2 cores, serial
BIN = Path(sys.executable).parent
# the micro model of the distillation tests: this module checks tracking, lineage, resume and
# Ray Train's storage, not learning (tests/unit/train/test_stages_learn.py)
SMALL = ["--set", f"model.presets.micro={MICRO}", "--set", "model.preset=micro",
         "--set", "train.batch_size=4", "--set", "train.val_every=5", "--set", "train.val_batches=2"]


def _env(stack) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def build(stack, flows_build4, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("trainrepo")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=repo, check=True)
    # the run's shared 4-episode build is in place (the same sources and params, so the same
    # id): `wallwm data build` reuses it (content-addressed) and pins it here
    bid = flows_build4.name
    p = subprocess.run([str(BIN / "wallwm"), "data", "build", "--sources", "sim:episodes=4",
                        "--repo", str(repo)], cwd=ROOT, env=_env(stack), capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert f"build {bid} (reused)" in p.stdout, p.stdout[-2000:]
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


def _manifest_id(build: Path) -> str:
    import json

    return json.loads((build / "manifest.json").read_text())["build_id"]


def test_curriculum_learns_and_is_tracked(stack, build):
    env = {**_env(stack), "WALLWM_DVC_REPO": str(build.parent)}  # this build is the pinned one
    p = subprocess.run([str(BIN / "wallwm"), "train", "--build", str(build), "--run-name",
                        "it-train", *SMALL, "--set", "train.max_steps=10"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    run = _run("it-train")
    import yaml

    pinned = yaml.safe_load((build.parent / "data.dvc").read_text())["outs"][0]["md5"]
    assert run.data.tags["wallwm.build_id"] == _manifest_id(build)
    assert run.data.tags["wallwm.data_dvc_md5"] == pinned
    assert run.data.tags["wallwm.data_pinned"] == "true"
    assert run.data.tags["wallwm.data_validation"] == "passed"
    sha = run.data.tags["mlflow.source.git.commit"]
    assert len(sha) == 40 and "-" not in sha and run.data.tags["wallwm.git_dirty"] in (
        "true", "false")
    assert any(k.startswith("system/") for k in run.data.metrics), "system metrics sampled"
    assert run.data.params["train.optimizer"] == "muon"
    assert run.inputs.dataset_inputs, "the training run links to the dataset build"
    client = mlflow.MlflowClient()
    for stage in ("video", "action"):
        sr = _run(f"it-train/{stage}")
        m = sr.data.metrics  # (whether a stage learns: tests/unit/train/test_stages_learn.py)
        assert {"initial_val_loss", "final_val_loss"} <= set(m), (stage, m)
        arts = {a.path for a in client.list_artifacts(sr.info.run_id, f"checkpoints/{stage}")}
        assert f"checkpoints/{stage}/last.ckpt" in arts and f"checkpoints/{stage}/best.ckpt" in arts
        figs = {a.path for a in client.list_artifacts(sr.info.run_id, "figures")}
        assert {"figures/boundary_frames.png", "figures/actions.png", "figures/loss.png"} <= figs
        assert client.get_metric_history(sr.info.run_id, "train_loss")
        # baselines beside the losses, the deployment condition, sampled figures
        base = {"video": "val/baseline/video_fm_copy_obs",
                "action": "val/baseline/action_fm_mean_var"}[stage]
        assert base in m and "val/sample/copy_obs_psnr" in m, (stage, sorted(m))
    am = _run("it-train/action").data.metrics
    assert {"val/deploy/action_fm", "val/deploy_vs_train_gap", "val/baseline/action_fm_mean_var",
            "val/sample/action_mse_vs_mean_baseline", "val/sample/gripper_acc"} <= set(am)
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         output_format="list")
    assert any(m.source_run_id == run.info.run_id for m in models)


def test_logged_model_is_self_contained_and_takes_any_text_length(stack, build):
    """Loads in a fresh process from the model's own code copy (not this checkout's), needs
    no Lightning, takes 12 text tokens (not only the example's), returns the action mask."""
    uri = _run("it-train").data.tags["wallwm.model_uri"]
    code = f"""
import json, sys, tempfile, numpy as np, mlflow
from pathlib import Path
local = Path(mlflow.artifacts.download_artifacts(artifact_uri={uri!r},
                                                 dst_path=tempfile.mkdtemp()))
assert 'wallwm' not in sys.modules
pm = mlflow.pyfunc.load_model(str(local))
import wallwm
assert str(local) in wallwm.__file__, wallwm.__file__  # the model's own code copy
assert 'lightning' not in sys.modules, 'the logged model pulled in Lightning'
req = (local / 'requirements.txt').read_text()
assert 'torch==2.13.0' in req, req
cfg = pm.unwrap_python_model().model.cfg
B, V, S = 2, cfg.views, cfg.image_size
x = dict(obs=np.zeros((B, V, 3, S, S), np.float32), text_ids=np.ones((B, 12), np.int64),
         text_mask=np.ones((B, 12), bool), state=np.zeros((B, cfg.state_dim), np.float32),
         intrinsics=np.tile(np.eye(3, dtype=np.float32), (B, V, 1, 1)),
         extrinsics=np.tile(np.eye(4, dtype=np.float32), (B, V, 1, 1)),
         calibrated=np.zeros((B, V), bool), abs_time=np.zeros(B, np.float32),
         event_type=np.full(B, -1, np.int64))
out = pm.predict(x, params={{'mode': 'event', 'steps': 2}})
print(json.dumps({{k: list(v.shape) for k, v in out.items()}}))
"""
    env = {k: v for k, v in _env(stack).items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    import json

    shapes = json.loads(p.stdout.strip().splitlines()[-1])
    assert set(shapes) == {"actions", "action_mask", "end_prob"} and shapes["action_mask"][0] == 2


def test_lineage_names_the_build_trained_on(stack, build):
    """Training on a build that data.dvc does not pin: the run names that build and says the
    data is unpinned, instead of copying the md5 of whatever data.dvc pins now."""
    p = _train(stack, build, "it-lineage", "--set", "train.max_steps=2",
               "--set", "train.stages=[video]")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    tags = _run("it-lineage").data.tags
    assert tags["wallwm.build_id"] == _manifest_id(build)
    assert tags["wallwm.data_dvc_md5"] == "unpinned" and tags["wallwm.data_pinned"] == "false"


def test_resume_refuses_other_params_and_a_finished_run_trains_nothing(stack, build):
    before = len(mlflow.search_logged_models(output_format="list",
                                             experiment_ids=[_run("it-lineage").info.experiment_id]))
    p = _train(stack, build, "it-lineage", "--set", "train.max_steps=3",
               "--set", "train.stages=[video]")
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "train.max_steps: 2 -> 3" in p.stdout + p.stderr
    assert "--run-name" in p.stdout + p.stderr
    p = _train(stack, build, "it-lineage", "--set", "train.max_steps=2",
               "--set", "train.stages=[video]")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert "nothing to train" in p.stdout
    after = len(mlflow.search_logged_models(output_format="list",
                                            experiment_ids=[_run("it-lineage").info.experiment_id]))
    assert after == before, "a finished run must not log another model"


def test_killed_run_resumes_from_last_checkpoint(stack, build):
    name = "it-resume"
    ckpt = Path(os.environ["WALLWM_HOME"]) / "checkpoints" / name / "video" / "last.ckpt"
    proc = subprocess.Popen([str(BIN / "wallwm"), "train", "--build", str(build), "--run-name",
                             name, *SMALL, "--set", "train.max_steps=20", "--set",
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
    assert 0 < step_at_kill < 20
    p = _train(stack, build, name, "--set", "train.max_steps=20", "--set", "train.stages=[video]")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert "Restoring states from the checkpoint" in p.stdout + p.stderr
    assert "20 steps" in p.stdout
    run = _run(name)  # the same named run continued, not a second one
    assert run.info.run_id



def test_two_ray_train_workers_keep_checkpoints_in_s3(stack, build):
    p = _train(stack, build, "it-ray", "--set", "train.max_steps=6", "--set", "train.workers=2",
               "--set", "train.stages=[action]")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-5000:]
    sr = _run("it-ray/action")
    assert "final_val_loss" in sr.data.metrics
    from components.storage.s3 import s3_client

    # Ray Train's storage is the stack's S3 (every node reaches it), not a local folder
    keys = [o["Key"] for o in s3_client().list_objects_v2(
        Bucket="wallwm-ray", Prefix=f"train/{sr.info.run_id}-action/").get("Contents", [])]
    assert any(k.endswith("/last.ckpt") for k in keys), keys
    assert not (Path(os.environ["WALLWM_HOME"]) / "ray-train").exists()
