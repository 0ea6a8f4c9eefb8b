"""MLflow for evaluation: which model a training run logged, the evaluation run, its metrics.

One evaluation run per evaluated model: tags `wallwm.stage=evaluate`, `wallwm.train_run` (the
training run's id), `wallwm.model_uri`, `wallwm.build_id`; it lives in its training run's
experiment and is that run's MLflow child (`mlflow.parentRunId`), so the MLflow UI lists it
under the training run beside the stage runs, and `search_runs` on the tags finds it from the
other side. The metric names are the registry's contract (components/registry/evidence.py):
`closed_loop.success_rate` (the model, mean over tasks, new layouts) with its Wilson interval
`closed_loop.success_ci_low/high`, `closed_loop.task_progress`, `offline.action_mse`
(normalized units), `offline.action_mse_vs_mean_baseline`, `offline.psnr_gain_db`; then one
metric per policy, task and condition, and per offline mode.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from components.registry.evidence import ACTION_MSE, SUCCESS, SUCCESS_HIGH, SUCCESS_LOW
from components.tracking.runs import run_url, start_run
from wallwm.eval.report import SHORT

MODEL_TAG = "wallwm.model_uri"  # set on a training run by flows/train.py
STAGE = "evaluate"
TRAIN_RUN_TAG = "wallwm.train_run"
PROGRESS = "closed_loop.task_progress"
MSE_VS_MEAN = "offline.action_mse_vs_mean_baseline"
PSNR_GAIN = "offline.psnr_gain_db"
HEADLINE_CONDITION = "new_layout"


class EvaluationInputError(ValueError):
    """What to evaluate cannot be found: an unknown run, a run without a model, no build."""


def get_run(run_id: str) -> Run:
    try:
        return mlflow.MlflowClient().get_run(run_id)
    except MlflowException as e:
        raise EvaluationInputError(
            f"MLflow run {run_id!r} not found at {mlflow.get_tracking_uri()} "
            f"({e.error_code}); pass the id of a training run (`wallwm train` prints it) or "
            f"--model URI") from None


def model_of_run(run_id: str) -> str:
    """The model URI a training run logged (its tag `wallwm.model_uri`)."""
    run = get_run(run_id)
    uri = run.data.tags.get(MODEL_TAG)
    if not uri:
        stage = run.data.tags.get("wallwm.stage", "?")
        raise EvaluationInputError(
            f"MLflow run {run_id} ({run.info.run_name}, wallwm.stage={stage}) has no tag "
            f"{MODEL_TAG}: it logged no model (an unfinished training run, or not a training "
            f"run). Finish it with `wallwm train --run-name {run.info.run_name}`, or pass "
            f"--model URI")
    return uri


def experiment_of(run_id: str | None, default: str) -> str:
    """The experiment name of `run_id` (the evaluation joins its training run), else
    `default`."""
    if not run_id:
        return default
    with contextlib.suppress(MlflowException):
        run = mlflow.MlflowClient().get_run(run_id)
        return mlflow.MlflowClient().get_experiment(run.info.experiment_id).name
    return default


def evaluation_tags(model_uri: str, build_id: str, train_run: str | None,
                    extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tags that link an evaluation run to its model, build and training run."""
    tags = {"wallwm.stage": STAGE, MODEL_TAG: model_uri, "wallwm.build_id": build_id,
            TRAIN_RUN_TAG: train_run or "unknown"}
    if train_run:
        tags["mlflow.parentRunId"] = train_run
    return {**tags, **dict(extra or {})}


