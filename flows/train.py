"""Train WALL-WM through the curriculum (`train.stages`) on a dataset build, tracked in MLflow.

Every stage is a nested MLflow run under one training run (named; `--run-name` again resumes
it): per-step metrics through Lightning's MLflow logger, system metrics, checkpoints uploaded as
they are written, initial and final validation loss, sample-prediction figures, and at the end
the model with its signature. With `train.workers > 1` each stage runs on Ray Train (DDP).
`wallwm train` and `python -m flows.train` run it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.compute.ray_train import fit_on_ray, ray_lightning_kwargs
from components.stack.home import project_root, wallwm_home
from components.tracking import dataset_entry, start_run
from components.tracking.training import (
    UploadCheckpoints,
    find_run,
    lightning_logger,
    log_model,
    restore_checkpoint,
)
from components.versioning import dvc_md5
from wallwm.config import load_params
from wallwm.config.load import params_hash
from wallwm.config.schema import Params
from wallwm.train.figures import loss_curves_png
from wallwm.util.atomic import atomic_write_text

RUN_TAG = "wallwm.train_run_name"
SERVICE_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL",
               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "WALLWM_HOME")


def _ray_stage_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the same `run_stage`, under Ray's DDP process group."""
    os.environ.update(config["env"])
    import ray.train

    from wallwm.train.loop import run_stage

    p = Params.model_validate(config["params"])
    callbacks, logger = [], None
    if ray.train.get_context().get_world_rank() == 0:
        logger = lightning_logger(config["run_id"])
        callbacks.append(UploadCheckpoints(config["run_id"], config["stage"],
                                           Path(config["stage_dir"])))
    res = run_stage(p, config["stage"], Path(config["build_dir"]), Path(config["stage_dir"]),
                    init_from=Path(config["init_from"]) if config["init_from"] else None,
                    resume=config["resume"], logger=logger, callbacks=callbacks,
                    figures_dir=Path(config["figures_dir"]), **ray_lightning_kwargs())
    out = {"initial_val": res.initial_val, "final_val": res.final_val,
           "best": res.best_checkpoint, "last": res.last_checkpoint, "steps": res.steps,
           "figures": [str(f) for f in res.figures]}
    if ray.train.get_context().get_world_rank() == 0:  # the driver reads it (shared disk) ...
        atomic_write_text(Path(config["stage_dir"]) / "result.json", json.dumps(out))
    ray.train.report({k: v for k, v in out.items() if k != "figures"})  # ... or the report


@task(name="train-stage", cache_policy=NO_CACHE)
def train_stage(p: Params, stage: str, build_dir: Path, stage_dir: Path, init_from: Path | None,
                run_id: str, resume: bool) -> dict[str, Any]:
    log = get_run_logger()
    figures_dir = stage_dir.parent / "figures"
    if resume and not (stage_dir / "last.ckpt").exists():
        got = restore_checkpoint(run_id, stage, stage_dir)  # e.g. after moving machines
        if got:
            log.info("restored %s from MLflow", got)
    if p.train.workers > 1:
        env = {k: os.environ[k] for k in SERVICE_ENV if k in os.environ}
        out = fit_on_ray(_ray_stage_worker, {
            "params": p.model_dump(mode="json"), "stage": stage, "build_dir": str(build_dir),
            "stage_dir": str(stage_dir), "init_from": str(init_from) if init_from else None,
            "resume": resume, "run_id": run_id, "figures_dir": str(figures_dir), "env": env,
        }, p.train.workers, wallwm_home() / "ray-train", f"{run_id}-{stage}",
            use_gpu=p.train.device == "cuda")
        shared = stage_dir / "result.json"
        result = json.loads(shared.read_text()) if shared.exists() else {
            "initial_val": out.get("initial_val"), "final_val": out.get("final_val"),
            "best": out.get("best"), "last": out.get("last"), "steps": out.get("steps"),
            "figures": []}
    else:
        from wallwm.train.loop import run_stage

        res = run_stage(p, stage, build_dir, stage_dir, init_from=init_from, resume=resume,
                        logger=lightning_logger(run_id),
                        callbacks=[UploadCheckpoints(run_id, stage, stage_dir)],
                        figures_dir=figures_dir)
        result = {"initial_val": res.initial_val, "final_val": res.final_val,
                  "best": res.best_checkpoint, "last": res.last_checkpoint, "steps": res.steps,
                  "figures": [str(f) for f in res.figures]}
    log.info("stage %s: val %s -> %s in %s steps", stage, result["initial_val"],
             result["final_val"], result["steps"])
    return result


def _val_curve(run_id: str, key: str) -> list[tuple[int, float]]:
    hist = mlflow.MlflowClient().get_metric_history(run_id, key)
    return [(m.step, m.value) for m in hist]


