"""The action splitter inverts the sim source's frame aggregation exactly (algebra only; the
physical replay is in test_replay.py)."""

from __future__ import annotations

import numpy as np
import pytest

from wallwm.eval.actions import aggregate, split_frame_action


def test_split_then_aggregate_is_the_identity_on_recordable_actions():
    rng = np.random.default_rng(0)
    for every in (1, 3, 4, 5):
        frames = np.c_[rng.uniform(-every, every, (200, 3)), rng.choice([-1.0, 0.6, 1.0], 200)]
        cmds = np.concatenate([split_frame_action(a, every) for a in frames])
        assert cmds.shape == (200 * every, 4)
        assert np.abs(cmds).max() <= 1.0
        np.testing.assert_allclose(aggregate(cmds, every), frames.astype(np.float32),
                                   rtol=0, atol=1e-6)


def test_aggregate_matches_rollout_semantics():
    # xyz = sum of the clipped step commands, gripper = the last command; a short last frame
    cmds = np.array([[2.0, 0.5, -0.25, -1], [0.5, 0.5, -0.25, 1], [0.1, 0, 0, 1],
                     [0, 0, 0, -1], [0.3, -0.3, 1.5, 1]])
    got = aggregate(cmds, 2)
    np.testing.assert_allclose(got, [[1.5, 1.0, -0.5, 1], [0.1, 0, 0, -1], [0.3, -0.3, 1, 1]])


def test_split_spreads_evenly_holds_the_grip_and_clips():
    out = split_frame_action(np.array([2.0, -4.0, 0.0, 1.0]), 4)
    np.testing.assert_array_equal(out, np.tile([0.5, -1.0, 0.0, 1.0], (4, 1)))
    big = split_frame_action(np.array([8.0, -6.0, 0.2, 1.7]), 4)  # a model beyond the range
    np.testing.assert_array_equal(big, np.tile([1.0, -1.0, 0.05, 1.0], (4, 1)))
    low, high = np.array([-0.5] * 4), np.array([0.5] * 4)
    assert split_frame_action(np.array([4.0, 0, 0, -1.0]), 4, low, high).max() == 0.5


@pytest.mark.parametrize("bad", [np.array([np.nan, 0, 0, 1]), np.array([1.0])])
def test_split_rejects_bad_actions(bad):
    with pytest.raises(ValueError, match="split_frame_action"):
        split_frame_action(bad, 4)
