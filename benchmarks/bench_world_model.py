"""The world model at the training profile (profiles/learn.yaml): held-out figures beside their
trivial baselines, all measured in one run on the profile's own build.

* `boundary_psnr_gain_db`: PSNR of the boundary frame `predict` samples minus the
  copy-the-observation baseline's, held-out events (event mode).
* `boundary_psnr_gain_db_1step`: the same for the one-step frame from the same noise (the
  video tower's posterior-mean estimate, which an MSE figure like PSNR favours over a sample).
* `action_mse_vs_mean_baseline`: sampled-action MSE (from `predict`, deployment condition,
  normalized units) / the predict-the-mean baseline's, held-out events.
* `deploy_vs_train_val_gap`: action loss in the deployment condition (`encode`) / in the
  training condition, same noise draws.
* `cot_token_acc`: CoT latents decoded greedily by the frozen decoder vs the reference CoT.
* `profile_wall_s`: build + training wall time of the profile (target: 30 minutes on 2 cores).

`WALLWM_BENCH_PROFILE_SETS` (space-separated `key=value`) overrides the profile, e.g.
`train.max_steps=50` for a smoke run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Figure

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "learn.yaml"
BUDGET_S = 30 * 60

FIGURES = {
    "boundary_psnr_gain_db": dict(what="boundary-frame PSNR, model minus copy-the-observation",
                                  baseline="copy the observation", target="> 0"),
    "boundary_psnr_gain_db_1step": dict(what="one-step (posterior-mean) boundary-frame PSNR, "
                                        "model minus copy-the-observation",
                                        baseline="copy the observation", target="reported"),
    "action_mse_vs_mean_baseline": dict(what="sampled-action MSE / predict-the-mean MSE",
                                        baseline="predict the train mean", target="<= 0.5"),
    "deploy_vs_train_val_gap": dict(what="action loss, deployment / training condition",
                                    baseline="training condition", target="<= 1.2"),
    "cot_token_acc": dict(what="CoT latents decoded to text: token accuracy", target="reported"),
    "profile_wall_s": dict(what="training profile: build + train wall time", target="<= 1800"),
}


def _params(sets: list[str]):
    from wallwm.config import load_params

    extra = os.environ.get("WALLWM_BENCH_PROFILE_SETS", "").split()
    return load_params(ROOT / "params.yaml", extra_files=[PROFILE],
                       sets=[*sets, "train.val_sample_batches=1000", *extra])


def build_profile(root: Path, p) -> Path:
    """The profile's build (data.sources of the profile), reused under `root` when it exists."""
    from benchmarks.builds import cached_build

    return cached_build(list(p.data.sources), p.data, root)


def train_profile(build: Path, p, out: Path) -> dict[str, dict]:
    """Every stage of the profile, each from the previous one's best weights."""
    from wallwm.train.loop import run_stage

    prev, results = None, {}
    for stage in p.train.stages:
        res = run_stage(p, stage, build, out / stage, init_from=prev, resume=False,
                        figures_dir=out / "figures", enable_progress_bar=False)
        prev = Path(res.best_checkpoint or res.last_checkpoint)
        results[stage] = {"metrics": res.metrics, "initial": res.initial_val,
                          "final": res.final_val, "steps": res.steps,
                          "checkpoint": str(prev)}
    return results


def _pick(results: dict[str, dict], *keys: str) -> tuple[float, str]:
    """The value of the first key found, searching the stages from the last one back."""
    for stage in reversed(list(results)):
        m = results[stage]["metrics"]
        for k in keys:
            if k in m:
                return float(m[k]), f"{stage}: {k}"
    return float("nan"), "not measured"


def _by_stage(results: dict[str, dict], ev: str) -> str:
    """The sampled-action ratio after each stage that measured it."""
    k = f"{ev}sample/action_mse_vs_mean_baseline"
    return ", ".join(f"{st} {r['metrics'][k]:.3f}" for st, r in results.items()
                     if k in r["metrics"]) or "-"


def run() -> dict[str, Figure]:
    p = _params([])
    from components.stack.home import wallwm_home

    keep = Path(tempfile.mkdtemp(prefix="wallwm-bench-wm-"))
    t0 = time.perf_counter()
    cache = wallwm_home() / "bench-builds"
    before = set((cache / "builds").glob("*")) if (cache / "builds").is_dir() else set()
    build = build_profile(cache, p)  # reused when unchanged
    how = "reused: not the full cost" if build in before else "fresh"
    t_build = time.perf_counter() - t0
    results = train_profile(build, p, keep / "train")
    wall = time.perf_counter() - t0
    (keep / "results.json").write_text(json.dumps(results, indent=1, default=str))
    ev, uni = "val/event/", "val/unified/"
    gain, g_src = _pick(results, f"{ev}sample/psnr_gain_db", "val/sample/psnr_gain_db")
    copy, _ = _pick(results, f"{ev}sample/copy_obs_psnr", "val/sample/copy_obs_psnr")
    gain1, g1_src = _pick(results, f"{ev}sample/psnr_gain_db_1step",
                          "val/sample/psnr_gain_db_1step")
    ratio, r_src = _pick(results, f"{ev}sample/action_mse_vs_mean_baseline",
                         "val/sample/action_mse_vs_mean_baseline")
    gap, gap_src = _pick(results, f"{ev}deploy_vs_train_gap", "val/deploy_vs_train_gap")
    cot, c_src = _pick(results, f"{uni}sample/cot_token_acc", "val/sample/cot_token_acc")
    where = f"profile {PROFILE.name}, build {build.name}, details in {keep}/results.json"

    def fig(key: str, value: float, met: bool | None, notes: str, base: float | None = None,
            unit: str = "") -> Figure:
        d = FIGURES[key]
        return Figure(key, round(value, 4), (round(value, 4),) * 2, d["what"],
                      d.get("baseline", "-"), base, d["target"], unit, met, notes)

    return {
        "boundary_psnr_gain_db": fig("boundary_psnr_gain_db", gain, gain > 0,
                                     f"{g_src}; {where}", round(copy, 2), "dB"),
        "boundary_psnr_gain_db_1step": fig("boundary_psnr_gain_db_1step", gain1, None,
                                           f"{g1_src}; {where}", round(copy, 2), "dB"),
        "action_mse_vs_mean_baseline": fig("action_mse_vs_mean_baseline", ratio, ratio <= 0.5,
                                           f"{r_src} (by stage: {_by_stage(results, ev)}); "
                                           f"{where}", 1.0),
        "deploy_vs_train_val_gap": fig("deploy_vs_train_val_gap", gap, gap <= 1.2,
                                       f"{gap_src}; {where}", 1.0),
        "cot_token_acc": fig("cot_token_acc", cot, None, f"{c_src}; {where}"),
        "profile_wall_s": fig("profile_wall_s", wall, wall <= BUDGET_S,
                              f"build {t_build:.0f} s ({how}) + training {wall - t_build:.0f} s", None,
                              "s"),
    }
