"""MLflow for training: a Lightning logger bound to a run, checkpoints uploaded as they are
written (so a run can resume on another machine), restore, and the final model with a signature."""

from __future__ import annotations

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
    dst_dir.mkdir(parents=True, exist_ok=True)
    got = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=want,
                                              dst_path=str(dst_dir.parent.parent))
    return Path(got)


def find_run(experiment: str, name_tag: str, value: str) -> str | None:
    """The newest run of `experiment` whose tag `name_tag` equals `value` (resume by name)."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.`{name_tag}` = '{value}'",
                              order_by=["attributes.start_time DESC"], max_results=1,
                              output_format="list")
    return runs[0].info.run_id if runs else None


class _WallWMPyfunc(mlflow.pyfunc.PythonModel):
    """Serve a trained checkpoint: a dict of numpy arrays (the WorldActionBatch fields) in, the
    sampled actions / end probabilities out."""

    def load_context(self, context: Any) -> None:
        from wallwm.train.module import WallWMModule

        self.module = WallWMModule.load_from_checkpoint(context.artifacts["checkpoint"],
                                                        map_location="cpu")
        self.module.eval()

    def predict(self, context: Any, model_input: dict[str, np.ndarray], params=None):
        import torch

        from wallwm.model.batch import WorldActionBatch

        mode = (params or {}).get("mode", "event")
        kw = {k: torch.as_tensor(v) for k, v in model_input.items()}
        b = WorldActionBatch(mode=mode, **kw)
        out = self.module.model.predict(b, mode=mode, return_video=False)
        return {"actions": out["actions"].numpy(), "end_prob": out["end_prob"].numpy()}


def log_model(checkpoint: Path, example: dict[str, np.ndarray], output: dict[str, np.ndarray],
              name: str = "model") -> str:
    """Log the checkpoint as an MLflow pyfunc model with an inferred signature; returns its URI."""
    from mlflow.models import infer_signature

    sig = infer_signature(example, output, params={"mode": "event"})
    info = mlflow.pyfunc.log_model(name=name, python_model=_WallWMPyfunc(),
                                   artifacts={"checkpoint": str(checkpoint)}, signature=sig)
    return info.model_uri
