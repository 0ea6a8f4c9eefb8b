"""How good the student is: the teacher at N steps, the teacher cut naively to K steps, and the
student at K steps, on the same held-out events and the same noise.

Offline (`offline_quality`): per mode, over the first `distill.quality_batches` batches of the
build's val split, what `predict` samples against the truth (wallwm/train/validation.py's
`sample_metrics`): action MSE per dimension (dataset units) and normalized, gripper accuracy,
end-of-event timing, boundary-frame PSNR (and copy-the-observation's); plus the PyTorch latency
of one action chunk at batch 1 (encode + K or N action steps, no frames).

Closed loop (`closed_loop_quality`): the three as policies of the evaluation harness
(wallwm/eval) on the same episodes; success with Wilson intervals, and the student-minus-teacher
difference with Newcombe's interval for a difference of proportions (Newcombe 1998, method 10:
from the two Wilson intervals), so "the student is as good as the teacher" is read as "0 lies
inside the 95% interval of the difference".
"""

from __future__ import annotations

import io
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wallwm.model.wallwm import WallWM
from wallwm.train import validation as V
from wallwm.util.atomic import atomic_write_bytes, atomic_write_text

POLICIES = ("teacher", "naive", "student")


@dataclass
class QualityTable:
    """Rows: one per (mode, policy) offline, one per policy closed loop."""

    teacher_steps: int
    student_steps: int
    offline: list[dict[str, Any]] = field(default_factory=list)
    closed_loop: list[dict[str, Any]] = field(default_factory=list)
    success_delta: dict[str, float] | None = None

    def row(self, mode: str, policy: str) -> dict[str, Any]:
        return next(r for r in self.offline if r["mode"] == mode and r["policy"] == policy)

    def error_vs_naive(self, mode: str) -> float:
        """Student action MSE (normalized) / the naive cut's, same events and noise."""
        return self.row(mode, "student")["action_mse"] / max(
            self.row(mode, "naive")["action_mse"], 1e-12)

    def speedup(self, mode: str) -> float:
        return self.row(mode, "teacher")["latency_ms"] / max(
            self.row(mode, "student")["latency_ms"], 1e-9)

    def metrics(self) -> dict[str, float]:
        """Flat figures for MLflow: distill.<mode>.<policy>.<figure>, the headline ratios."""
        out: dict[str, float] = {}
        for r in self.offline:
            for k, v in r.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    out[f"distill.{r['mode']}.{r['policy']}.{k}"] = float(v)
        for mode in dict.fromkeys(r["mode"] for r in self.offline):
            out[f"distill.{mode}.error_vs_naive"] = self.error_vs_naive(mode)
            out[f"distill.{mode}.speedup"] = self.speedup(mode)
        for r in self.closed_loop:
            for k in ("success", "success_lo", "success_hi", "n"):
                out[f"distill.closed_loop.{r['policy']}.{k}"] = float(r[k])
        if self.success_delta:
            out.update({f"distill.closed_loop.success_delta{'' if k == 'delta' else '_' + k}":
                        v for k, v in self.success_delta.items()})
        return out

    def to_json(self) -> dict[str, Any]:
        return {"teacher_steps": self.teacher_steps, "student_steps": self.student_steps,
                "offline": self.offline, "closed_loop": self.closed_loop,
                "success_delta": self.success_delta}

    def markdown(self) -> str:
        dims = sorted({k for r in self.offline for k in r if k.startswith("action_mse_d")})
        cols = ["mode", "policy", "steps", "action_mse", *dims, "frame_psnr", "copy_obs_psnr",
                "gripper_acc", "end_abs_err_frames", "latency_ms"]
        lines = [f"Teacher N = {self.teacher_steps} steps, student K = {self.student_steps} "
                 "(naive: the teacher at K steps). Held-out events, same noise.", "",
                 "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in self.offline:
            lines.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
        if self.closed_loop:
            lines += ["", "Closed loop (same episodes; 95% Wilson intervals):", "",
                      "| policy | steps | success | episodes |", "|---|---|---|---|"]
            for r in self.closed_loop:
                lines.append(f"| {r['policy']} | {r['steps']} | {r['success']:.3f} "
                             f"[{r['success_lo']:.3f}, {r['success_hi']:.3f}] | {r['n']} |")
            if self.success_delta:
                d = self.success_delta
                lines.append(f"\nstudent - teacher success: {d['delta']:+.3f} "
                             f"[{d['lo']:+.3f}, {d['hi']:+.3f}] (Newcombe 95%)")
        return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@torch.no_grad()
def chunk_latency_ms(model: WallWM, batch: Any, steps: int, repeats: int = 5) -> float:
    """Median ms of one action chunk at batch 1: encode + `steps` action steps (no frames)."""
    b = batch.replace(**{f: (getattr(batch, f)[:1] if isinstance(getattr(batch, f), torch.Tensor)
                             else getattr(batch, f)) for f in batch.__dataclass_fields__})
    b = b.replace(future=None, actions=None, action_mask=None, event_end=None)
    g = torch.Generator().manual_seed(0)

    def once() -> None:
        xv, xa = model.draw_noise(b, b.mode, g)
        model.sample(model.encode(b, b.mode, video_noise=xv), xa, steps)

    once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def offline_quality(teacher: WallWM, student: WallWM, loaders: Mapping[str, Any],
                    teacher_steps: int, student_steps: int, batches: int,
                    latency_repeats: int = 5, seed: int = 30_000) -> QualityTable:
    """The offline rows of the table from held-out loaders {mode: DataLoader}."""
    table = QualityTable(teacher_steps, student_steps)
    teacher.eval()
    student.eval()
    for mode, loader in loaders.items():
        runs = {"teacher": (teacher, teacher_steps), "naive": (teacher, student_steps),
                "student": (student, student_steps)}
        sums: dict[str, dict[str, float]] = {k: {} for k in runs}
        first = None
        for i, b in enumerate(loader):
            if i >= batches:
                break
            first = first or b
            for name, (m, steps) in runs.items():
                V.merge(sums[name], V.sample_metrics(m, b, seed + i, steps))
        if first is None:
            raise ValueError(f"offline_quality: the {mode} loader of the held-out split is "
                             "empty")
        for name, (m, steps) in runs.items():
            row = {"mode": mode, "policy": name, "steps": steps, **V.finish(sums[name]),
                   "latency_ms": chunk_latency_ms(m, first, steps, latency_repeats)}
            table.offline.append(row)
    return table


def newcombe(k1: int, n1: int, k2: int, n2: int) -> dict[str, float]:
    """p1 - p2 with Newcombe's hybrid-score 95% interval (from the two Wilson intervals)."""
    from wallwm.eval.metrics import wilson

    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p1 - p2
    return {"delta": d, "lo": d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            "hi": d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)}


