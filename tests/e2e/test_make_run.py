"""What `make run` does, as a user runs it: stack up, retrain, status, down, on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.stack import read_stack_env
from components.stack.home import stack_id
from components.stack.process import marked_processes
from tests.conftest import ROOT, SERVICE_VARS, free_port_params
from tests.unit.distill.world import MICRO

pytestmark = [pytest.mark.e2e, pytest.mark.slow(seconds=310)]  # 2 cores, serial
WALLWM = str(Path(sys.executable).parent / "wallwm")


def _run(args: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [WALLWM, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"wallwm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_stack_up_retrain_down(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    repo = tmp_path / "repo"  # the project's own data.dvc stays untouched by tests
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=repo, check=True)
    env.update(WALLWM_HOME=str(home), PREFECT_HOME=str(tmp_path / "prefect"), COLUMNS="200",
               WALLWM_DVC_REPO=str(repo))
    demo = ["--params", "profiles/demo.yaml"]  # what `make run` passes
    sets = [a for s in free_port_params() for a in ("--set", s)]
    # the micro model of the distillation/export tests: this test checks the chain's wiring,
    # stage by stage; `make run` itself trains the tiny preset (its time: benchmarks, e2e)
    run_sets = ["--set", f"model.presets.micro={MICRO}", "--set", "model.preset=micro",
                "--set", "data.sources=[sim:episodes=4]", "--set", "train.max_steps=6",
                "--set", "train.val_every=3", "--set", "train.batch_size=4",
                "--set", "train.val_batches=2",
                "--set", "distill.max_steps=6", "--set", "distill.val_every=3",
                "--set", "retrain.fleet_robots=2",
                # closed loop on one task, one condition: the full grid belongs to `wallwm eval`
                "--set", "eval.tasks=[push-v3]",
                "--set", "eval.conditions=[new_layout]", "--set", "eval.videos=1",
                # one held-out batch per figure of distillation and export (the benchmarks
                # measure them at full size)
                "--set", "distill.quality_batches=1", "--set", "export.accuracy_batches=1",
                "--set", "export.calibration_batches=1", "--set", "export.latency_repeats=2"]
    try:
        _run(["stack", "up", *demo, *sets], env)
        _run(["schedule", "apply", *demo], env)  # as `make run` does
        listed = _run(["schedule", "list"], env).stdout
        for name in ("nightly", "on-data-build", "on-fleet-inbox"):
            assert name in listed, listed
        out = _run(["retrain", *demo, *run_sets], env, timeout=1500).stdout
        assert "retrain: Completed - released" in out, out[-4000:]
        for stage in ("health", "data", "train", "evaluate", "distill_export", "register",
                      "approve", "promote", "release"):
            assert f"│ {stage}" in out, (stage, out[-3000:])
        assert "train video" in out and "train action" in out and "model:" in out
        assert "/#/experiments/" in out and "/runs/flow-run/" in out  # clickable links
        assert (repo / "data.dvc").exists() and (repo / "data" / "manifest.json").exists()
        # the simulated fleet runs the released engine
        import json

        status = json.loads(_run(["release", "status", "--fleet", "demo", "--json", *demo],
                                 env).stdout)
        version = status["rollout"]["version"]
        assert len(status["robots"]) == 2 and all(
            r["running"] == version and r["state"] == "serving" for r in status["robots"]), status
        # a second run with nothing changed trains nothing and says what it reused
        again = _run(["retrain", *demo, *run_sets], env, timeout=600).stdout
        assert ("reused stages: data, train, evaluate, distill_export, register, approve, "
                "promote") in again, again[-3000:]
        _run(["stack", "status"], env)

        # the MLflow server holds the health run, and its artifact sits in the S3 bucket
        client_env = {**env, **read_stack_env(home)}
        check = (
            "import mlflow, hashlib\n"
            "from components.storage import s3_client, get_bytes, S3Location\n"
            "runs = mlflow.search_runs(experiment_names=['wallwm'], output_format='list')\n"
            "r = [x for x in runs if x.info.run_name == 'stack-health'][0]\n"
            "p = mlflow.artifacts.download_artifacts(run_id=r.info.run_id,"
            " artifact_path='health/payload.bin')\n"
            "key = f'{r.info.experiment_id}/{r.info.run_id}/artifacts/health/payload.bin'\n"
            "obj = get_bytes(s3_client(), S3Location('mlflow-artifacts', key))\n"
            "assert obj == open(p, 'rb').read()\n"
            "print('OK', r.data.tags['wallwm.data_dvc_md5'])\n"
        )
        res = subprocess.run(
            [sys.executable, "-c", check],
            env=client_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0 and "OK" in res.stdout, res.stderr
    finally:
        subprocess.run([WALLWM, "stack", "down"], env=env, cwd=ROOT, timeout=120)
    assert marked_processes(stack_id(home.resolve())) == []
