"""ONNX FP32 against PyTorch with fixed noise, for both modes and both towers, on a real
student (tests/unit/distill/world.py), and the graphs' dynamic batch and text length."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tests.unit.distill import world
from wallwm.export.graphs import COND, ENCODER_INPUTS, EncoderGraph, cond_names, example_inputs
from wallwm.export.runtime import run_named, session


@pytest.fixture(scope="module")
def exported():
    return world.exported()


def test_parity_covers_every_graph_of_both_modes_and_both_towers(exported):
    _, res = exported
    par = res.report["parity"]
    for graph in ("event_encoder", "event_action_step", "unified_encoder",
                  "unified_action_step", "event_chunk", "unified_chunk"):
        assert any(k.startswith(graph + "/") for k in par), (graph, sorted(par))
    assert {"video_step/v (event)", "video_step/v (unified)"} <= set(par)
    assert {"event_action_step/v", "event_action_step/end_logits", "event_chunk/actions",
            "unified_chunk/actions", "unified_encoder/cond.cot"} <= set(par)
    assert all(v <= 1e-4 for v in par.values()), {k: v for k, v in par.items() if v > 1e-4}
    assert res.metrics["export.onnx_parity_max_abs"] == pytest.approx(max(par.values()))
    assert res.metrics["export.onnx_parity_max_abs"] > 0  # compared numbers, not a shortcut


@pytest.mark.parametrize("mode", ["event", "unified"])
@pytest.mark.parametrize("batch,text", [(1, 3), (5, 24)])
def test_encoder_takes_any_batch_and_text_length(mode, batch, text):
    path = world.fp32() / f"{mode}_encoder.onnx"
    model = world.student()
    ex = example_inputs(model, mode, batch=batch, text_len=text, seed=batch)
    got = run_named(session(onnx.load(str(path))), {k: v.numpy() for k, v in ex.items()})
    with torch.no_grad():
        want = EncoderGraph(model, mode)(*(ex[n] for n in ENCODER_INPUTS))
    for name, w in zip(cond_names(model, mode), want, strict=True):
        assert got[name].shape == tuple(w.shape), name
        if w.dtype != torch.bool:
            np.testing.assert_allclose(got[name], w.numpy(), atol=1e-4, err_msg=name)
    assert got[f"{COND}ctx"].shape[1] == text + 1


def test_step_graphs_read_only_encoder_outputs():
    for mode in ("event", "unified"):
        enc = onnx.load(str(world.fp32() / f"{mode}_encoder.onnx"))
        step = onnx.load(str(world.fp32() / f"{mode}_action_step.onnx"))
        outs = {o.name for o in enc.graph.output}
        ins = {i.name for i in step.graph.input} - {"x_t", "t"}
        assert ins and ins <= outs, ins - outs
        assert {i.name for i in enc.graph.input} == set(ENCODER_INPUTS)
        assert not outs & set(ENCODER_INPUTS)  # SSA: no output reuses an input's name
