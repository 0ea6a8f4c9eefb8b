"""Boundary checks with clear errors; presets and their parameter counts; the summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.model.test_streams import batch, small
from wallwm.config import load_params
from wallwm.model import ModelInputError, WallWM, WallWMConfig, print_summary, summarize

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return WallWM(small())


def test_forward_losses_and_shapes(model):
    for mode in ("event", "unified"):
        out = model(batch(model.cfg, mode), generator=torch.Generator().manual_seed(0))
        assert set(out) == {"loss", "video_fm", "action_fm", "event_end", "cot"}
        assert all(v.shape == () and torch.isfinite(v) for v in out.values())
        assert (out["cot"] > 0) == (mode == "unified")
        assert (out["event_end"] > 0) == (mode == "event")


@pytest.mark.parametrize("change, match", [
    (lambda b: b.replace(obs=b.obs[:, :1]), "1 views; the model was built for views=2"),
    (lambda b: b.replace(obs=b.obs[..., :30, :30]), "not divisible by the patch size 8"),
    (lambda b: b.replace(obs=b.obs[..., :16, :16]), "expects 3x32x32"),
    (lambda b: b.replace(actions=b.actions[..., :3]), r"actions has shape .*\(2, \*, 4\)"),
    (lambda b: b.replace(state=b.state[:, :2]), r"state has shape"),
    (lambda b: b.replace(intrinsics=torch.full_like(b.intrinsics, float("nan"))),
     "marked calibrated has missing"),
    (lambda b: b.replace(intrinsics=None), "intrinsics is missing"),
    (lambda b: b.replace(text_ids=b.text_ids.float()), "expected int64"),
    (lambda b: b.replace(mode="chunk"), "mode='chunk'"),
    (lambda b: b.replace(future=None), "future is missing"),
])
def test_boundary_errors_name_the_field(model, change, match):
    with pytest.raises(ModelInputError, match=match):
        model(change(batch(model.cfg)))


def test_uncalibrated_cameras_need_no_calibration(model):
    b = batch(model.cfg)
    b = b.replace(calibrated=torch.zeros_like(b.calibrated), intrinsics=None, extrinsics=None)
    assert model._cross_view_bias(b, training=True) is None
    assert torch.isfinite(model(b)["loss"])


def test_unified_chunk_length_is_checked(model):
    b = batch(model.cfg, "unified")
    with pytest.raises(ModelInputError, match="action_horizon=6"):
        model(b.replace(actions=b.actions[:, :4], action_mask=b.action_mask[:, :4],
                        event_end=b.event_end[:, :4]))


def test_frustum_mask_only_at_inference_when_asked():
    m = WallWM(small())
    b = batch(m.cfg)
    assert m._cross_view_bias(b, training=False) is None
    m2 = WallWM(small(frustum_mask_at_inference=True))
    assert m2._cross_view_bias(b, training=False) is not None
    m3 = WallWM(small(frustum_mask_in_training=False))
    assert m3._cross_view_bias(b, training=True) is None


def test_batch_to_device_keeps_fields(model):
    b = batch(model.cfg, "unified").to("cpu")
    assert b.mode == "unified" and b.cot_ids is not None


def test_presets_on_meta_device():
    p = load_params(ROOT / "params.yaml")
    counts = {k: summarize(p, k) for k in ("tiny", "base", "large")}
    tiny = counts["tiny"]
    assert 1e6 < tiny["total"] < 10e6  # trains on 2 CPU cores
    assert tiny["total"] == sum(tiny[k] for k in ("video", "action", "reasoning", "text"))
    assert tiny["total"] < counts["base"]["total"] < counts["large"]["total"]
    cfg = WallWMConfig.from_params(p)
    assert (cfg.views, cfg.image_size, cfg.action_dim) == (2, 64, 4)


def test_print_summary(capsys):
    p = load_params(ROOT / "params.yaml")
    s = print_summary(p, "tiny")
    assert s["preset"] == "tiny" and "reasoning" in capsys.readouterr().out


def test_bad_config_is_an_error():
    with pytest.raises(ValueError, match="not divisible by patch"):
        small(patch=7)
    with pytest.raises(ValueError, match="unknown preset"):
        WallWMConfig.from_params(load_params(ROOT / "params.yaml"), "huge")
