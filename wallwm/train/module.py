"""`WallWMModule`: the Lightning face of the model for one curriculum stage.

One optimizer object (Muon for hidden matrices + AdamW for the rest, `wallwm.train.optim`) so
Lightning's automatic optimization counts one `global_step` per step; the stage decides which
parameter sets train (the rest get `requires_grad=False`) and which losses count. Validation uses
a fixed noise generator per batch, so its loss is comparable across steps and runs.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from wallwm.config.schema import Params
from wallwm.model.batch import WorldActionBatch
from wallwm.model.config import LossWeights, WallWMConfig
from wallwm.model.wallwm import WallWM
from wallwm.train.stages import Stage, stage


class WallWMModule(L.LightningModule):
    def __init__(self, params: dict[str, Any], stage_name: str):
        super().__init__()
        self.save_hyperparameters()  # the resolved params + stage: a checkpoint rebuilds itself
        self.params = Params.model_validate(params)
        t = self.params.train.loss
        self.stage: Stage = stage(stage_name, LossWeights(t.video, t.action, t.event_end, t.cot))
        self.model = WallWM(WallWMConfig.from_params(self.params))
        self.apply_stage()

    # ------------------------------------------------------------------ stage
    def trainable(self) -> list[torch.nn.Parameter]:
        sets = {"video": self.model.video_parameters, "action": self.model.action_parameters,
                "reasoning": self.model.reasoning_parameters}
        seen: dict[int, torch.nn.Parameter] = {}
        for s in self.stage.trains:
            for p in sets[s]():
                seen[id(p)] = p
        return list(seen.values())

    def apply_stage(self) -> None:
        keep = {id(p) for p in self.trainable()}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in keep)

    # ------------------------------------------------------------------ steps
    def _losses(self, batch: WorldActionBatch, generator: torch.Generator | None) -> dict:
        if self.stage.distill:
            return self._distill(batch)
        return self.model(batch, generator=generator, loss_weights=self.stage.loss)

    def _distill(self, b: WorldActionBatch) -> dict:
        """Staircase student (one relay pass) matches the serial teacher (K passes, detached)."""
        from wallwm.model.reasoning import staircase_distill_loss

        m = self.model
        vis = _visual_tokens(m, b)
        with torch.no_grad():
            teacher = m.reasoning(b.text_ids, b.text_mask.bool(), vis, mode="serial")
        student = m.reasoning(b.text_ids, b.text_mask.bool(), vis, mode="staircase")
        loss = staircase_distill_loss(student, teacher)
        return {"loss": loss, "distill": loss}

    def training_step(self, batch: WorldActionBatch, batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch, None)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()},
                      batch_size=batch.batch_size, prog_bar=False)
        self.log("train_loss", losses["loss"].detach(), prog_bar=True, batch_size=batch.batch_size)
        return losses["loss"]

    def validation_step(self, batch: WorldActionBatch, batch_idx: int) -> None:
        g = torch.Generator().manual_seed(10_000 + batch_idx)  # same noise every validation
        losses = self._losses(batch, g)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, batch_size=batch.batch_size,
                      sync_dist=True)

    def configure_optimizers(self):
        from wallwm.train.optim import make_optimizer

        opt, sched = make_optimizer(self.model, self.params.train, params=self.trainable())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):  # dataclass batches
        return batch.to(device) if isinstance(batch, WorldActionBatch) else super(
        ).transfer_batch_to_device(batch, device, dataloader_idx)


def _visual_tokens(m: WallWM, b: WorldActionBatch) -> torch.Tensor:
    """The observation-frame video features the reasoning module reads (no gradient)."""
    with torch.no_grad():
        ctx, ctx_mask = m.text(b.text_ids, b.text_mask.bool(), m._event_type(b))
        mode_id = m._ids(b, "unified")
        x = b.future if b.future is not None else b.obs[:, :, None]
        t = torch.full((b.batch_size,), m.cfg.video_anchor_t, device=b.obs.device)
        _, feats = m.video(b.obs, x, t, ctx, ctx_mask, mode_id, None, None)
        vis = feats[-1][:, :, 0]
        return vis.reshape(vis.shape[0], -1, vis.shape[-1])
