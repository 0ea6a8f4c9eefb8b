"""Time sync: motion signal, lag estimation (planted offsets on sim data), re-alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wallwm.data.episode import Episode, Event
from wallwm.data.timesync import (
    apply_offset,
    estimate_episode_offset,
    estimate_offset,
    motion_signal,
    sync_episode,
)

ROOT = Path(__file__).resolve().parents[3]
CORNER = "observation.images.corner"


def synthetic(t: int = 60, seed: int = 0, lazy: bool = False) -> Episode:
    """A dot moving on a blank image with the commanded speed: video and actions in sync."""
    rng = np.random.default_rng(seed)
    speed = np.repeat(rng.integers(0, 4, t // 4 + 1), 4)[:t].astype(np.float32)
    pos = np.r_[0.0, np.cumsum(speed)[:-1]]  # action[t] moves the dot between frames t, t+1
    frames = np.zeros((t, 16, 128, 3), np.uint8)
    for i, x in enumerate(pos):
        frames[i, 6:10, int(x) % 124 : int(x) % 124 + 4] = 255
    action = np.zeros((t, 4), np.float32)
    action[:, 0] = speed
    state = np.zeros((t, 4), np.float32)
    state[:, 0] = pos
    video = (lambda: iter(list(frames))) if lazy else frames
    return Episode(
        source="test", source_id=f"syn/{seed}", tier="t2_robot_public", task="slide the dot",
        fps=10.0, timestamps=np.arange(t) / 10.0,
        features={"action": action, "observation.state": state},
        videos={"observation.images.cam": video},
        ground_truth=[Event("move", 0, 20, "action"), Event("move", 20, t, "action")],
    )  # fmt: skip


def test_motion_signal_is_the_forward_difference():
    frames = np.zeros((4, 2, 2, 3), np.uint8)
    frames[2:] = 30  # the change happens between frames 1 and 2
    m = motion_signal(frames)
    np.testing.assert_allclose(m, [0, 30, 0, 0], atol=1e-3)
    np.testing.assert_allclose(motion_signal(iter(frames)), m)  # streams
    assert motion_signal(np.zeros((0, 2, 2, 3), np.uint8)).shape == (0,)


@pytest.mark.parametrize("k", [-3, -1, 0, 2, 3])
def test_planted_offset_on_synthetic_data(k):
    ep = synthetic(lazy=True)
    planted = apply_offset(ep, -k)  # now the video lags the actions by k frames
    frames = list(planted.frames_of("observation.images.cam"))
    assert len(frames) == planted.length == len(planted.features["action"])
    assert estimate_offset(frames, planted.features["action"])[0] == k
    assert estimate_offset(frames, None, states=planted.features["observation.state"])[0] == k


def test_apply_offset_keeps_everything_aligned():
    ep = synthetic()
    out = apply_offset(ep, 3, score=0.8)
    assert out.length == 57
    assert all(len(v) == 57 for v in out.features.values())
    np.testing.assert_array_equal(out.features["action"], ep.features["action"][:57])
    np.testing.assert_array_equal(out.videos["observation.images.cam"], ep.videos[
        "observation.images.cam"][3:])  # fmt: skip
    assert out.extra["time_sync"] == {"lag_frames": 3, "score": 0.8}
    assert ep.extra == {} and ep.length == 60  # the input is untouched
    neg = apply_offset(ep, -2)
    np.testing.assert_array_equal(neg.features["action"], ep.features["action"][2:])
    assert [(e.start, e.end) for e in neg.ground_truth] == [(0, 18), (18, 58)]
    assert apply_offset(neg, 2).extra["time_sync"]["lag_frames"] == 0  # lags add up
    lazy = apply_offset(synthetic(lazy=True), 3)
    assert len(list(lazy.frames_of("observation.images.cam"))) == 57
    with pytest.raises(ValueError, match="leaves no frame"):
        apply_offset(ep, 60)


def test_sync_episode_applies_a_convincing_estimate_only():
    planted = apply_offset(synthetic(), -2)
    fixed = sync_episode(planted, max_lag=4)
    ts = fixed.extra["time_sync"]
    assert ts["estimated_lag"] == 2 and ts["applied"] and ts["lag_frames"] == 0
    flat = synthetic()
    flat.videos["observation.images.cam"] = np.zeros_like(flat.videos["observation.images.cam"])
    kept = sync_episode(flat)
    assert kept.length == flat.length and kept.extra["time_sync"]["applied"] is False


# ---- planted offsets on simulated episodes ----


@pytest.fixture(scope="module")
def sim_episodes() -> list[Episode]:
    from wallwm.config import load_params
    from wallwm.data.sources import make_source
    from wallwm.data.sources.sim.env import gl_problem

    if gl_problem() is not None:
        pytest.skip(f"no rendering: {gl_problem()}")
    src = make_source("sim:episodes=4", load_params(ROOT / "params.yaml").data)
    return [src.load(u) for u in src.unit_ids()]  # one episode of each of the four tasks


def test_sim_planted_offsets_are_recovered_exactly(sim_episodes):
    for ep in sim_episodes:
        assert estimate_episode_offset(ep)[0] == 0, ep.source_id  # native data is in sync
        for k in range(-3, 4):
            planted = apply_offset(ep, -k)
            lag, score = estimate_episode_offset(planted)
            assert (lag, ep.source_id) == (k, ep.source_id) and score > 0.3
            one_cam = estimate_offset(
                planted.videos[CORNER], None, states=planted.features["observation.state"]
            )
            assert one_cam[0] == k, (ep.source_id, k, one_cam)
            back = apply_offset(planted, lag, score)
            n, a = back.length, abs(k)
            assert n == ep.length - 2 * a and back.extra["time_sync"]["lag_frames"] == 0
            for key, arr in back.features.items():
                np.testing.assert_array_equal(arr, ep.features[key][a : ep.length - a], key)
            for key, vid in back.videos.items():
                np.testing.assert_array_equal(vid, ep.videos[key][a : ep.length - a], key)


def test_sim_action_based_estimate_reads_the_arm_latency(sim_episodes):
    """Without states, |action| leads the motion by the arm's response (1 frame at 20 fps)."""
    pick = sim_episodes[0]
    assert pick.extra["task_name"] == "pick-place-v3"
    assert estimate_offset(pick.videos[CORNER], pick.features["action"])[0] == 1
    for k in range(-3, 4):
        planted = apply_offset(pick, -k)
        lag, _ = estimate_offset(planted.videos[CORNER], planted.features["action"], response_lag=1)
        assert abs(lag - k) <= 1, (k, lag)
