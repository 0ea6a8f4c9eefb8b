"""FP8: E4M3 weights with per-channel scales as FP8 initializers + DequantizeLinear, activation
Q/DQ from calibrated amax; the graphs run at ORT_ENABLE_BASIC and match onnx.reference; the
worst action dimension and the bytes against FP32."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from tests.unit.distill import world
from wallwm.export.data import batches, to_sample
from wallwm.export.fp8 import FP8_MAX, activation_names, calibrate, quantize_fp8, quantize_weight
from wallwm.export.graphs import example_inputs
from wallwm.export.runtime import HostLoop, run_named, session
from wallwm.model.flow_matching import timesteps


def _matmul_graph(w: np.ndarray) -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, w.shape[1]])],
        [numpy_helper.from_array(w.astype(np.float32), "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


def test_per_channel_scales_keep_a_small_channel_that_per_tensor_loses():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 8)).astype(np.float32)
    w[:, 3] *= 1e-6  # one channel far below the others (under E4M3 subnormals per tensor)
    q, s = quantize_weight(w, axis=1)
    assert q.dtype == ml_dtypes.float8_e4m3fn and s.shape == (8,)
    np.testing.assert_allclose(s, np.abs(w).max(0) / FP8_MAX, rtol=1e-6)
    back = q.astype(np.float32) * s
    rel = np.abs(back - w).max(0) / np.abs(w).max(0)
    assert rel.max() < 0.07  # E4M3: 3 mantissa bits
    per_tensor = (np.clip(w / (np.abs(w).max() / FP8_MAX), -448, 448).astype(
        ml_dtypes.float8_e4m3fn).astype(np.float32) * (np.abs(w).max() / FP8_MAX))
    assert np.abs(per_tensor[:, 3] - w[:, 3]).max() / np.abs(w[:, 3]).max() > 0.5


def test_activation_qdq_uses_the_calibrated_amax_and_matches_the_reference():
    rng = np.random.default_rng(1)
    m = _matmul_graph(rng.standard_normal((32, 16)))
    feeds = [{"x": rng.standard_normal((4, 32)).astype(np.float32) * (i + 1)} for i in range(3)]
    names = activation_names(m)
    amax = calibrate(m, feeds, names)
    assert names == ["x"] and amax["x"] == pytest.approx(max(np.abs(f["x"]).max() for f in feeds))
    q, counts = quantize_fp8(m, amax)
    onnx.checker.check_model(q, full_check=True)
    assert counts == {"weights": 1, "activations": 1}
    scale = next(numpy_helper.to_array(t) for t in q.graph.initializer if t.name == "x.act_scale")
    assert float(scale) == pytest.approx(amax["x"] / FP8_MAX)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 2
    x = feeds[1]
    got = run_named(session(q, "fp8"), x)["y"]
    np.testing.assert_allclose(got, ReferenceEvaluator(q).run(None, x)[0], atol=1e-5)
    ref32 = run_named(session(m), x)["y"]
    assert 0 < np.abs(got - ref32).max() < 0.1 * np.abs(ref32).max()


@pytest.fixture(scope="module")
def exported():
    return world.exported()


def _load(bundle, precision, name):
    return onnx.load(str(bundle / "graphs" / precision / f"{name}.onnx"))


def test_bundle_fp8_graphs_hold_e4m3_initializers_and_per_channel_dequantize(exported):
    bundle, _ = exported
    g = _load(bundle, "fp8", "event_action_step")
    inits = {t.name: t for t in g.graph.initializer}
    fp8 = [t for t in inits.values()  # (the activations' zero point is an FP8 scalar)
           if t.data_type == TensorProto.FLOAT8E4M3FN and len(t.dims) == 2]
    assert len(fp8) >= 8
    dq = [n for n in g.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
          and inits[n.input[0]] in fp8]
    assert len(dq) == len(fp8)
    for n in dq:
        w, s = inits[n.input[0]], numpy_helper.to_array(inits[n.input[1]])
        axis = next(a.i for a in n.attribute if a.name == "axis")
        assert s.ndim == 1 and s.shape[0] == w.dims[axis]  # one scale per output channel
    fp32_mats = [n for n in g.graph.node if n.op_type in ("MatMul", "Gemm")
                 and n.input[1] in inits and inits[n.input[1]].data_type == TensorProto.FLOAT
                 and np.prod(inits[n.input[1]].dims) >= 256]
    assert not fp32_mats, [n.name for n in fp32_mats]


def test_fp8_runs_at_basic_and_matches_the_reference_evaluator(exported):
    bundle, res = exported
    assert res.report["fp8"]["reference_check"], "the export cross-checked a sample"
    assert all(v < 1e-4 for v in res.report["fp8"]["reference_check"].values())
    # and again here, independently: one held-out event through the FP8 action step
    p = world.params()
    b = batches(world.build(), world.student(), world.build() / "tokenizer.json",
                list(p.data.annotate.vocabulary), "event", "val", 1, 1)[0]
    s = to_sample(world.student(), b, seed=3)
    cond = run_named(session(_load(bundle, "fp32", "event_encoder")), s.feed)
    feed = {**cond, "x_t": s.action_noise, "t": np.full(1, 0.5, np.float32)}
    g8 = _load(bundle, "fp8", "event_action_step")
    sess = session(g8, "fp8")
    ins = {i.name for i in sess.get_inputs()}
    got = run_named(sess, feed)
    want = ReferenceEvaluator(g8).run(None, {k: v for k, v in feed.items() if k in ins})
    for (name, a), b_ in zip(got.items(), want, strict=True):
        np.testing.assert_allclose(a, b_, atol=1e-4, err_msg=name)


def test_fp8_worst_dimension_and_bytes_against_fp32(exported):
    bundle, res = exported
    m = res.metrics
    assert m["export.fp8_worst_dim_cosine"] >= world.params().export.fp8_min_cosine
    per_dim = [v for k, v in m.items() if k.startswith("export.fp8_cosine.")]
    assert len(per_dim) == 2 * 4 and min(per_dim) == pytest.approx(m["export.fp8_worst_dim_cosine"])
    assert m["export.bf16_worst_dim_cosine"] >= m["export.fp8_worst_dim_cosine"] - 1e-3
    assert 0 < m["export.fp8_bytes_ratio"] < m["export.bf16_bytes_ratio"] < 0.7
    sizes = {p: sum(f.stat().st_size for f in (bundle / "graphs" / p).glob("*.onnx"))
             for p in ("fp32", "bf16", "fp8")}
    assert sizes["fp8"] / sizes["fp32"] == pytest.approx(m["export.fp8_bytes_ratio"], rel=0.02)
    # FP8 really changed the numbers: the chunk differs from FP32, a little
    loop8 = HostLoop.of(_load(bundle, "fp8", "unified_encoder"),
                        _load(bundle, "fp8", "unified_action_step"), timesteps(2), "fp8",
                        event=False)
    loop32 = HostLoop.of(_load(bundle, "fp32", "unified_encoder"),
                         _load(bundle, "fp32", "unified_action_step"), timesteps(2), event=False)
    ref = np.load(bundle / "reference" / "unified.npz")
    ex = {k: v.numpy() for k, v in example_inputs(world.student(), "unified", 2).items()}
    noise = ref["in.action_noise"]
    a8, a32 = loop8.run(ex, noise)["actions"], loop32.run(ex, noise)["actions"]
    assert 0 < np.abs(a8 - a32).max() < 0.5
