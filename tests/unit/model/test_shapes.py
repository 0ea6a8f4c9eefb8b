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
        want = {"loss", "video_fm", "action_fm", "event_end", "cot",
                "baseline/video_fm_copy_obs", "baseline/video_fm_zero_v",
                "baseline/action_fm_zero_v", "baseline/action_fm_mean_var"}
        assert set(out) == want | ({"baseline/cot_no_latents"} if mode == "unified" else set())
        assert all(v.shape == () and torch.isfinite(v) for v in out.values())
        assert (out["cot"] > 0) == (mode == "unified")
        assert (out["event_end"] > 0) == (mode == "event")


def test_baselines_score_the_same_noise_draws():
    """A fresh action head outputs 0 (zero-initialized): without the skip its loss is exactly
    the v = 0 baseline's, with it (the default) exactly the mean/variance predictor's, which
    beats v = 0 on unit-variance actions. A fresh residual video tower is copy-the-obs."""
    b = batch(small(), "unified")
    b = b.replace(actions=torch.randn(b.actions.shape, generator=torch.Generator().manual_seed(1)))
    plain = WallWM(small(action_skip=False))(b, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain["action_fm"], plain["baseline/action_fm_zero_v"])
    out = WallWM(small())(b, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["action_fm"], out["baseline/action_fm_mean_var"])
    torch.testing.assert_close(out["video_fm"], out["baseline/video_fm_copy_obs"])
    m = WallWM(small())  # over several draws (one batch of 2 is too few to compare expectations)
    runs = [m(b, generator=torch.Generator().manual_seed(s)) for s in range(8)]
    mean_var = sum(float(r["baseline/action_fm_mean_var"]) for r in runs)
    assert mean_var < 0.8 * sum(float(r["baseline/action_fm_zero_v"]) for r in runs)


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
    assert model.cross_view_bias(b, False, 2) is None
    assert torch.isfinite(model(b)["loss"])


def test_unified_chunk_length_is_checked(model):
    b = batch(model.cfg, "unified")
    with pytest.raises(ModelInputError, match="action_horizon=6"):
        model(b.replace(actions=b.actions[:, :4], action_mask=b.action_mask[:, :4],
                        event_end=b.event_end[:, :4]))


def test_frustum_mask_only_at_inference_when_asked():
    b = batch(small())
    seen = {}
    for name, kw in (("default", {}), ("at_inference", {"frustum_mask_at_inference": True})):
        m = WallWM(small(**kw))
        m.norm.set_identity()
        seen[name] = m.encode(b.replace(future=None)).bias
    assert seen["default"] is None
    assert seen["at_inference"] is not None and bool(torch.isinf(seen["at_inference"]).any())
    m3 = WallWM(small(frustum_mask_in_training=False))
    calls = []
    m3.cross_view_bias = lambda b, on, frames: calls.append(on)  # type: ignore[method-assign]
    m3(b)
    assert calls and not any(calls)  # the training path asked for no mask


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


@pytest.mark.parametrize("space, share", [("x", 0.0), ("v", 1.0), ("x", 1.0)])
def test_video_loss_is_the_clean_frame_error_where_configured(space, share):
    """A fresh residual tower predicts the observation frame. Measured on the clean frame
    (`video_loss_space=x`) at any noise level, or at the anchor t = 1 (every sample there:
    `video_anchor_share=1`), its loss is the copy-the-observation pixel MSE; on the velocity
    at the sampled levels it is that error weighted 1/t^2, i.e. larger."""
    b = batch(small(), "event")
    m = WallWM(small(video_loss_space=space, video_anchor_share=share)).eval()  # no tube mask
    out = m(b, generator=torch.Generator().manual_seed(0))
    copy_mse = (b.obs[:, :, None] - b.future).pow(2).mean()
    torch.testing.assert_close(out["video_fm"], copy_mse)
    v_loss = WallWM(small(video_loss_space="v", video_anchor_share=0.0)).eval()(
        b, generator=torch.Generator().manual_seed(0))["video_fm"]
    assert v_loss > 1.5 * copy_mse
