"""FP8 (E4M3) graphs as explicit Q/DQ, what TensorRT 10+ builds as a strongly typed engine.

Weights: every GEMM/embedding weight (wallwm/export/weights.py) becomes a FLOAT8E4M3FN
initializer with one FP32 scale per output channel (amax / 448) and a `DequantizeLinear` (axis
= the channel axis) in front of its consumer: 1 byte per weight instead of 4.

Activations: the input of each such GEMM gets `QuantizeLinear -> DequantizeLinear` with one
per-tensor scale, amax / 448 over calibration batches of real build data (`calibrate`); which
GEMM inputs keep their Q/DQ is decided by accuracy (`wallwm/export/accuracy.py`): activations
are quantized only where the worst action dimension stays above the bound.

Why not onnxruntime.quantization: its FP8 path refuses weight-only FP8 (activation and weight
types must both be FLOAT8) and accepts only `CalibrationMethod.Distribution` (a std-based
scale, not amax) (onnxruntime 1.32, quantization/quantize.py); we need both. onnxruntime on CPU
simulates FP8 (PITFALLS.md): FP8 graphs are evaluated at ORT_ENABLE_BASIC, where they match
`onnx.reference.ReferenceEvaluator`; the default level folds some FP8 Q/DQ patterns wrongly.
"""

from __future__ import annotations

from collections.abc import Iterable

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from wallwm.export.weights import (
    by_initializer,
    drop_initializers,
    initializer_array,
    replace_input,
    weight_uses,
)

FP8_MAX = 448.0  # largest finite E4M3FN value
E4M3 = ml_dtypes.float8_e4m3fn


def to_e4m3(x: np.ndarray) -> np.ndarray:
    """Round to E4M3FN, saturating at +-448 (ml_dtypes turns overflow into NaN)."""
    return np.clip(x, -FP8_MAX, FP8_MAX).astype(E4M3)


def channel_scales(w: np.ndarray, axis: int) -> np.ndarray:
    """One scale per channel along `axis`: amax / 448 (1 for an all-zero channel)."""
    other = tuple(a for a in range(w.ndim) if a != axis)
    amax = np.abs(w).max(axis=other).astype(np.float64)
    return np.where(amax > 0, amax / FP8_MAX, 1.0).astype(np.float32)


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(E4M3 values, per-channel scales) of a 2-D weight."""
    s = channel_scales(w, axis)
    shape = [1] * w.ndim
    shape[axis] = -1
    return to_e4m3(w / s.reshape(shape)), s


def activation_names(model: onnx.ModelProto) -> list[str]:
    """The GEMM inputs that could carry activation Q/DQ, in graph order, without repeats."""
    seen: list[str] = []
    for u in weight_uses(model):
        if u.activation is not None and u.activation not in seen:
            seen.append(u.activation)
    return seen


def calibrate(model: onnx.ModelProto, feeds: Iterable[dict[str, np.ndarray]],
              names: list[str]) -> dict[str, float]:
    """amax of each tensor in `names` over the calibration feeds (the FP32 graph)."""
    if not names:
        return {}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_empty_tensor_value_info(n))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    amax = dict.fromkeys(names, 0.0)
    n_feeds = 0
    inputs = {i.name for i in sess.get_inputs()}
    for feed in feeds:
        outs = sess.run(names, {k: v for k, v in feed.items() if k in inputs})
        for n, v in zip(names, outs, strict=True):
            amax[n] = max(amax[n], float(np.abs(v).max()) if v.size else 0.0)
        n_feeds += 1
    if n_feeds == 0:
        raise ValueError("calibrate: no calibration batches (the build gave no held-out items)")
    return amax


def quantize_fp8(model: onnx.ModelProto, act_amax: dict[str, float] | None = None
                 ) -> tuple[onnx.ModelProto, dict[str, int]]:
    """An FP8 copy of the FP32 `model`: E4M3 per-channel weights always; activation Q/DQ for
    the GEMM inputs named in `act_amax` (their calibrated amax). Returns (model, counts)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    uses = by_initializer(weight_uses(m))
    weight_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    for init, group in uses.items():
        w = initializer_array(m, init)
        q, s = quantize_weight(w, group[0].axis)
        qn, sn, dq = f"{init}.fp8", f"{init}.fp8_scale", f"{init}.dq"
        new_inits += [numpy_helper.from_array(q, qn), numpy_helper.from_array(s, sn)]
        weight_nodes.append(helper.make_node("DequantizeLinear", [qn, sn], [dq],
                                             name=f"{init}.DequantizeLinear",
                                             axis=group[0].axis))
        for u in group:
            replace_input(m, u.node, init, dq)
    drop_initializers(m, set(uses))
    act_amax = act_amax or {}
    zp = "fp8.zero_point"
    if act_amax:
        new_inits.append(numpy_helper.from_array(np.zeros((), E4M3), zp))
    before: dict[int, list[onnx.NodeProto]] = {}
    done: dict[str, str] = {}
    for u in weight_uses(model):
        a = u.activation
        if a is None or a not in act_amax:
            continue
        if a not in done:
            sn = f"{a}.act_scale"
            amax = act_amax[a]
            new_inits.append(numpy_helper.from_array(
                np.array(amax / FP8_MAX if amax > 0 else 1.0, np.float32), sn))
            q, d = f"{a}.act_fp8", f"{a}.act_dq"
            before.setdefault(u.consumer, []).extend([
                helper.make_node("QuantizeLinear", [a, sn, zp], [q], name=f"{a}.QuantizeLinear"),
                helper.make_node("DequantizeLinear", [q, sn, zp], [d],
                                 name=f"{a}.act_DequantizeLinear")])
            done[a] = d
        m.graph.node[u.consumer].input[0] = done[a]
    nodes = list(weight_nodes)
    for i, n in enumerate(m.graph.node):
        nodes.extend(before.get(i, []))
        nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(new_inits)
    m.graph.name = f"{model.graph.name}_fp8"
    return m, {"weights": len(uses), "activations": len(done)}
