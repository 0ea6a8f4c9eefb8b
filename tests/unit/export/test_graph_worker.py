"""The parallel graph export (wallwm/export/graph_worker.py): worker processes write the same
graphs as an export in this process, and a failing graph comes back as an ExportError naming
it while the other jobs still finish or stop cleanly."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from tests.unit.distill import world
from wallwm.export.errors import ExportError
from wallwm.export.graph_worker import export_graphs
from wallwm.export.graphs import GraphSpec, graph_specs


def test_worker_graphs_equal_the_graphs_exported_in_process(tmp_path):
    world.exported()  # the shared export: params' export.workers = 2, kept in fp32/
    student = world.student()
    spec = next(s for s in graph_specs(student, ("event",), False) if s.role == "action_step")
    here = export_graphs([spec], tmp_path, 21, student.cfg.max_text_len, student.cfg.frames,
                         workers=1)[spec.name]
    there = world.home() / "fp32" / f"{spec.name}.onnx"
    a, b = _content(onnx.load(str(here))), _content(onnx.load(str(there)))
    assert a == b and len(a["nodes"]) > 10


def _content(m: onnx.ModelProto) -> dict:
    """What a graph computes: nodes with attributes, weights, input/output types (not the
    exporter's shape-range annotations, which depend on what it traced before)."""
    g = m.graph
    return {"nodes": [(n.op_type, list(n.input), list(n.output),
                       [a.SerializeToString() for a in n.attribute]) for n in g.node],
            "weights": {t.name: t.SerializeToString() for t in g.initializer},
            "io": [(v.name, v.type.SerializeToString()) for v in (*g.input, *g.output)]}


def test_a_failing_graph_is_named_and_nothing_is_left(tmp_path):
    bad = GraphSpec("encoder", "event", nn.Linear(4, 2), (torch.randn(3, 5),), ["x"], ["y"],
                    {"x": {0: "B"}})
    good = GraphSpec("action_step", "event", nn.Linear(4, 2), (torch.randn(3, 4),), ["x"],
                     ["y"], {"x": {0: "B"}})
    with pytest.raises(ExportError) as e:
        export_graphs([good, bad], tmp_path / "out", 21, 8, 1, workers=2)
    assert e.value.graph == "event_encoder" and e.value.figure == "export"
    assert "torch.onnx.export failed" in str(e.value)
    assert not list((tmp_path / "out").glob(".graph-jobs-*"))  # the job folder is gone
