"""Distil a trained WALL-WM into a few-step student, export the student into the deployable
bundle, and play the student, the ONNX FP32 and the ONNX FP8 bundle on the same closed-loop
episodes (runtime parity); every step tracked in MLflow.

    distill   teacher = a training run's model (`wallwm.model_uri`), or the newest one;
              its own run (child of the training run, linked to the build), resumable by
              name; quality table (teacher N steps / naive cut / student, offline and closed
              loop) and the student as a logged model (`wallwm.student_model_uri`)
    export    student = a distillation run's student, or the newest one; the bundle
              (wallwm/export) logged as the artifact folder `bundle/` of the export run with
              the gate metrics `export.*`
    runtime   the runtime-parity evaluation, a child run of the export run

The stages are plain functions in wallwm/distill, wallwm/export and wallwm/eval; this file
only wires them and records. `wallwm distill`, `wallwm export` (flows/cli_distill.py) and
`python -m flows.distill_export` run them; `after_evaluation` is what the retrain calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.stack.home import project_root, wallwm_home
from components.tracking import distill as TD
from components.tracking import export as TE
from components.tracking.runs import git_revision, start_run
from components.tracking.training import (
    UploadCheckpoints,
    find_run,
    lightning_logger,
    load_logged_model,
    log_model,
)
from wallwm.config import load_params
from wallwm.config.schema import Params
from wallwm.util.atomic import atomic_write_text


class DistillInputError(ValueError):
    """What to distil or export cannot be found, or a named run would mix two settings."""


# ----------------------------------------------------------------------------- shared
def _params(params: dict[str, Any] | None, files: list[str] | None, sets: list[str] | None
            ) -> Params:
    return Params.model_validate(params) if params is not None else load_params(
        extra_files=files or [], sets=sets or [])


def _experiment_of(run_id: str | None, default: str) -> str:
    if not run_id:
        return default
    try:
        c = mlflow.MlflowClient()
        return c.get_experiment(c.get_run(run_id).info.experiment_id).name
    except Exception:  # noqa: BLE001 - an unknown run: the caller's experiment
        return default


def _tags(run_id: str, what: str) -> dict[str, str]:
    try:
        return mlflow.MlflowClient().get_run(run_id).data.tags
    except Exception as e:  # noqa: BLE001 - MLflow raises its own types for a missing run
        raise DistillInputError(f"the {what} run {run_id!r} is not in MLflow at "
                                f"{mlflow.get_tracking_uri()} ({type(e).__name__}); pass a run "
                                "id `wallwm train` / `wallwm distill` printed") from None


def _load(uri: str, what: str) -> Any:
    """The logged model, downloaded once per URI under the home (not a new temp folder per
    call: `load_logged_model` without `dst` leaves one behind each time)."""
    dst = wallwm_home() / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    try:
        dst.mkdir(parents=True, exist_ok=True)
        return load_logged_model(uri, dst=dst)
    except Exception as e:  # noqa: BLE001 - a wrong URI: MLflow/IO errors of many types
        raise DistillInputError(f"cannot load the {what} model {uri!r}: {type(e).__name__}: "
                                f"{str(e)[:300]}") from None


def locate(p: Params, lineage: dict[str, Any], build_dir: str | None) -> Path:
    """The build a model was trained on: `build_dir`, `<home>/builds/<id>` or the published
    data folder while it holds that build (wallwm.eval.offline.locate_build)."""
    from wallwm.eval.offline import locate_build

    build_id = str(lineage.get("build_id") or "")
    if not build_id:
        raise DistillInputError("the model's lineage.json names no build_id: it was not logged "
                                "by `wallwm train` / `wallwm distill`")
    repo = Path(os.environ.get("WALLWM_DVC_REPO") or project_root())
    cands = [Path(build_dir)] if build_dir else [wallwm_home() / "builds" / build_id,
                                                 repo / p.data.output_dir]
    return locate_build(build_id, cands)


def _restore(run_id: str, ckpt_dir: Path) -> Path | None:
    """`checkpoints/distill/last.ckpt` of the run into `ckpt_dir` (e.g. on another machine)."""
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "checkpoints/distill")}
    if "checkpoints/distill/last.ckpt" not in names:
        return None
    with tempfile.TemporaryDirectory() as d:
        got = Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="checkpoints/distill/last.ckpt", dst_path=d))
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(got), ckpt_dir / "last.ckpt")
    return ckpt_dir / "last.ckpt"


def distill_params_hash(p: Params, teacher_uri: str) -> str:
    blob = json.dumps({"distill": p.distill.model_dump(mode="json"), "teacher": teacher_uri,
                       "eval": p.eval.model_dump(mode="json"), "device": p.train.device},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _runner(workers: int):
    if workers > 1:
        from components.compute.ray_eval import ray_runner

        return ray_runner(workers)
    from wallwm.eval.runner import run_serial

    return run_serial


# ----------------------------------------------------------------------------- distill
@task(name="distill-fit", cache_policy=NO_CACHE)
def fit_task(p: Params, teacher: Any, build: Path, ckpt_dir: Path, run_id: str,
             resume: bool) -> dict[str, Any]:
    from wallwm.distill.loop import run_distill

    if resume and not (ckpt_dir / "last.ckpt").exists() and _restore(run_id, ckpt_dir):
        get_run_logger().info("restored the distillation checkpoint of run %s from MLflow",
                              run_id)
    r = run_distill(p, teacher, build, ckpt_dir, resume=resume,
                    logger=lightning_logger(run_id),
                    callbacks=[UploadCheckpoints(run_id, "distill", ckpt_dir)])
    return r.__dict__


@task(name="distill-quality", cache_policy=NO_CACHE)
def quality_task(p: Params, checkpoint: str, loaded: Any, build: Path, out: Path
                 ) -> dict[str, Any]:
    from wallwm.distill.loop import data_module, load_pair
    from wallwm.distill.quality import closed_loop_quality, offline_quality, write_quality
    from wallwm.eval.seeds import manifest_build_seeds
    from wallwm.eval.spec import ModelContract

    d = p.distill
    teacher, student = load_pair(checkpoint)
    dm = data_module(build, p)
    dm.setup()
    parts = getattr(dm, "parts", {d.modes[0]: dm})
    table = offline_quality(teacher, student, {m: part.val_dataloader()
                                               for m, part in parts.items()},
                            d.teacher_steps, d.student_steps, d.quality_batches)
    report_dir = None
    if d.closed_loop_episodes > 0:
        manifest = json.loads((build / "manifest.json").read_text())
        report_dir = out / "closed_loop"
        table, _ = closed_loop_quality(
            table, teacher, student, loaded.tokenizer_path,
            ModelContract.from_json(loaded.contract), p, report_dir,
            build_seeds=manifest_build_seeds(manifest), run=_runner(int(p.eval.workers)))
    paths = write_quality(table, out)
    return {"paths": paths, "metrics": table.metrics(), "markdown": table.markdown(),
            "report_dir": report_dir, "student": student}


@flow(name="distill", log_prints=True)
def distill(params_files: list[str] | None = None, sets: list[str] | None = None,
            teacher_uri: str | None = None, train_run: str | None = None,
            build_dir: str | None = None, run_name: str | None = None, resume: bool = True,
            params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Distil the model of `train_run` (or `teacher_uri`; neither: the newest training run
    with a model) into `distill.student_steps` steps."""
    log = get_run_logger()
    p = _params(params, params_files, sets)
    if not teacher_uri:
        if not train_run:
            run = TD.latest_run(p.project.experiment, TD.MODEL_TAG, "train")
            if run is None:
                raise DistillInputError(
                    f"no finished training run with a model in experiment "
                    f"{p.project.experiment!r}; run `wallwm train` first, or pass --model URI")
            train_run = run.info.run_id
        teacher_uri = _tags(train_run, "training").get(TD.MODEL_TAG)
        if not teacher_uri:
            raise DistillInputError(f"training run {train_run} has no tag {TD.MODEL_TAG}: it "
                                    "logged no model (unfinished?); pass --model URI")
    loaded = _load(teacher_uri, "teacher")
    lineage = dict(loaded.lineage)
    train_run = train_run or lineage.get("train_run")
    build = locate(p, lineage, build_dir)
    experiment = _experiment_of(train_run, p.project.experiment)
    phash = distill_params_hash(p, teacher_uri)
    run_name = run_name or (f"distill-{lineage.get('train_run_name') or lineage['build_id']}"
                            f"-{phash[:8]}")
    existing = find_run(experiment, TD.RUN_TAG, run_name) if resume else None
    if existing:
        tags = mlflow.get_run(existing).data.tags
        if tags.get(TD.PARAMS_TAG) not in (None, phash):
            raise DistillInputError(
                f"distillation run {run_name!r} was started with other settings (params hash "
                f"{tags[TD.PARAMS_TAG][:12]} vs {phash[:12]}: distill.*, eval.* or the "
                "teacher differ); resume it with the same --set, or use another --run-name")
        if tags.get(TD.STUDENT_TAG):
            log.info("distillation %s is complete (student %s): nothing to do", run_name,
                     tags[TD.STUDENT_TAG])
            return {"run_name": run_name, "mlflow_run_id": existing, "reused": True,
                    "student_uri": tags[TD.STUDENT_TAG], "teacher_uri": teacher_uri,
                    "build_dir": str(build)}
    ckpt_dir = wallwm_home() / "distill" / run_name
    tags = {**lineage_tags(lineage, train_run), **TD.distill_tags(run_name, teacher_uri, {
        **lineage, "train_run": train_run}, phash)}
    out: dict[str, Any] = {"run_name": run_name, "teacher_uri": teacher_uri, "reused": False,
                           "build_dir": str(build)}
    with TD.distill_run(experiment, run_name, tags, existing) as run:
        rid = run.info.run_id
        out["mlflow_run_id"] = rid
        if not existing:
            TD.log_distill_params(p)
            mlflow.log_dict(p.model_dump(mode="json"), "params/resolved.json")
        res = fit_task(p, loaded.model, build, ckpt_dir, rid, resume)
        for key, name in (("initial_val", "initial_val_loss"), ("final_val", "final_val_loss")):
            if res.get(key) is not None:
                mlflow.log_metric(name, float(res[key]))
        ckpt = res.get("best_checkpoint") or res.get("last_checkpoint")
        q = quality_task(p, str(ckpt), loaded, build, ckpt_dir / "quality")
        TD.log_quality(q["paths"], q["metrics"], q["report_dir"])
        log.info("quality:\n%s", q["markdown"])
        student_lineage = {**lineage, "train_run": train_run, "distill_run": rid,
                           "teacher_model": teacher_uri, "student_steps": p.distill.student_steps,
                           "teacher_steps": p.distill.teacher_steps, "checkpoint": str(ckpt)}
        uri = log_model(q["student"], loaded.tokenizer_path, loaded.contract, student_lineage,
                        name="student")
        mlflow.set_tag(TD.STUDENT_TAG, uri)
        out.update(student_uri=uri, steps=res["steps"], metrics=q["metrics"],
                   quality=q["markdown"], resumed=res["resumed"])
    return out


