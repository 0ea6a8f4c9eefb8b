"""The closed loop against recorded sim episodes (the source's own `load`, as a build gets them):

* the scripted expert replayed through the runner on the same layout and seed gives back the
  recorded episode bit for bit: frames (both cameras, the 180-degree rotation), state,
  intrinsics, per-frame extrinsics, rate, disturbance; the observation adapter is exact;
* the recorded dataset actions, split back into control steps, reproduce the episode within
  the tolerance measured here (the sums are exact; the path inside a frame is not recorded):
  hand <= 3.4 mm, aperture <= 0.20, object <= 5.7 mm on these tasks; same success.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ROOT
from wallwm.config import load_params
from wallwm.data.episode import EXTRINSICS_PREFIX, IMAGE_PREFIX
from wallwm.data.sources import make_source
from wallwm.data.sources.sim.env import gl_problem
from wallwm.data.sources.sim.perturb import plan
from wallwm.eval.conditions import replay_disturbance
from wallwm.eval.episode import EpisodeSettings, run_episode
from wallwm.eval.policies.scripted import ExpertPolicy, ReplayPolicy
from wallwm.eval.progress import ProgressJudge
from wallwm.eval.seeds import EvalUnit

pytestmark = pytest.mark.skipif(gl_problem() is not None, reason=f"no rendering: {gl_problem()}")
HAND_TOL, APERTURE_TOL, OBJECT_TOL = 0.005, 0.25, 0.008  # m, aperture units, m
CASES = {  # spec -> unit: one clean pick-place (every event), one disturbed button press
    "sim:episodes=12,tasks=pick-place-v3,perturb_prob=0": "pick-place-v3/00002",
    "sim:episodes=4,tasks=button-press-topdown-v3,perturb_prob=1": "button-press-topdown-v3/00000",
}


@pytest.fixture(scope="module", params=list(CASES))
def recorded(request):
    p = load_params(ROOT / "params.yaml")
    src = make_source(request.param, p.data)
    ep = src.load(CASES[request.param])
    return ep, src, p.data.sim


def _unit_and_settings(ep, sim, mt1_seed):
    x = ep.extra
    unit = EvalUnit(x["task_name"], 0, int(x["layout"]), int(x["seed"]), mt1_seed)
    settings = EpisodeSettings(tuple(sim.cameras), ep.videos[IMAGE_PREFIX + sim.cameras[0]]
                               .shape[1], int(x["render_every"]), int(x["steps"]),
                               stop_when_done=False)
    return unit, settings


def _disturbance(ep, src):
    rec = ep.extra["perturbation"]
    if not (rec and rec["fired"]):
        return None
    d = replay_disturbance(rec)
    # the record rounds the vector to 0.1 mm; the source drew it from the episode seed first
    drawn = plan(ep.extra["task_name"], np.random.default_rng(int(ep.extra["seed"])),
                 src.perturb_prob)
    assert drawn is not None and drawn.kind == rec["kind"]
    d.pert.vector = drawn.vector
    return d


def test_expert_through_the_loop_is_the_recorded_episode(recorded):
    ep, src, sim = recorded
    unit, settings = _unit_and_settings(ep, sim, src.seed)
    dist = _disturbance(ep, src)
    assert (dist is not None) == unit.task.startswith("button")
    res = run_episode(ExpertPolicy(), unit, "new_layout", settings, disturbance=dist,
                      record=True, video=True)
    assert res.frames == ep.length and res.steps == ep.extra["steps"]
    np.testing.assert_array_equal(res.states, ep.features["observation.state"])
    np.testing.assert_array_equal(res.object_pos, ep.features["sim.object_pos"])
    np.testing.assert_array_equal(res.success_frames, ep.features["sim.success"])
    rotated = set(ep.extra["rotated_180"])
    assert "corner" in rotated  # corner renders upside down: the adapter rotates it too
    for cam in sim.cameras:
        got = np.stack([imgs[cam] for imgs, _, _ in res.video])
        np.testing.assert_array_equal(got, ep.videos[IMAGE_PREFIX + cam])
    if dist is not None:
        assert res.disturbance["step"] == ep.extra["perturbation"]["step"]


def test_adapter_calibration_matches_the_recording(recorded):
    from wallwm.data.sources.sim.env import get_env
    from wallwm.eval.observe import SimObserver

    ep, src, sim = recorded
    unit, settings = _unit_and_settings(ep, sim, src.seed)
    env = get_env(unit.task, unit.layout_seed)
    obs = env.reset(unit.layout, unit.seed)
    with SimObserver(env, sim.cameras, settings.image_size, settings.render_every) as ob:
        f = ob.capture(obs, 0)
    assert ob.fps == pytest.approx(ep.fps) and f.time_s == 0.0
    for cam in sim.cameras:
        spec = ep.cameras[IMAGE_PREFIX + cam]
        np.testing.assert_allclose(f.intrinsics[cam], spec.intrinsics, rtol=0, atol=1e-12)
        want = (ep.features[EXTRINSICS_PREFIX + cam][0].reshape(4, 4) if spec.moving
                else spec.extrinsics)
        np.testing.assert_allclose(f.extrinsics[cam], want, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(f.images[cam], ep.videos[IMAGE_PREFIX + cam][0])


def test_replaying_dataset_actions_reproduces_the_episode(recorded):
    ep, src, sim = recorded
    unit, settings = _unit_and_settings(ep, sim, src.seed)
    res = run_episode(ReplayPolicy(ep.features["action"], execute_frames=3), unit,
                      "new_layout", settings, disturbance=_disturbance(ep, src), record=True)
    assert res.frames == ep.length
    d_state = np.abs(res.states - ep.features["observation.state"]).max(0)
    d_obj = np.abs(res.object_pos - ep.features["sim.object_pos"]).max()
    assert d_state[:3].max() <= HAND_TOL, d_state
    assert d_state[3] <= APERTURE_TOL, d_state
    assert d_obj <= OBJECT_TOL, d_obj
    assert res.success == bool(ep.features["sim.success"].any() or ep.extra["success"])
    assert (res.success_frames != ep.features["sim.success"]).sum() <= 1
    # judged from the simulator alone: every ground-truth event, none after its recorded end
    truth = [e for e in ep.ground_truth if e.level == "action"]
    assert res.progress == 1.0 and res.events_total == len(ProgressJudge(unit.task, 0).events)
    every = settings.render_every
    labels = ProgressJudge(unit.task, 0).events
    assert [e.label for e in truth] == list(labels)
    for e, done in zip(truth, res.event_steps, strict=True):
        assert done < (e.end + 2) * every, (e.label, done, e.end)