def closed_loop_rows(cells: Sequence[Mapping[str, Any]], steps: Mapping[str, int],
                     condition: str | None = None) -> list[dict[str, Any]]:
    """Pooled ("all" tasks) rows per policy of `wallwm.eval.metrics.summarize` cells (all
    conditions pooled when several: successes and episodes add up)."""
    out = []
    for pol in steps:
        sel = [c for c in cells if c["policy"] == pol and c["task"] == "all"
               and (condition is None or c["condition"] == condition)]
        if not sel:
            continue
        k, n = sum(int(c["successes"]) for c in sel), sum(int(c["n"]) for c in sel)
        from wallwm.eval.metrics import wilson

        lo, hi = wilson(k, n)
        out.append({"policy": pol, "steps": steps[pol], "successes": k, "n": n,
                    "success": k / n, "success_lo": lo, "success_hi": hi})
    return out


def add_closed_loop(table: QualityTable, cells: Sequence[Mapping[str, Any]]) -> QualityTable:
    """Fill the closed-loop rows and the student-minus-teacher difference."""
    steps = {"teacher": table.teacher_steps, "naive": table.student_steps,
             "student": table.student_steps}
    table.closed_loop = closed_loop_rows(cells, steps)
    rows = {r["policy"]: r for r in table.closed_loop}
    if "student" in rows and "teacher" in rows:
        s, t = rows["student"], rows["teacher"]
        table.success_delta = newcombe(s["successes"], s["n"], t["successes"], t["n"])
    return table


