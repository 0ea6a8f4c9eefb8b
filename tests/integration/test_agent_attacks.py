"""Issue 24, point 5: every fault and attack against a real agent process on real S3 (nanio).

Each test plays the attacker (or the fault) on the bucket or the robot, asserts the agent
refuses with a clear status while it keeps serving a verified engine, then undoes the fault
and asserts the agent recovers onto a verified engine.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import resource
import shutil
import time
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, TargetFile
from tuf.api.serialization.json import JSONSerializer

from tests.fixtures.bundles import Proxy, ReleaseWorld, act_body, plant_symlink, version_of
from wallwm.release.bundle import BundleError
from wallwm.release.tuf_repo import RepositoryError, rotate_keys, target_key

pytestmark = pytest.mark.integration
FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = ReleaseWorld(tmp_path_factory.mktemp("attacks")).start()
    w.publish("1.0.0")
    yield w
    w.close()


@pytest.fixture(scope="module")
def agent(world):
    a = world.agent("victim", director=False, poll_interval_s=30.0,  # the tests poll it
                    health_window_s=0.3)
    a.start()
    recovered(a, "1.0.0")
    yield a
    a.stop()


def refused(agent, kind: str, version: str) -> dict:
    """Poll once: the cycle must fail with `kind` while `version` keeps serving."""
    st = agent.poll()
    assert (st.get("last_error") or {}).get("kind") == kind, json.dumps(st)[:1500]
    assert version_of(st) == version and st["state"] in ("serving", "trial")
    assert agent.act(act_body())[0] == 200
    return st


def recovered(agent, version: str, timeout: float = 30) -> dict:
    """Poll until `version` serves, committed, with a clean cycle."""
    deadline = time.monotonic() + timeout
    while True:
        st = agent.poll()
        if version_of(st) == version and st["active"]["committed"] and not st["last_error"]:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"{version} not reached: {json.dumps(st)[:1500]}")
        time.sleep(0.2)


def target_object(world, version: str, rel: str) -> str:
    _, _, _, targets = world.repo.load()
    return target_key(world.channel, targets.signed.targets[f"{version}/{rel}"])


STEP = "graphs/fp32/event_action_step.onnx"


def test_tampered_engine_file(world, agent):
    world.publish("2.0.0")
    key = target_object(world, "2.0.0", STEP)
    good = world.store.get(key)
    world.store.put(key, good[:-1] + bytes([good[-1] ^ 0xFF]))  # same length, one byte
    st = refused(agent, "hash_mismatch", "1.0.0")
    assert "2.0.0" in json.dumps(st["desired"])
    world.store.put(key, good)
    recovered(agent, "2.0.0")


def test_oversized_file(world, agent):
    world.publish("3.0.0")
    key = target_object(world, "3.0.0", STEP)
    good = world.store.get(key)
    world.store.put(key, good + os.urandom(3_000_000))  # endless data
    refused(agent, "oversized", "2.0.0")
    parts = list((agent.state_dir / "staging").rglob("*.part"))
    assert all(p.stat().st_size <= len(good) for p in parts)
    world.store.put(key, good)
    recovered(agent, "3.0.0")


def test_replayed_old_metadata(world, agent):
    old = world.store.get("stable/metadata/timestamp.json")
    world.publish("4.0.0")
    recovered(agent, "4.0.0")
    world.store.put("stable/metadata/timestamp.json", old)  # replay: an older timestamp
    refused(agent, "metadata_rollback", "4.0.0")
    world.repo.refresh_timestamp()
    recovered(agent, "4.0.0")


def test_bad_signature(world, agent):
    key = "stable/metadata/timestamp.json"
    good = world.store.get(key)
    md = Metadata.from_bytes(good)
    md.signed.version += 10
    md.signatures.clear()
    md.sign(CryptoSigner.generate_ed25519())  # the attacker's own key
    world.store.put(key, md.to_bytes(JSONSerializer()))
    refused(agent, "bad_signature", "4.0.0")
    with pytest.raises(RepositoryError, match="not signed by this channel"):
        world.repo.refresh_timestamp()  # the publisher never re-signs what it did not write
    world.store.put(key, good)
    world.repo.refresh_timestamp()
    recovered(agent, "4.0.0")


def test_expired_metadata(world, agent):
    key = "stable/metadata/timestamp.json"
    md = Metadata.from_bytes(world.store.get(key))
    md.signed.version += 1
    md.signed.expires = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    md.signatures.clear()
    for s in world.keys.signers("timestamp"):
        md.sign(s, append=True)
    world.store.put(key, md.to_bytes(JSONSerializer()))  # freeze: validly signed, stale
    refused(agent, "metadata_expired", "4.0.0")
    world.repo.refresh_timestamp()
    recovered(agent, "4.0.0")


def test_mixed_metadata_versions(world, agent):
    _, _, snap, _ = world.repo.load()
    old_targets = world.store.get(f"stable/metadata/{snap.signed.meta['targets.json'].version}"
                                  ".targets.json")
    world.publish("5.0.0")
    _, _, snap, _ = world.repo.load()
    new_key = f"stable/metadata/{snap.signed.meta['targets.json'].version}.targets.json"
    good = world.store.get(new_key)
    world.store.put(new_key, old_targets)  # mix and match: old index under the new snapshot
    refused(agent, "hash_mismatch", "4.0.0")
    world.store.put(new_key, good)
    recovered(agent, "5.0.0")


def test_target_path_traversal_and_symlinked_bundle(world, agent, tmp_path):
    """A compromised exporter gets `../../x` signed into a release: the agent refuses it and
    writes nothing outside its slots. A bundle holding a symlink never gets published."""
    b = world.bundle("6.0.0")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"]["../../x"] = {"sha256": hashlib.sha256(b"pwn").hexdigest(), "size": 3}
    evil = json.dumps(manifest).encode()
    root, ts, snap, targets = world.repo.load()
    for rel, entry in json.loads((b / "manifest.json").read_text())["files"].items():
        tf = TargetFile(entry["size"], {"sha256": entry["sha256"]}, f"6.0.0/{rel}")
        world.store.put_file(target_key("stable", tf), b / rel, entry["sha256"])
        targets.signed.targets[tf.path] = tf
    good_custom = {"custom": {"wallwm": {**world.repo.releases()[-1].custom, "version": "6.0.0"}}}
    mtf = TargetFile.from_data("6.0.0/manifest.json", evil)
    mtf.unrecognized_fields = good_custom
    evil_tf = TargetFile.from_data("6.0.0/../../x", b"pwn")
    world.store.put(target_key("stable", mtf), evil)
    # (its object cannot even be stored: nanio refuses keys with `..` segments)
    targets.signed.targets[mtf.path] = mtf
    targets.signed.targets[evil_tf.path] = evil_tf
    world.repo._publish(targets, snap, ts)  # signed with the real keys
    st = refused(agent, "bundle_invalid", "5.0.0")
    assert "../../x" in st["last_error"]["message"]
    assert not list(agent.state_dir.parent.rglob("x"))
    plant_symlink(b)
    with pytest.raises(BundleError, match="symlink"):
        world.repo.add_release(b, "6.0.1")
    world.publish("7.0.0")
    recovered(agent, "7.0.0")


def test_offline_through_several_root_rotations(world, agent):
    agent.stop()
    for role in ("timestamp", "snapshot", "targets", "root"):
        rotate_keys(world.keys, [world.repo], role)
    world.publish("8.0.0")
    agent.start()
    st = recovered(agent, "8.0.0")
    assert st["metadata"]["root"] == 5
    # the robot now trusts the newest root: the provisioned v1 is no longer its anchor
    trusted = Metadata.from_bytes((agent.state_dir / "trusted_root.json").read_bytes())
    assert trusted.signed.version == 5


def test_s3_slow_then_down_mid_download(world):
    proxy = Proxy(world.s3.port)
    a = world.agent("flaky", director=False, s3_endpoint=proxy.url, request_timeout_s=2.0,
                    poll_interval_s=0.5)
    a.env["AWS_ENDPOINT_URL"] = proxy.url
    try:
        a.start()
        a.wait_for(lambda s: version_of(s) is not None, 30, "first engine")
        start_v = version_of(a.status())
        world.publish("9.0.0", pad_mb=3)
        size = sum(p.stat().st_size for p in world.bundles["9.0.0"].rglob("*") if p.is_file())
        proxy.rate = 400_000  # slow
        a.wait_for(lambda s: any(p.stat().st_size > 200_000 for p in
                                 (a.state_dir / "staging").rglob("*.part")), 30, "mid-download")
        proxy.rate = 1e-3  # stalls: the read timeout fires
        st = a.wait_for(lambda s: (s.get("last_error") or {}).get("kind") == "download_failed",
                        30, "stall detected")
        assert version_of(st) == start_v
        proxy.down()  # then the server is gone
        st = a.wait_for(lambda s: "9.0.0" not in json.dumps(s.get("active"))
                        and (s.get("last_error") or {}).get("kind") == "download_failed", 20,
                        "down")
        assert a.act(act_body())[0] == 200
        sent_before = proxy.sent
        proxy.rate = None
        proxy.up()
        a.wait_for(lambda s: version_of(s) == "9.0.0", 60, "resumed to 9.0.0")
        assert proxy.sent - sent_before < size  # resumed, not started over
    finally:
        a.stop()
        proxy.close()


def test_disk_full(world):
    a = world.agent("full", director=False)
    a.start()
    a.wait_for(lambda s: version_of(s) is not None, 30, "first engine")
    v0 = version_of(a.status())
    a.stop()
    world.publish("10.0.0", pad_mb=3)
    # the free-space check: the bundle plus the reserve does not fit
    a.config["min_free_mb"] = shutil.disk_usage(a.state_dir).free / 2**20 + 10
    a.start()
    st = a.wait_for(lambda s: (s.get("last_error") or {}).get("kind") == "disk_full", 30, "check")
    assert version_of(st) == v0 and "MiB free" in st["last_error"]["message"]
    a.stop()
    # a real write failure: the file system refuses bytes past 2 MiB (EFBIG, like ENOSPC)
    a.config["min_free_mb"] = 1.0
    a.preexec = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))
    a.start()
    st = a.wait_for(lambda s: (s.get("last_error") or {}).get("kind") == "disk_full", 30, "full")
    assert version_of(st) == v0 and a.act(act_body())[0] == 200
    assert not (a.state_dir / "staging" / "10.0.0").exists()  # the space is given back
    a.stop()
    a.preexec = None
    a.start()
    a.wait_for(lambda s: version_of(s) == "10.0.0", 60, "10.0.0 once there is room")
    a.stop()


@pytest.mark.skipif(not FAKETIME.exists(), reason="libfaketime absent (Debian: apt-get install "
                    "libfaketime) - needed to skew one process's clock")
def test_clock_skew_on_the_robot(world):
    a = world.agent("skewed", director=False)
    a.start()
    a.wait_for(lambda s: version_of(s) is not None and s["active"]["committed"], 30, "engine")
    v0 = version_of(a.status())
    a.stop()
    world.publish("11.0.0")
    a.start({"LD_PRELOAD": str(FAKETIME), "FAKETIME": "+30d",
             "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    st = a.wait_for(lambda s: (s.get("last_error") or {}).get("kind") == "clock_skew", 30,
                    "skew reported")
    assert version_of(st) == v0 and "clock" in st["last_error"]["message"]
    assert a.act(act_body())[0] == 200
    a.stop()
    a.start()  # clock fixed
    a.wait_for(lambda s: version_of(s) == "11.0.0", 30, "11.0.0 with a correct clock")
    a.stop()


def test_killed_mid_download_and_mid_switch(world):
    a = world.agent("crashy", director=False)
    a.start()
    a.wait_for(lambda s: version_of(s) is not None and s["active"]["committed"], 30, "engine")
    v0 = version_of(a.status())
    a.stop()
    world.publish("12.0.0", pad_mb=2)
    a.start({"WALLWM_AGENT_CRASH_AT": "mid_download"}, wait=False)
    assert a.wait_exit(60) == 86
    parts = list((a.state_dir / "staging" / "12.0.0").rglob("*.part"))
    assert parts and max(p.stat().st_size for p in parts) > 0
    a.start({"WALLWM_AGENT_CRASH_AT": "after_switch"}, wait=False)  # resumes, then dies
    assert a.wait_exit(60) == 86
    assert os.readlink(a.state_dir / "active") != f"slots/{a.status()['active']['slot']}"
    a.start()
    st = a.wait_for(lambda s: version_of(s) == "12.0.0", 30, "12.0.0 after the crashes")
    assert st["state"] in ("trial", "serving")
    a.wait_for(lambda s: s["results"]["12.0.0"]["status"] == "committed", 30, "committed")
    a.stop()
    world.publish("13.0.0")
    a.start({"WALLWM_AGENT_CRASH_AT": "before_switch"}, wait=False)
    assert a.wait_exit(60) == 86
    a.start()
    st = a.wait_for(lambda s: s["state"] != "starting", 30, "up")
    a.wait_for(lambda s: version_of(s) == "13.0.0", 30, "13.0.0 switched after restart")
    assert v0 != "13.0.0"
    a.stop()