def lineage_tags(lineage: dict[str, Any], train_run: str | None) -> dict[str, str]:
    return {"wallwm.data_validation": str(lineage.get("validation") or "unknown"),
            "wallwm.teacher_run_name": str(lineage.get("train_run_name") or train_run or "")}


# ----------------------------------------------------------------------------- export
@task(name="export-bundle", cache_policy=NO_CACHE)
def export_task(p: Params, loaded: Any, build: Path, out: Path, lineage: dict[str, str]
                ) -> Any:
    from wallwm.export.pipeline import export_bundle

    return export_bundle(loaded.model, loaded.tokenizer_path, loaded.contract, build, p, out,
                         lineage)


@flow(name="export", log_prints=True)
def export(params_files: list[str] | None = None, sets: list[str] | None = None,
           student_uri: str | None = None, distill_run: str | None = None,
           build_dir: str | None = None, out_dir: str | None = None,
           runtime_episodes: int | None = None, params: dict[str, Any] | None = None,
           fresh: bool = False) -> dict[str, Any]:
    """Export the student of `distill_run` (or `student_uri`; neither: the newest
    distillation) into a bundle, logged as `bundle/` of a new export run; then the runtime
    evaluation (`export.runtime_episodes`, overridden by `runtime_episodes`; 0: none). The
    same student with the same settings and code is exported once (`fresh` forces it)."""
    from wallwm.export.errors import ExportError
    from wallwm.export.pipeline import write_report

    log = get_run_logger()
    p = _params(params, params_files, sets)
    if not student_uri:
        if not distill_run:
            run = TD.latest_run(p.project.experiment, TD.STUDENT_TAG, TD.STAGE)
            if run is None:
                raise DistillInputError(
                    f"no finished distillation in experiment {p.project.experiment!r}; run "
                    "`wallwm distill` first, or pass --model URI")
            distill_run = run.info.run_id
        student_uri = _tags(distill_run, "distillation").get(TD.STUDENT_TAG)
        if not student_uri:
            raise DistillInputError(f"distillation run {distill_run} has no student "
                                    f"({TD.STUDENT_TAG}); finish it with `wallwm distill`")
    episodes = p.export.runtime_episodes if runtime_episodes is None else runtime_episodes
    key = export_key(student_uri, p, int(episodes))
    if not fresh and not out_dir:
        prev = _reusable_export(p, distill_run, key)
        if prev is not None:
            log.info("export of %s with these settings exists (run %s, bundle %s): reused",
                     student_uri, prev["export_run_id"], prev["bundle_dir"])
            return prev
    loaded = _load(student_uri, "student")
    lin = dict(loaded.lineage)
    distill_run = distill_run or lin.get("distill_run")
    lin["distill_run"] = distill_run
    build = locate(p, lin, build_dir)
    experiment = _experiment_of(distill_run, p.project.experiment)
    name = f"export-{lin.get('train_run_name') or lin['build_id']}"
    with start_run(experiment, name, tags={**TE.export_tags(student_uri, lin),
                                           EXPORT_KEY_TAG: key}) as run:
        rid = run.info.run_id
        TE.log_export_params(p)
        bundle_dir = Path(out_dir) if out_dir else wallwm_home() / "exports" / rid / "bundle"
        bundle_lineage = {"data_build": str(lin["build_id"]),
                          "dvc_md5": str(lin.get("dvc_md5") or "unknown"),
                          "git": git_revision(), "train_run": str(lin.get("train_run") or ""),
                          "distill_run": str(distill_run or ""), "export_run": rid}
        try:
            res = export_task(p, loaded, build, bundle_dir, bundle_lineage)
        except ExportError as e:
            mlflow.set_tags({"wallwm.export_error": str(e)[:4000],
                             "wallwm.export_error_figure": e.figure})
            raise
        report = write_report(res, wallwm_home() / "exports" / rid / "export.json")
        uri = TE.log_bundle(bundle_dir, res.metrics, report)
        for k in ("export.onnx_parity_max_abs", "export.fp8_worst_dim_cosine",
                  "export.bf16_worst_dim_cosine", "export.latency_ms",
                  "export.fp8_bytes_ratio"):
            if k in res.metrics:
                log.info("%s = %.6g", k, res.metrics[k])
    out = {"export_run_id": rid, "bundle_dir": str(bundle_dir), "bundle_uri": uri,
           "student_uri": student_uri, "metrics": res.metrics, "lineage": bundle_lineage,
           "tensorrt": res.report.get("tensorrt"), "reused": False}
    if episodes > 0:
        out["runtime"] = runtime_evaluation(p, loaded, student_uri, bundle_dir, rid,
                                            experiment, build, int(episodes))
    atomic_write_text(bundle_dir.parent / "export-result.json", json.dumps(out, default=str))
    mlflow.MlflowClient().set_tag(rid, EXPORT_DONE_TAG, "true")  # with its runtime evaluation
    return out


