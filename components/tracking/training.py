"""MLflow for training: a Lightning logger bound to a run, checkpoints uploaded as they are
written (so a run can resume on another machine), restore, and the final model with a signature."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import mlflow
import numpy as np
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient


def lightning_logger(run_id: str) -> MLFlowLogger:
    """Lightning's MLflow logger writing into the existing run `run_id`."""
    return MLFlowLogger(tracking_uri=mlflow.get_tracking_uri(), run_id=run_id,
                        log_model=False)


class UploadCheckpoints(L.Callback):
    """Upload `last.ckpt` (and `best.ckpt`) of a stage to the run's `checkpoints/<stage>/`.

    Lightning runs checkpoint callbacks last, so a checkpoint written at the end of an epoch is
    uploaded at the start of the next one, and at the end of the fit."""

    def __init__(self, run_id: str, stage: str, stage_dir: Path):
        self.run_id, self.stage, self.stage_dir = run_id, stage, Path(stage_dir)
        self._sent: dict[str, float] = {}

    def _upload(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        client = MlflowClient()
        for name in ("last.ckpt", "best.ckpt"):
            f = self.stage_dir / name
            if f.exists() and self._sent.get(name) != f.stat().st_mtime:
                client.log_artifact(self.run_id, str(f), artifact_path=f"checkpoints/{self.stage}")
                self._sent[name] = f.stat().st_mtime

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._upload(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._upload(trainer)


def restore_checkpoint(run_id: str, stage: str, dst_dir: Path) -> Path | None:
    """Download `checkpoints/<stage>/last.ckpt` of `run_id` into `dst_dir` if it is there."""
    client = MlflowClient()
    names = {a.path for a in client.list_artifacts(run_id, f"checkpoints/{stage}")}
    want = f"checkpoints/{stage}/last.ckpt"
    if want not in names:
        return None
    import tempfile

    dst_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst_dir) as tmp:  # MLflow saves <dst>/last.ckpt
        got = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=want,
                                                       dst_path=tmp))
        final = dst_dir / "last.ckpt"
        os.replace(got, final)  # same file system: atomic
    return final


def find_run(experiment: str, name_tag: str, value: str) -> str | None:
    """The newest run of `experiment` whose tag `name_tag` equals `value` (resume by name)."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.`{name_tag}` = '{value}'",
                              order_by=["attributes.start_time DESC"], max_results=1,
                              output_format="list")
    return runs[0].info.run_id if runs else None


MODEL_REQUIREMENTS = ("torch", "numpy", "safetensors", "jaxtyping", "tokenizers", "mlflow")


def _pins(names: tuple[str, ...]) -> list[str]:
    """`name==version` from the lock (constraints.txt) where it has them, else installed."""
    from importlib.metadata import version

    from components.stack.home import project_root

    lock: dict[str, str] = {}
    path = project_root() / "constraints.txt"
    if path.exists():
        for line in path.read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                k, v = line.split("==", 1)
                lock[k.strip().lower()] = v.strip()
    return [f"{n}=={lock.get(n, version(n))}" for n in names]


def _signature(cfg: Any) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    V, S, A = cfg.views, cfg.image_size, cfg.action_dim
    f32, i64, b8 = np.dtype("float32"), np.dtype("int64"), np.dtype("bool")
    inputs = Schema([
        TensorSpec(f32, (-1, V, 3, S, S), "obs"), TensorSpec(i64, (-1, -1), "text_ids"),
        TensorSpec(b8, (-1, -1), "text_mask"), TensorSpec(f32, (-1, cfg.state_dim), "state"),
        TensorSpec(f32, (-1, V, 3, 3), "intrinsics"), TensorSpec(f32, (-1, V, 4, 4), "extrinsics"),
        TensorSpec(b8, (-1, V), "calibrated"), TensorSpec(f32, (-1,), "abs_time"),
        TensorSpec(i64, (-1,), "event_type")])
    outputs = Schema([TensorSpec(f32, (-1, -1, A), "actions"),
                      TensorSpec(b8, (-1, -1), "action_mask"),
                      TensorSpec(f32, (-1, -1), "end_prob")])
    params = ParamSchema([ParamSpec("mode", "string", "event"), ParamSpec("steps", "long", 0),
                          ParamSpec("seed", "long", 0)])
    return ModelSignature(inputs, outputs, params)


def log_model(model: Any, tokenizer: Path, contract: dict[str, Any], lineage: dict[str, Any],
              name: str = "model") -> str:
    """Log a trained `WallWM` as a self-contained pyfunc model (see pyfunc_model.py): weights
    (normalization statistics and the text decoder included), config, the build's tokenizer,
    the contract (cameras, sizes, embodiment) and lineage; returns its `models:/m-...` URI."""
    import tempfile

    from safetensors.torch import save_file

    import components.tracking.pyfunc_model as code
    import wallwm
    from wallwm.util.atomic import atomic_write_text

    model.norm.require()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(d / "weights.safetensors"))
        atomic_write_text(d / "config.json", json.dumps(model.cfg.to_dict(), default=list))
        atomic_write_text(d / "contract.json", json.dumps(contract, indent=2))
        atomic_write_text(d / "lineage.json", json.dumps(lineage, indent=2, default=str))
        shutil.copyfile(tokenizer, d / "tokenizer.json")
        arts = {k: str(d / f) for k, f in (("weights", "weights.safetensors"),
                                           ("config", "config.json"),
                                           ("contract", "contract.json"),
                                           ("lineage", "lineage.json"),
                                           ("tokenizer", "tokenizer.json"))}
        info = mlflow.pyfunc.log_model(
            name=name, python_model=code.__file__, artifacts=arts,
            code_paths=[str(Path(wallwm.__file__).parent)], signature=_signature(model.cfg),
            pip_requirements=_pins(MODEL_REQUIREMENTS))
    return info.model_uri


@dataclass
class LoadedModel:
    """A logged model, loaded for evaluation, distillation or export."""

    model: Any  # WallWM, eval mode
    tokenizer_path: Path
    contract: dict[str, Any]
    lineage: dict[str, Any]
    local_dir: Path


def load_logged_model(uri: str, dst: Path | None = None) -> LoadedModel:
    """Download a model logged by `log_model` (`models:/...`, `runs:/<id>/model` or a local
    folder) and load it."""
    if Path(uri).exists():
        local = Path(uri)
    else:  # one folder per model URI under the stack's home: a second load reuses it
        import hashlib

        from components.stack.home import wallwm_home

        dst = dst or wallwm_home() / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16]
        if not (dst / "MLmodel").exists():
            from wallwm.util.atomic import atomic_dir

            with atomic_dir(dst) as staging:
                got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri,
                                                               dst_path=str(staging)))
                if got != staging:  # the model folder inside the download
                    for item in got.iterdir():
                        os.replace(item, staging / item.name)
        local = dst
    pm = mlflow.pyfunc.load_model(str(local))
    impl = pm.unwrap_python_model()
    art = local / "artifacts"
    return LoadedModel(impl.model, art / "tokenizer.json",
                       json.loads((art / "contract.json").read_text()),
                       json.loads((art / "lineage.json").read_text()), local)
