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
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.compute.ray_train import fit_on_ray, ray_lightning_kwargs, train_storage
from components.retrain.summary import stage_line
from components.stack.home import project_root, wallwm_home
from components.tracking import dataset_entry, start_run
from components.tracking.runs import base_tags
from components.tracking.training import (
    UploadCheckpoints,
    find_run,
    lightning_logger,
    log_model,
    restore_checkpoint,
)
from components.versioning import dvc_md5
from wallwm.config import load_params
from wallwm.config.schema import Params
from wallwm.train.figures import loss_curves_png
from wallwm.util.atomic import atomic_write_text

RUN_TAG = "wallwm.train_run_name"
PARAMS_TAG = "wallwm.train_params_hash"
MODEL_TAG = "wallwm.model_uri"
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
           "figures": [str(f) for f in res.figures], "metrics": _stage_metrics(res.metrics)}
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
        }, p.train.workers, train_storage(wallwm_home() / "ray-train"), f"{run_id}-{stage}",
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
                  "figures": [str(f) for f in res.figures],
                  "metrics": _stage_metrics(res.metrics)}
    log.info("stage %s: %s", stage, stage_line(stage, result))
    return result


def _stage_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The final figures worth a look beside the loss: validation (losses, baselines,
    deployment condition, sampled figures) and the text decoder's pretraining."""
    return {k: float(v) for k, v in metrics.items()
            if k.startswith(("val/", "decoder_")) and v == v}


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
    lineage = build_lineage(repo, p.data.output_dir, build, manifest)
    md5 = lineage["dvc_md5"]
    phash = training_params_hash(p, manifest["build_id"])
    run_name = run_name or f"train-{manifest['build_id']}-{phash[:8]}"
    ckpt_root = wallwm_home() / "checkpoints" / run_name
    existing = find_run(p.project.experiment, RUN_TAG, run_name) if resume else None
    tags = {"wallwm.stage": "train", RUN_TAG: run_name, "wallwm.build_id": manifest["build_id"],
            "wallwm.data_dvc_md5": md5, "wallwm.data_pinned": str(lineage["pinned"]).lower(),
            PARAMS_TAG: phash, "wallwm.data_validation": lineage["validation"]}
    out: dict[str, Any] = {"run_name": run_name, "stages": {}, "reused": False}
    if existing:
        check_resume(existing, run_name, phash, p, manifest["build_id"])
        done_uri = mlflow.get_run(existing).data.tags.get(MODEL_TAG)
        if done_uri and all((ckpt_root / st / "DONE.json").exists() for st in p.train.stages):
            log.info("training run %s is complete (model %s): nothing to train", run_name,
                     done_uri)
            return {"run_name": run_name, "mlflow_run_id": existing, "model_uri": done_uri,
                    "reused": True, "build_id": manifest["build_id"],
                    "stages": {st: json.loads((ckpt_root / st / "DONE.json").read_text())
                               for st in p.train.stages}}
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
            digest = md5 if lineage["pinned"] else manifest["build_id"]  # content address
            mlflow.log_input(dataset_entry(eps, manifest["build_id"], digest, str(build)),
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
                                   tags={**base_tags(), **tags,
                                         RUN_TAG: f"{run_name}/{stage}"})) as sr:
                res = train_stage(p, stage, build, stage_dir, prev, sr.info.run_id, resume)
                if res["initial_val"] is not None:
                    mlflow.log_metric("initial_val_loss", res["initial_val"])
                if res["final_val"] is not None:
                    mlflow.log_metric("final_val_loss", res["final_val"])
                decoder = {k: v for k, v in res.get("metrics", {}).items()
                           if k.startswith("decoder_")}
                if decoder:  # the frozen text decoder's pretraining, beside its unigram baseline
                    mlflow.log_metrics(decoder)
                base = stage_dir.parent / "figures" / stage
                for f in res["figures"]:  # mixed stages keep figures/event/, figures/unified/
                    sub = Path(f).parent
                    rel = sub.relative_to(base).as_posix() if sub.is_relative_to(base) else "."
                    mlflow.log_artifact(f, artifact_path="figures" + (
                        "" if rel == "." else f"/{rel}"))
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
            out["model_uri"] = _log_final_model(p, prev, build, {
                **lineage, "build_id": manifest["build_id"], "train_run": run.info.run_id,
                "train_run_name": run_name, "checkpoint": str(prev)})
            mlflow.set_tag(MODEL_TAG, out["model_uri"])
    out["build_id"] = manifest["build_id"]
    return out