EXPORT_KEY_TAG = "wallwm.export_key"
EXPORT_DONE_TAG = "wallwm.export_complete"


def export_key(student_uri: str, p: Params, runtime_episodes: int) -> str:
    """What an export depends on: the student, export and eval settings, the code version."""
    import hashlib

    from components.tracking.runs import git_state

    blob = json.dumps({"student": student_uri,  # how many processes trace: not an input
                       "export": p.export.model_dump(mode="json", exclude={"workers"}),
                       "eval": p.eval.model_dump(mode="json"), "runtime": runtime_episodes,
                       "code": git_state()[0]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _reusable_export(p: Params, distill_run: str | None, key: str) -> dict[str, Any] | None:
    """The result of a finished, complete export with the same key whose bundle is still on
    disk (a bundle moved off this machine is exported again rather than trusted)."""
    experiment = _experiment_of(distill_run, p.project.experiment)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = mlflow.search_runs([exp.experiment_id], output_format="list", max_results=5,
                              filter_string=f"tags.`{EXPORT_KEY_TAG}` = '{key}' and "
                                            f"tags.`{EXPORT_DONE_TAG}` = 'true'",
                              order_by=["attributes.start_time DESC"])
    for run in runs:
        saved = wallwm_home() / "exports" / run.info.run_id / "export-result.json"
        if run.info.status == "FINISHED" and saved.exists():
            out = json.loads(saved.read_text())
            if Path(out["bundle_dir"], "manifest.json").exists():
                return {**out, "reused": True}
    return None


# ----------------------------------------------------------------------------- runtime parity
def runtime_eval_params(p: Params, episodes: int) -> Any:
    from wallwm.config.eval_schema import EvalParams

    return EvalParams.model_validate({**p.eval.model_dump(mode="json"), "episodes": episodes,
                                      "conditions": list(p.export.runtime_conditions),
                                      "policies": ["model"], "videos": 0})


@task(name="runtime-evaluation", cache_policy=NO_CACHE)
def runtime_task(p: Params, loaded: Any, bundle_dir: Path, ev: Any, build: Path, out: Path
                 ) -> tuple[list[Any], dict[str, Any]]:
    from wallwm.eval.closed_loop import closed_loop, env_spec
    from wallwm.eval.policies.bundle import runtime_factories
    from wallwm.eval.seeds import manifest_build_seeds
    from wallwm.eval.spec import ModelContract

    facs = runtime_factories(loaded.model, loaded.tokenizer_path, bundle_dir,
                             ModelContract.from_json(loaded.contract), env_spec(p.data, ev), ev,
                             steps=int(p.distill.student_steps),
                             precisions=tuple(p.export.runtime_precisions))
    manifest = json.loads((build / "manifest.json").read_text())
    return closed_loop(p.data, ev, out, facs, build_seeds=manifest_build_seeds(manifest),
                       run=_runner(int(ev.workers)),
                       title="Runtime parity: PyTorch student, ONNX FP32, ONNX FP8")


def runtime_evaluation(p: Params, loaded: Any, student_uri: str, bundle_dir: Path,
                       export_run: str, experiment: str, build: Path, episodes: int
                       ) -> dict[str, Any]:
    """The student and the bundle's runtimes on the same episodes, in a child run of the
    export run; its headline is the runtime that ships (export.default_precision)."""
    from components.tracking.evaluation import closed_loop_metrics
    from wallwm.eval.metrics import summarize

    ev = runtime_eval_params(p, episodes)
    ships = f"onnx_{p.export.default_precision}"
    with start_run(experiment, f"runtime-{export_run[:8]}", tags=TE.runtime_tags(
            export_run, student_uri, str(loaded.lineage.get("build_id") or ""))) as run:
        out = wallwm_home() / "exports" / export_run / "runtime"
        results, paths = runtime_task(p, loaded, bundle_dir, ev, build, out)
        cells = summarize(results)
        metrics = closed_loop_metrics(cells, policy=ships)
        pooled = {c["policy"]: c for c in cells if c["task"] == "all"
                  and c["condition"] == ev.conditions[0]}
        if "student_torch" in pooled:
            for pol, c in pooled.items():
                if pol != "student_torch":
                    metrics[f"runtime.{pol}_minus_torch"] = (c["success"]
                                                             - pooled["student_torch"]["success"])
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out), artifact_path="runtime")
        from wallwm.eval.report import markdown_table, table

        md = markdown_table(table(cells, "success"))
        atomic_write_text(out / "success.md", md)
    return {"run_id": run.info.run_id, "metrics": metrics, "success_table": md,
            "report": str(paths.get("html", ""))}


