"""Eval units are provably outside every build; the planner issues the training captions."""

from __future__ import annotations

import pytest

from wallwm.config.eval_schema import EVAL_TASKS, EvalParams
from wallwm.data.captions import TemplateCaptioner, parse_task
from wallwm.data.episode import Episode, Event
from wallwm.data.sources.sim.env import gl_problem
from wallwm.data.sources.sim.source import TASKS, episode_seed
from wallwm.eval.conditions import instruction_for, recovery_disturbance
from wallwm.eval.paraphrases import PARAPHRASES
from wallwm.eval.policies.planner import EventPlanner, event_type_id
from wallwm.eval.seeds import (
    EVAL_SEED_BASE,
    EvalUnit,
    SeedOverlapError,
    assert_disjoint,
    make_units,
    manifest_build_seeds,
    sim_build_seeds,
)

VOCAB = ["reach", "grasp", "lift", "move", "place", "release", "retreat", "push", "pull",
         "press", "open", "close"]


def test_eval_seeds_are_outside_the_build_seed_range():
    units = make_units(list(TASKS), 60, base_seed=0, layout_seed=1_000_003)
    assert len({u.seed for u in units}) == len(units)
    assert min(u.seed for u in units) >= EVAL_SEED_BASE
    # every build seed is 4 bytes of a digest, whatever base seed or index
    assert max(episode_seed(s, t, i) for s in (0, 1, 7) for t in TASKS for i in range(50)) < \
        EVAL_SEED_BASE
    assert [u.layout for u in units[:51]][-2:] == [49, 0]  # 50 episodes cover every layout
    assert_disjoint(units, [0, 5], check_layouts=False)


def test_overlaps_are_refused():
    units = make_units(["push-v3"], 2, 0, layout_seed=3)
    with pytest.raises(SeedOverlapError, match="eval.layout_seed=3 is the sim seed of a build"):
        assert_disjoint(units, [0, 3], check_layouts=False)
    inside = [EvalUnit("push-v3", 0, 0, episode_seed(0, "push-v3", 0), 99)]
    with pytest.raises(SeedOverlapError, match="inside the build seed range"):
        assert_disjoint(inside, [0], check_layouts=False)


@pytest.mark.skipif(gl_problem() is not None, reason=f"no MuJoCo: {gl_problem()}")
def test_eval_layouts_differ_from_build_layouts():
    units = make_units(["button-press-topdown-v3"], 50, 0, layout_seed=1_000_003)
    assert_disjoint(units, [0])  # all 50 eval layouts vs all 50 of the seed-0 build
    from wallwm.eval.seeds import layout_vectors

    assert layout_vectors("button-press-topdown-v3", 0).shape[0] == 50


def test_a_shared_layout_vector_is_refused(monkeypatch):
    import numpy as np

    from wallwm.eval import seeds

    table = {0: np.arange(12.0).reshape(2, 6), 7: np.arange(12.0).reshape(2, 6)[::-1]}
    monkeypatch.setattr(seeds, "layout_vectors", lambda task, s: table[s])
    units = make_units(["push-v3"], 1, 0, layout_seed=7)  # eval layout 0 = build layout 1
    with pytest.raises(SeedOverlapError, match="layout 0 .MT1 seed 7. equals layout 1 of the "
                                               "build with sim seed 0"):
        assert_disjoint(units, [0])


def test_build_seeds_from_specs_and_manifest():
    assert sim_build_seeds(["sim:episodes=4", "sim:episodes=2,seed=9", "lerobot:path=x"], 0) \
        == [0, 9]
    assert manifest_build_seeds({"sources": [{"spec": "sim:episodes=3,seed=4"}],
                                 "params": {"sim": {"seed": 0}}}) == [4]
    with pytest.raises(ValueError, match="not an integer"):
        sim_build_seeds(["sim:seed=x"], 0)
    with pytest.raises(ValueError, match="manifest"):
        manifest_build_seeds({"sources": []})


def test_planner_captions_are_the_training_captions():
    for task, instruction in TASKS.items():
        p = EventPlanner(task, instruction, max_frames=10)
        ep = Episode("sim", "u", "t3_robot_real", instruction, 20.0, None, {}, {}, {})
        events = [Event(lab, i, i + 1, "action") for i, lab in enumerate(p.labels)]
        want = [e.caption for e in TemplateCaptioner().caption(ep, events)]
        assert list(p.captions) == want
    p = EventPlanner("push-v3", TASKS["push-v3"], max_frames=6)
    assert p.captions == ("reach toward the red puck", "push the red puck to the green goal",
                          "move the arm away")


def test_planner_advances_on_end_and_on_the_fallback():
    p = EventPlanner("button-press-topdown-v3", TASKS["button-press-topdown-v3"], max_frames=6)
    p.executed(4, ended=False)
    assert p.label == "reach" and p.frames_left == 2
    p.executed(2, ended=False)  # 6 frames: the fallback advances
    assert p.label == "press"
    p.executed(1, ended=True)
    assert p.label == "retreat"
    p.executed(3, ended=True)
    assert p.exhausted and p.caption is None
    assert p.history == [("reach", 6, "max_frames"), ("press", 1, "end"), ("retreat", 3, "end")]
    with pytest.raises(ValueError, match="event_max_frames"):
        EventPlanner("push-v3", "x", max_frames=0)


def test_event_type_ids_follow_the_vocabulary():
    assert event_type_id("reach", VOCAB, 16) == 0 and event_type_id("press", VOCAB, 16) == 9
    assert event_type_id("press", VOCAB, 8) == -1 and event_type_id("wave", VOCAB, 16) == -1


def test_paraphrases_are_held_out_and_keep_the_object():
    assert set(PARAPHRASES) == set(TASKS) == set(EVAL_TASKS)
    for task, options in PARAPHRASES.items():
        assert TASKS[task] not in options and len(set(options)) == len(options) >= 5
        for text in options:
            obj, _ = parse_task(text)
            assert obj is not None and obj.split()[-1] in ("puck", "disc", "disk", "drawer",
                                                            "button"), (text, obj)
    assert instruction_for("rephrased", "push-v3", 1) == PARAPHRASES["push-v3"][1]
    assert instruction_for("recovery", "push-v3", 1) == TASKS["push-v3"]
    with pytest.raises(ValueError, match="unknown condition"):
        instruction_for("night", "push-v3", 0)


def test_recovery_disturbance_moves_free_objects_and_knocks_fixed_ones():
    d = recovery_disturbance("push-v3", 2**32 + 5, 6)
    assert d.pert.kind == "push_object" and d.pert.vector[2] == 0.0
    assert 0.05 <= float((d.pert.vector[:2] ** 2).sum() ** 0.5) <= 0.08 and d.pert.delay >= 6
    k = recovery_disturbance("drawer-open-v3", 2**32 + 5, 6)
    assert k.pert.kind == "knock_hand" and k.pert.phase == "pull" and k.pert.vector[2] == 0.03
    again = recovery_disturbance("push-v3", 2**32 + 5, 6)
    assert (again.pert.vector == d.pert.vector).all()  # a pure function of the episode seed


def test_eval_params_validate():
    assert EvalParams().execute_frames == 4
    with pytest.raises(ValueError, match="unknown or no task"):
        EvalParams(tasks=["reach-v3"])
    with pytest.raises(ValueError, match="max_steps"):
        EvalParams(max_steps=501)
    with pytest.raises(ValueError, match="conditions is empty"):
        EvalParams(conditions=[])
