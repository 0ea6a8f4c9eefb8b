"""The Ray evaluation runner (2 workers on the stack's Ray) gives the results of the serial
runner for the same jobs: scripted ceiling and floor under a disturbance, and a (tiny,
untrained) model policy rebuilt from its factory inside the workers."""

from __future__ import annotations

import pytest
import torch

from components.compute.ray_eval import run_ray
from wallwm.data.sources.sim.source import TASKS
from wallwm.data.tokenizer import train_tokenizer
from wallwm.eval.episode import EpisodeSettings
from wallwm.eval.policies.model import ModelPolicyFactory
from wallwm.eval.policies.scripted import ExpertFactory, ZeroFactory
from wallwm.eval.runner import plan_jobs, run_serial
from wallwm.eval.spec import SIM_EMBODIMENT, EnvSpec, ModelContract
from wallwm.model.config import WallWMConfig

pytestmark = pytest.mark.integration
SETTINGS = EpisodeSettings(("corner", "gripperPOV"), 64, 4, max_steps=100)
ENV = EnvSpec(SETTINGS.cameras, 64, 0.0125, 4)
CFG = WallWMConfig(width=32, depth=2, heads=2, action_width=32, action_depth=2, action_heads=2,
                   image_size=32, patch=8, views=2, frames=2, action_dim=4, state_dim=4,
                   action_horizon=6, max_event_len=10, vocab_size=512, max_text_len=24,
                   text_depth=1, vlm_depth=1, relay_depth=1, cot_latents=2, denoise_steps=2)


def _model_factory() -> ModelPolicyFactory:
    from wallwm.model.wallwm import WallWM

    torch.manual_seed(0)
    model = WallWM(CFG).eval()
    if hasattr(model, "norm"):
        model.norm.set_identity()
    tok = train_tokenizer(list(TASKS.values()), vocab_size=300)
    contract = ModelContract(ENV.cameras, 64, 4, 4, 20.0, SIM_EMBODIMENT,
                             ("reach", "push", "retreat"))
    return ModelPolicyFactory.from_model(model, tok, contract, ENV, execute_frames=3)


def _key(r):
    d = r.summary()
    d.pop("wall_s")
    return d


def test_ray_runner_matches_serial(stack):
    factories = {"expert": ExpertFactory(), "zero": ZeroFactory(), "model": _model_factory()}
    jobs = plan_jobs(["expert"], ["button-press-topdown-v3", "push-v3"], ["recovery"], 1,
                     base_seed=0, layout_seed=1_000_003, build_seeds=[0], check_layouts=False)
    jobs += plan_jobs(["zero", "model"], ["push-v3"], ["new_layout"], 1, 0, 1_000_003, [0],
                      check_layouts=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a one-CPU Ray worker: identical float reductions
    try:
        serial = run_serial(factories, jobs, SETTINGS)
    finally:
        torch.set_num_threads(threads)
    done = []
    parallel = run_ray(factories, jobs, SETTINGS, workers=2,
                       on_done=lambda i, r: done.append(i))
    assert done == list(range(1, len(jobs) + 1))
    assert [_key(r) for r in parallel] == [_key(r) for r in serial]
    by = {(r.policy, r.task): r for r in serial}
    assert by["expert", "button-press-topdown-v3"].success and not by["zero", "push-v3"].success
    assert by["expert", "push-v3"].disturbance["fired"]
    assert {r.policy for r in parallel} == {"expert", "zero", "model"}
