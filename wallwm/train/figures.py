"""Pictures a reviewer looks at: predicted vs true boundary frames, action trajectories, loss
curves. Plain matplotlib (Agg) into PNG files; the flow logs them to MLflow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch


def _img(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [-1, 1] -> (H, W, 3) float in [0, 1]."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def boundary_frames_png(obs: torch.Tensor, true: torch.Tensor, pred: torch.Tensor,
                        path: Path, captions: Sequence[str] = ()) -> Path:
    """Rows = samples; columns per view: observation, true boundary frame, predicted frame.

    obs (B, V, 3, H, W); true, pred (B, V, F, 3, H, W) (the last future frame is shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    B, V = obs.shape[:2]
    fig, axes = plt.subplots(B, 3 * V, figsize=(2.0 * 3 * V, 2.1 * B), squeeze=False)
    for i in range(B):
        for v in range(V):
            for j, (name, im) in enumerate((("obs", obs[i, v]), ("true", true[i, v, -1]),
                                            ("pred", pred[i, v, -1]))):
                ax = axes[i][3 * v + j]
                ax.imshow(_img(im))
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"view {v}: {name}", fontsize=8)
        if i < len(captions):
            axes[i][0].set_ylabel(captions[i][:28], fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def action_trajectories_png(true: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                            path: Path, names: Sequence[str] = ("dx", "dy", "dz", "grip")) -> Path:
    """Per sample, each action dimension over the steps: true (solid) vs predicted (dashed).

    true, pred (B, La, A); mask (B, La) bool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    B, _, A = true.shape
    fig, axes = plt.subplots(B, 1, figsize=(6, 1.8 * B), squeeze=False)
    for i in range(B):
        n = int(mask[i].sum())
        ax = axes[i][0]
        for a in range(A):
            c = f"C{a}"
            ax.plot(true[i, :n, a].cpu().numpy(), c, label=f"{names[a] if a < len(names) else a}")
            ax.plot(pred[i, :n, a].detach().cpu().numpy(), c, ls="--")
        ax.set_ylabel(f"sample {i}", fontsize=8)
        if i == 0:
            ax.legend(fontsize=7, ncol=A, loc="upper right")
    axes[-1][0].set_xlabel("step (solid: true, dashed: predicted)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def loss_curves_png(curves: Mapping[str, Sequence[tuple[int, float]]], path: Path,
                    title: str = "loss") -> Path:
    """Several (step, value) series in one plot (e.g. train and val, or Muon vs AdamW)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, pts in curves.items():
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
