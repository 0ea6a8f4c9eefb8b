"""Validation in the deployment condition, with the trivial baselines beside every figure.

What a robot runs is `encode` + `sample` (video features from the one anchor pass, the
inference-time mask setting, actions sampled from noise), so that is what these measure:

* `deploy_losses`: the action flow-matching loss and event-end BCE under `model.encode`'s
  condition (beside the training-condition loss of `WallWM.forward`, same noise draws).
* `sample_metrics`: sums over a batch of what `predict` returns against the truth: action MSE
  per dimension (dataset and normalized units) beside the predict-the-mean baseline, gripper
  open/close accuracy, event-end timing error, boundary-frame PSNR / SSIM of the model and of
  the copy-the-observation baseline, and the PSNR of the one-step frame from the same noise
  (`frame_psnr_1step`: x_1 - v(x_1, 1), the tower's posterior-mean estimate; a sample carries
  the posterior's spread as well, which PSNR punishes, so the two answer different questions:
  "what will it look like on average" vs "a plausible future"). Sums, so several batches (and
  ranks) add up exactly.

`finish` turns summed figures into means and ratios.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

from wallwm.model.batch import WorldActionBatch
from wallwm.model.config import LossWeights
from wallwm.model.flow_matching import sample_t
from wallwm.model.wallwm import WallWM

IMAGE_RANGE = 2.0  # images live in [-1, 1]


def deploy_losses(model: WallWM, b: WorldActionBatch, seed: int,
                  loss_weights: LossWeights | None = None) -> dict[str, Tensor]:
    """action_fm / event_end under the condition `encode` gives (deployment), with the very
    noise draws `WallWM.forward(b, Generator(seed), loss_weights)` makes, so the two losses
    differ only by the condition (mask setting; the truth below anchor 1), not by sampling."""
    assert b.future is not None
    lw = loss_weights or model.cfg.loss
    g = torch.Generator().manual_seed(seed)
    if lw.video > 0:  # forward's video branch draws first: t_v, its noise, the anchor share
        sample_t(b.batch_size, g, "logit_normal")
        torch.randn(b.future.shape, generator=g)
        torch.rand(b.batch_size, generator=g)
    noise_v = torch.randn(b.future.shape, generator=g).to(b.obs.device)  # the anchor noise
    cond = model.encode(b.replace(future=None), b.mode, video_noise=noise_v)
    return model.action_losses(b, cond, g)


def _psnr(pred: Tensor, true: Tensor) -> Tensor:
    """Per image (N,) PSNR in dB for images (N, 3, H, W) in [-1, 1]."""
    mse = (pred - true).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(IMAGE_RANGE**2 / mse)


def _ssim(pred: Tensor, true: Tensor) -> Tensor:
    """Per image (N,) SSIM (torchmetrics, Gaussian window)."""
    return ssim(pred, true, data_range=IMAGE_RANGE, reduction="none")


@torch.no_grad()
def sample_metrics(model: WallWM, b: WorldActionBatch, seed: int, steps: int | None = None
                   ) -> dict[str, float]:
    """Summed figures of one batch from `predict` (see the module docstring); `n_*` keys count
    what each sum is over."""
    assert b.actions is not None and b.action_mask is not None and b.future is not None
    q = b.replace(future=None)
    noise = model.draw_noise(q, b.mode, torch.Generator().manual_seed(seed))
    out = model.predict(q, mode=b.mode, steps=steps, noise=noise)
    s: dict[str, float] = defaultdict(float)
    La = min(b.actions.shape[1], out["actions"].shape[1])
    valid = b.action_mask[:, :La].bool()  # (B, La)
    true, pred = b.actions[:, :La], out["actions"][:, :La]
    mean = model.norm.action_mean.expand_as(true)
    tn, pn, mn = model.norm.action(true), model.norm.action(pred), model.norm.action(mean)
    n = int(valid.sum())
    s["n_steps"] += n
    v = valid[..., None].float()
    for d in range(true.shape[-1]):
        s[f"action_mse_d{d}"] += float(((pred - true)[..., d:d + 1].pow(2) * v).sum())
        s[f"mean_baseline_mse_d{d}"] += float(((mean - true)[..., d:d + 1].pow(2) * v).sum())
    s["action_mse_norm"] += float(((pn - tn).pow(2) * v).sum())
    s["mean_baseline_mse_norm"] += float(((mn - tn).pow(2) * v).sum())
    s["gripper_correct"] += float((((pred[..., -1] > 0) == (true[..., -1] > 0)) & valid).sum())
    if b.mode == "event" and b.event_end is not None:
        has_end = b.event_end[:, :La].sum(1) > 0  # events that end inside the window
        true_end = b.event_end[:, :La].argmax(1).float()
        ended = out["end_prob"][:, :La] > 0.5
        pred_end = torch.where(ended.any(1), ended.float().argmax(1).float(),
                               torch.full_like(true_end, La - 1))
        s["end_abs_err_frames"] += float(((pred_end - true_end).abs() * has_end).sum())
        s["n_ends"] += float(has_end.sum())
    if out["frames"] is not None:
        Fn = min(out["frames"].shape[2], b.future.shape[2])
        fp = out["frames"][:, :, :Fn].flatten(0, 2)  # (B*V*F, 3, H, W)
        ft = b.future[:, :, :Fn].flatten(0, 2)
        fo = b.obs[:, :, None].expand(-1, -1, Fn, -1, -1, -1).flatten(0, 2)
        s["n_frames"] += fp.shape[0]
        s["frame_psnr"] += float(_psnr(fp, ft).sum())
        s["copy_obs_psnr"] += float(_psnr(fo, ft).sum())
        s["frame_ssim"] += float(_ssim(fp, ft).sum())
        s["copy_obs_ssim"] += float(_ssim(fo, ft).sum())
        # one step from the same noise: the tower's posterior-mean estimate of the frame
        x0 = model.sample_video(model.encode(q, b.mode, video_noise=noise[0]), noise[0], 1)
        s["frame_psnr_1step"] += float(_psnr(x0[:, :, :Fn].flatten(0, 2), ft).sum())
    return dict(s)


def finish(sums: dict[str, float]) -> dict[str, float]:
    """Means and ratios from summed figures (keys as logged under `val/sample/`)."""
    out: dict[str, float] = {}
    n = sums.get("n_steps", 0.0)
    if n > 0:
        dims = sorted(int(k[len("action_mse_d"):]) for k in sums if k.startswith("action_mse_d"))
        for d in dims:
            out[f"action_mse_d{d}"] = sums[f"action_mse_d{d}"] / n
            out[f"mean_baseline_mse_d{d}"] = sums[f"mean_baseline_mse_d{d}"] / n
        A = max(len(dims), 1)
        out["action_mse"] = sums["action_mse_norm"] / (n * A)
        out["mean_baseline_mse"] = sums["mean_baseline_mse_norm"] / (n * A)
        out["action_mse_vs_mean_baseline"] = out["action_mse"] / max(out["mean_baseline_mse"],
                                                                     1e-12)
        out["gripper_acc"] = sums["gripper_correct"] / n
    if sums.get("n_ends", 0.0) > 0:
        out["end_abs_err_frames"] = sums["end_abs_err_frames"] / sums["n_ends"]
    nf = sums.get("n_frames", 0.0)
    if nf > 0:
        for k in ("frame_psnr", "copy_obs_psnr", "frame_ssim", "copy_obs_ssim",
                  "frame_psnr_1step"):
            if k in sums:
                out[k] = sums[k] / nf
        out["psnr_gain_db"] = out["frame_psnr"] - out["copy_obs_psnr"]
        if "frame_psnr_1step" in out:
            out["psnr_gain_db_1step"] = out["frame_psnr_1step"] - out["copy_obs_psnr"]
    return out


def merge(into: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    for k, v in more.items():
        into[k] = into.get(k, 0.0) + v
    return into