@contextlib.contextmanager
def evaluation_run(experiment: str, run_name: str, tags: Mapping[str, str]) -> Iterator[Run]:
    """The evaluation's MLflow run (system metrics sampled while it is open)."""
    with start_run(experiment, run_name, tags=dict(tags)) as run:
        yield run


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def closed_loop_metrics(cells: Sequence[Mapping[str, Any]], policy: str = "model"
                        ) -> dict[str, float]:
    """The headline closed-loop figures of `policy` (all tasks pooled, new layouts) and one
    metric per (policy, task, condition) cell of `wallwm.eval.metrics.summarize`."""
    out: dict[str, float] = {}
    for c in cells:
        task = SHORT.get(c["task"], c["task"])
        pre = f"closed_loop.{c['policy']}.{task}.{c['condition']}"
        for name, key in (("success_rate", "success"), ("success_ci_low", "success_lo"),
                          ("success_ci_high", "success_hi"), ("task_progress", "progress"),
                          ("steps_to_success", "steps_to_success_median"),
                          ("episodes", "n")):
            if _finite(c.get(key)):
                out[f"{pre}.{name}"] = float(c[key])
        if c["policy"] == policy and c["task"] == "all" and c["condition"] == HEADLINE_CONDITION:
            out[SUCCESS] = float(c["success"])
            out[SUCCESS_LOW] = float(c["success_lo"])
            out[SUCCESS_HIGH] = float(c["success_hi"])
            out[PROGRESS] = float(c["progress"])
    return out


def offline_metrics(offline: Any, mode: str) -> dict[str, float]:
    """The headline offline figures of `mode` (the mode the closed loop drives) and every
    overall and per-tier figure of every mode (`wallwm.eval.offline.OfflineResult`)."""
    out: dict[str, float] = {}
    for m, r in offline.modes.items():
        for k, v in r.overall.items():
            if _finite(v):
                out[f"offline.{m}.{k}"] = float(v)
        for t in r.tiers:
            for k in ("action_mse", "action_mse_vs_mean_baseline", "psnr_gain_db",
                      "gripper_acc"):
                if _finite(t.get(k)):
                    out[f"offline.{m}.tier.{t['tier']}.{k}"] = float(t[k])
    for name, key in ((ACTION_MSE, "action_mse"), (MSE_VS_MEAN, "action_mse_vs_mean_baseline"),
                      (PSNR_GAIN, "psnr_gain_db")):
        v = offline.figure(mode, key)
        if _finite(v):
            out[name] = float(v)
    return out


def headline(metrics: Mapping[str, float]) -> dict[str, float]:
    """The gate figures among `metrics`, in a fixed order."""
    order = (SUCCESS, SUCCESS_LOW, SUCCESS_HIGH, PROGRESS, ACTION_MSE, MSE_VS_MEAN, PSNR_GAIN)
    return {k: metrics[k] for k in order if k in metrics}


def log_evaluation(out_dir: Path, metrics: Mapping[str, float], params: Mapping[str, Any]
                   ) -> None:
    """Into the active run: params, metrics, and every file under `out_dir` as artifacts
    (report.md, report.html and metrics.json at the root, where the registry looks)."""
    if params:
        mlflow.log_params({k: json.dumps(v) if isinstance(v, list | dict) else v
                           for k, v in params.items()})
    items = list(metrics.items())
    for i in range(0, len(items), 500):  # MLflow takes up to 1000 metrics per batch
        mlflow.log_metrics(dict(items[i : i + 500]))
    mlflow.log_artifacts(str(out_dir))


def find_evaluations(train_run: str, experiment: str) -> list[Run]:
    """The evaluation runs of a training run, newest first."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return mlflow.search_runs(
        [exp.experiment_id], output_format="list", order_by=["attributes.start_time DESC"],
        filter_string=f"tags.`{TRAIN_RUN_TAG}` = '{train_run}' and "
                      f"tags.`wallwm.stage` = '{STAGE}'")


__all__ = ["EvaluationInputError", "MODEL_TAG", "closed_loop_metrics", "evaluation_run",
           "evaluation_tags", "experiment_of", "find_evaluations", "get_run", "headline",
           "log_evaluation", "model_of_run", "offline_metrics", "run_url"]
