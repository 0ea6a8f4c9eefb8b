"""`WallWMModule`: the Lightning face of the model for one curriculum stage.

One optimizer object (Muon for hidden matrices + AdamW for the rest, `wallwm.train.optim`) so
Lightning's automatic optimization counts one `global_step` per step; the stage decides which
parameter sets train (the rest get `requires_grad=False`) and which losses count.

Validation (fixed noise per batch, so figures compare across steps and runs) logs, beside each
loss, the trivial baselines scored on the same draws (`val/baseline/*`), the action loss in the
deployment condition (`val/deploy/*`: the condition `encode` gives, what the robot runs), and
for the first `train.val_sample_batches` batches what `predict` samples against the truth
(`val/sample/*`: action error per dimension beside predict-the-mean, gripper accuracy,
event-end timing, boundary-frame PSNR/SSIM beside copy-the-observation, CoT token accuracy).
A mixed stage (`end_to_end`) trains both modes on one set of weights: every step takes one
event batch and one unified batch.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import lightning as L
import torch

from wallwm.config.schema import Params
from wallwm.model.batch import WorldActionBatch
from wallwm.model.config import LossWeights, WallWMConfig
from wallwm.model.reasoning import cot_token_accuracy, staircase_distill_loss
from wallwm.model.wallwm import WallWM
from wallwm.train import validation as V
from wallwm.train.stages import Stage, stage

VAL_SEED = 10_000


class WallWMModule(L.LightningModule):
    def __init__(self, params: dict[str, Any], stage_name: str):
        super().__init__()
        self.save_hyperparameters()  # the resolved params + stage: a checkpoint rebuilds itself
        self.params = Params.model_validate(params)
        t = self.params.train.loss
        self.stage: Stage = stage(stage_name, LossWeights(t.video, t.action, t.event_end, t.cot))
        self.model = WallWM(WallWMConfig.from_params(self.params))
        # the staircase stage distils from a frozen serial teacher: a copy taken when the
        # stage starts (`refresh_teacher`), saved in the stage's checkpoints
        self.teacher = copy.deepcopy(self.model.reasoning) if self.stage.distill else None
        self._sums: dict[str, dict[str, float]] = {}
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
        if self.teacher is not None:
            self.teacher.requires_grad_(False).eval()

    def load_model_weights(self, state: dict[str, torch.Tensor]) -> None:
        """The previous stage's weights (its `state_dict`, `model.*` keys), strictly; a
        teacher is then re-taken from them."""
        own = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        self.model.load_state_dict(own)
        self.refresh_teacher()
        self.apply_stage()

    def refresh_teacher(self) -> None:
        if self.teacher is not None:
            self.teacher.load_state_dict(self.model.reasoning.state_dict())
            self.teacher.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> WallWMModule:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # ------------------------------------------------------------------ losses
    def _losses(self, batch: WorldActionBatch, generator: torch.Generator | None) -> dict:
        if self.stage.distill:
            return self._distill(batch)
        return self.model(batch, generator=generator, loss_weights=self.stage.loss)

    def _distill(self, b: WorldActionBatch) -> dict:
        """Staircase student (one relay pass) matches the frozen serial teacher (K passes),
        anchored by the CoT loss through the frozen decoder, so it cannot drift into latents
        that match a teacher but say nothing."""
        assert self.teacher is not None
        m = self.model
        with torch.no_grad():
            noise = m.draw_noise(b, "unified", torch.Generator().manual_seed(0))[0]
            vis = m.visual_tokens(b, "unified", noise)  # (B, V*N, D), as at inference
            teacher = self.teacher(b.text_ids, b.text_mask.bool(), vis, mode="serial")
        student = m.reasoning(b.text_ids, b.text_mask.bool(), vis, mode="staircase")
        distill = staircase_distill_loss(student, teacher)
        out = {"distill": distill}
        loss = distill
        if b.cot_ids is not None and b.cot_mask is not None and self.stage.loss.cot > 0:
            out["cot"] = m.reasoning.cot_loss(student, b.cot_ids, b.cot_mask.bool())
            loss = loss + self.stage.loss.cot * out["cot"]
        with torch.no_grad():  # predict-the-mean-latent baseline of the distillation loss
            mean = teacher.mean(0, keepdim=True).expand_as(teacher)
            out["baseline/distill_mean_latent"] = staircase_distill_loss(mean, teacher)
        out["loss"] = loss
        return out

    def training_step(self, batch: WorldActionBatch | dict[str, WorldActionBatch],
                      batch_idx: int) -> torch.Tensor:
        batches = batch if isinstance(batch, dict) else {"": batch}
        total = None
        for name, b in batches.items():
            losses = self._losses(b, None)
            pre = f"train/{name}/" if name else "train/"
            self.log_dict({f"{pre}{k}": v.detach() for k, v in losses.items()
                           if not k.startswith("baseline/")}, batch_size=b.batch_size)
            total = losses["loss"] if total is None else total + losses["loss"]
        assert total is not None
        self.log("train_loss", total.detach(), prog_bar=True,
                 batch_size=next(iter(batches.values())).batch_size)
        return total

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._sums = defaultdict(lambda: defaultdict(float))

    def validation_step(self, batch: WorldActionBatch, batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        mixed = self.stage.mode == "mixed"
        pre = f"{batch.mode}/" if mixed else ""
        seed = VAL_SEED + 1000 * dataloader_idx + batch_idx
        g = torch.Generator().manual_seed(seed)
        losses = self._losses(batch, g)
        n = batch.batch_size
        sums = self._sums[pre]
        for k, v in losses.items():
            sums[k] += float(v) * n
        sums["n"] += n
        uses_action = (self.stage.loss.action > 0 or self.stage.loss.event_end > 0) \
            and not self.stage.distill
        if uses_action:
            for k, v in V.deploy_losses(self.model, batch, seed, self.stage.loss).items():
                if not k.startswith("baseline/"):
                    sums[f"deploy/{k}"] += float(v) * n
        if batch_idx < self.params.train.val_sample_batches and not self.stage.distill:
            V.merge(self._sums[f"{pre}sample/"], V.sample_metrics(self.model, batch, seed))
        if batch.mode == "unified" and batch.cot_ids is not None and batch_idx < max(
                1, self.params.train.val_sample_batches) and bool(
                self.model.reasoning.decoder_trained):
            cond = self.model.encode(batch.replace(future=None), "unified",
                                     generator=torch.Generator().manual_seed(seed))
            assert cond.cot is not None
            gen = self.model.reasoning.decode_text(cond.cot, batch.cot_ids.shape[1])
            ok, total = cot_token_accuracy(gen, batch.cot_ids, batch.cot_mask)
            self._sums[f"{pre}sample/"]["cot_correct"] += ok
            self._sums[f"{pre}sample/"]["cot_tokens"] += total

    def _reduce(self, v: float) -> float:
        t = torch.tensor(float(v), dtype=torch.float64, device=self.device)
        if self.trainer is not None and self.trainer.world_size > 1:
            t = self.trainer.strategy.reduce(t, reduce_op="sum")
        return float(t)

    def on_validation_epoch_end(self) -> None:
        out: dict[str, float] = {}
        mode_losses = []
        for pre, sums in sorted(self._sums.items()):
            red = {k: self._reduce(v) for k, v in sums.items()}
            if pre.endswith("sample/"):
                fin = V.finish(red)
                if red.get("cot_tokens", 0) > 0:
                    fin["cot_token_acc"] = red["cot_correct"] / red["cot_tokens"]
                out.update({f"val/{pre}{k}": v for k, v in fin.items()})
                continue
            n = max(red.pop("n", 0.0), 1.0)
            means = {k: v / n for k, v in red.items()}
            out.update({f"val/{pre}{k}": v for k, v in means.items()})
            if "deploy/action_fm" in means and means.get("action_fm", 0) > 0:
                out[f"val/{pre}deploy_vs_train_gap"] = means["deploy/action_fm"] / means[
                    "action_fm"]
            mode_losses.append(means.get("loss", 0.0))
        if self.stage.mode == "mixed" and mode_losses:
            out["val/loss"] = sum(mode_losses) / len(mode_losses)
        for k, v in out.items():
            self.log(k, v, rank_zero_only=True)
        self._sums = {}

    # ------------------------------------------------------------------ optimizer, devices
    def configure_optimizers(self):
        from wallwm.train.optim import make_optimizer

        opt, sched = make_optimizer(self.model, self.params.train, params=self.trainable())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):  # dataclass batches
        if isinstance(batch, WorldActionBatch):
            return batch.to(device)
        if isinstance(batch, dict):
            return {k: v.to(device) if isinstance(v, WorldActionBatch) else v
                    for k, v in batch.items()}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
