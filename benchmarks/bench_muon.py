"""muon_steps_ratio: steps Muon (MuonAdamW) needs to reach AdamW's final validation loss, over
AdamW's steps, on the tiny WALL-WM with the same data, noise, schedule and step budget.

Data: a fixed set of synthetic event-mode training batches (cycled) and a held-out synthetic
validation set, each from its own fixed generator; validation uses a fixed noise generator per
batch, so val loss is comparable across steps, runs and optimizers. Each optimizer's lr is
picked from a small grid at the full budget (best final val loss); Muon's AdamW part uses the
AdamW winner's lr. The winners are then rerun with more seeds (model init + training noise) for
the spread. The loss curves go to `benchmarks/muon_vs_adamw.png`.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.harness import Figure

STEPS = int(os.environ.get("WALLWM_BENCH_MUON_STEPS", "150"))
SEEDS = int(os.environ.get("WALLWM_BENCH_MUON_SEEDS", "2"))
BATCH = 4
TRAIN_BATCHES = 32
VAL_BATCHES = 3
EVAL_EVERY = 10
ADAMW_LRS = (1e-3, 3e-3, 1e-2)
MUON_LRS = (0.005, 0.01, 0.02)
PNG = Path(__file__).resolve().parent / "muon_vs_adamw.png"

FIGURES = {
    "muon_steps_ratio": dict(
        what="steps for Muon+AdamW to reach AdamW's final val loss / AdamW's steps, tiny preset",
        baseline="AdamW alone, same budget", target="<= 0.75"),
}


def _structured(cfg, n: int, g: torch.Generator):
    """A synthetic event batch whose targets are learnable functions of its inputs.

    `WorldActionBatch.synthetic` draws targets independently of the inputs, so both optimizers
    hit the same irreducible floor within ~70 steps and the comparison measures nothing. Here
    images are smooth (8x8 noise upsampled), the boundary frame is the observation moved one
    patch to the right, and actions are a fixed smooth function of the state and the step."""
    import torch.nn.functional as F

    from wallwm.model.batch import WorldActionBatch

    b = WorldActionBatch.synthetic(cfg, n, "event", g)
    B, V, _, S, _ = b.obs.shape
    low = torch.rand(B * V, 3, 8, 8, generator=g) * 2 - 1
    b.obs = F.interpolate(low, size=(S, S), mode="bilinear", align_corners=False).view(
        B, V, 3, S, S)
    b.future = torch.roll(b.obs, shifts=cfg.patch, dims=-1)[:, :, None]
    La, A = b.actions.shape[1:]
    w = torch.Generator().manual_seed(7)
    W, u = torch.randn(b.state.shape[1], A, generator=w), torch.randn(A, generator=w)
    ramp = torch.linspace(0, 1, La)[None, :, None]
    b.actions = torch.tanh((b.state @ W)[:, None] * 0.5 + ramp * u)
    return b


def _setup():
    from wallwm.config import load_params
    from wallwm.model.config import WallWMConfig

    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    cfg = WallWMConfig.from_params(p)
    gt, gv = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    train = [_structured(cfg, BATCH, gt) for _ in range(TRAIN_BATCHES)]
    val = [_structured(cfg, 8, gv) for _ in range(VAL_BATCHES)]
    return p, cfg, train, val


@torch.no_grad()
def _val_loss(model, val) -> float:
    model.eval()
    tot = sum(float(model(b, generator=torch.Generator().manual_seed(10_000 + i))["loss"])
              for i, b in enumerate(val))
    model.train()
    return tot / len(val)


def _run(setup, optimizer: str, lr: float, adamw_lr: float, seed: int,
         until: float | None = None) -> list[tuple[int, float]]:
    """(step, val loss) every EVAL_EVERY steps, step 0 included. With `until`, a run that has not
    reached that val loss by the budget goes on (lr at the schedule's floor) up to 3x the budget,
    so the steps it needs are measured rather than reported as infinite."""
    from wallwm.model.wallwm import WallWM
    from wallwm.train.optim import make_optimizer

    p, cfg, train, val = setup
    torch.manual_seed(seed)
    model = WallWM(cfg)
    tp = p.train.model_copy(update={"optimizer": optimizer, "lr": lr, "adamw_lr": adamw_lr,
                                    "max_steps": STEPS, "warmup_steps": max(1, STEPS // 10)})
    opt, sched = make_optimizer(model, tp)
    noise = torch.Generator().manual_seed(100 + seed)
    curve = [(0, _val_loss(model, val))]
    step = 0
    while True:
        step += 1
        opt.zero_grad(set_to_none=True)
        model(train[(step - 1) % len(train)], generator=noise)["loss"].backward()
        opt.step()
        if step <= STEPS:
            sched.step()
        if step % EVAL_EVERY == 0:
            curve.append((step, _val_loss(model, val)))
            if step >= STEPS and (until is None or curve[-1][1] <= until or step >= 3 * STEPS):
                return curve


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float:
    """First (linearly interpolated) step at which the curve is <= target; inf if never."""
    for (s0, v0), (s1, v1) in zip(curve, curve[1:], strict=False):
        if v1 <= target:
            if v0 <= target:
                return float(s0)
            return s0 + (s1 - s0) * (v0 - target) / (v0 - v1)
    return float("inf") if curve[0][1] > target else 0.0


def run() -> dict[str, Figure]:
    from wallwm.train.figures import loss_curves_png

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    setup = _setup()
    grid_a = {lr: _run(setup, "adamw", lr, lr, 0) for lr in ADAMW_LRS}
    a_lr = min(grid_a, key=lambda k: grid_a[k][-1][1])
    grid_m = {lr: _run(setup, "muon", lr, a_lr, 0) for lr in MUON_LRS}
    m_lr = min(grid_m, key=lambda k: grid_m[k][-1][1])
    runs_a = [grid_a[a_lr]]
    target0 = runs_a[0][-1][1]
    runs_m = [grid_m[m_lr] if grid_m[m_lr][-1][1] <= target0
              else _run(setup, "muon", m_lr, a_lr, 0, until=target0)]
    for seed in range(1, SEEDS):
        runs_a.append(_run(setup, "adamw", a_lr, a_lr, seed))
        runs_m.append(_run(setup, "muon", m_lr, a_lr, seed, until=runs_a[-1][-1][1]))
    ratios = [steps_to_reach(cm, ca[-1][1]) / STEPS for ca, cm in zip(runs_a, runs_m,
                                                                       strict=True)]
    value = statistics.median(ratios)
    curves = {f"AdamW lr={a_lr:g} (seed {i})": c for i, c in enumerate(runs_a)}
    curves |= {f"Muon lr={m_lr:g}, AdamW part {a_lr:g} (seed {i})": c
               for i, c in enumerate(runs_m)}
    loss_curves_png(curves, PNG, title=f"tiny WALL-WM val loss, {STEPS} steps, batch {BATCH}")
    fmt = {k: round(v[-1][1], 4) for k, v in grid_a.items()}, {
        k: round(v[-1][1], 4) for k, v in grid_m.items()}
    fig = Figure(
        "muon_steps_ratio", round(value, 4), (round(min(ratios), 4), round(max(ratios), 4)),
        what=f"steps for Muon+AdamW to reach AdamW's final val loss / AdamW's {STEPS} steps "
             "(tiny WALL-WM, synthetic event batches)",
        baseline=f"AdamW alone, {STEPS} steps", baseline_value=1.0, target="<= 0.75", unit="x",
        met=value <= 0.75,
        notes=f"Muon runs not at AdamW's loss by the budget continue at the floor lr (up to "
              f"3x) so the ratio is measured; synthetic data ({TRAIN_BATCHES}x{BATCH} train batches cycled, {VAL_BATCHES}x8 "
              f"held-out val, fixed val noise); warm-up {max(1, STEPS // 10)} + cosine to 10%; "
              f"lr grid at the full budget, final val: AdamW {fmt[0]} -> {a_lr:g}, Muon "
              f"{fmt[1]} -> {m_lr:g} (its AdamW part at {a_lr:g}); {SEEDS} seeds (init + "
              f"noise), ratios {[round(r, 3) for r in ratios]}; final val AdamW "
              f"{[round(c[-1][1], 4) for c in runs_a]}, Muon "
              f"{[round(c[-1][1], 4) for c in runs_m]}; curves: benchmarks/{PNG.name}; "
              f"{time.perf_counter() - t0:.0f} s",
        extra={"ratios": ratios, "adamw_lr": a_lr, "muon_lr": m_lr,
               "curves": {k: v for k, v in curves.items()}},
    )
    return {fig.key: fig}


if __name__ == "__main__":
    for f in run().values():
        print(f.key, f.value, f.spread, f.met)
        print(f.notes)