def quality_png(table: QualityTable) -> bytes:
    """Bars per mode: normalized action MSE and boundary-frame PSNR of the three; closed-loop
    success with interval whiskers when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in table.offline))
    panels = 2 + bool(table.closed_loop)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    colors = {"teacher": "#4c72b0", "naive": "#dd8452", "student": "#55a868"}
    width = 0.8 / len(POLICIES)
    for ax, key, label in ((axes[0], "action_mse", "action MSE (normalized)"),
                           (axes[1], "frame_psnr", "boundary-frame PSNR (dB)")):
        for i, pol in enumerate(POLICIES):
            vals = [table.row(m, pol).get(key, float("nan")) for m in modes]
            ax.bar([j + i * width for j in range(len(modes))], vals, width, label=pol,
                   color=colors[pol])
        ax.set_xticks([j + width for j in range(len(modes))], modes)
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    if table.closed_loop:
        ax = axes[2]
        for i, r in enumerate(table.closed_loop):
            ax.bar(i, r["success"], color=colors.get(r["policy"], "gray"),
                   yerr=[[r["success"] - r["success_lo"]], [r["success_hi"] - r["success"]]],
                   capsize=4)
        ax.set_xticks(range(len(table.closed_loop)), [r["policy"] for r in table.closed_loop])
        ax.set_ylim(0, 1)
        ax.set_title("closed-loop success (95% CI)", fontsize=9)
    fig.suptitle(f"teacher {table.teacher_steps} steps vs student {table.student_steps}",
                 fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_quality(table: QualityTable, out_dir: Path | str) -> dict[str, Path]:
    """quality.json, quality.md, quality.png in `out_dir` (atomic writes)."""
    import json

    out = Path(out_dir)
    paths = {"json": out / "quality.json", "md": out / "quality.md", "png": out / "quality.png"}
    atomic_write_text(paths["json"], json.dumps(table.to_json(), indent=2, default=float))
    atomic_write_text(paths["md"], table.markdown())
    atomic_write_bytes(paths["png"], quality_png(table))
    return paths


def distill_eval_params(p: Any) -> Any:
    """`eval:` narrowed to the distillation's closed loop: its tasks, conditions and episodes,
    model policies only (the expert and zero floor belong to the evaluation run), no videos."""
    from wallwm.config.eval_schema import EvalParams

    d = p.distill
    return EvalParams.model_validate({
        **p.eval.model_dump(mode="json"), "episodes": max(1, int(d.closed_loop_episodes)),
        "tasks": list(d.closed_loop_tasks or p.eval.tasks),
        "conditions": list(d.closed_loop_conditions), "policies": ["model"], "videos": 0})


def policy_factories(teacher: WallWM, student: WallWM, tokenizer: Any, contract: Any,
                     env: Any, ev: Any, teacher_steps: int, student_steps: int
                     ) -> dict[str, Any]:
    """Picklable factories of the teacher (N steps), the naive cut (K) and the student (K)."""
    from wallwm.eval.policies.model import ModelPolicyFactory

    kw = dict(mode=ev.mode, execute_frames=int(ev.execute_frames),
              event_max_frames=int(ev.event_max_frames), after_plan=ev.after_plan)
    return {
        "teacher": ModelPolicyFactory.from_model(teacher, tokenizer, contract, env,
                                                 name="teacher", steps=teacher_steps, **kw),
        "naive": ModelPolicyFactory.from_model(teacher, tokenizer, contract, env, name="naive",
                                               steps=student_steps, **kw),
        "student": ModelPolicyFactory.from_model(student, tokenizer, contract, env,
                                                 name="student", steps=student_steps, **kw)}


def closed_loop_quality(table: QualityTable, teacher: WallWM, student: WallWM, tokenizer: Any,
                        contract: Any, p: Any, out_dir: Path | str, *,
                        build_seeds: Sequence[int] | None = None, run: Any = None
                        ) -> tuple[QualityTable, list[dict[str, Any]]]:
    """Play the three policies on the same episodes (eval harness); fill the table's
    closed-loop rows. Returns (table, summarize cells)."""
    from wallwm.eval.closed_loop import closed_loop, env_spec
    from wallwm.eval.metrics import summarize
    from wallwm.eval.runner import run_serial

    ev = distill_eval_params(p)
    facs = policy_factories(teacher, student, tokenizer, contract, env_spec(p.data, ev), ev,
                            table.teacher_steps, table.student_steps)
    results, _ = closed_loop(p.data, ev, out_dir, facs, build_seeds=build_seeds,
                             run=run or run_serial,
                             title="Distillation: teacher, naive cut and student")
    cells = summarize(results)
    return add_closed_loop(table, cells), cells
