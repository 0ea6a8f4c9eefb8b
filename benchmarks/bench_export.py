"""fp8_bytes_ratio, fp8_worst_dim_cosine, onnx_parity_max_abs, ort_vs_torch_latency,
control_hz_cpu: the whole export (wallwm/export) of the student that benchmarks/bench_distill.py
distilled (made here the same way when its cache is empty), default export params: both
modes, FP32 + BF16 + FP8, the video step.

- fp8_bytes_ratio: FP8 graph bytes / FP32 graph bytes of the bundle.
- fp8_worst_dim_cosine: worst action dimension, FP8 vs FP32 chunks on held-out events.
- onnx_parity_max_abs: ONNX FP32 vs PyTorch on the same inputs and noise (every graph output
  and the whole K-step chunk).
- ort_vs_torch_latency: onnxruntime FP32 / PyTorch latency of the same chunk (encoder + K
  action steps), batch 1, one thread each.
- control_hz_cpu: actions per second from the FP32 bundle through the robot's runner
  (`Engine.act`, one thread): executed dataset-frame actions per chunk (eval.execute_frames)
  times chunks per second.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Figure

ROOT = Path(__file__).resolve().parents[1]
REPEATS = int(os.environ.get("WALLWM_BENCH_REPEATS", "7"))

FIGURES = {
    "fp8_bytes_ratio": dict(what="FP8 bundle graph bytes / FP32", target="<= 0.30"),
    "fp8_worst_dim_cosine": dict(what="worst action dimension, FP8 vs FP32, held-out events",
                                 target=">= 0.98"),
    "onnx_parity_max_abs": dict(what="ONNX FP32 vs PyTorch, same noise", target="<= 1e-4"),
    "ort_vs_torch_latency": dict(what="onnxruntime FP32 / PyTorch latency, same graph",
                                 target="reported"),
    "control_hz_cpu": dict(what="actions per second from the FP32 ONNX bundle on one core",
                           target="reported"),
}


def _times(fn, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run() -> dict[str, Figure]:
    import torch

    from benchmarks import bench_distill as BD
    from wallwm.config import load_params
    from wallwm.distill.loop import load_student
    from wallwm.eval.spec import ModelContract
    from wallwm.export.bundle import act_reference, reference_inputs
    from wallwm.export.data import samples
    from wallwm.export.pipeline import export_bundle
    from wallwm.export.runtime import HostLoop
    from wallwm.model.flow_matching import timesteps
    from wallwm.model.wallwm import Cond
    from wallwm.release.engine import Engine

    torch.set_num_threads(1)
    d, build, _ = BD.student_checkpoint()
    student = load_student(d / "last.ckpt")
    p = load_params(ROOT / "params.yaml", sets=BD.sets())
    K = p.distill.student_steps
    contract = ModelContract.from_dataset(BD._robot_dataset(build), student.cfg.views,
                                          p.data.annotate.vocabulary).to_json()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bundle"
        keep = Path(tmp) / "fp32"
        t0 = time.perf_counter()
        res = export_bundle(student, build / "tokenizer.json", contract, build, p, out,
                            {"data_build": build.name}, keep_fp32=keep)
        seconds = time.perf_counter() - t0
        m, rep = res.metrics, res.report
        # the same chunk through onnxruntime and PyTorch
        s = samples(build, student, build / "tokenizer.json", list(p.data.annotate.vocabulary),
                    "event", "val", 1, 1, 0)[0]
        loop = HostLoop.of(str(keep / "event_encoder.onnx"), str(keep / "event_action_step.onnx"),
                           timesteps(K))

        def ort_chunk() -> None:
            loop.run(s.feed, s.action_noise)

        def torch_chunk() -> None:
            from wallwm.export.parity import torch_cond

            with torch.no_grad():
                c = torch_cond(student, "event", s.feed)
                cond = Cond.from_tensors("event", {k[5:]: v for k, v in c.items()})
                student.sample(cond, torch.from_numpy(s.action_noise), K)

        t_ort, t_torch = _times(ort_chunk, REPEATS), _times(torch_chunk, REPEATS)
        eng = Engine(out, threads=1)
        arrays = reference_inputs(s, 1, contract["cameras"])
        cams = contract["cameras"]
        t_act = _times(lambda: act_reference(eng, arrays, cams, "event", "fp32"), REPEATS)
    ratio = m["export.fp8_bytes_ratio"]
    worst = m["export.fp8_worst_dim_cosine"]
    fp8 = rep["fp8"]
    figs = [
        Figure("fp8_bytes_ratio", round(ratio, 4), (round(ratio, 4),) * 2,
               FIGURES["fp8_bytes_ratio"]["what"] + f" ({BD.PRESET})", "FP32 graphs",
               float(rep["graph_bytes"]["fp32"]), "<= 0.30", "x", ratio <= 0.30,
               notes=f"bytes {rep['graph_bytes']}; BF16 {m['export.bf16_bytes_ratio']:.4f}; "
                     "what stays FP32: per-channel scales, biases, norms, position and RoPE "
                     "tables, the graph structure"),
        Figure("fp8_worst_dim_cosine", round(worst, 6),
               (round(worst, 6), round(m["export.fp8_global_cosine"], 6)),
               FIGURES["fp8_worst_dim_cosine"]["what"], "-", None, ">= 0.98", "", worst >= 0.98,
               notes=f"FP8 choices {fp8['decisions']}; trials {fp8['trials']}; BF16 worst "
                     f"{m['export.bf16_worst_dim_cosine']:.6f}; spread = (worst, global); "
                     f"onnx.reference cross-check max |diff| {fp8['reference_check']}"),
        Figure("onnx_parity_max_abs", float(f"{m['export.onnx_parity_max_abs']:.3g}"),
               (0.0, float(f"{m['export.onnx_parity_max_abs']:.3g}")),
               FIGURES["onnx_parity_max_abs"]["what"], "-", None, "<= 1e-4", "",
               m["export.onnx_parity_max_abs"] <= 1e-4,
               notes="worst outputs: " + ", ".join(
                   f"{k} {v:.2e}" for k, v in sorted(rep["parity"].items(),
                                                      key=lambda kv: -kv[1])[:4])
               + f"; export took {seconds:.0f} s ({rep['export_seconds']:.0f} s tracing)"),
        Figure("ort_vs_torch_latency", round(statistics.median(t_ort) /
                                             statistics.median(t_torch), 4),
               (round(min(t_ort) / max(t_torch), 4), round(max(t_ort) / min(t_torch), 4)),
               FIGURES["ort_vs_torch_latency"]["what"] + f", event chunk (encoder + {K} steps), "
               "batch 1, 1 thread", "PyTorch", round(1000 * statistics.median(t_torch), 3),
               "reported", "x",
               notes=f"ms: onnxruntime {[round(1000 * x, 2) for x in t_ort]}, PyTorch "
                     f"{[round(1000 * x, 2) for x in t_torch]}"),
    ]
    chunk = statistics.median(t_act)
    k = int(p.eval.execute_frames)
    la = student.action_len("event")
    hz = k / chunk
    figs.append(Figure(
        "control_hz_cpu", round(hz, 2), (round(k / max(t_act), 2), round(k / min(t_act), 2)),
        FIGURES["control_hz_cpu"]["what"] + f", {BD.PRESET}, {K} steps", "-", None,
        "reported", "actions/s",
        notes=f"Engine.act (preprocessing, encoder, {K} steps) {1000 * chunk:.2f} ms per chunk "
              f"({1 / chunk:.1f} chunks/s); {k} executed frames per chunk (eval.execute_frames)"
              f"; the chunk holds {la} frames ({la / chunk:.0f} actions/s if all were used); x "
              f"render_every={p.data.sim.render_every} control commands per frame; export "
              f"latency metric {m['export.latency_ms']:.2f} ms; GPU: none lent"))
    return {f.key: f for f in figs}


if __name__ == "__main__":
    for f in run().values():
        print(f.to_json())
