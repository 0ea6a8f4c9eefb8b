"""A real agent process against real S3 (nanio): install, serve, hot swap, trial, busy lock,
failed health check, failure in use (rollback), incompatible release, crash safety.

The agent runs without a director here (it follows the channel's newest compatible
release); the staged rollout tests drive it through the director.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time

import numpy as np
import pytest

from tests.fixtures.bundles import (
    TEXTS,
    ReleaseWorld,
    act_body,
    expected,
    observation,
    plant_symlink,
    version_of,
)
from wallwm.data.tokenizer import encode_batch, train_tokenizer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = ReleaseWorld(tmp_path_factory.mktemp("agent-life")).start()
    w.publish("1.0.0")
    yield w
    w.close()


def _expected_actions(tag: float) -> np.ndarray:
    """What the fixture engine must answer to `act_body()`, recomputed in numpy."""
    o = observation(1)
    tok = train_tokenizer(TEXTS, vocab_size=300)  # deterministic: the bundle's tokenizer
    ids, mask = encode_batch(tok, [TEXTS[0]], 16)
    return expected("event", tag, o["images"], o["state"], ids, mask, np.array([-1]),
                    np.array([0.0]), o["action_noise"], o["video_noise"])["actions"]


@pytest.fixture(scope="module")
def agent(world):
    a = world.agent("life", director=False)
    a.start()
    a.wait_for(lambda s: version_of(s) == "1.0.0" and s["active"]["committed"], 30,
               "v1 committed")
    yield a
    a.stop()


def test_serves_the_verified_engine(agent):
    code, out = agent.act(act_body())
    assert code == 200 and out["version"] == "1.0.0"
    np.testing.assert_allclose(out["actions"], _expected_actions(1.0), atol=1e-4)
    st = agent.status()
    assert st["state"] == "serving" and st["last_known_good"] == "1.0.0"
    assert st["metadata"]["root"] == 1 and st["results"]["1.0.0"]["status"] == "committed"
    assert (agent.state_dir / "robot.key").stat().st_mode & 0o777 == 0o600
    code, out = agent.act({"images": {}, "state": [[0, 0, 0, 0]]})
    assert code == 400 and "camera" in out["error"]
    codes: list[int] = []  # concurrent controllers share the engine (thread-safe sessions)
    ts = [threading.Thread(target=lambda: codes.append(agent.act(act_body())[0]))
          for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert codes == [200] * 6


def test_hot_swap_between_requests_and_trial_commit(world, agent):
    world.publish("2.0.0")
    seen, errors, stop = [], [], threading.Event()

    def controller():
        body = act_body()
        while not stop.is_set():
            code, out = agent.act(body)
            if code != 200:
                errors.append((code, out))
            else:
                seen.append(out["version"])

    t = threading.Thread(target=controller)
    t.start()
    try:
        agent.poll()
        agent.wait_for(lambda s: version_of(s) == "2.0.0", 30, "v2 switched")
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    first2 = seen.index("2.0.0")
    assert set(seen[:first2]) == {"1.0.0"} and set(seen[first2:]) == {"2.0.0"}
    st = agent.status()
    assert st["state"] == "trial" or st["active"]["committed"]
    st = agent.wait_for(lambda s: s["results"]["2.0.0"]["status"] == "committed", 10, "commit")
    assert st["previous"] == {"slot": "a", "version": "1.0.0"} and st["active"]["slot"] == "b"
    code, out = agent.act(act_body())
    np.testing.assert_allclose(out["actions"], _expected_actions(2.0), atol=1e-4)


def test_busy_lock_defers_the_switch(world, agent, tmp_path):
    lock = agent.dir / "busy.lock"
    agent.config["busy_lock"] = str(lock)
    agent.stop()
    agent.start()
    fd = os.open(lock, os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the controller runs an episode
    try:
        world.publish("3.0.0")
        st = agent.wait_for(lambda s: s["state"] == "waiting_busy", 30, "waiting for the lock")
        assert version_of(st) == "2.0.0" and "busy lock" in st["note"]
        time.sleep(1.0)
        assert version_of(agent.status()) == "2.0.0"  # never mid-episode
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    agent.wait_for(lambda s: s["results"].get("3.0.0", {}).get("status") == "committed", 30,
                   "v3 after the episode")


def test_failed_health_check_never_serves(world, agent):
    world.publish("4.0.0", bad_reference=True)
    st = agent.wait_for(lambda s: s["results"].get("4.0.0", {}).get("status") == "failed", 30,
                        "4.0.0 failed")
    assert version_of(st) == "3.0.0" and st["state"] == "serving"
    assert "off by" in st["results"]["4.0.0"]["reason"]
    agent.poll()
    assert version_of(agent.status()) == "3.0.0"  # not retried, still the good engine


def test_failure_in_use_rolls_back(world, agent):
    world.publish("5.0.0", nan_above=20.0)  # passes the check, NaN for large states
    agent.wait_for(lambda s: version_of(s) == "5.0.0", 30, "5.0.0 on trial")
    code, _ = agent.act(act_body(state_scale=100.0))
    assert code == 500
    st = agent.wait_for(lambda s: version_of(s) == "3.0.0", 10, "rolled back")
    assert st["results"]["5.0.0"]["status"] == "rolled_back"
    assert "non-finite" in st["results"]["5.0.0"]["reason"]
    assert agent.act(act_body(state_scale=100.0))[0] == 200


def test_incompatible_release_is_skipped(world, agent):
    world.publish("6.0.0", embodiment="other-arm")
    world.publish("6.1.0", min_version="99.0")
    st = agent.wait_for(lambda s: s["results"].get("6.1.0", {}).get("status") == "incompatible",
                        30, "6.1.0 incompatible")
    agent.poll()
    st = agent.status()
    # the newest compatible release stays 3.0.0; the skipped ones say why
    assert version_of(st) == "3.0.0"
    assert "onnxruntime" in st["results"]["6.1.0"]["reason"]
    assert not (agent.state_dir / "staging" / "6.1.0").exists()


def test_restart_reverifies_and_recovers(world, agent):
    """Bit rot in the active slot, then a planted symlink: after each restart the agent serves
    only a verified engine (never the rolled-back one in the other slot) and says why."""
    for damage in ("tamper", "symlink"):
        agent.stop()
        st0 = agent.status()
        slot = st0["active"]["slot"]
        if damage == "tamper":
            victim = agent.state_dir / "slots" / slot / "graphs" / "fp32" / "event_action_step.onnx"
            victim.write_bytes(victim.read_bytes()[:-8] + b"\0" * 8)
        else:
            plant_symlink(agent.state_dir / "slots" / slot)
        agent.start()
        st = agent.wait_for(lambda s: s["state"] == "serving" and version_of(s) == "3.0.0"
                            and s["active"]["committed"], 30, f"verified engine after {damage}")
        assert st["active"]["slot"] != slot  # re-installed into the other slot
        assert agent.act(act_body())[0] == 200
        log = agent.log_path.read_text()
        assert "failed verification after restart" in log
