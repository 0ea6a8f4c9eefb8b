"""Run the distillation with Lightning: initial validation, fit (or resume), final validation.

Like `wallwm.train.loop.run_stage`: an "epoch" is `distill.val_every` steps (a validation and
a checkpoint each), the balanced sampler draws the same batches from (seed, epoch), so a
resumed run continues from `last.ckpt` with the data and noise it would have seen. Tracking
(a Lightning logger, callbacks) is passed in; this file has no service client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from wallwm.config.schema import Params
from wallwm.distill.module import DistillModule
from wallwm.model.wallwm import WallWM

MONITOR = "val/loss"


@dataclass
class DistillResult:
    initial_val: float | None
    final_val: float | None
    best_checkpoint: str | None
    last_checkpoint: str | None
    steps: int
    resumed: bool
    metrics: dict[str, float] = field(default_factory=dict)


def distill_params(p: Params) -> Params:
    """`p` with the data module's knobs (train.batch_size, train.val_every) taken from
    `distill.*`, so the build's loaders serve the distillation's batches and epochs."""
    train = p.train.model_copy(update={"batch_size": p.distill.batch_size,
                                       "val_every": p.distill.val_every})
    return p.model_copy(update={"train": train})


def data_module(build_dir: Path, p: Params) -> L.LightningDataModule:
    from wallwm.train.data import data_module as make
    from wallwm.train.stages import ROBOT_TIERS

    modes = list(p.distill.modes)
    return make(build_dir, distill_params(p), "mixed" if len(modes) > 1 else modes[0],
                tiers=ROBOT_TIERS)


def _accelerator(p: Params) -> str:
    if p.train.device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if p.train.device == "cuda" else "cpu"


def run_distill(p: Params, teacher: WallWM, build_dir: Path, out_dir: Path,
                resume: bool = True, logger: Any = None, callbacks: list | None = None,
                **trainer_kw: Any) -> DistillResult:
    """Distil `teacher` on the build; checkpoints in `out_dir` (best.ckpt, last.ckpt)."""
    d = p.distill
    module = DistillModule(p.model_dump(mode="json"), teacher.cfg.to_dict())
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "last.ckpt"
    resuming = resume and last.exists()
    if not resuming:
        module.init_from_teacher(teacher)
    ckpt = ModelCheckpoint(dirpath=out_dir, filename="best", monitor=MONITOR, mode="min",
                           save_last=True, save_top_k=1, every_n_epochs=1)
    trainer = L.Trainer(
        max_steps=d.max_steps, accelerator=_accelerator(p), precision=p.train.precision,
        logger=logger if logger is not None else False, callbacks=[ckpt, *(callbacks or [])],
        check_val_every_n_epoch=1, num_sanity_val_steps=0, log_every_n_steps=5,
        limit_val_batches=d.val_batches, use_distributed_sampler=False,
        enable_model_summary=False, enable_progress_bar=False, default_root_dir=str(out_dir),
        **trainer_kw)
    dm = data_module(build_dir, p)
    initial = None
    if not resuming:
        initial = _val(trainer.validate(module, datamodule=dm, verbose=False))
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resuming else None)
    final = _val(trainer.validate(module, datamodule=dm, verbose=False))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    return DistillResult(initial, final, ckpt.best_model_path or None,
                         str(last) if last.exists() else None, int(trainer.global_step),
                         resuming, metrics)


def _val(results: list[dict]) -> float | None:
    if not results:
        return None
    return float(results[0].get(MONITOR, float("nan")))


def load_student(checkpoint: Path | str) -> WallWM:
    """The student of a distillation checkpoint, eval mode, on the CPU."""
    m = DistillModule.load_from_checkpoint(str(checkpoint), map_location="cpu")
    return m.student.eval()


def load_pair(checkpoint: Path | str) -> tuple[WallWM, WallWM]:
    """(teacher, student) of a distillation checkpoint, eval mode, on the CPU."""
    m = DistillModule.load_from_checkpoint(str(checkpoint), map_location="cpu")
    return m.teacher.eval(), m.student.eval()
