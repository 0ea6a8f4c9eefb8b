"""The whole export of a (student) model into a checked bundle folder; one call, no services.

    refuse       no normalization statistics, frustum mask at inference, opset < 19
    export       FP32 graphs (wallwm/export/graphs.py), onnx.checker (full check)
    parity       ONNX FP32 vs PyTorch, same inputs and noise        <= export.parity_atol
    BF16         weights + GEMM inputs in BF16; worst action dim    >= export.bf16_min_cosine
    FP8          E4M3 weights per channel (+ activations where they keep accuracy), amax
                 from build data; worst action dim                   >= export.fp8_min_cosine;
                 a sample of each graph cross-checked with onnx.reference
    TensorRT     engines when asked and possible (else the reason is recorded)
    bundle       graphs, normalization, tokenizer, reference sample, manifest; verified and
                 health-checked by the release runner at every precision
    latency      the FP32 bundle per action chunk at batch 1 (the runner, `export.threads`)

Everything is written under a temporary sibling of `out_dir` and renamed into place only when
every check passed: a failed export leaves no folder (and an older bundle at `out_dir` stays).
An ExportError names the graph, the output and the figure.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wallwm.export import data as D
from wallwm.export.errors import ExportError
from wallwm.export.graph_worker import export_graphs
from wallwm.export.graphs import graph_specs
from wallwm.export.parity import Parity, check_parity, require_parity
from wallwm.export.precision import (
    chunk_actions,
    graph_feeds,
    make_bf16,
    make_fp8,
    reference_check,
)
from wallwm.export.weights import graph_bytes
from wallwm.model.wallwm import WallWM
from wallwm.util.atomic import atomic_dir

MIN_OPSET = 19  # FP8 QuantizeLinear/DequantizeLinear


@dataclass
class ExportResult:
    bundle_dir: Path
    metrics: dict[str, float]
    report: dict[str, Any] = field(default_factory=dict)


def refuse(model: WallWM, opset: int, precisions: list[str]) -> None:
    """The checks before any graph is written."""
    from wallwm.model.normalize import NormalizationMissing

    try:
        model.norm.require()
    except NormalizationMissing as e:
        raise ExportError(f"the checkpoint has no normalization statistics: {e}",
                          graph="(none written)", output="model.norm",
                          figure="normalization") from None
    if model.cfg.frustum_mask_at_inference:
        raise ExportError("model.frustum_mask_at_inference is on: the frustum bias needs "
                          "calibration per sample, computed on the host outside any graph, "
                          "and the bundle format has no input for it; export a model with "
                          "frustum_mask_at_inference: false (the default)",
                          graph="encoder", output="cond.bias", figure="frustum_mask")
    if opset < MIN_OPSET and "fp8" in precisions:
        raise ExportError(f"export.opset {opset} is unsupported: FP8 QuantizeLinear/"
                          f"DequantizeLinear need opset >= {MIN_OPSET} (params say 21)",
                          graph="(all)", output="opset", figure="opset")


def check_graph(g: onnx.ModelProto, name: str) -> None:
    try:
        onnx.checker.check_model(g, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejects the graph: {str(e)[:400]}", graph=name,
                          output="(graph)", figure="onnx.checker") from None


def latency_ms(bundle: Path, mode: str, sample: D.Sample, cameras: list[str], threads: int,
               repeats: int, precision: str = "fp32") -> float:
    """Median ms of `Engine.act` on one row (batch 1, the bundle's steps)."""
    from wallwm.export.bundle import act_reference, reference_inputs
    from wallwm.release.engine import Engine

    eng = Engine(bundle, precision=precision, verify=False, threads=threads)
    arrays = reference_inputs(sample, 1, cameras)
    act_reference(eng, arrays, cameras, mode, precision)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        act_reference(eng, arrays, cameras, mode, precision)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def export_bundle(model: WallWM, tokenizer: Path, contract: dict[str, Any], build_dir: Path,
                  p: Any, out_dir: Path, lineage: dict[str, str] | None = None, *,
                  fp32_graphs: dict[str, Path] | None = None, keep_fp32: Path | None = None
                  ) -> ExportResult:
    """Export `model` (the student) into a checked bundle at `out_dir` (see module doc).

    `fp32_graphs` (graph name -> .onnx) reuses FP32 graphs exported earlier from this very
    model instead of tracing again (every check still runs on them); `keep_fp32` copies the
    freshly exported FP32 graphs into that folder."""
    ex = p.export
    precisions = list(ex.precisions)
    modes = list(ex.modes)
    steps = int(p.distill.student_steps)
    model = model.eval()
    refuse(model, int(ex.opset), precisions)
    vocab = list(p.data.annotate.vocabulary)
    report: dict[str, Any] = {"modes": modes, "steps": steps, "precisions": precisions}
    t_all = time.perf_counter()
    held = {m: D.samples(build_dir, model, tokenizer, vocab, m, "val",
                         int(ex.accuracy_batches), int(ex.batch_size), int(ex.seed))
            for m in modes}
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory(
            prefix=".export-work-", dir=out_dir.parent) as work:
        work = Path(work)
        g32: dict[str, onnx.ModelProto] = {}
        t0 = time.perf_counter()
        names = [f"{m}_{r}" for m in modes for r in ("encoder", "action_step")] + (
            ["video_step"] if ex.video_step else [])
        if fp32_graphs is not None:
            missing = [n for n in names if n not in fp32_graphs]
            if missing:
                raise ExportError(f"fp32_graphs lacks {missing}", graph=missing[0],
                                  figure="inputs")
            paths = {n: Path(fp32_graphs[n]) for n in names}
        else:
            paths = export_graphs(graph_specs(model, modes, bool(ex.video_step)), work,
                                  int(ex.opset), model.cfg.max_text_len, model.cfg.frames,
                                  int(ex.workers))
        for name, path in paths.items():
            g = onnx.load(str(path))
            check_graph(g, name)
            g32[name] = g
        if keep_fp32 is not None and fp32_graphs is None:
            keep_fp32.mkdir(parents=True, exist_ok=True)
            for name, path in paths.items():
                shutil.copyfile(path, keep_fp32 / f"{name}.onnx")
        report["export_seconds"] = round(time.perf_counter() - t0, 2)
        par = Parity()
        for m in modes:
            check_parity(model, g32, held[m][0], steps, par)
        require_parity(par, float(ex.parity_atol))
        report["parity"] = par.by_output
        metrics: dict[str, float] = {"export.onnx_parity_max_abs": par.max_abs}
        graphs: dict[str, dict[str, onnx.ModelProto]] = {"fp32": g32}
        ref = {m: chunk_actions(g32, m, held[m], steps, "fp32") for m in modes}
        video_feeds = graph_feeds(g32, {m: held[m][:1] for m in modes},
                                  steps).get("video_step", [])
        if "bf16" in precisions:
            res = make_bf16(g32, held, ref, steps, float(ex.bf16_min_cosine), video_feeds)
            graphs["bf16"] = res.graphs
            metrics.update(_figures("bf16", res))
            report["bf16"] = _report(res)
        if "fp8" in precisions:
            calib = {m: D.samples(build_dir, model, tokenizer, vocab, m, "train",
                                  int(ex.calibration_batches), int(ex.batch_size),
                                  int(ex.seed) + 1) for m in modes}
            res = make_fp8(g32, held, calib, ref, steps, float(ex.fp8_min_cosine),
                           ex.fp8_activations, video_feeds)
            one = {name: _row(f) for name, f in
                   graph_feeds(g32, {modes[0]: held[modes[0]][:1]}, steps).items()}
            res.reference_check = reference_check(res.graphs, one)
            graphs["fp8"] = res.graphs
            metrics.update(_figures("fp8", res))
            report["fp8"] = _report(res)
        size = {pr: sum(graph_bytes(g) * (len(modes) if n == "video_step" else 1)
                        for n, g in gs.items()) for pr, gs in graphs.items()}
        report["graph_bytes"] = size
        for pr in graphs:
            if pr != "fp32":
                metrics[f"export.{pr}_bytes_ratio"] = size[pr] / size["fp32"]
        trt_entries, trt_files, report["tensorrt"] = _tensorrt(ex, graphs, modes, work, model)
        from wallwm.export.bundle import write_bundle

        written = write_bundle(tmp, graphs, model, tokenizer, contract, p, lineage or {},
                               {m: held[m][0] for m in modes}, build_dir=build_dir,
                               tensorrt=trt_entries, extra_files=trt_files)
        report["health"] = written["health"]
        report["reference_deviation"] = written["reference_deviation"]
        cams = list(contract["cameras"])
        lat = {m: latency_ms(tmp, m, held[m][0], cams, int(ex.threads),
                             int(ex.latency_repeats)) for m in modes}
        report["latency_ms"] = lat
        metrics["export.latency_ms"] = lat[modes[0]]
        for m, v in lat.items():
            metrics[f"export.latency_ms.{m}"] = v
        metrics["export.bundle_bytes"] = float(written["manifest"].total_size)
    report["seconds"] = round(time.perf_counter() - t_all, 2)
    return ExportResult(out_dir, metrics, report)


def _row(feed: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The first row of the first feed of a graph (one sample for onnx.reference)."""
    return {k: v[:1] for k, v in feed[0].items()}


def _figures(prec: str, res: Any) -> dict[str, float]:
    out = {f"export.{prec}_worst_dim_cosine": res.worst,
           f"export.{prec}_global_cosine": res.global_cosine}
    for mode, a in res.agreement.items():
        out[f"export.{prec}_worst_dim_cosine.{mode}"] = a.worst
        for d, c in enumerate(a.per_dim):
            out[f"export.{prec}_cosine.{mode}.d{d}"] = c
    if res.video_cosine is not None:
        out[f"export.{prec}_video_cosine"] = res.video_cosine
    if prec == "fp8":
        out["export.fp8_activation_graphs"] = float(sum(v == "w8a8"
                                                        for v in res.decisions.values()))
    return out


def _report(res: Any) -> dict[str, Any]:
    return {"agreement": {m: a.to_json() for m, a in res.agreement.items()},
            "video_cosine": res.video_cosine, "decisions": res.decisions,
            "trials": res.trials, "reference_check": res.reference_check}


def _tensorrt(ex: Any, graphs: dict[str, dict[str, onnx.ModelProto]], modes: list[str],
              work: Path, model: WallWM) -> tuple[list[dict], dict[str, Path], dict[str, Any]]:
    """Engines for the FP8 (else FP32) graphs when export.tensorrt and the machine allow."""
    from wallwm.export import tensorrt as T

    prec = "fp8" if "fp8" in graphs else "fp32"
    avail = T.availability(prec)
    status: dict[str, Any] = {"requested": bool(ex.tensorrt), "built": False,
                              "reason": avail.reason or "", "precision": prec}
    if not ex.tensorrt:
        status["reason"] = "export.tensorrt is false" + (f"; {avail.reason}" if avail.reason
                                                         else "")
        return [], {}, status
    if not avail.ok:
        return [], {}, status
    files: dict[str, Path] = {}
    for name, g in graphs[prec].items():
        src = work / f"trt-{prec}-{name}.onnx"
        onnx.save(g, str(src))
        inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
                  for i in g.graph.input}
        plan = work / f"{name}.plan"
        T.build_engine(src, plan, T.profile_shapes(inputs, int(ex.tensorrt_max_batch),
                                                   model.cfg.max_text_len))
        files[f"engines/{avail.gpu_arch}/{prec}/{name}.plan"] = plan
    status.update(built=True, gpu_arch=avail.gpu_arch, trt_version=avail.trt_version)
    return [{"gpu_arch": avail.gpu_arch, "trt_version": avail.trt_version, "precision": prec,
             "files": sorted(files)}], files, status


def write_report(result: ExportResult, path: Path) -> Path:
    from wallwm.util.atomic import atomic_write_text

    atomic_write_text(path, json.dumps({"metrics": result.metrics, **result.report}, indent=2,
                                       default=float))
    return path
