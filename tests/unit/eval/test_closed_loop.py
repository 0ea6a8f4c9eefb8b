"""Ceiling and floor on the same eval episodes, judged by Meta-World and by the simulator."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from wallwm.config import load_params
from wallwm.config.eval_schema import EvalParams
from wallwm.data.sources.sim.env import gl_problem
from wallwm.eval.closed_loop import closed_loop
from wallwm.eval.episode import EpisodeSettings
from wallwm.eval.metrics import lookup
from wallwm.eval.policies.scripted import ExpertFactory, ZeroFactory
from wallwm.eval.runner import plan_jobs, run_serial

pytestmark = pytest.mark.skipif(gl_problem() is not None, reason=f"no rendering: {gl_problem()}")
TASKS = ["button-press-topdown-v3", "push-v3"]  # the two shortest expert episodes
SETTINGS = EpisodeSettings(("corner", "gripperPOV"), 64, 4, max_steps=100)


def test_expert_succeeds_and_zero_fails_on_the_same_eval_seeds():
    jobs = plan_jobs(["expert", "zero"], TASKS, ["new_layout"], 1, base_seed=0,
                     layout_seed=1_000_003, build_seeds=[0], check_layouts=False)
    res = run_serial({"expert": ExpertFactory(), "zero": ZeroFactory()}, jobs, SETTINGS)
    by = {(r.policy, r.task): r for r in res}
    for task in TASKS:
        e, z = by["expert", task], by["zero", task]
        assert (e.seed, e.layout) == (z.seed, z.layout) and e.seed >= 2**32
        assert e.success and e.progress == 1.0 and 0 < e.steps_to_success <= e.steps < 100
        assert e.events_completed == e.events_total == 3
        # 25 frames, a chunk of 4 zero frames at a time (the receding horizon)
        assert not z.success and z.progress == 0.0 and (z.steps, z.frames, z.chunks) == (
            100, 25, 7)
        assert z.steps_to_success is None


def test_recovery_disturbs_mid_event_and_the_expert_recovers():
    jobs = plan_jobs(["expert"], ["button-press-topdown-v3"], ["recovery"], 1, 0, 1_000_003,
                     [0], check_layouts=False)
    longer = EpisodeSettings(SETTINGS.cameras, 64, 4, max_steps=160)  # it ends when all done
    (r,) = run_serial({"expert": ExpertFactory()}, jobs, longer)
    d = r.disturbance
    assert d["kind"] == "knock_hand" and d["fired"] and d["trigger"] == "event"
    assert 6 <= d["step"] <= 6 + 3 + 1  # 6 steps into reach + the source's 0-3 step delay
    assert r.success and r.progress == 1.0 and r.steps < 160


def test_closed_loop_writes_report_and_videos(tmp_path):
    p = load_params(ROOT / "params.yaml")
    ev = EvalParams(tasks=["button-press-topdown-v3"], conditions=["new_layout", "rephrased"],
                    episodes=1, policies=["expert"], videos=1, max_steps=100)
    with pytest.raises(ValueError, match="no model policy factory"):
        closed_loop(p.data, EvalParams(tasks=["push-v3"], episodes=1), tmp_path)
    res, paths = closed_loop(p.data, ev, tmp_path, meta={"model": "none"})
    assert [r.condition for r in res] == ["new_layout", "rephrased"]
    assert res[1].instruction != res[0].instruction and all(r.success for r in res)
    assert [v.name for v in paths["videos"]] == [
        "video_expert_new_layout_button-press_0.mp4", "video_expert_rephrased_button-press_0.mp4"]
    assert all(v.stat().st_size > 1000 for v in paths["videos"])
    import json

    m = json.loads(paths["metrics"].read_text())
    cell = lookup(m["cells"], "expert", "button-press-topdown-v3", "rephrased")
    assert cell["n"] == 1 and cell["success"] == 1.0 and m["meta"]["build_seeds"] == [0]
    assert "video_expert_rephrased_button-press_0.mp4" in paths["html"].read_text()
