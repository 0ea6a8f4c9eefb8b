"""annotation_boundary_f1 / annotation_label_acc: the robot-tier annotator against the sim's
privileged ground truth on held-out episodes (`sim:episodes=40,seed=7`, all 4 tasks, default
perturbations). Boundaries match one-to-one within +-2 frames (20 fps); accuracy is frame-wise.
The annotator reads only the recording (no `sim.*`, no ground truth). Nothing is cached."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.harness import Figure

SPEC = os.environ.get("WALLWM_BENCH_ANNOTATION_SPEC", "sim:episodes=40,seed=7")
TOLERANCE = 2
TARGET = 0.9
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _annotate_unit(unit: str) -> tuple[str, list, list]:
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    from wallwm.config import load_params
    from wallwm.data.annotate import annotate_robot
    from wallwm.data.sources import make_source

    ep = make_source(SPEC, load_params(PARAMS).data).load(unit)
    truth = [e for e in ep.ground_truth if e.level == "action"]
    ep.ground_truth = []  # the annotator never sees it
    ep.features = ep.recording_features()
    return unit, annotate_robot(ep), truth


def run() -> dict[str, Figure]:
    from wallwm.config import load_params
    from wallwm.data.annotate import score_many
    from wallwm.data.sources import make_source

    units = make_source(SPEC, load_params(PARAMS).data).unit_ids()
    with ProcessPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        results = list(pool.map(_annotate_unit, units))
    per_task: dict[str, list] = {}
    for unit, pred, truth in results:
        per_task.setdefault(unit.split("/")[0], []).append((pred, truth))
    s = score_many([(p, t) for _, p, t in results], tolerance=TOLERANCE)
    by_task = {k: score_many(v, tolerance=TOLERANCE) for k, v in per_task.items()}
    labels = "; ".join(
        f"{lab}: acc {d['accuracy']:.3f} ({d['frames']} fr), boundary recall "
        + ("-" if d["boundary_recall"] is None else f"{d['boundary_recall']:.3f}")
        + f" ({d['boundaries']})"
        for lab, d in s["per_label"].items()
    )
    tasks = "; ".join(f"{k}: F1 {v['boundary_f1']:.3f} acc {v['label_accuracy']:.3f}"
                      for k, v in sorted(by_task.items()))
    common = (f"{s['episodes']} episodes of {SPEC}, +-{TOLERANCE} frames; P "
              f"{s['boundary_precision']:.3f} R {s['boundary_recall']:.3f} "
              f"({s['tp']}/{s['n_pred']} pred, {s['n_true']} true). Per task: {tasks}. "
              f"Per label: {labels}")
    extra = {"per_label": s["per_label"], "confusion": s["confusion"],
             "per_task": {k: {m: v[m] for m in ("boundary_f1", "label_accuracy")}
                          for k, v in by_task.items()}}
    f1, acc = s["boundary_f1"], s["label_accuracy"]
    return {
        "annotation_boundary_f1": Figure(
            "annotation_boundary_f1", round(f1, 4), (round(f1, 4), round(f1, 4)),
            "action boundary F1 of the robot-tier annotator vs sim ground truth",
            target=f">= {TARGET}", met=f1 >= TARGET, notes=common, extra=extra),
        "annotation_label_acc": Figure(
            "annotation_label_acc", round(acc, 4), (round(acc, 4), round(acc, 4)),
            "frame-wise action label accuracy of the robot-tier annotator vs sim ground truth",
            target=f">= {TARGET}", met=acc >= TARGET, notes=common, extra=extra),
    }


if __name__ == "__main__":
    for fig in run().values():
        print(fig.key, fig.value, "met" if fig.met else "NOT met", "\n ", fig.notes)
