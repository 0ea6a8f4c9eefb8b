"""video_cache_saving: action sampling latency with the video tower rerun at every denoising step
over latency with its features computed once at the anchor noise level and cached (tiny preset,
same inputs, `model.denoise_steps` steps, frames not decoded)."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.harness import Figure, ratio_figure, timed

REPEATS = int(os.environ.get("WALLWM_BENCH_REPEATS", "3"))
BATCH = int(os.environ.get("WALLWM_BENCH_VIDEO_BATCH", "1"))

FIGURES = {
    "video_cache_saving": dict(
        what="action sampling latency, video tower every step / once (cached), tiny preset",
        baseline="recompute video each step", target="reported"),
}


def run() -> dict[str, Figure]:
    import torch

    from wallwm.config import load_params
    from wallwm.model import WallWM, WallWMConfig, WorldActionBatch

    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    cfg = WallWMConfig.from_params(p, "tiny")
    torch.manual_seed(0)
    model = WallWM(cfg).eval()
    batch = WorldActionBatch.synthetic(cfg, BATCH, "unified", torch.Generator().manual_seed(0),
                                       with_targets=False)
    steps = cfg.denoise_steps

    def sample(recompute: bool):
        return lambda: model.predict(batch, steps=steps, recompute_video=recompute,
                                     return_video=False,
                                     generator=torch.Generator().manual_seed(0))

    # rates (1 / latency), so the ratio ours/base is recompute latency / cached latency
    _, cached = timed(sample(False), repeats=REPEATS)
    _, fresh = timed(sample(True), repeats=REPEATS)
    fig = ratio_figure(
        "video_cache_saving", [1 / t for t in cached], [1 / t for t in fresh],
        what=FIGURES["video_cache_saving"]["what"] + f", {steps} steps, batch {BATCH}",
        baseline="recompute video each step", target=None,
        notes=f"seconds per sample: cached {[round(t, 4) for t in cached]}, recompute "
              f"{[round(t, 4) for t in fresh]}; torch threads {torch.get_num_threads()}",
    )
    return {fig.key: fig}


if __name__ == "__main__":
    for f in run().values():
        print(f.to_json())
