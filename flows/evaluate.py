"""Evaluate a trained WALL-WM: offline on its build's held-out episodes, then in closed loop.

The model comes from a training run (its tag `wallwm.model_uri`) or a model URI; the build is
the one its lineage names (`<WALLWM_HOME>/builds/<build id>`, or the published `data/` while
its manifest holds that build id). Offline (wallwm/eval/offline.py): the validation figures of
training per tier and per joint cluster, event and unified mode. Closed loop
(wallwm/eval/closed_loop.py): the model beside the scripted expert (ceiling) and zero actions
(floor) on the same eval episodes, on Ray when `eval.workers > 1`. Everything lands in ONE
MLflow evaluation run, a child of the training run (components/tracking/evaluation.py):
report.md, report.html, metrics.json, plots/, videos/, and the gate metrics.

The same model evaluated again with the same settings reuses its evaluation run (`fresh=True`
makes a new one). `wallwm eval` (flows/cli_eval.py) and `python -m flows.evaluate` run it;
`evaluate_after_training` is what the retrain calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.stack.home import project_root, wallwm_home
from components.tracking.evaluation import (
    TRAIN_RUN_TAG,
    EvaluationInputError,
    closed_loop_metrics,
    evaluation_run,
    evaluation_tags,
    experiment_of,
    find_evaluations,
    headline,
    log_evaluation,
    model_of_run,
    offline_metrics,
    run_url,
)
from wallwm.config import load_params
from wallwm.config.eval_schema import EvalParams
from wallwm.config.schema import Params

PARAMS_TAG = "wallwm.eval_params_hash"


@task(name="load-model", cache_policy=NO_CACHE)
def load_model(uri: str) -> Any:
    """`components.tracking.training.LoadedModel` (imported here: it brings Lightning)."""
    from components.tracking.training import load_logged_model

    return load_logged_model(uri)


@task(name="offline-evaluation", cache_policy=NO_CACHE)
def offline_task(loaded: Any, build: Path, p: Params, ev: EvalParams) -> Any:
    from wallwm.eval.offline import offline_evaluation

    return offline_evaluation(loaded.model, build, p.data.annotate.vocabulary,
                              batch_size=int(p.train.batch_size), steps=ev.denoise_steps,
                              unified_stride=int(ev.execute_frames), seed=int(ev.seed),
                              tokenizer=loaded.tokenizer_path)


@task(name="closed-loop", cache_policy=NO_CACHE)
def closed_loop_task(p: Params, ev: EvalParams, factories: dict[str, Any], build_seeds: list[int],
                     scratch: Path, meta: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    from wallwm.eval.closed_loop import closed_loop
    from wallwm.eval.runner import run_serial

    if ev.workers > 1:
        from components.compute.ray_eval import ray_runner

        runner = ray_runner(int(ev.workers))
    else:
        runner = run_serial
    return closed_loop(p.data, ev, scratch, factories, build_seeds=build_seeds, run=runner,
                       meta=meta)


def eval_params(p: Params, closed_loop_episodes: int | None) -> EvalParams:
    """`eval:` with the episode count overridden (0: no closed loop, kept as 1 here)."""
    if closed_loop_episodes is None:
        return p.eval
    if closed_loop_episodes < 0:
        raise EvaluationInputError(f"closed_loop_episodes={closed_loop_episodes}: give 0 (no "
                                   f"closed loop) or a positive count per task and condition")
    return EvalParams.model_validate({**p.eval.model_dump(mode="json"),
                                      "episodes": max(1, closed_loop_episodes)})


def build_candidates(p: Params, build_id: str) -> list[Path]:
    """Where a build can be: the builds folder of the home, then the published data folder."""
    repo = Path(os.environ.get("WALLWM_DVC_REPO") or project_root())
    return [wallwm_home() / "builds" / build_id, repo / p.data.output_dir]


def settings_hash(uri: str, p: Params, ev: EvalParams, closed: bool, offline: bool) -> str:
    """What an evaluation's figures depend on besides the code: the model, eval.*, the sim's
    recording settings, the offline batch size."""
    blob = json.dumps({"model": uri, "eval": ev.model_dump(mode="json"), "closed": closed,
                       "offline": offline, "sim": p.data.sim.model_dump(mode="json"),
                       "batch": p.train.batch_size}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@flow(name="evaluate", log_prints=True)
def evaluate(run_id: str | None = None, model_uri: str | None = None,
             build_dir: str | None = None, closed_loop_episodes: int | None = None,
             params_files: list[str] | None = None, sets: list[str] | None = None,
             params: dict[str, Any] | None = None, offline: bool = True,
             fresh: bool = False) -> dict[str, Any]:
    """Evaluate the model of training run `run_id` (or `model_uri`; with both, the URI is
    evaluated and linked to that run). `closed_loop_episodes`: per task and condition
    (default eval.episodes; 0: offline only). `params`: a resolved parameter tree (what the
    retrain passes) instead of params.yaml + `params_files` + `sets`."""
    log = get_run_logger()
    if not run_id and not model_uri:
        raise EvaluationInputError("evaluate: give a training run id (--run) or a model URI "
                                   "(--model)")
    p = Params.model_validate(params) if params is not None else load_params(
        extra_files=params_files or [], sets=sets or [])
    closed = closed_loop_episodes != 0
    if not (offline or closed):
        raise EvaluationInputError("evaluate: offline=False and closed_loop_episodes=0 leave "
                                   "nothing to evaluate")
    ev = eval_params(p, closed_loop_episodes)
    uri = model_uri or model_of_run(str(run_id))
    phash = settings_hash(uri, p, ev, closed, offline)
    old = None if fresh or not run_id else _reusable(str(run_id), p, phash)
    if old is None:
        loaded = load_model(uri)
        lineage = loaded.lineage
        train_run = run_id or lineage.get("train_run")
        if not fresh and not run_id and train_run:
            old = _reusable(str(train_run), p, phash)
    if old is not None:
        log.info("model %s was evaluated with these settings: run %s (reused; fresh=True "
                 "evaluates again)", uri, old.info.run_id)
        return _result(old, uri, old.data.tags.get(TRAIN_RUN_TAG), _cells_of(old.info.run_id),
                       True)
    build_id = str(lineage.get("build_id") or "")
    if not build_id:
        raise EvaluationInputError(f"model {uri}: its lineage.json names no build_id; it was "
                                   f"not logged by `wallwm train` (flows/train.py)")
    from wallwm.eval.offline import locate_build
    from wallwm.eval.seeds import manifest_build_seeds
    from wallwm.eval.spec import ModelContract

    build = locate_build(build_id, [Path(build_dir)] if build_dir else
                         build_candidates(p, build_id))
    manifest = json.loads((build / "manifest.json").read_text())
    factories: dict[str, Any] = {}
    if closed:  # refuse a model that does not fit before anything runs
        from wallwm.eval.closed_loop import model_factory

        factories["model"] = model_factory(loaded.model, loaded.tokenizer_path,
                                           ModelContract.from_json(loaded.contract), p.data, ev)
    experiment = experiment_of(train_run, p.project.experiment)
    tags = evaluation_tags(uri, build_id, train_run, {
        PARAMS_TAG: phash, "wallwm.eval_mode": ev.mode, "wallwm.build_dir": str(build),
        "wallwm.data_dvc_md5": str(lineage.get("dvc_md5", "unknown")),
        "wallwm.eval_closed_loop_episodes": str(ev.episodes if closed else 0)})
    name = f"eval-{lineage.get('train_run_name') or build_id}"
    with evaluation_run(experiment, name, tags) as run:
        out = wallwm_home() / "evaluations" / run.info.run_id
        (out / "plots").mkdir(parents=True, exist_ok=True)
        metrics: dict[str, float] = {}
        closed_images: list[tuple[str, str]] = []
        offline_images: list[tuple[str, str]] = []
        off = None
        if offline:
            from wallwm.eval.offline import write_offline_plots

            off = offline_task(loaded, build, p, ev)
            metrics.update(offline_metrics(off, ev.mode))
            for key, path in write_offline_plots(off, out / "plots").items():
                offline_images.append((key.replace("_", " "), f"plots/{path.name}"))
        results, cells, closed_meta, videos = None, None, None, []
        if closed:
            from wallwm.eval.metrics import summarize

            with tempfile.TemporaryDirectory(prefix="wallwm-eval-") as scratch:
                results, paths = closed_loop_task(
                    p, ev, factories, manifest_build_seeds(manifest), Path(scratch),
                    {"model_uri": uri, "train_run": train_run or "unknown"})
                closed_meta = json.loads(Path(paths["metrics"]).read_text())["meta"]
                for what in ("success", "progress"):  # report.md/html are superseded below
                    dst = out / "plots" / f"closed_loop_{what}.png"
                    shutil.move(str(paths[f"{what}_png"]), dst)
                    closed_images.append((f"closed loop: {what}", f"plots/{dst.name}"))
                (out / "videos").mkdir(exist_ok=True)
                for v in paths["videos"]:
                    shutil.move(str(v), out / "videos" / Path(v).name)
                    videos.append(f"videos/{Path(v).name}")
            cells = summarize(results)
            metrics.update(closed_loop_metrics(cells))
        head = headline(metrics)
        from wallwm.eval.offline import write_evaluation_report

        write_evaluation_report(
            out, title=f"Evaluation of {uri}", headline=head, offline=off, closed=results,
            closed_meta=closed_meta, images=closed_images + offline_images, videos=videos,
            meta={"model": uri, "training run": train_run or "unknown", "build": build_id,
                  "build folder": str(build), "mode": ev.mode,
                  "closed-loop episodes per cell": ev.episodes if closed else 0})
        log_evaluation(out, metrics, _flat_params(ev, closed))
        for k, v in head.items():
            log.info("%s = %.4f", k, v)
    return _result(mlflow.get_run(run.info.run_id), uri, train_run, cells, False, out)


def _flat_params(ev: EvalParams, closed: bool) -> dict[str, Any]:
    d = {f"eval.{k}": v for k, v in ev.model_dump(mode="json").items()}
    d["eval.closed_loop"] = closed
    return d


def _cells_of(run_id: str) -> list[dict[str, Any]] | None:
    """The closed-loop cells in an evaluation run's metrics.json (None: offline only)."""
    with tempfile.TemporaryDirectory() as d:
        got = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="metrics.json",
                                                  dst_path=d)
        closed = json.loads(Path(got).read_text()).get("closed_loop")
    return None if not closed else closed["cells"]


