"""Run one curriculum stage with Lightning: initial validation, fit (or resume), final
validation, sample-prediction figures. Tracking is passed in (a Lightning logger and callbacks),
so this file stays free of service clients.

An "epoch" is `train.val_every` steps: the balanced sampler draws that many batches per epoch
from (seed, epoch), and a checkpoint is written at every epoch end, so a resumed run continues
from the last checkpoint with exactly the data order it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from wallwm.config.schema import Params
from wallwm.train.figures import action_trajectories_png, boundary_frames_png
from wallwm.train.module import WallWMModule


@dataclass
class StageResult:
    stage: str
    initial_val: float | None
    final_val: float | None
    best_checkpoint: str | None
    last_checkpoint: str | None
    steps: int
    figures: list[Path] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def _accelerator(p: Params) -> str:
    if p.train.device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if p.train.device == "cuda" else "cpu"


def make_trainer(p: Params, stage_dir: Path, monitor: str, logger: Any = None,
                 callbacks: list | None = None, **kw: Any) -> tuple[L.Trainer, ModelCheckpoint]:
    ckpt = ModelCheckpoint(dirpath=stage_dir, filename="best", monitor=monitor, mode="min",
                           save_last=True, save_top_k=1, every_n_epochs=1)
    trainer = L.Trainer(
        max_steps=p.train.max_steps, accelerator=_accelerator(p), precision=p.train.precision,
        logger=logger if logger is not None else False, callbacks=[ckpt, *(callbacks or [])],
        check_val_every_n_epoch=1, num_sanity_val_steps=0, log_every_n_steps=5,
        use_distributed_sampler=False,  # the balanced sampler shards by rank itself
        enable_model_summary=False, default_root_dir=str(stage_dir), **kw)
    return trainer, ckpt


def run_stage(params: Params, stage_name: str, build_dir: Path, stage_dir: Path,
              init_from: Path | None = None, resume: bool = True, logger: Any = None,
              callbacks: list | None = None, figures_dir: Path | None = None,
              **trainer_kw: Any) -> StageResult:
    """Train one stage; starts from `init_from` (the previous stage's best weights)."""
    from wallwm.train.data import WallWMDataModule

    module = WallWMModule(params.model_dump(mode="json"), stage_name)
    if init_from is not None:
        state = torch.load(init_from, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)  # same architecture across stages: strict
        module.apply_stage()
    dm = WallWMDataModule(build_dir, params, mode=module.stage.mode,
                          tiers=module.stage.tiers)
    stage_dir.mkdir(parents=True, exist_ok=True)
    trainer, ckpt = make_trainer(params, stage_dir, module.stage.monitor, logger, callbacks,
                                 **trainer_kw)
    last = stage_dir / "last.ckpt"
    resuming = resume and last.exists()
    initial = None
    if not resuming:
        initial = _val(trainer.validate(module, datamodule=dm, verbose=False), module)
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resuming else None)
    final = _val(trainer.validate(module, datamodule=dm, verbose=False), module)
    figs: list[Path] = []
    if figures_dir is not None and trainer.is_global_zero:
        figs = sample_figures(module, dm, figures_dir / stage_name)
    return StageResult(
        stage_name, initial, final, ckpt.best_model_path or None,
        str(last) if last.exists() else None, int(trainer.global_step), figs,
        {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
    )


def _val(results: list[dict], module: WallWMModule) -> float | None:
    if not results:
        return None
    return float(results[0].get(module.stage.monitor, float("nan")))


@torch.no_grad()
def sample_figures(module: WallWMModule, dm: Any, out: Path, n: int = 3) -> list[Path]:
    """Predicted vs true boundary frames and action trajectories on a validation batch."""
    module.eval()
    batch = next(iter(dm.val_dataloader())).to(module.device)
    k = min(n, batch.batch_size)
    small = batch.replace(**{f: (getattr(batch, f)[:k] if isinstance(getattr(batch, f),
                                                                     torch.Tensor) else
                                 getattr(batch, f))
                             for f in batch.__dataclass_fields__})
    g = torch.Generator().manual_seed(0)
    pred = module.model.predict(small, mode=module.stage.mode, generator=g)
    paths = []
    if pred.get("frames") is not None and small.future is not None:
        paths.append(boundary_frames_png(small.obs, small.future, pred["frames"],
                                         out / "boundary_frames.png"))
    if small.actions is not None and small.action_mask is not None:
        La = min(small.actions.shape[1], pred["actions"].shape[1])
        paths.append(action_trajectories_png(small.actions[:, :La], pred["actions"][:, :La],
                                             small.action_mask[:, :La], out / "actions.png"))
    return paths
