"""TensorRT is GPU-only: without `tensorrt` and an FP8-capable GPU the export records why no
engine was built and still writes a complete bundle; with them, it builds and lists engines."""

from __future__ import annotations

import pytest

from tests.unit.distill import world
from wallwm.export.tensorrt import availability, profile_shapes


def test_availability_names_the_reason():
    a = availability("fp8")
    if a.ok:
        assert a.gpu_arch.startswith("sm_") and a.trt_version
    else:
        assert a.reason and ("gpu" in a.reason.lower() or "sm_" in a.reason)


def test_profiles_cover_batch_and_text():
    shapes = profile_shapes({"obs": ["B", 2, 3, 32, 32], "text_ids": ["B", "Lt"]}, 8, 24)
    assert shapes["obs"] == ((1, 2, 3, 32, 32), (1, 2, 3, 32, 32), (8, 2, 3, 32, 32))
    assert shapes["text_ids"] == ((1, 2), (1, 12), (8, 25))


def test_the_export_records_the_tensorrt_status():
    _, res = world.exported()
    st = res.report["tensorrt"]
    assert st["built"] is False and st["reason"].startswith("export.tensorrt is false")


def test_engines_build_on_an_fp8_gpu(tmp_path):
    a = availability("fp8")
    if not a.ok:
        pytest.skip(f"TensorRT engines not built here: {a.reason}")
    from wallwm.export.pipeline import export_bundle
    from wallwm.release.bundle import verify_bundle

    out = tmp_path / "bundle"
    export_bundle(world.student(), world.build() / "tokenizer.json", world.contract(),
                  world.build(), world.params("export.tensorrt=true"), out,
                  fp32_graphs={n: world.fp32() / f"{n}.onnx" for n in (
                      "event_encoder", "event_action_step", "unified_encoder",
                      "unified_action_step", "video_step")})
    m = verify_bundle(out)
    assert m.tensorrt and m.tensorrt[0].gpu_arch == a.gpu_arch
    assert all((out / f).stat().st_size > 0 for f in m.tensorrt[0].files)
