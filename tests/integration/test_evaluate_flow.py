"""`wallwm eval` against the real stack: a tiny model logged into a training run (as
`wallwm train` logs it) is evaluated offline on its build and in the closed loop beside the
expert and zero policies; ONE evaluation run holds the report, metrics.json, plots and videos
with the gate metrics, linked to the training run; the retrain's hook with the same settings
returns that run again; a model whose cameras and embodiment do not fit is refused with exit
code 4, bad input with 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from tests.conftest import ROOT
from tests.unit.distill.world import MICRO
from wallwm.config import load_params

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=90)]  # 2 cores, serial
CLI = [sys.executable, "-m", "flows.cli_eval"]
SMALL = ["--episodes", "1", "--set", "eval.tasks=[button-press-topdown-v3]",
         "--set", "eval.conditions=[new_layout]", "--set", "eval.max_steps=100",
         "--set", "eval.workers=1", "--set", "eval.denoise_steps=2", "--set", "eval.videos=1"]
GATES = ("closed_loop.success_rate", "closed_loop.success_ci_low",
         "closed_loop.success_ci_high", "closed_loop.task_progress", "offline.action_mse",
         "offline.action_mse_vs_mean_baseline", "offline.psnr_gain_db")


@pytest.fixture(scope="module")
def build(stack, flows_build4) -> Path:
    """The run's 4-episode sim build, where the flows keep builds."""
    return flows_build4


def _log_model(build: Path, name: str, contract_patch: dict | None = None) -> tuple[str, str]:
    """An untrained WALL-WM (the micro preset of the distillation tests: this module checks
    the flow, not the model) with the build's statistics, logged into a new training run as
    flows/train.py does; returns (training run id, model URI)."""
    from components.tracking import start_run
    from components.tracking.training import log_model
    from wallwm.eval.spec import ModelContract
    from wallwm.model.config import WallWMConfig
    from wallwm.model.wallwm import WallWM
    from wallwm.train.stats import train_split_stats

    p = load_params(ROOT / "params.yaml", sets=[f"model.presets.micro={MICRO}",
                                                "model.preset=micro"])
    cfg = WallWMConfig.from_params(p)
    torch.manual_seed(0)
    m = WallWM(cfg).eval()
    s = train_split_stats(build, cfg.action_dim, cfg.state_dim)
    m.norm.set_stats(s["action_mean"], s["action_std"], s["state_mean"], s["state_std"])
    contract = ModelContract.from_dataset(build / "t3_robot_real" / "sim", cfg.views,
                                          p.data.annotate.vocabulary).to_json()
    contract.update(contract_patch or {})
    bid = json.loads((build / "manifest.json").read_text())["build_id"]
    with start_run("wallwm", name, tags={"wallwm.stage": "train", "wallwm.build_id": bid,
                                         "wallwm.train_run_name": name},
                   log_system_metrics=False) as run:
        uri = log_model(m, build / "tokenizer.json", contract, {
            "build_id": bid, "dvc_md5": "unpinned", "train_run": run.info.run_id,
            "train_run_name": name})
        mlflow.set_tag("wallwm.model_uri", uri)
    return run.info.run_id, uri


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=timeout)


