"""`DistillModule`: the Lightning face of step distillation, teacher and student in one module.

The student is a copy of the teacher (weights, normalization statistics, text decoder), so
at step 0 it *is* the teacher cut naively to K steps; the teacher stays frozen in eval mode.
Only the student's video tower and action tower train (the towers of `distill.towers`; its
text encoder and reasoning branch keep the teacher's weights: their inputs are not sampled).
Both live in the checkpoint, so a resumed run needs nothing but its `last.ckpt`.

Noise is drawn from a generator seeded by (seed, global step, mode), so a resumed run sees
the draws it would have seen; validation uses fixed seeds per batch, like training's.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import lightning as L
import torch

from wallwm.config.schema import Params
from wallwm.distill.losses import Weights, distill_losses
from wallwm.distill.trajectory import segments
from wallwm.model.batch import WorldActionBatch
from wallwm.model.config import LossWeights, WallWMConfig
from wallwm.model.wallwm import WallWM

VAL_SEED = 20_000
MODE_INDEX = {"event": 0, "unified": 1}


def config_from_dict(raw: dict[str, Any]) -> WallWMConfig:
    """A `WallWMConfig` from its `to_dict()` (JSON: tuples as lists, loss weights as a dict)."""
    raw = dict(raw)
    raw["loss"] = LossWeights(**raw["loss"]) if isinstance(raw.get("loss"), dict) else \
        raw.get("loss", LossWeights())
    raw["depth_range"] = tuple(raw["depth_range"])
    return WallWMConfig(**raw)


class DistillModule(L.LightningModule):
    def __init__(self, params: dict[str, Any], model_cfg: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters()  # resolved params + the teacher's config: rebuilds itself
        self.params = Params.model_validate(params)
        d = self.params.distill
        cfg = config_from_dict(model_cfg)
        self.teacher, self.student = WallWM(cfg), WallWM(cfg)
        self.segs = segments(d.student_steps, d.teacher_steps)
        self.weights = Weights.from_params(d)
        self.towers = tuple(d.towers)
        self._sums: dict[str, dict[str, float]] = {}
        self._freeze()

    # ------------------------------------------------------------------ weights
    def init_from_teacher(self, teacher: WallWM) -> None:
        """Teacher and student both start as `teacher` (strict: the same architecture)."""
        teacher.norm.require()
        state = teacher.state_dict()
        self.teacher.load_state_dict(state)
        self.student.load_state_dict(state)
        self._freeze()

    def trainable(self) -> list[torch.nn.Parameter]:
        sets = {"video": self.student.video, "action": self.student.action}
        return [p for t in self.towers for p in sets[t].parameters()]

    def _freeze(self) -> None:
        self.teacher.requires_grad_(False).eval()
        keep = {id(p) for p in self.trainable()}
        for p in self.student.parameters():
            p.requires_grad_(id(p) in keep)

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        self.teacher.eval()
        return self

    # ------------------------------------------------------------------ steps
    def _generator(self, mode: str, offset: int = 0) -> torch.Generator:
        seed = int(self.params.distill.seed)
        return torch.Generator().manual_seed(
            seed * 1_000_003 + 2 * int(self.global_step) + MODE_INDEX[mode] + offset)

    def _batches(self, batch: WorldActionBatch | dict[str, WorldActionBatch]
                 ) -> dict[str, WorldActionBatch]:
        return batch if isinstance(batch, dict) else {batch.mode: batch}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        total = None
        for mode, b in self._batches(batch).items():
            losses = distill_losses(self.student, self.teacher, b, self.segs, self.weights,
                                    self.towers, self._generator(mode))
            self.log_dict({f"train/{mode}/{k}": v.detach() for k, v in losses.items()},
                          batch_size=b.batch_size)
            total = losses["loss"] if total is None else total + losses["loss"]
        assert total is not None
        self.log("train_loss", total.detach(), prog_bar=True)
        return total

    def on_validation_epoch_start(self) -> None:
        self._sums = defaultdict(lambda: defaultdict(float))

    def validation_step(self, batch: WorldActionBatch, batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        g = torch.Generator().manual_seed(VAL_SEED + 1000 * dataloader_idx + batch_idx)
        losses = distill_losses(self.student, self.teacher, batch, self.segs, self.weights,
                                self.towers, g, baselines=True)
        sums, n = self._sums[batch.mode], batch.batch_size
        for k, v in losses.items():
            sums[k] += float(v) * n
        sums["n"] += n

    def on_validation_epoch_end(self) -> None:
        out: dict[str, float] = {}
        totals = []
        for mode, sums in sorted(self._sums.items()):
            n = max(sums.pop("n", 0.0), 1.0)
            means = {k: v / n for k, v in sums.items()}
            out.update({f"val/{mode}/{k}": v for k, v in means.items()})
            totals.append(means["loss"])
            naive = means.get("baseline/naive_action_gt")
            if naive:
                out[f"val/{mode}/action_gt_vs_naive"] = means["action_gt"] / naive
        if totals:
            out["val/loss"] = sum(totals) / len(totals)
        for k, v in out.items():
            self.log(k, v)
        self._sums = {}

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        from torch.optim.lr_scheduler import LambdaLR

        from wallwm.train.optim import warmup_cosine

        d = self.params.distill
        opt = torch.optim.AdamW(self.trainable(), lr=float(d.lr),
                                weight_decay=float(d.weight_decay))
        sched = LambdaLR(opt, warmup_cosine(int(d.warmup_steps), int(d.max_steps)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if isinstance(batch, WorldActionBatch):
            return batch.to(device)
        if isinstance(batch, dict):
            return {k: v.to(device) if isinstance(v, WorldActionBatch) else v
                    for k, v in batch.items()}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
