"""ModelPolicy: the batch it builds, its receding horizon and planner, mode switches, refusals,
and a real (tiny, untrained) WALL-WM acting in the closed loop."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from wallwm.data.sources.sim.env import gl_problem
from wallwm.data.sources.sim.source import TASKS
from wallwm.data.tokenizer import encode_batch, train_tokenizer
from wallwm.eval.observe import FrameObs
from wallwm.eval.policies.base import EpisodeInfo
from wallwm.eval.policies.model import (
    ModelPolicy,
    ModelPolicyFactory,
    scale_intrinsics,
    to_model_image,
)
from wallwm.eval.spec import SIM_EMBODIMENT, EnvSpec, ModelContract, PolicyMismatchError
from wallwm.model.config import WallWMConfig

VOCAB = ("reach", "grasp", "lift", "move", "place", "release", "retreat", "push", "pull",
         "press", "open", "close")
ENV = EnvSpec(("corner", "gripperPOV"), 64, 0.0125, 4)
CONTRACT = ModelContract(("corner", "gripperPOV"), 64, 4, 4, 20.0, SIM_EMBODIMENT, VOCAB)
CFG = WallWMConfig(width=32, depth=2, heads=2, action_width=32, action_depth=2, action_heads=2,
                   image_size=32, patch=8, views=2, frames=2, action_dim=4, state_dim=4,
                   action_horizon=6, max_event_len=10, vocab_size=512, max_text_len=24,
                   text_depth=1, vlm_depth=1, relay_depth=1, cot_latents=2, denoise_steps=2)
INFO = EpisodeInfo("push-v3/eval00000", 2**32 + 7, "new_layout", 20.0, 4, 50)


@pytest.fixture(scope="module")
def tok():
    texts = list(TASKS.values()) + ["reach toward the red puck", "move the arm away",
                                    "push the red puck to the green goal"]
    return train_tokenizer(texts, vocab_size=300)


def _frame(t: int = 3) -> FrameObs:
    rng = np.random.default_rng(t)
    k = np.array([[77.3, 0, 31.5], [0, 77.3, 31.5], [0, 0, 1.0]])
    ext = {c: np.eye(4) + 0.01 * i for i, c in enumerate(ENV.cameras)}
    return FrameObs(t, t / 20.0, {c: rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
                                  for c in ENV.cameras}, {c: k for c in ENV.cameras}, ext,
                    np.array([0.1, 0.6, 0.2, 1.0], np.float32))


class ScriptedModel(torch.nn.Module):
    """A model double with a real config whose predictions are set by the test: it records
    every batch and returns `end_at` as the first predicted end (None: no end)."""

    def __init__(self, cfg: WallWMConfig, end_at: int | None):
        super().__init__()
        self.cfg, self.end_at, self.batches = cfg, end_at, []
        self.w = torch.nn.Parameter(torch.zeros(1))

    def predict(self, batch, mode=None, steps=None, generator=None, return_video=True):
        self.batches.append((batch, mode))
        La = self.cfg.max_event_len if mode == "event" else self.cfg.action_horizon
        acts = torch.arange(La, dtype=torch.float32)[None, :, None].expand(1, La, 4).clone()
        end = torch.zeros(1, La)
        if mode == "event" and self.end_at is not None:
            end[0, self.end_at] = 1.0
        mask = torch.ones(1, La, dtype=torch.bool)
        if mode == "event" and self.end_at is not None:
            mask[0, self.end_at + 1:] = False
        return {"actions": acts, "action_mask": mask, "end_prob": end}


def test_training_and_eval_preprocess_frames_alike():
    from wallwm.train import data as train_data

    img = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    torch.testing.assert_close(to_model_image(img, 32), train_data._to_model_image(img, 32))
    k = np.array([[77.3, 0, 31.5], [0, 77.3, 31.5], [0, 0, 1.0]])
    np.testing.assert_array_equal(scale_intrinsics(k, 64, 64, 32),
                                  train_data._scale_intrinsics(k, 64, 64, 32))


def test_event_batch_is_built_like_a_training_item(tok):
    m = ScriptedModel(CFG, end_at=None)
    pol = ModelPolicy(m, tok, CONTRACT, ENV, mode="event", execute_frames=3)
    pol.reset("push-v3", TASKS["push-v3"], INFO)
    f = _frame()
    chunk = pol.act(f)
    b, mode = m.batches[-1]
    assert mode == "event" and b.mode == "event"
    ids, mask = encode_batch(tok, ["reach toward the red puck"], CFG.max_text_len)
    assert torch.equal(b.text_ids, torch.from_numpy(ids)) and b.event_type.tolist() == [0]
    assert b.obs.shape == (1, 2, 3, 32, 32) and -1 <= b.obs.min() and b.obs.max() <= 1
    torch.testing.assert_close(b.obs[0, 1], to_model_image(f.images["gripperPOV"][None],
                                                           32)[0])
    torch.testing.assert_close(b.extrinsics[0, 1], torch.tensor(f.extrinsics["gripperPOV"],
                                                                dtype=torch.float32))
    assert b.intrinsics[0, 0, 0, 0].item() == pytest.approx(77.3 / 2, rel=1e-6)
    assert b.state.tolist() == [[pytest.approx(v) for v in (0.1, 0.6, 0.2, 1.0)]]
    assert b.abs_time.tolist() == [pytest.approx(0.15)] and bool(b.calibrated.all())
    assert chunk.actions.shape == (3, 4) and chunk.caption == "reach toward the red puck"


def test_receding_horizon_and_advance_on_predicted_end(tok):
    m = ScriptedModel(CFG, end_at=1)  # every event ends at its second frame
    pol = ModelPolicy(m, tok, CONTRACT, ENV, mode="event", execute_frames=4)
    pol.reset("push-v3", TASKS["push-v3"], INFO)
    lens = [len(pol.act(_frame(t)).actions) for t in range(3)]
    assert lens == [2, 2, 2]  # up to and including the predicted end, then the next event
    texts = [b.text_ids for b, _ in m.batches]
    assert len({tuple(t[0].tolist()) for t in texts}) == 3
    assert [b.event_type.item() for b, _ in m.batches] == [0, 7, 6]  # reach, push, retreat
    hold = pol.act(_frame(3))  # the plan is done: hold still with the last grip command
    assert hold.mode == "hold" and (hold.actions[:, :3] == 0).all()
    assert (hold.actions[:, 3] == 1.0).all() and len(m.batches) == 3


def test_max_frames_fallback_and_switch_to_unified(tok):
    m = ScriptedModel(CFG, end_at=None)  # never ends an event
    pol = ModelPolicy(m, tok, CONTRACT, ENV, mode="event", execute_frames=4,
                      event_max_frames=6, after_plan="unified")
    pol.reset("button-press-topdown-v3", TASKS["button-press-topdown-v3"], INFO)
    lens = [len(pol.act(_frame(t)).actions) for t in range(6)]
    assert lens == [4, 2, 4, 2, 4, 2]  # 6 frames per event, then the next
    assert pol.planner.exhausted
    c = pol.act(_frame(7))
    b, mode = m.batches[-1]
    assert mode == "unified" and c.mode == "unified" and len(c.actions) == 4
    ids, _ = encode_batch(tok, [TASKS["button-press-topdown-v3"]], CFG.max_text_len)
    assert torch.equal(b.text_ids, torch.from_numpy(ids)) and b.event_type.tolist() == [-1]
    pol.set_mode("event")  # back again between chunks: the plan is done, so it holds
    assert pol.act(_frame(8)).mode == "unified"  # after_plan=unified keeps unified
    with pytest.raises(ValueError, match="set_mode"):
        pol.set_mode("chunky")


def test_mismatched_models_are_refused(tok):
    with pytest.raises(PolicyMismatchError, match="model views: the network has 3"):
        ModelPolicy(ScriptedModel(CFG.replace(views=3), None), tok, CONTRACT, ENV)
    other = ModelContract(("corner", "topview"), 64, 4, 4, 20.0, SIM_EMBODIMENT, VOCAB)
    with pytest.raises(PolicyMismatchError, match="cameras"):
        ModelPolicy(ScriptedModel(CFG, None), tok, other, ENV)
    with pytest.raises(PolicyMismatchError, match="embodiment"):
        ModelPolicyFactory.from_model(ScriptedModel(CFG, None), tok,
                                      ModelContract(CONTRACT.cameras, 64, 4, 4, 20.0, "aloha"),
                                      ENV)


@pytest.mark.skipif(gl_problem() is not None, reason=f"no rendering: {gl_problem()}")
def test_a_tiny_wallwm_acts_in_the_closed_loop(tok):
    from wallwm.eval.episode import EpisodeSettings, run_episode
    from wallwm.eval.seeds import make_units
    from wallwm.model.wallwm import WallWM

    torch.manual_seed(0)
    model = WallWM(CFG).eval()
    if hasattr(model, "norm"):
        model.norm.set_identity()
    fac = ModelPolicyFactory.from_model(model, tok, CONTRACT, ENV, execute_frames=2,
                                        event_max_frames=3)
    fac = pickle.loads(pickle.dumps(fac))  # what travels to a Ray worker
    unit = make_units(["push-v3"], 1, 0, 1_000_003)[0]
    settings = EpisodeSettings(ENV.cameras, 64, 4, max_steps=24, stop_when_done=False)
    runs = [run_episode(fac(), unit, "new_layout", settings, record=True) for _ in range(2)]
    a, b = runs
    assert a.frames == 6 and 3 <= a.chunks <= 6
    np.testing.assert_array_equal(a.states, b.states)  # the noise is seeded by the episode
    assert np.abs(a.states[-1, :3] - a.states[0, :3]).max() > 1e-4  # the hand moved
    u = ModelPolicyFactory.from_model(model, tok, CONTRACT, ENV, mode="unified",
                                      execute_frames=3)()
    r = run_episode(u, unit, "rephrased", settings)
    assert r.chunks == 2 and r.instruction != TASKS["push-v3"]


def test_model_factory_takes_the_eval_settings(tok):
    from tests.conftest import ROOT
    from wallwm.config import load_params
    from wallwm.config.eval_schema import EvalParams
    from wallwm.eval.closed_loop import model_factory

    data = load_params(ROOT / "params.yaml").data
    ev = EvalParams(tasks=["push-v3"], execute_frames=3, event_max_frames=5, denoise_steps=2,
                    after_plan="unified")
    fac = model_factory(ScriptedModel(CFG, None), tok, CONTRACT, data, ev, name="event")
    assert fac.settings == {"mode": "event", "execute_frames": 3, "event_max_frames": 5,
                            "steps": 2, "after_plan": "unified"} and fac.name == "event"
    assert fac.env.fps == pytest.approx(20.0) and fac.env.cameras == ("corner", "gripperPOV")
    with pytest.raises(PolicyMismatchError, match="image size"):
        model_factory(ScriptedModel(CFG, None), tok, ModelContract(
            CONTRACT.cameras, 96, 4, 4, 20.0, SIM_EMBODIMENT), data, ev)
