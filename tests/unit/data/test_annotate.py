"""The event annotator: vocabulary, robot and video detectors, hierarchy, hand edits, scores."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from wallwm.data.annotate import (
    DEFAULT_VOCAB,
    Vocabulary,
    annotate,
    annotate_robot,
    annotate_video,
    events_by_episode,
    is_contiguous,
    merge_human,
    read_annotations,
    score,
    score_many,
    to_rows,
    write_annotations,
)
from wallwm.data.annotate.common import event, origin_of
from wallwm.data.episode import Episode, Event

ROOT = Path(__file__).resolve().parents[3]
LEVELS = ("task", "subtask", "action", "segment")


@pytest.fixture(scope="session")
def sim_episodes() -> list[Episode]:
    """Two episodes of each of the 4 sim tasks (built once; ~3 s each)."""
    from wallwm.config import load_params
    from wallwm.data.sources import make_source

    src = make_source("sim:episodes=8,seed=3", load_params(ROOT / "params.yaml").data)
    return [src.load(u) for u in src.unit_ids()]


def _truth(ep: Episode) -> list[Event]:
    return [e for e in ep.ground_truth if e.level == "action"]


def _with(ep: Episode, **features: np.ndarray | None) -> Episode:
    out = copy.copy(ep)
    out.features = dict(ep.features)
    for k, v in features.items():
        key = {"state": "observation.state"}.get(k, k)
        if v is None:
            out.features.pop(key, None)
        else:
            out.features[key] = v
    return out


# --------------------------------------------------------------------------- vocabulary
def test_vocabulary_is_fixed_and_extendable():
    assert {"reach", "grasp", "lift", "move", "place", "release", "retreat", "push", "pull",
            "press", "open", "close"} <= set(DEFAULT_VOCAB)
    v = Vocabulary.from_list(["Reach", "grasp", "reach", " wipe "])
    assert v.actions == ("reach", "grasp", "wipe")
    assert "wipe" in v and "segment" in v and v.name("fly") == "unknown"
    assert "fly" in v.extend(["fly"])
    with pytest.raises(ValueError):
        Vocabulary.from_list(["reach", ""])


# --------------------------------------------------------------------------- scoring
def test_score_matches_boundaries_one_to_one_within_tolerance():
    truth = [event("reach", 0, 10, "action", ""), event("grasp", 10, 20, "action", "")]
    assert score(truth, truth)["boundary_f1"] == 1.0
    shifted = [event("reach", 0, 12, "action", ""), event("grasp", 12, 20, "action", "")]
    s = score(shifted, truth, tolerance=2)
    assert s["boundary_f1"] == 1.0 and s["label_accuracy"] == pytest.approx(18 / 20)
    assert score(shifted, truth, tolerance=1)["boundary_f1"] == 0.0
    double = [event("reach", 0, 9, "action", ""), event("grasp", 9, 11, "action", ""),
              event("grasp", 11, 20, "action", "")]
    s = score(double, truth)
    assert s["tp"] == 1 and s["boundary_precision"] == 0.5 and s["confusion"]["reach"]["grasp"] == 1
    m = score_many([(truth, truth), (shifted, truth)])
    assert m["episodes"] == 2 and m["boundary_f1"] == 1.0


# --------------------------------------------------------------------------- robot detector
def test_robot_detector_on_sim_episodes(sim_episodes):
    pairs = [(annotate_robot(ep), _truth(ep)) for ep in sim_episodes]
    s = score_many(pairs)
    assert s["boundary_f1"] >= 0.85, s
    assert s["label_accuracy"] >= 0.85, s
    for (pred, _), ep in zip(pairs, sim_episodes, strict=True):
        assert is_contiguous(pred, ep.length)
        assert all(e.label in DEFAULT_VOCAB and e.signal for e in pred)
    tasks = {ep.extra["task_name"] for ep in sim_episodes}
    assert len(tasks) == 4


def test_robot_detector_is_blind_to_sim_signals_and_ground_truth(sim_episodes):
    for ep in sim_episodes[:4]:
        blind = copy.copy(ep)
        blind.features = ep.recording_features()
        blind.ground_truth = []
        assert annotate(blind) == annotate(ep)
        assert not any(k.startswith("sim.") for k in blind.features)


def test_robot_detector_is_robust_to_noise(sim_episodes):
    rng = np.random.default_rng(0)
    pairs = []
    for ep in sim_episodes:
        s, a = ep.features["observation.state"].copy(), ep.features["action"].copy()
        s[:, :3] += rng.normal(0, 0.002, s[:, :3].shape)  # 2 mm
        s[:, 3] += rng.normal(0, 0.02, len(s))
        a += rng.normal(0, 0.1, a.shape)
        noisy = _with(ep, state=s.astype(np.float32), action=a.astype(np.float32))
        pairs.append((annotate_robot(noisy), _truth(ep)))
    s = score_many(pairs)
    assert s["boundary_f1"] >= 0.8 and s["label_accuracy"] >= 0.8, s


@pytest.mark.parametrize("missing", ["action", "gripper_command", "aperture", "state",
                                     "state_and_action", "nan"])
def test_robot_detector_degrades_without_signals(sim_episodes, missing):
    pairs = []
    for ep in sim_episodes:
        s, a = ep.features["observation.state"], ep.features["action"]
        variant = {
            "action": {"action": None},
            "gripper_command": {"action": a[:, :3]},
            "aperture": {"state": s[:, :3]},
            "state": {"state": None},
            "state_and_action": {"state": None, "action": None},
            "nan": {"state": np.where(np.arange(len(s))[:, None] % 7 == 3, np.nan, s)},
        }[missing]
        ep2 = _with(ep, **variant)
        pred = annotate_robot(ep2)
        assert is_contiguous(pred, ep.length)
        levels = annotate(ep2)
        for lvl in LEVELS:
            assert is_contiguous([e for e in levels if e.level == lvl], ep.length), (missing, lvl)
        pairs.append((pred, _truth(ep)))
    if missing in ("action", "gripper_command", "aperture", "nan"):
        assert score_many(pairs)["boundary_f1"] >= 0.75


# --------------------------------------------------------------------------- video
def _synthetic_video(cuts: list[int], length: int, seed: int = 0) -> Episode:
    rng = np.random.default_rng(seed)
    frames = np.zeros((length, 32, 32, 3), np.uint8)
    bounds = [0, *cuts, length]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        base = rng.integers(0, 255, (32, 32, 3))
        for k in range(a, b):
            frames[k] = np.clip(base + rng.normal(0, 4, base.shape), 0, 255)
        frames[a:b, :, i * 4 : i * 4 + 4] = 255
    return Episode("video_folder", "synthetic", "t0_web", "a web clip", 20.0,
                   np.arange(length) / 20.0, videos={"observation.images.cam": frames})


def test_video_change_points_find_known_cuts():
    ep = _synthetic_video([12, 27], 40)
    pred = annotate_video(ep)
    assert is_contiguous(pred, 40)
    starts = [e.start for e in pred if e.start]
    assert len(starts) == 2 and all(abs(s - c) <= 1 for s, c in zip(starts, [12, 27], strict=True))
    assert all(e.signal == "change_point" for e in pred[1:])
    levels = annotate(ep)  # t0 tier: the video detector, all levels contiguous
    for lvl in LEVELS:
        assert is_contiguous([e for e in levels if e.level == lvl], 40)


# --------------------------------------------------------------------------- hierarchy
def test_hierarchy_levels_are_contiguous(sim_episodes):
    for ep in sim_episodes:
        events = annotate(ep)
        for lvl in LEVELS:
            assert is_contiguous([e for e in events if e.level == lvl], ep.length), lvl
        task = [e for e in events if e.level == "task"]
        assert task[0].label == ep.task
        subs = [e for e in events if e.level == "subtask"]
        if ep.extra["task_name"] == "pick-place-v3":
            assert [s.label for s in subs] == ["pick up the red puck", "place it at the blue goal"]
        assert all(e.signal for e in events)


# --------------------------------------------------------------------------- human edits
def test_human_edit_replaces_and_survives_a_new_auto_pass(sim_episodes, tmp_path):
    ep = next(e for e in sim_episodes if e.extra["task_name"] == "pick-place-v3")
    auto = annotate(ep)
    grasp = next(e for e in auto if e.level == "action" and e.label == "grasp")
    edit = Event("grasp", grasp.start - 1, grasp.end + 1, "action", "close the fingers", "human")
    merged = merge_human(auto, [edit])
    actions = sorted((e for e in merged if e.level == "action"), key=lambda e: e.start)
    assert is_contiguous(actions, ep.length)
    mine = [e for e in actions if (e.start, e.end) == (edit.start, edit.end)]
    assert mine and mine[0].label == "grasp" and origin_of(mine[0]) in ("human", "")
    # the other levels are untouched
    assert [e for e in merged if e.level == "segment"] == [e for e in auto if e.level == "segment"]
    # store, reload, re-run the automatic pass (on a noisier recording), merge again
    path = write_annotations(tmp_path / "meta" / "annotations.jsonl",
                             to_rows(ep.source_id, 0, [edit]))
    human = events_by_episode(read_annotations(path))[ep.source_id]
    s = ep.features["observation.state"] + np.float32(0.001)
    again = merge_human(annotate(_with(ep, state=s)), human)
    acts = [e for e in again if e.level == "action"]
    assert any((e.start, e.end, e.label) == (edit.start, edit.end, "grasp") for e in acts)
    assert is_contiguous(acts, ep.length)


def test_merge_fills_gaps_from_neighbours():
    auto = [event("reach", 0, 6, "action", ""), event("grasp", 6, 9, "action", ""),
            event("lift", 9, 15, "action", "")]
    out = merge_human(auto, [Event("grasp", 7, 9, "action", "", "human")])
    assert [(e.label, e.start, e.end) for e in out] == [
        ("reach", 0, 7), ("grasp", 7, 9), ("lift", 9, 15)]
    out = merge_human(auto, [Event("grasp", 5, 11, "action", "", "human")])
    assert [(e.label, e.start, e.end) for e in out] == [
        ("reach", 0, 5), ("grasp", 5, 11), ("lift", 11, 15)]


def test_annotations_jsonl_round_trip(sim_episodes, tmp_path):
    ep = sim_episodes[0]
    events = annotate(ep)
    path = write_annotations(tmp_path / "annotations.jsonl", to_rows(ep.source_id, 3, events))
    rows = read_annotations(path)
    assert all(r["source_id"] == ep.source_id and r["episode_index"] == 3 for r in rows)
    assert events_by_episode(rows)[ep.source_id] == events
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"label": "reach"}\n')
    with pytest.raises(ValueError, match="lacks"):
        read_annotations(bad)


def test_params_section_feeds_vocabulary_and_knobs():
    from wallwm.config import load_params
    from wallwm.data.annotate import AnnotateParams

    section = load_params(ROOT / "params.yaml").data.annotate
    assert Vocabulary.from_section(section).actions == tuple(section.vocabulary)
    p = AnnotateParams.from_section(section)
    assert p.video_penalty == section.video_penalty and p.video_min_size == section.video_min_size
