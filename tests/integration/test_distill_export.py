"""`wallwm distill` and `wallwm export` against the real stack: a micro teacher trained on a
real build (tests/unit/distill/world.py), logged into a training run as `wallwm train` logs
it, is distilled in its own MLflow run (linked to the training run and the build; quality
table with the closed loop; the student as a logged model), exported into a bundle logged as
the export run's `bundle/` folder with the gate metrics, which the release runner verifies and
health-checks after a download; the runtime-parity evaluation plays the student and the ONNX
bundles on the same episodes; a finished distillation is reused; bad input exits 2."""

from __future__ import annotations

import json

import mlflow
import pytest
import typer
from typer.testing import CliRunner

from tests.unit.distill import world

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=90)]  # 2 cores, serial
FAST = [*world.SETS, "distill.max_steps=6", "distill.val_every=3", "distill.modes=[event]",
        "distill.closed_loop_episodes=1", "distill.quality_batches=1",
        "eval.tasks=[push-v3]", "eval.max_steps=16", "eval.workers=1",
        "export.modes=[event]", "export.video_step=false", "export.runtime_episodes=1",
        "export.accuracy_batches=1", "export.calibration_batches=1"]
GATES = ("export.onnx_parity_max_abs", "export.fp8_worst_dim_cosine",
         "export.bf16_worst_dim_cosine", "export.latency_ms", "export.fp8_bytes_ratio")


def _app() -> typer.Typer:
    """The two commands as flows/cli.py registers them."""
    from flows.cli_distill import distill_cmd, export_cmd

    app = typer.Typer()
    app.command("distill")(distill_cmd)
    app.command("export")(export_cmd)
    return app


def _sets() -> list[str]:
    return [x for s in FAST for x in ("--set", s)]


@pytest.fixture(scope="module")
def teacher_run(stack) -> tuple[str, str]:
    """The world's micro teacher logged into a training run as flows/train.py logs it."""
    from components.tracking import start_run
    from components.tracking.training import log_model

    build = world.build()
    bid = json.loads((build / "manifest.json").read_text())["build_id"]
    with start_run("wallwm", "it-teacher", tags={"wallwm.stage": "train", "wallwm.build_id": bid,
                                                 "wallwm.train_run_name": "it-teacher"},
                   log_system_metrics=False) as run:
        uri = log_model(world.teacher(), build / "tokenizer.json", world.contract(), {
            "build_id": bid, "dvc_md5": "unpinned", "train_run": run.info.run_id,
            "train_run_name": "it-teacher"})
        mlflow.set_tag("wallwm.model_uri", uri)
    return run.info.run_id, uri


def test_distill_then_export_write_the_bundle_to_mlflow(teacher_run, tmp_path):
    train_run, teacher_uri = teacher_run
    runner = CliRunner()
    r = runner.invoke(_app(), ["distill", "--run", train_run, "--build", str(world.build()),
                               "--run-name", "it-distill", *_sets()])
    assert r.exit_code == 0, r.output + repr(r.exception)
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["wallwm"], output_format="list",
                              filter_string="tags.`wallwm.distill_run_name` = 'it-distill'")
    assert len(runs) == 1
    d = runs[0]
    t = d.data.tags
    assert t["wallwm.stage"] == "distill" and t["wallwm.teacher_model_uri"] == teacher_uri
    assert t["mlflow.parentRunId"] == train_run == t["wallwm.train_run"]
    assert t["wallwm.build_id"] == json.loads((world.build() / "manifest.json").read_text())[
        "build_id"]
    m = d.data.metrics
    assert m["distill.event.error_vs_naive"] > 0 and "distill.event.student.frame_psnr" in m
    assert {"distill.closed_loop.student.success", "distill.closed_loop.teacher.success_lo",
            "distill.closed_loop.success_delta"} <= set(m)
    arts = {a.path for a in client.list_artifacts(d.info.run_id, "quality")}
    assert {"quality/quality.json", "quality/quality.md", "quality/quality.png"} <= arts
    ckpts = {a.path for a in client.list_artifacts(d.info.run_id, "checkpoints/distill")}
    assert "checkpoints/distill/last.ckpt" in ckpts
    student_uri = t["wallwm.student_model_uri"]
    assert student_uri.startswith("models:/")

    again = runner.invoke(_app(), ["distill", "--run", train_run, "--build",
                                   str(world.build()), "--run-name", "it-distill", *_sets()])
    assert again.exit_code == 0 and "is complete" in again.output

    r = runner.invoke(_app(), ["export", "--run", d.info.run_id, "--build",
                               str(world.build()), *_sets()])
    assert r.exit_code == 0, r.output + repr(r.exception)
    exports = mlflow.search_runs(experiment_names=["wallwm"], output_format="list",
                                 filter_string=f"tags.`wallwm.distill_run` = '{d.info.run_id}'"
                                 " and tags.`wallwm.stage` = 'export'")
    assert len(exports) == 1
    ex = exports[0]
    assert ex.data.tags["mlflow.parentRunId"] == d.info.run_id
    assert ex.data.tags["wallwm.student_model_uri"] == student_uri
    for k in GATES:
        assert k in ex.data.metrics, k
    assert ex.data.metrics["export.onnx_parity_max_abs"] <= 1e-4
    top = {a.path for a in client.list_artifacts(ex.info.run_id)}
    assert {"bundle", "report"} <= top

    from components.tracking.export import download_bundle
    from wallwm.release.bundle import verify_bundle
    from wallwm.release.engine import Engine
    from wallwm.util.atomic import sha256_file

    local = download_bundle(ex.info.run_id, tmp_path)
    man = verify_bundle(local)
    assert sha256_file(local / "manifest.json") == ex.data.tags["wallwm.bundle_manifest_sha256"]
    assert man.lineage["export_run"] == ex.info.run_id
    assert man.lineage["distill_run"] == d.info.run_id and man.lineage["train_run"] == train_run
    for prec in man.precisions:
        rep = Engine(local, precision=prec).health_check()
        assert rep.ok, rep.error

    rt = mlflow.search_runs(experiment_names=["wallwm"], output_format="list",
                            filter_string=f"tags.`wallwm.export_run` = '{ex.info.run_id}'")
    assert len(rt) == 1 and rt[0].data.tags["wallwm.stage"] == "runtime_eval"
    rm = rt[0].data.metrics
    assert "closed_loop.success_rate" in rm
    for pol in ("student_torch", "onnx_fp32", "onnx_fp8"):
        assert f"closed_loop.{pol}.all.new_layout.success_rate" in rm, sorted(rm)


def test_unknown_runs_are_bad_input(stack):
    r = CliRunner().invoke(_app(), ["export", "--run", "0" * 32, *_sets()])
    assert r.exit_code == 2 and "distillation run" in r.output, r.output
    r = CliRunner().invoke(_app(), ["distill", "--model", "models:/m-doesnotexist", *_sets()])
    assert r.exit_code == 2 and "teacher model" in r.output, r.output