def test_eval_writes_one_linked_evaluation_run(stack, build):
    train_run, uri = _log_model(build, "it-eval")
    p = _cli("--run", train_run, *SMALL)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    assert "evaluation run: http" in p.stdout and "closed-loop success rate" in p.stdout
    for policy in ("model", "expert", "zero"):
        assert f"│ {policy}" in p.stdout, p.stdout
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["wallwm"], output_format="list",
                              filter_string=f"tags.`wallwm.train_run` = '{train_run}'")
    assert len(runs) == 1
    ev = runs[0]
    assert ev.info.run_id in p.stdout and ev.info.status == "FINISHED"
    tags = ev.data.tags
    assert tags["wallwm.stage"] == "evaluate" and tags["wallwm.model_uri"] == uri
    assert tags["mlflow.parentRunId"] == train_run  # listed under its training run
    assert tags["wallwm.build_id"] == build.name
    m = ev.data.metrics
    assert set(GATES) <= set(m), sorted(m)
    assert m["closed_loop.expert.button-press.new_layout.success_rate"] == 1.0  # the ceiling
    assert m["closed_loop.zero.button-press.new_layout.success_rate"] == 0.0  # the floor
    assert m["closed_loop.success_ci_low"] <= m["closed_loop.success_rate"] <= m[
        "closed_loop.success_ci_high"]
    top = {a.path for a in client.list_artifacts(ev.info.run_id)}
    assert {"report.md", "report.html", "metrics.json", "plots", "videos"} <= top
    plots = {Path(a.path).name for a in client.list_artifacts(ev.info.run_id, "plots")}
    assert {"closed_loop_success.png", "closed_loop_progress.png", "offline_tiers.png",
            "offline_event_clusters.png", "offline_unified_clusters.png"} <= plots
    videos = [a.path for a in client.list_artifacts(ev.info.run_id, "videos")]
    assert len(videos) == 3 and all(v.endswith(".mp4") for v in videos)  # one per policy
    d = Path(mlflow.artifacts.download_artifacts(run_id=ev.info.run_id,
                                                 artifact_path="metrics.json"))
    metrics = json.loads(d.read_text())
    assert set(GATES) == set(metrics["headline"])
    assert metrics["headline"]["offline.action_mse"] == m["offline.action_mse"]
    assert {c["policy"] for c in metrics["closed_loop"]["cells"]} == {"model", "expert", "zero"}
    assert set(metrics["offline"]["modes"]) == {"event", "unified"}
    html = Path(mlflow.artifacts.download_artifacts(run_id=ev.info.run_id,
                                                    artifact_path="report.html")).read_text()
    assert html.count("data:image/png;base64,") == 5 and "<script" not in html

    # the retrain's hook with the same settings: the same run comes back (one run per model)
    code = ("import json, sys; from flows.evaluate import evaluate_after_training; "
            "from wallwm.config import load_params; "
            "out = evaluate_after_training(json.loads(sys.argv[1]), "
            "load_params(sets=json.loads(sys.argv[2])), 1); print('RESULT=' + json.dumps(out))")
    again = subprocess.run(
        [sys.executable, "-c", code, json.dumps({"mlflow_run_id": train_run, "model_uri": uri}),
         json.dumps([s for s in SMALL[2:] if s != "--set"])], cwd=ROOT, capture_output=True,
        text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    res = json.loads(again.stdout.split("RESULT=")[-1])
    assert res["reused"] and res["evaluation_run_id"] == ev.info.run_id
    assert res["headline"]["closed_loop.success_rate"] == m["closed_loop.success_rate"]
    assert res["success_table"][0][0] == "policy"
    assert len(mlflow.search_runs(experiment_names=["wallwm"], output_format="list",
                                  filter_string=f"tags.`wallwm.train_run` = '{train_run}'")) == 1


def test_eval_refuses_what_it_cannot_evaluate(stack, build):
    _, uri = _log_model(build, "it-eval-misfit", {"cameras": ["corner", "topview"],
                                                  "embodiment": "aloha"})
    p = _cli("--model", uri, *SMALL)
    assert p.returncode == 4, p.stdout[-2000:] + p.stderr[-3000:]
    assert "cameras: the model was trained on ['corner', 'topview']" in p.stderr
    assert "embodiment: the model was trained on robot_type 'aloha'" in p.stderr
    p = _cli("--run", "0123456789abcdef0123456789abcdef", *SMALL)
    assert p.returncode == 2 and "not found" in p.stderr, p.stderr[-2000:]
    p = _cli(*SMALL)  # neither --run nor --model
    assert p.returncode == 2 and "exactly one of --run" in p.stderr
    p = _cli("--run", "x", "--set", "eval.episodes=0")
    assert p.returncode == 2 and "eval.episodes" in p.stderr