def build_lineage(repo: Path, output_dir: str, build: Path, manifest: dict[str, Any]
                  ) -> dict[str, Any]:
    """The data version of the build trained on: its DVC md5 only when `<output_dir>.dvc`
    pins this very build (else "unpinned": another build is published), and whether it
    passed validation (from its own manifest)."""
    pinned_id = None
    published = repo / output_dir / "manifest.json"
    if published.exists():
        pinned_id = json.loads(published.read_text()).get("build_id")
    md5 = "unpinned"
    if pinned_id == manifest["build_id"]:
        try:
            md5 = dvc_md5(repo, output_dir)
        except Exception:  # noqa: BLE001 - a published folder without a .dvc pin
            md5 = "unpinned"
    val = manifest.get("validation") or {}
    ok = val.get("success", val.get("passed"))
    status = "unknown" if ok is None else ("passed" if ok else "failed")
    return {"dvc_md5": md5, "pinned": md5 != "unpinned", "pinned_build_id": pinned_id,
            "validation": status}


def training_params_hash(p: Params, build_id: str) -> str:
    """What a training run's results depend on: model, train, seed and the build."""
    import hashlib

    blob = json.dumps({"model": p.model.model_dump(mode="json"),
                       "train": p.train.model_dump(mode="json"), "seed": p.project.seed,
                       "build_id": build_id}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResumeMismatch(ValueError):
    """A named run resumed with other parameters: its stages would mix two configurations."""


def check_resume(run_id: str, run_name: str, phash: str, p: Params, build_id: str) -> None:
    """Refuse to resume `run_name` when its recorded params hash differs, naming the keys."""
    run = mlflow.get_run(run_id)
    old = run.data.tags.get(PARAMS_TAG)
    if old is None or old == phash:
        return
    diffs: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as d:
            path = mlflow.artifacts.download_artifacts(run_id=run_id,
                                                       artifact_path="params/resolved.json",
                                                       dst_path=d)
            before = json.loads(Path(path).read_text())
        now = p.model_dump(mode="json")
        for sec in ("model", "train"):
            fb, fn = _flat(before.get(sec, {}), f"{sec}."), _flat(now[sec], f"{sec}.")
            diffs += [f"{k}: {fb.get(k)!r} -> {fn.get(k)!r}" for k in sorted(set(fb) | set(fn))
                      if fb.get(k) != fn.get(k)]
    except Exception:  # noqa: BLE001 - the names are a courtesy; the hashes decide
        pass
    if run.data.tags.get("wallwm.build_id") not in (None, build_id):
        diffs.append(f"build: {run.data.tags['wallwm.build_id']} -> {build_id}")
    raise ResumeMismatch(
        f"training run {run_name!r} was started with other parameters (params hash "
        f"{old[:12]} vs {phash[:12]} now)" + (": " + "; ".join(diffs[:8]) if diffs else "")
        + ". Resume it with the same --params/--set, or start a new run with another "
        "--run-name (or --no-resume)")


def _lw(p: Params):
    from wallwm.model.config import LossWeights

    t = p.train.loss
    return LossWeights(t.video, t.action, t.event_end, t.cot)


def _log_final_model(p: Params, checkpoint: Path, build: Path, lineage: dict[str, Any]) -> str:
    """The last stage's best weights as a self-contained pyfunc model (weights with their
    normalization statistics, tokenizer, the contract of what it was trained on, lineage)."""
    import pandas as pd

    from wallwm.eval.spec import ModelContract
    from wallwm.train.module import WallWMModule
    from wallwm.train.stages import ROBOT_TIERS

    m = WallWMModule.load_from_checkpoint(str(checkpoint), map_location="cpu").eval()
    eps = pd.read_parquet(build / "episodes.parquet")
    robot = sorted(set(eps[eps.tier.isin(ROBOT_TIERS)].dataset)) or sorted(set(eps.dataset))
    contract = ModelContract.from_dataset(build / robot[0], m.model.cfg.views,
                                          p.data.annotate.vocabulary).to_json()
    return log_model(m.model, build / "tokenizer.json", contract, lineage)


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
    from components.stack import require_stack

    require_stack()  # exit 3 with the hint when a service is missing or stale
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
