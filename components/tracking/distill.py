"""MLflow for distillation: the distillation run, its links, the quality table, the student.

One run per distillation (named; the same name resumes it), in the teacher's experiment, the
MLflow child of the teacher's training run, tagged `wallwm.stage=distill`,
`wallwm.teacher_model_uri`, `wallwm.train_run` (the teacher's training run), `wallwm.build_id`
and `wallwm.data_dvc_md5` (the data build the teacher was trained on, which the student is
distilled on). Checkpoints are uploaded as they are written (components/tracking/training.py's
`UploadCheckpoints`, stage name `distill`), the quality table goes to `quality/`
(quality.json, quality.md, quality.png, and the closed-loop report when it ran) with one
metric per figure (`distill.<mode>.<policy>.<figure>`, `distill.<mode>.error_vs_naive`,
`distill.closed_loop.*`), and the student is logged like a trained model (`log_model`), its
URI in the tag `wallwm.student_model_uri`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run

from components.tracking.runs import start_run

STAGE = "distill"
RUN_TAG = "wallwm.distill_run_name"
PARAMS_TAG = "wallwm.distill_params_hash"
STUDENT_TAG = "wallwm.student_model_uri"
TEACHER_TAG = "wallwm.teacher_model_uri"
TRAIN_RUN_TAG = "wallwm.train_run"
MODEL_TAG = "wallwm.model_uri"  # a training run's model (flows/train.py)


def distill_tags(run_name: str, teacher_uri: str, lineage: Mapping[str, Any], phash: str
                 ) -> dict[str, str]:
    train_run = str(lineage.get("train_run") or "")
    tags = {"wallwm.stage": STAGE, RUN_TAG: run_name, PARAMS_TAG: phash,
            TEACHER_TAG: teacher_uri, TRAIN_RUN_TAG: train_run or "unknown",
            "wallwm.build_id": str(lineage.get("build_id") or "unknown"),
            "wallwm.data_dvc_md5": str(lineage.get("dvc_md5") or "unknown")}
    if train_run:
        tags["mlflow.parentRunId"] = train_run
    return tags


@contextlib.contextmanager
def distill_run(experiment: str, run_name: str, tags: Mapping[str, str],
                existing: str | None = None) -> Iterator[Run]:
    """A new distillation run, or the `existing` one continued (resume by name)."""
    if existing:
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_id=existing, log_system_metrics=True) as run:
            yield run
    else:
        with start_run(experiment, run_name, tags=dict(tags)) as run:
            yield run


def log_distill_params(p: Any) -> None:
    d = p.distill.model_dump(mode="json")
    mlflow.log_params({f"distill.{k}": (",".join(map(str, v)) if isinstance(v, list) else v)
                       for k, v in d.items()})


def log_quality(paths: Mapping[str, Path], metrics: Mapping[str, float],
                report_dir: Path | None = None) -> None:
    """quality.{json,md,png} (+ the closed-loop report folder) under `quality/`, and metrics."""
    for p in paths.values():
        mlflow.log_artifact(str(p), artifact_path="quality")
    if report_dir is not None and Path(report_dir).is_dir():
        mlflow.log_artifacts(str(report_dir), artifact_path="quality/closed_loop")
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})


def latest_run(experiment: str, tag: str, stage: str | None = None) -> Run | None:
    """The newest finished run of `experiment` that carries `tag` (and wallwm.stage=`stage`)."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    flt = f"tags.`{tag}` != '' and attributes.status = 'FINISHED'"
    if stage:
        flt += f" and tags.`wallwm.stage` = '{stage}'"
    runs = mlflow.search_runs([exp.experiment_id], filter_string=flt,
                              order_by=["attributes.start_time DESC"], max_results=1,
                              output_format="list")
    return runs[0] if runs else None
