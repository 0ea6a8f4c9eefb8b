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


_STAGE_SEED = {"video": 0, "action": 1, "reasoning": 2, "staircase": 3, "next_chunk": 4,
               "end_to_end": 5}


def _accelerator(p: Params) -> str:
    if p.train.device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if p.train.device == "cuda" else "cpu"


def make_trainer(p: Params, stage_dir: Path, monitor: str, logger: Any = None,
                 callbacks: list | None = None, **kw: Any) -> tuple[L.Trainer, ModelCheckpoint]:
    ckpt = ModelCheckpoint(dirpath=stage_dir, filename="best", monitor=monitor, mode="min",
                           save_last=True, save_top_k=1, every_n_epochs=1)
    kw.setdefault("limit_val_batches", p.train.val_batches or 1.0)  # 1.0: the whole split
    trainer = L.Trainer(
        max_steps=p.train.max_steps, accelerator=_accelerator(p), precision=p.train.precision,
        logger=logger if logger is not None else False, callbacks=[ckpt, *(callbacks or [])],
        check_val_every_n_epoch=1, num_sanity_val_steps=0, log_every_n_steps=5,
        use_distributed_sampler=False,  # the balanced sampler shards by rank itself
        enable_model_summary=False, default_root_dir=str(stage_dir), **kw)
    return trainer, ckpt


def stage_params(params: Params, stage_name: str) -> Params:
    """`params` with `train.max_steps` set to this stage's budget (`train.stage_steps`) and the
    learning rates scaled by its factor (`train.stage_lr`), so the trainer, the LR schedule and
    the checkpoint's hyperparameters agree on them. A stage shorter than one epoch
    (`val_every`) gets one epoch of its length: it still validates and keeps a best
    checkpoint."""
    t = params.train
    steps, scale = t.steps_for(stage_name), float(t.stage_lr.get(stage_name, 1.0))
    if steps == t.max_steps and scale == 1.0:
        return params
    return params.model_copy(update={"train": t.model_copy(update={
        "max_steps": steps, "val_every": min(steps, t.val_every), "lr": t.lr * scale,
        "adamw_lr": t.adamw_lr * scale})})


def run_stage(params: Params, stage_name: str, build_dir: Path, stage_dir: Path,
              init_from: Path | None = None, resume: bool = True, logger: Any = None,
              callbacks: list | None = None, figures_dir: Path | None = None,
              **trainer_kw: Any) -> StageResult:
    """Train one stage; starts from `init_from` (the previous stage's best weights)."""
    from wallwm.train.data import data_module
    from wallwm.train.decoder import pretrain_decoder
    from wallwm.train.stats import train_split_stats

    params = stage_params(params, stage_name)
    L.seed_everything(params.project.seed + _STAGE_SEED.get(stage_name, 0), workers=True,
                      verbose=False)  # a stage is reproducible from (seed, stage)
    module = WallWMModule(params.model_dump(mode="json"), stage_name)
    if init_from is not None:  # same architecture across stages: strict
        module.load_model_weights(torch.load(init_from, map_location="cpu",
                                             weights_only=False)["state_dict"])
    dm = data_module(build_dir, params, module.stage.mode, tiers=module.stage.tiers)
    stage_dir.mkdir(parents=True, exist_ok=True)
    trainer, ckpt = make_trainer(params, stage_dir, module.stage.monitor, logger, callbacks,
                                 **trainer_kw)
    last = stage_dir / "last.ckpt"
    resuming = resume and last.exists()
    initial = None
    extra: dict[str, float] = {}
    if not resuming:  # (a resumed stage restores statistics and decoder from its checkpoint)
        cfg = module.model.cfg
        stats = train_split_stats(build_dir, cfg.action_dim, cfg.state_dim)
        module.model.norm.set_stats(stats["action_mean"], stats["action_std"],
                                    stats["state_mean"], stats["state_std"])
        if module.stage.needs_decoder and not bool(module.model.reasoning.decoder_trained):
            t = params.train
            extra = pretrain_decoder(module.model, build_dir, t.decoder_steps, t.decoder_lr,
                                     t.decoder_batch_size, params.project.seed)
            module.refresh_teacher()
        initial = _val(trainer.validate(module, datamodule=dm, verbose=False), module)
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resuming else None)
    final = _val(trainer.validate(module, datamodule=dm, verbose=False), module)
    figs: list[Path] = []
    if figures_dir is not None and trainer.is_global_zero:
        figs = sample_figures(module, dm, figures_dir / stage_name)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    return StageResult(
        stage_name, initial, final, ckpt.best_model_path or None,
        str(last) if last.exists() else None, int(trainer.global_step), figs,
        {**metrics, **extra},
    )


def _val(results: list[dict], module: WallWMModule) -> float | None:
    if not results:
        return None
    return float(results[0].get(module.stage.monitor, float("nan")))


def _head(batch: Any, k: int) -> Any:
    return batch.replace(**{f: (getattr(batch, f)[:k] if isinstance(getattr(batch, f),
                                                                    torch.Tensor) else
                                getattr(batch, f))
                            for f in batch.__dataclass_fields__})


@torch.no_grad()
def sample_figures(module: WallWMModule, dm: Any, out: Path, n: int = 3) -> list[Path]:
    """What `predict` makes of a few validation samples (deployment condition): boundary
    frames and action trajectories against the truth, and in unified mode the CoT latents
    decoded to text beside the reference CoT (`cot_samples.md`)."""
    from wallwm.data.tokenizer import EOS, decode_batch, load_tokenizer, special_id

    module.eval()
    loaders = dm.val_dataloader()
    loaders = loaders if isinstance(loaders, list) else [loaders]
    paths: list[Path] = []
    for loader in loaders:
        batch = next(iter(loader)).to(module.device)
        small = _head(batch, min(n, batch.batch_size))
        mode = small.mode
        sub = out if len(loaders) == 1 else out / mode
        pred = module.model.predict(small.replace(future=None), mode=mode,
                                    generator=torch.Generator().manual_seed(0))
        if pred.get("frames") is not None and small.future is not None:
            paths.append(boundary_frames_png(small.obs, small.future, pred["frames"],
                                             sub / "boundary_frames.png"))
        if small.actions is not None and small.action_mask is not None:
            La = min(small.actions.shape[1], pred["actions"].shape[1])
            paths.append(action_trajectories_png(small.actions[:, :La],
                                                 pred["actions"][:, :La],
                                                 small.action_mask[:, :La],
                                                 sub / "actions.png"))
        if mode == "unified" and small.cot_ids is not None and pred["cot_latents"] is not None \
                and bool(module.model.reasoning.decoder_trained):
            tok = load_tokenizer(Path(dm.build_dir) / "tokenizer.json")
            eos = special_id(tok, EOS)
            gen = module.model.reasoning.decode_text(pred["cot_latents"],
                                                     module.model.cfg.max_text_len, eos)
            said = decode_batch(tok, gen.cpu().numpy())
            ref = decode_batch(tok, small.cot_ids.cpu().numpy(), small.cot_mask.cpu().numpy())
            inst = decode_batch(tok, small.text_ids.cpu().numpy(),
                                small.text_mask.cpu().numpy())
            lines = ["| instruction | reference CoT | decoded CoT latents |", "|---|---|---|"]
            lines += [f"| {i} | {r} | {d} |" for i, r, d in zip(inst, ref, said, strict=True)]
            f = sub / "cot_samples.md"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("\n".join(lines) + "\n")
            paths.append(f)
    return paths
