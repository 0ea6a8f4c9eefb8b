"""muon_steps_ratio: steps Muon (MuonAdamW) needs to reach AdamW's final validation loss, over
AdamW's steps, on the real profile build (profiles/learn.yaml) at the profile's budget.

Each optimizer trains the same stage (`WALLWM_BENCH_MUON_STAGE`, default `video`: the from-
scratch tower with the most hidden matrices) from the same seeded init, on the same balanced
batch order, with the same warm-up + cosine schedule, validated on the build's held-out
episodes every `EVAL_EVERY` steps with fixed noise. A small lr grid per optimizer is run at
the full budget and the best final validation loss of each is compared: AdamW alone, Muon with
torch's original lr scaling, and Muon with `adjust_lr_fn="match_rms_adamw"`. Curves go to
`benchmarks/muon_vs_adamw.png`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.harness import Figure

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "learn.yaml"
STAGE = os.environ.get("WALLWM_BENCH_MUON_STAGE", "video")
STEPS = int(os.environ.get("WALLWM_BENCH_MUON_STEPS", "0"))  # 0: the profile's max_steps
EVAL_EVERY = int(os.environ.get("WALLWM_BENCH_MUON_EVAL_EVERY", "100"))
PNG = Path(__file__).resolve().parent / "muon_vs_adamw.png"
GRID = {  # name: (sets, [lr sets...])
    "adamw": (["train.optimizer=adamw"], [["train.adamw_lr=0.001"], ["train.adamw_lr=0.003"]]),
    "muon": (["train.optimizer=muon"], [["train.lr=0.002"], ["train.lr=0.01"]]),
    "muon_match_rms": (["train.optimizer=muon", "train.muon_adjust_lr=match_rms_adamw"],
                       [["train.lr=0.001"], ["train.lr=0.003"]]),
}

FIGURES = {
    "muon_steps_ratio": dict(
        what="steps for Muon+AdamW to reach AdamW's final val loss / AdamW's steps, profile "
             "build", baseline="AdamW alone, same budget", target="<= 0.75"),
}


def _curve(p, build: Path, out: Path) -> list[tuple[int, float]]:
    """(step, val loss) of one run of STAGE, validated every EVAL_EVERY steps."""
    import lightning as L

    from wallwm.train.data import data_module
    from wallwm.train.loop import make_trainer
    from wallwm.train.module import WallWMModule
    from wallwm.train.stats import train_split_stats

    L.seed_everything(p.project.seed, workers=True, verbose=False)
    m = WallWMModule(p.model_dump(mode="json"), STAGE)
    st = train_split_stats(build, m.model.cfg.action_dim, m.model.cfg.state_dim)
    m.model.norm.set_stats(st["action_mean"], st["action_std"], st["state_mean"],
                           st["state_std"])
    dm = data_module(build, p, m.stage.mode, tiers=m.stage.tiers)
    curve: list[tuple[int, float]] = []

    class Record(L.Callback):
        # on_validation_end: Lightning fills callback_metrics with this pass's epoch values
        # only after on_validation_epoch_end (there it still holds the previous pass's)
        def on_validation_end(self, trainer, module):  # noqa: ANN001
            v = trainer.callback_metrics.get(m.stage.monitor)
            if v is not None and not trainer.sanity_checking:
                curve.append((int(trainer.global_step), float(v)))

    trainer, _ = make_trainer(p, out, m.stage.monitor, callbacks=[Record()],
                              enable_progress_bar=False)  # (checkpoints: the temp dir)
    trainer.fit(m, datamodule=dm)
    return curve


def _steps_to(curve: list[tuple[int, float]], level: float) -> float:
    """First step (linearly interpolated) at which `curve` reaches `level`; inf if never."""
    prev = (0, float("inf"))
    for step, v in curve:
        if v <= level:
            if prev[1] == float("inf"):
                return float(step)
            s0, v0 = prev
            return s0 + (step - s0) * (v0 - level) / max(v0 - v, 1e-12)
        prev = (step, v)
    return float("inf")


def _plot(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, c in curves.items():
        ax.plot([s for s, _ in c], [v for _, v in c], marker=".", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"val loss ({STAGE} stage)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run() -> dict[str, Figure]:
    from benchmarks.builds import cached_build
    from components.stack.home import wallwm_home
    from wallwm.config import load_params

    base = load_params(ROOT / "params.yaml", extra_files=[PROFILE])
    steps = STEPS or int(base.train.max_steps)
    build = cached_build(list(base.data.sources), base.data,
                         wallwm_home() / "bench-builds")
    common = [f"train.max_steps={steps}", f"train.val_every={EVAL_EVERY}",
              "train.val_sample_batches=0"]
    best: dict[str, tuple[str, list[tuple[int, float]]]] = {}
    with tempfile.TemporaryDirectory() as d:
        for name, (sets, lrs) in GRID.items():
            for i, lr in enumerate(lrs):
                p = load_params(ROOT / "params.yaml", extra_files=[PROFILE],
                                sets=[*common, *sets, *lr])
                c = _curve(p, build, Path(d) / f"{name}{i}")
                if c and (name not in best or c[-1][1] < best[name][1][-1][1]):
                    best[name] = (lr[0], c)
    curves = {f"{k} ({lr})": c for k, (lr, c) in best.items()}
    _plot(curves, PNG)
    target = best["adamw"][1][-1][1]
    ratios = {k: _steps_to(best[k][1], target) / steps for k in ("muon", "muon_match_rms")}
    winner = min(ratios, key=ratios.get)
    value = ratios[winner]
    notes = (f"{STAGE} stage, {steps} steps on the profile build; AdamW final val "
             f"{target:.4f} ({best['adamw'][0]}); Muon {ratios['muon']:.2f} "
             f"({best['muon'][0]}), Muon match_rms_adamw {ratios['muon_match_rms']:.2f} "
             f"({best['muon_match_rms'][0]}); curves in {PNG.name}")
    return {"muon_steps_ratio": Figure(
        "muon_steps_ratio", round(value, 3), (round(min(ratios.values()), 3),
                                              round(max(ratios.values()), 3)),
        FIGURES["muon_steps_ratio"]["what"], "AdamW alone, same budget", 1.0, "<= 0.75", "x",
        value <= 0.75, notes, {"curves": curves, "best_variant": winner})}
