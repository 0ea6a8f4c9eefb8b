"""Bad inputs to the export fail with a message naming the graph, the output and the figure,
and leave no half-written export folder (an older bundle at the same place stays whole)."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
from onnx import helper

from tests.unit.distill import world
from wallwm.config import ConfigError, load_params
from wallwm.export.errors import ExportError
from wallwm.export.pipeline import export_bundle, refuse
from wallwm.model.wallwm import WallWM
from wallwm.release.bundle import verify_bundle

NAMES = ("event_encoder", "event_action_step", "unified_encoder", "unified_action_step",
         "video_step")


@pytest.fixture(scope="module")
def fp32() -> dict[str, Path]:
    world.exported()  # the session's export keeps its FP32 graphs
    return {n: world.fp32() / f"{n}.onnx" for n in NAMES}


def _export(tmp_path: Path, *sets: str, model=None, graphs=None) -> Path:
    out = tmp_path / "exports" / "bundle"
    export_bundle(model or world.student(), world.build() / "tokenizer.json", world.contract(),
                  world.build(), world.params(*sets), out, {"data_build": "t"},
                  fp32_graphs=graphs)
    return out


def _nothing_left(tmp_path: Path) -> None:
    parent = tmp_path / "exports"
    left = sorted(p.name for p in parent.iterdir()) if parent.exists() else []
    assert left in ([], ["bundle"]), left  # no temp folders beside it


def test_a_checkpoint_without_normalization_statistics_is_refused(tmp_path):
    raw = WallWM(world.student().cfg)
    with pytest.raises(ExportError, match="no normalization statistics") as e:
        _export(tmp_path, model=raw)
    assert e.value.figure == "normalization" and e.value.output == "model.norm"
    assert not (tmp_path / "exports" / "bundle").exists()
    _nothing_left(tmp_path)


def test_the_frustum_mask_at_inference_is_refused():
    m = WallWM(world.student().cfg.replace(frustum_mask_at_inference=True))
    m.load_state_dict(world.student().state_dict())
    with pytest.raises(ExportError, match="frustum_mask_at_inference") as e:
        refuse(m, 21, ["fp32"])
    assert e.value.figure == "frustum_mask"


def test_an_unsupported_opset_is_refused():
    with pytest.raises(ExportError, match="opset 18") as e:
        refuse(world.student(), 18, ["fp32", "fp8"])
    assert e.value.figure == "opset"
    with pytest.raises(ConfigError, match="export.opset"):
        load_params(world.ROOT / "params.yaml", sets=["export.opset=18"])


def test_a_graph_that_fails_the_checker_leaves_nothing(tmp_path, fp32):
    broken = tmp_path / "broken.onnx"
    g = onnx.load(str(fp32["event_action_step"]))
    g.graph.node.append(helper.make_node("Add", ["no_such_tensor", "v"], ["v2"]))
    onnx.save(g, str(broken))
    with pytest.raises(ExportError, match="onnx.checker") as e:
        _export(tmp_path, graphs={**fp32, "event_action_step": broken})
    assert e.value.graph == "event_action_step" and e.value.figure == "onnx.checker"
    assert not (tmp_path / "exports" / "bundle").exists()
    _nothing_left(tmp_path)


def test_a_parity_miss_beyond_the_bound_keeps_the_older_bundle(tmp_path, fp32):
    old = tmp_path / "exports" / "bundle"
    shutil.copytree(world.exported()[0], old)
    with pytest.raises(ExportError, match="differs from PyTorch") as e:
        _export(tmp_path, "export.parity_atol=1e-12", graphs=fp32)
    assert e.value.figure == "onnx_parity_max_abs" and e.value.graph and e.value.output
    assert e.value.value > e.value.bound == 1e-12
    verify_bundle(old)  # untouched
    _nothing_left(tmp_path)


def test_an_fp8_accuracy_miss_names_the_dimension(tmp_path, fp32):
    with pytest.raises(ExportError, match="worst dimension") as e:
        _export(tmp_path, "export.fp8_min_cosine=0.9999999999", "export.precisions=[fp32,fp8]",
                graphs=fp32)
    assert e.value.figure == "fp8_worst_dim_cosine"
    assert e.value.output.startswith("actions[..., ") and "_encoder" in e.value.graph
    _nothing_left(tmp_path)
