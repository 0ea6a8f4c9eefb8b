"""The torch-free runner: the host loop against an independent numpy computation, text,
seeds, the valid-step rule, the health check, and what may not be imported."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.fixtures.bundles import TEXTS, expected, make_bundle, observation
from wallwm.data.tokenizer import encode_batch, load_tokenizer
from wallwm.release.engine import Engine, EngineError, valid_mask


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("e") / "b", tag=1.5, modes=("event", "unified"),
                       precisions=("fp32", "fp8"))


def test_act_matches_numpy_for_both_modes(both):
    eng = Engine(both)
    tok = load_tokenizer(both / "tokenizer.json")
    o = observation(2, seed=3)
    for mode in ("event", "unified"):
        out = eng.act(o["images"], o["state"], text=[TEXTS[1], TEXTS[2]], mode=mode,
                      event_type=[1, 2], abs_time=[0.5, 2.0], action_noise=o["action_noise"],
                      video_noise=o["video_noise"])
        ids, mask = encode_batch(tok, [TEXTS[1], TEXTS[2]], 16)
        want = expected(mode, 1.5, o["images"], o["state"], ids, mask, np.array([1, 2]),
                        np.array([0.5, 2.0]), o["action_noise"], o["video_noise"])
        np.testing.assert_allclose(out["actions"], want["actions"], atol=1e-4)
        if mode == "event":
            np.testing.assert_allclose(out["end_prob"], want["end_prob"], atol=1e-5)
            assert out["valid"][0].sum() == 3 and out["valid"][1].sum() == 6  # pos > 1.5 / 4.0
        else:
            assert out["end_prob"] is None and out["valid"].all()


def test_text_ids_equal_text_and_truncation_keeps_eos(both):
    eng = Engine(both)
    o = observation(1)
    long = " ".join(TEXTS * 5)
    ids, mask = eng.encode_text([long])
    assert ids.shape == (1, 16) and ids[0, -1] == 2 and ids[0, 0] == 1  # <eos> kept, <bos>
    a = eng.act(o["images"], o["state"], text=[long], action_noise=o["action_noise"],
                video_noise=o["video_noise"])
    b = eng.act(o["images"], o["state"], text_ids=ids, text_mask=mask,
                action_noise=o["action_noise"], video_noise=o["video_noise"])
    np.testing.assert_array_equal(a["actions"], b["actions"])


def test_seed_draws_action_then_video_noise(both):
    eng = Engine(both)
    o = observation(1)
    a = eng.act(o["images"], o["state"], text=[TEXTS[0]], seed=7)
    b = eng.act(o["images"], o["state"], text=[TEXTS[0]], seed=7)
    np.testing.assert_array_equal(a["actions"], b["actions"])
    rng = np.random.default_rng(7)
    an = rng.standard_normal((1, 8, 4)).astype(np.float32)
    vn = rng.standard_normal((1, 2, 1, 3, 16, 16)).astype(np.float32)
    c = eng.act(o["images"], o["state"], text=[TEXTS[0]], action_noise=an, video_noise=vn)
    np.testing.assert_array_equal(a["actions"], c["actions"])
    assert not np.allclose(a["actions"], eng.act(o["images"], o["state"], text=[TEXTS[0]],
                                                 seed=8)["actions"])


def test_valid_mask_rule():
    p = np.array([[0.1, 0.6, 0.9, 0.2], [0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_array_equal(valid_mask(p), [[1, 1, 0, 0], [1, 1, 1, 1]])


def test_health_check_passes_and_fails(both, tmp_path):
    eng = Engine(both)
    rep = eng.health_check()
    assert rep.ok and set(rep.modes) == {"event", "unified"}
    assert rep.modes["event"]["max_abs_err_actions"] < 1e-4
    assert Engine(both, precision="fp8").health_check().ok
    bad = make_bundle(tmp_path / "bad", bad_reference=True)
    rep = Engine(bad).health_check()
    assert not rep.ok and "actions off by" in rep.error


def test_bad_inputs_and_runtime_requirements(both, tmp_path):
    eng = Engine(both)
    o = observation(1)
    with pytest.raises(EngineError, match="wrist"):
        eng.act({"front": o["images"]["front"]}, o["state"], text=["x"])
    with pytest.raises(EngineError, match="uint8"):
        eng.act({k: v.astype(np.float32) for k, v in o["images"].items()}, o["state"],
                text=["x"])
    with pytest.raises(EngineError, match="state"):
        eng.act(o["images"], np.zeros((1, 3)), text=["x"])
    with pytest.raises(EngineError, match="text"):
        eng.act(o["images"], o["state"])
    with pytest.raises(EngineError, match="min_version"):
        Engine(make_bundle(tmp_path / "new", min_version="99.1"))
    with pytest.raises(EngineError, match="precision"):
        Engine(both, precision="bf16")


def test_release_code_imports_no_training_stack():
    """wallwm/release and the robot agent never pull torch, Prefect or MLflow (a subprocess,
    so modules other tests imported do not count)."""
    code = ("import sys, json\n"
            "import wallwm.release.engine, wallwm.release.client, wallwm.release.tuf_repo\n"
            "import wallwm.release.rollout, wallwm.release.compat, wallwm.release.signing\n"
            "import components.robot_agent.agent, components.robot_agent.cli\n"
            "bad = [m for m in ('torch', 'prefect', 'mlflow', 'lightning', 'ray', 'pandas')\n"
            "       if m in sys.modules]\n"
            "print(json.dumps(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
