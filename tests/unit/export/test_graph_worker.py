"""The parallel graph export (wallwm/export/graph_worker.py): worker processes write the same
graphs as an export in this process; a failing graph, or a worker that dies on one, comes back
as an ExportError naming that graph, and the job folder is gone."""

from __future__ import annotations

import os
import re

import onnx
import pytest
import torch
from torch import nn

from tests.conftest import ROOT
from tests.unit.distill import world
from wallwm.export.errors import ExportError
from wallwm.export.graph_worker import export_graphs
from wallwm.export.graphs import GraphSpec, graph_specs


class Recorder(nn.Module):
    """x -> 2x, writing the tracing process's pid to $WALLWM_TEST_PIDS."""

    def forward(self, x):
        with open(os.environ["WALLWM_TEST_PIDS"], "a") as f:
            f.write(f"{os.getpid()}\n")
        return x * 2


class Dies(nn.Module):
    """Kills the process that traces it (an OOM kill, say): no error, no graph."""

    def forward(self, x):
        os._exit(9)


def _spec(role: str, module: nn.Module, width: int = 4) -> GraphSpec:
    return GraphSpec(role, "event", module, (torch.randn(3, width),), ["x"], ["y"],
                     {"x": {0: "B"}})


@pytest.fixture
def child_env(monkeypatch, tmp_path):
    """The workers import this module (its test modules) like pytest does."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("WALLWM_TEST_PIDS", str(tmp_path / "pids"))
    return tmp_path / "pids"


def test_worker_graphs_equal_the_graphs_exported_in_process(tmp_path):
    world.exported()  # the shared export: params' export.workers = 2, kept in fp32/
    student = world.student()
    spec = next(s for s in graph_specs(student, ("event",), False) if s.role == "action_step")
    here = export_graphs([spec], tmp_path, 21, student.cfg.max_text_len, student.cfg.frames,
                         workers=1)[spec.name]
    there = world.fp32() / f"{spec.name}.onnx"
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


def test_graphs_are_traced_in_worker_processes(tmp_path, child_env):
    out = export_graphs([_spec("encoder", Recorder()), _spec("video_step", Recorder())],
                        tmp_path / "out", 21, 8, 2, workers=2)
    assert all(p.exists() for p in out.values())
    pids = {int(x) for x in child_env.read_text().split()}
    assert pids and os.getpid() not in pids


def test_a_failing_graph_is_named_and_nothing_is_left(tmp_path, child_env):
    bad = _spec("encoder", nn.Linear(4, 2), width=5)  # the wrong input width: export fails
    with pytest.raises(ExportError) as e:
        export_graphs([_spec("video_step", Recorder()), bad], tmp_path / "out", 21, 8, 2,
                      workers=2)
    assert e.value.graph == "event_encoder" and e.value.figure == "export"
    assert "torch.onnx.export failed" in str(e.value)
    assert not list((tmp_path / "out").glob(".graph-jobs-*"))


def test_a_worker_that_dies_is_reported_naming_its_graph(tmp_path, child_env):
    with pytest.raises(ExportError) as e:
        export_graphs([_spec("encoder", Dies()), _spec("video_step", Recorder())],
                      tmp_path / "out", 21, 8, 2, workers=2)
    assert e.value.graph == "event_encoder" and "before finishing this graph" in str(e.value)
    assert re.search(r"exited with \[(9, 0|0, 9|9)\]", str(e.value)), str(e.value)
    assert not list((tmp_path / "out").glob(".graph-jobs-*"))
