"""The exported bundle is what the robots run: its manifest's hashes verify, the release
runner (wallwm/release/engine.py) loads it and passes its health check at every precision,
and its actions from raw inputs are the PyTorch student's."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tests.unit.distill import world
from wallwm.release.bundle import BundleError, load_manifest, verify_bundle
from wallwm.release.engine import Engine


@pytest.fixture(scope="module")
def exported():
    return world.exported()


def test_manifest_hashes_verify_and_every_precision_passes_the_health_check(exported):
    bundle, res = exported
    m = verify_bundle(bundle)
    assert m.precisions == ["fp32", "bf16", "fp8"]
    for prec in m.precisions:
        rep = Engine(bundle, precision=prec).health_check()
        assert rep.ok, rep.error
        assert set(rep.modes) == {"event", "unified"}
        assert res.report["health"][prec]["ok"]


def test_manifest_says_what_the_robot_needs(exported):
    bundle, _ = exported
    m = load_manifest(bundle)
    p, cfg = world.params(), world.student().cfg
    assert m.embodiment == p.export.embodiment
    assert [c.name for c in m.cameras] == world.contract()["cameras"]
    assert all((c.height, c.width) == (cfg.image_size, cfg.image_size) for c in m.cameras)
    assert m.runtime.name == "onnxruntime" and m.runtime.opset == 21
    assert (m.action_dim, m.state_dim, m.text.max_len) == (4, 4, cfg.max_text_len)
    for mode, spec in m.modes.items():
        assert spec.steps == p.distill.student_steps
        assert spec.schedule == [(1.0, -0.5), (0.5, -0.5)]
        assert spec.action_noise.shape == ["B", world.student().action_len(mode), 4]
        assert {i.name: i.dtype for i in spec.inputs}["text_mask"] == "bool"
        assert spec.video_step is not None
    assert m.lineage["data_build"] == "test-build"
    assert m.tensorrt == []
    assert all(f.size > 0 and len(f.sha256) == 64 for f in m.files.values())
    assert "reference/event.npz" in m.files and "normalization.json" in m.files


def test_a_changed_byte_is_caught(exported, tmp_path):
    bundle, _ = exported
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    g = copy / "graphs" / "fp8" / "event_action_step.onnx"
    data = bytearray(g.read_bytes())
    data[len(data) // 2] ^= 0xFF
    g.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        verify_bundle(copy)


@torch.no_grad()
def test_runner_actions_from_raw_inputs_are_the_students(exported):
    bundle, _ = exported
    model = world.student()
    eng = Engine(bundle)
    for mode in ("event", "unified"):
        ref = dict(np.load(bundle / "reference" / f"{mode}.npz"))
        cams = world.contract()["cameras"]
        out = eng.act({c: ref[f"in.images.{c}"] for c in cams}, ref["in.state"],
                      text_ids=ref["in.text_ids"], text_mask=ref["in.text_mask"],
                      event_type=ref["in.event_type"], abs_time=ref["in.abs_time"], mode=mode,
                      action_noise=ref["in.action_noise"], video_noise=ref["in.video_noise"])
        obs = np.stack([ref[f"in.images.{c}"] for c in cams], 1).transpose(0, 1, 4, 2, 3)
        from wallwm.model.batch import WorldActionBatch

        B = obs.shape[0]
        b = WorldActionBatch(
            obs=torch.from_numpy(obs.astype(np.float32) / 127.5 - 1),
            text_ids=torch.from_numpy(ref["in.text_ids"]),
            text_mask=torch.from_numpy(ref["in.text_mask"]),
            state=torch.from_numpy(ref["in.state"]), intrinsics=torch.eye(3).expand(B, 2, 3, 3),
            extrinsics=torch.eye(4).expand(B, 2, 4, 4), calibrated=torch.zeros(B, 2, dtype=bool),
            abs_time=torch.from_numpy(ref["in.abs_time"]), mode=mode,
            event_type=torch.from_numpy(ref["in.event_type"]))
        want = model.predict(b, mode, steps=2, return_video=False, noise=(
            torch.from_numpy(ref["in.video_noise"]), torch.from_numpy(ref["in.action_noise"])))
        np.testing.assert_allclose(out["actions"], want["actions"].numpy(), atol=1e-4)
        np.testing.assert_allclose(out["actions"], ref["out.actions"], atol=1e-5)
        if mode == "event":
            np.testing.assert_array_equal(out["valid"], want["action_mask"].numpy())