def _reusable(train_run: str, p: Params, phash: str) -> Any:
    """A finished evaluation run of `train_run` made with the same settings, or None."""
    for old in find_evaluations(train_run, experiment_of(train_run, p.project.experiment)):
        if old.data.tags.get(PARAMS_TAG) == phash and old.info.status == "FINISHED":
            return old
    return None


def _result(run: Any, uri: str, train_run: str | None, cells: list[dict[str, Any]] | None,
            reused: bool, out: Path | None = None) -> dict[str, Any]:
    from wallwm.eval.report import table

    return {"evaluation_run_id": run.info.run_id, "url": run_url(run), "model_uri": uri,
            "train_run": train_run, "build_id": run.data.tags.get("wallwm.build_id"),
            "build_dir": run.data.tags.get("wallwm.build_dir"),
            "headline": headline(run.data.metrics),
            "success_table": table(cells, "success") if cells else None, "reused": reused,
            "out_dir": str(out) if out else None}


def evaluate_after_training(train_result: Mapping[str, Any], params: Params,
                            closed_loop_episodes: int) -> dict[str, Any]:
    """The retrain's evaluation of what `flows.train.train` returned: offline always, closed
    loop with `closed_loop_episodes` per task and condition (0: none)."""
    uri = train_result.get("model_uri")
    if not uri:
        raise EvaluationInputError(
            f"training run {train_result.get('run_name')} logged no model (no stage produced "
            f"a checkpoint); nothing to evaluate")
    return evaluate(run_id=train_result.get("mlflow_run_id"), model_uri=uri,
                    closed_loop_episodes=int(closed_loop_episodes),
                    params=params.model_dump(mode="json"))


def main(argv: list[str] | None = None) -> int:
    from components.stack import require_stack

    require_stack()  # exit 3 with the hint when a service is missing or stale
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--build", default=None)
    ap.add_argument("--episodes", type=int, default=None)
    ap.add_argument("--params", action="append", default=[])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--fresh", action="store_true")
    a = ap.parse_args(argv)
    out = evaluate(a.run, a.model, a.build, a.episodes, a.params, a.sets, fresh=a.fresh)
    print(json.dumps({k: v for k, v in out.items() if k != "success_table"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