# ----------------------------------------------------------------------------- both
@flow(name="distill-export", log_prints=True)
def distill_export(params_files: list[str] | None = None, sets: list[str] | None = None,
                   teacher_uri: str | None = None, train_run: str | None = None,
                   build_dir: str | None = None, params: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    p = _params(params, params_files, sets)
    d = distill(teacher_uri=teacher_uri, train_run=train_run, build_dir=build_dir,
                params=p.model_dump(mode="json"))
    e = export(student_uri=d["student_uri"], distill_run=d["mlflow_run_id"],
               build_dir=build_dir, params=p.model_dump(mode="json"))
    return {"distill": d, "export": e}


def after_evaluation(train_result: dict[str, Any], params: Params,
                     evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the retrain runs after evaluating the trained model: distillation of that model,
    its export, the runtime evaluation. `evaluation` (flows.evaluate's result) is only used
    to name the build folder it found."""
    if not train_result.get("model_uri"):
        raise DistillInputError(f"training run {train_result.get('run_name')} logged no "
                                "model; nothing to distil")
    build = (evaluation or {}).get("build_dir")
    return distill_export(teacher_uri=train_result["model_uri"],
                          train_run=train_result.get("mlflow_run_id"), build_dir=build,
                          params=params.model_dump(mode="json"))


def main(argv: list[str] | None = None) -> int:
    from components.stack import require_stack

    require_stack()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("stage", choices=["distill", "export", "both"], nargs="?", default="both")
    ap.add_argument("--params", action="append", default=[])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--model", default=None, help="teacher (distill) / student (export) URI")
    ap.add_argument("--run", default=None, help="training (distill) / distill (export) run")
    ap.add_argument("--build", default=None)
    a = ap.parse_args(argv)
    if a.stage == "distill":
        print(distill(a.params, a.sets, a.model, a.run, a.build))
    elif a.stage == "export":
        print(export(a.params, a.sets, a.model, a.run, a.build))
    else:
        print(distill_export(a.params, a.sets, a.model, a.run, a.build))
    return 0


if __name__ == "__main__":
    sys.exit(main())
