"""train_samples_per_s (1 process) and train_samples_per_s_2w (2 Ray Train DDP workers): tiny
preset, action stage, on the published build `data/` (built by `make run`; a small sim build
when there is none), same steps."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Figure

ROOT = Path(__file__).resolve().parents[1]
STEPS = int(os.environ.get("WALLWM_BENCH_TRAIN_STEPS", "30"))
SETS = [f"train.max_steps={STEPS}", f"train.val_every={STEPS}", "train.batch_size=8",
        "train.stages=[action]"]


def _worker(config: dict) -> None:
    """Timed fit inside a Ray Train worker (DDP over gloo)."""
    import ray.train

    from components.compute.ray_train import ray_lightning_kwargs
    from wallwm.config import load_params
    from wallwm.train.data import WallWMDataModule
    from wallwm.train.loop import make_trainer
    from wallwm.train.module import WallWMModule

    p = load_params(ROOT / "params.yaml", sets=SETS)
    m = WallWMModule(p.model_dump(mode="json"), "action")
    dm = WallWMDataModule(config["build"], p, mode="event", tiers=m.stage.tiers)
    trainer, _ = make_trainer(p, Path(config["dir"]) / f"r{ray.train.get_context().get_world_rank()}",
                              m.stage.monitor, limit_val_batches=0, enable_checkpointing=True,
                              enable_progress_bar=False, **ray_lightning_kwargs())
    t0 = time.perf_counter()
    trainer.fit(m, datamodule=dm)
    dt = time.perf_counter() - t0
    if ray.train.get_context().get_world_rank() == 0:
        (Path(config["dir"]) / "ray_seconds").write_text(str(dt))
    ray.train.report({"seconds": dt})


def _single(build: Path, d: Path) -> float:
    from wallwm.config import load_params
    from wallwm.train.data import WallWMDataModule
    from wallwm.train.loop import make_trainer
    from wallwm.train.module import WallWMModule

    p = load_params(ROOT / "params.yaml", sets=SETS)
    m = WallWMModule(p.model_dump(mode="json"), "action")
    dm = WallWMDataModule(build, p, mode="event", tiers=m.stage.tiers)
    trainer, _ = make_trainer(p, d, m.stage.monitor, limit_val_batches=0,
                              enable_progress_bar=False)
    t0 = time.perf_counter()
    trainer.fit(m, datamodule=dm)
    return time.perf_counter() - t0


def _fallback_build(d: Path) -> Path:
    """On a clean checkout (no `make run` yet): a small build of the default sim source."""
    from benchmarks.builds import fresh_build
    from wallwm.config import load_params

    p = load_params(ROOT / "params.yaml")
    return Path(fresh_build(["sim:episodes=12"], p.data, d / "build", workers=2).path)


def run() -> dict[str, Figure]:
    build = ROOT / "data"
    keep = tempfile.mkdtemp(prefix="wallwm-bench-train-")
    if not (build / "manifest.json").exists() or not json.loads(
            (build / "manifest.json").read_text()).get("events"):
        build = _fallback_build(Path(keep))
    import flows  # noqa: F401  (points RAY_ADDRESS at the stack's Ray head when it is up)
    from components.compute.ray_train import fit_on_ray

    with tempfile.TemporaryDirectory() as d:
        one = _single(build, Path(d) / "single")
        fit_on_ray(_worker, {"build": str(build), "dir": d}, 2, Path(d) / "ray", "bench-train")
        two = float((Path(d) / "ray_seconds").read_text())
    s1, s2 = STEPS * 8 / one, 2 * STEPS * 8 / two
    return {
        "train_samples_per_s": Figure("train_samples_per_s", round(s1, 2), (round(s1, 2),) * 2,
                                      "training throughput, 1 process (tiny, action stage)",
                                      unit="samples/s", notes=f"{STEPS} steps of 8 in {one:.1f} s"),
        "train_samples_per_s_2w": Figure(
            "train_samples_per_s_2w", round(s2, 2), (round(s2, 2),) * 2,
            "training throughput, 2 Ray Train DDP workers (global batch 16)", "1 process",
            round(s1, 2), unit="samples/s",
            notes=f"{STEPS} steps of 2x8 in {two:.1f} s (includes DDP start-up); 2 workers on 2 "
                  f"cores also run the data loading"),
    }