@flow(name="train", log_prints=True)
def train(params_files: list[str] | None = None, sets: list[str] | None = None,
          build_dir: str | None = None, run_name: str | None = None,
          resume: bool = True) -> dict[str, Any]:
    """Train every stage of `train.stages` on the build (default: the published `data/`)."""
    log = get_run_logger()
    p = load_params(extra_files=params_files or [], sets=sets or [])
    repo = Path(os.environ.get("WALLWM_DVC_REPO") or project_root())
    build = (Path(build_dir) if build_dir else repo / p.data.output_dir).resolve()
    manifest = json.loads((build / "manifest.json").read_text())
    try:
        md5 = dvc_md5(repo, p.data.output_dir)
    except Exception:  # noqa: BLE001 - a build folder outside a DVC repo has no pin
        md5 = "unpinned"
    run_name = run_name or f"train-{manifest['build_id']}-{params_hash(p)[:8]}"
    ckpt_root = wallwm_home() / "checkpoints" / run_name
    existing = find_run(p.project.experiment, RUN_TAG, run_name) if resume else None
    tags = {"wallwm.stage": "train", RUN_TAG: run_name, "wallwm.build_id": manifest["build_id"],
            "wallwm.data_dvc_md5": md5}
    out: dict[str, Any] = {"run_name": run_name, "stages": {}}
    mlflow.set_experiment(p.project.experiment)
    with (mlflow.start_run(run_id=existing, log_system_metrics=True) if existing else
          start_run(p.project.experiment, run_name, tags=tags)) as run:
        if not existing:
            mlflow.log_params(_flat({"train": p.train.model_dump(mode="json"),
                                     "model": {"preset": p.model.preset,
                                               **p.model.size.model_dump(mode="json")}}))
            mlflow.log_dict(p.model_dump(mode="json"), "params/resolved.json")
            import pandas as pd

            eps = pd.read_parquet(build / "episodes.parquet")
            mlflow.log_input(dataset_entry(eps, manifest["build_id"], md5, str(build)),
                             context="training")
        out["mlflow_run_id"] = run.info.run_id
        prev: Path | None = None
        for stage in p.train.stages:
            stage_dir = ckpt_root / stage
            done = stage_dir / "DONE.json"
            if resume and done.exists():
                info = json.loads(done.read_text())
                log.info("stage %s already done (%s): skipped", stage, info["best"])
                out["stages"][stage] = info
                best = info.get("best") or info.get("last")
                prev = Path(best) if best else prev
                continue
            sid = find_run(p.project.experiment, RUN_TAG, f"{run_name}/{stage}") if resume else None
            with (mlflow.start_run(run_id=sid, nested=True) if sid else
                  mlflow.start_run(run_name=stage, nested=True,
                                   tags={**tags, RUN_TAG: f"{run_name}/{stage}"})) as sr:
                res = train_stage(p, stage, build, stage_dir, prev, sr.info.run_id, resume)
                if res["initial_val"] is not None:
                    mlflow.log_metric("initial_val_loss", res["initial_val"])
                if res["final_val"] is not None:
                    mlflow.log_metric("final_val_loss", res["final_val"])
                for f in res["figures"]:
                    mlflow.log_artifact(f, artifact_path="figures")
                from wallwm.train.stages import stage as stage_def

                key = stage_def(stage, _lw(p)).monitor
                curve = loss_curves_png({"train": _val_curve(sr.info.run_id, "train_loss"),
                                         "val": _val_curve(sr.info.run_id, key)},
                                        stage_dir / "loss.png", f"{stage}: loss")
                mlflow.log_artifact(str(curve), artifact_path="figures")
            atomic_write_text(done, json.dumps(res))
            out["stages"][stage] = res
            best = res.get("best") or res.get("last")
            prev = Path(best) if best else prev
        if prev is not None:
            out["model_uri"] = _log_final_model(p, prev)
    return out


def _lw(p: Params):
    from wallwm.model.config import LossWeights

    t = p.train.loss
    return LossWeights(t.video, t.action, t.event_end, t.cot)


def _log_final_model(p: Params, checkpoint: Path) -> str:
    """The last stage's best weights as a pyfunc model whose signature is one event batch."""
    import torch

    from wallwm.model.batch import WorldActionBatch
    from wallwm.model.config import WallWMConfig
    from wallwm.train.module import WallWMModule

    cfg = WallWMConfig.from_params(p)
    b = WorldActionBatch.synthetic(cfg, 1, "event", torch.Generator().manual_seed(0),
                                   with_targets=False)
    example = {k: v.numpy() for k, v in b.__dict__.items()
               if isinstance(v, torch.Tensor)}
    m = WallWMModule.load_from_checkpoint(str(checkpoint), map_location="cpu").eval()
    pred = m.model.predict(b, mode="event", return_video=False,
                           generator=torch.Generator().manual_seed(0))
    output = {"actions": pred["actions"].numpy(), "end_prob": pred["end_prob"].numpy()}
    return log_model(checkpoint, example, output)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", action="append", default=[])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--build", default=None)
    ap.add_argument("--run-name", default=None)
    a = ap.parse_args(argv)
    print(train(a.params, a.sets, a.build, a.run_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
