"""frustum_attention_pairs_kept: share of cross-view patch pairs the sight-cone mask keeps on the
Meta-World sim cameras (fixed `corner` + moving `gripperPOV`), averaged over one episode's frames
(per-frame poses), tiny-preset patch grid, params' depth range; dense attention keeps 1.0.

The notes carry the check of the SAT against an LP reference on the same cameras and the mask
build time. `python -m benchmarks.bench_frustum --figure` writes docs/figures/frustum_mask_sim.png.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import Figure

ROOT = Path(__file__).resolve().parents[1]
FIGURE_PATH = ROOT / "docs" / "figures" / "frustum_mask_sim.png"
LP_FRAMES = int(os.environ.get("WALLWM_BENCH_FRUSTUM_LP_FRAMES", "2"))

FIGURES = {
    "frustum_attention_pairs_kept": (
        "share of cross-view patch pairs kept by the frustum mask, sim cameras", "reported"),
}


def sim_cameras() -> dict[str, Any]:
    """One sim episode: intrinsics (V,3,3), per-frame extrinsics (V,T,4,4), images, sizes."""
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    from wallwm.config import load_params
    from wallwm.data.sources import make_source

    p = load_params(ROOT / "params.yaml")
    src = make_source("sim:episodes=1", p.data)
    ep = src.load(src.unit_ids()[0])
    keys = list(ep.cameras)
    names = [ep.cameras[key].name for key in keys]
    frames = len(ep.videos[keys[0]])
    ks, exts = [], []
    for key in keys:
        cam = ep.cameras[key]
        ks.append(np.asarray(cam.intrinsics, np.float64))
        if cam.moving:
            ext = np.asarray(ep.features[f"observation.extrinsics.{cam.name}"], np.float64)
            exts.append(ext.reshape(frames, 4, 4))
        else:
            exts.append(np.broadcast_to(np.asarray(cam.extrinsics, np.float64), (frames, 4, 4)))
    preset = p.model.presets[p.model.preset]
    return {
        "names": names, "intrinsics": torch.tensor(np.stack(ks)),
        "extrinsics": torch.tensor(np.stack(exts)), "videos": [ep.videos[key] for key in keys],
        "image_hw": tuple(ep.videos[keys[0]].shape[1:3]), "frames": frames,
        "patch": int(preset["patch"] if isinstance(preset, dict) else preset.patch),
        "depth_range": tuple(p.model.depth_range_m),
    }


def cross_kept(mask: torch.Tensor, views: int) -> float:
    n = mask.shape[0] // views
    blocks = [mask[a * n:(a + 1) * n, b * n:(b + 1) * n].float().mean().item()
              for a in range(views) for b in range(views) if a != b]
    return sum(blocks) / len(blocks)


def run() -> dict[str, Figure]:
    from wallwm.model.frustum import frustum_mask, lp_penetration

    c = sim_cameras()
    k, e, hw, patch, dr = (c["intrinsics"], c["extrinsics"], c["image_hw"], c["patch"],
                           c["depth_range"])
    views = k.shape[0]
    kept, secs = [], []
    for t in range(c["frames"]):
        t0 = time.perf_counter()
        m = frustum_mask(k, e, hw, patch, dr, frame=t)
        secs.append(time.perf_counter() - t0)
        kept.append(cross_kept(m, views))
    union = cross_kept(frustum_mask(k, e, hw, patch, dr), views)
    # the SAT against the LP reference, on evenly spaced frames
    n = (hw[0] // patch) * (hw[1] // patch)
    agree = total = ambiguous = false_keep = false_drop = 0
    for t in np.linspace(0, c["frames"] - 1, LP_FRAMES).round().astype(int).tolist():
        sat = frustum_mask(k, e, hw, patch, dr, frame=t)[:n, n:2 * n].numpy()
        ref = lp_penetration(k[0], e[0, t], k[1], e[1, t], hw, patch, dr)
        sure = np.abs(ref) > 1e-6
        total += sat.size
        ambiguous += int((~sure).sum())
        agree += int((sat == (ref > 0))[sure].sum())
        false_keep += int((sat & (ref <= 0) & sure).sum())
        false_drop += int((~sat & (ref > 0) & sure).sum())
    value = statistics.mean(kept)
    fig = Figure(
        "frustum_attention_pairs_kept", round(value, 4), (round(min(kept), 4), round(max(kept), 4)),
        what=FIGURES["frustum_attention_pairs_kept"][0] + f" ({'+'.join(c['names'])}, "
             f"{hw[0]}x{hw[1]} px, patch {patch}, depth {dr[0]}-{dr[1]} m, "
             f"{c['frames']} frames)",
        baseline="dense", baseline_value=1.0, target="reported", unit="share",
        notes=(f"spread = min/max over frames; union over the episode {union:.3f}; SAT vs LP on "
               f"{LP_FRAMES} frames: {agree}/{total - ambiguous} agree, false keep {false_keep}, "
               f"false drop {false_drop}, {ambiguous} within LP tolerance; mask build "
               f"{1e3 * statistics.median(secs):.1f} ms/frame (CPU)"),
        extra={"per_frame": [round(x, 4) for x in kept], "union": round(union, 4),
               "lp_pairs": total, "lp_false_keep": false_keep, "lp_false_drop": false_drop,
               "build_ms_median": round(1e3 * statistics.median(secs), 2)},
    )
    return {fig.key: fig}


def write_figure(path: Path = FIGURE_PATH, frame: int | None = None) -> Path:
    """The committed figure: the mask on one sim frame (the middle one by default)."""
    from wallwm.model.frustum import frustum_mask, save_mask_figure

    c = sim_cameras()
    t = c["frames"] // 2 if frame is None else frame
    hw, patch = c["image_hw"], c["patch"]
    m = frustum_mask(c["intrinsics"], c["extrinsics"], hw, patch, c["depth_range"], frame=t)
    grid = (hw[0] // patch, hw[1] // patch)
    title = (f"frustum mask, sim views {c['names']} (view 0 = {c['names'][0]}), frame {t}, "
             f"patch {patch}, depth {c['depth_range'][0]}-{c['depth_range'][1]} m")
    save_mask_figure(m, len(c["names"]), grid, path, title, [v[t] for v in c["videos"]])
    return path


if __name__ == "__main__":
    if "--figure" in sys.argv:
        print(write_figure())
    else:
        for f in run().values():
            print(f.to_json())
