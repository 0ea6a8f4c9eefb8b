"""A fleet of real agents driven by the director on real S3: staged rollout to convergence, a
bad release halted at canary, pins, the floor, forged and replayed assignments, the status
table and CLI, and the data flywheel into a `fleet_inbox` build source."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from securesystemslib.signer import CryptoSigner
from typer.testing import CliRunner

from flows.cli_release import release_app
from flows.release import report_markdown, run_rollout
from tests.fixtures.bundles import ReleaseWorld, act_body, make_recording, version_of
from wallwm.config.schema import DataParams
from wallwm.data.sources.base import SourceError, SourceSpec
from wallwm.data.sources.fleet_inbox import FleetInboxSource
from wallwm.release.rollout import RolloutError
from wallwm.release.signing import ASSIGNMENT, INBOX_ENTRY, peek_document, sign_document

pytestmark = pytest.mark.integration
N = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = ReleaseWorld(tmp_path_factory.mktemp("fleet")).start()
    w.publish("1.0.0")
    yield w
    w.close()


@pytest.fixture(scope="module")
def fleet(world):
    agents = [world.agent(f"r{i}", health_window_s=0.5) for i in range(N)]
    for a in agents:
        a.start(wait=False)
    for a in agents:
        a.wait_port()
    for a in agents:
        a.wait_for(lambda s: version_of(s) == "1.0.0" and s["active"]["committed"], 60, "v1")
    # the director decides from the robots' signed reports, which an agent uploads after it
    # commits: until they are in, it knows nothing and a robot follows its channel (seen
    # under load: a `sync` before the reports left no assignment and everyone took 2.0.0)
    deadline = time.monotonic() + 60

    def reported(views) -> bool:
        return len(views) == N and all(v.active_version == "1.0.0" and v.committed
                                       for v in views.values())

    while not reported(views := world.director.views()):
        assert time.monotonic() < deadline, f"the director never saw every report: {views}"
        time.sleep(0.2)
    yield agents
    for a in agents:
        a.stop()


def converged(world, fleet, version):
    for a in fleet:
        a.wait_for(lambda s: version_of(s) == version and s["active"]["committed"], 60,
                   f"{version} committed")


def test_staged_rollout_converges(world, fleet):
    world.director.sync()  # no rollout yet: everyone stays on what it runs
    world.publish("2.0.0")
    time.sleep(1.0)
    assert {version_of(a.status()) for a in fleet} == {"1.0.0"}  # nobody jumped ahead
    out = run_rollout(world.director, "stable", "2.0.0", canary_share=0.3, soak_s=0.5,
                      timeout_s=90, canary=["r1"])
    assert out["status"] == "complete", out
    events = [e["event"] for e in out["events"]]
    assert events[:3] == ["started", "phase_done", "widened"] and events[-1] == "complete"
    converged(world, fleet, "2.0.0")
    rows = {r.robot: r for r in world.director.status()}
    assert all(r.running == "2.0.0" and r.assigned == "2.0.0" and r.registered
               for r in rows.values())
    assert "# Rollout" in report_markdown(out)


def test_bad_release_halts_at_canary(world, fleet):
    world.publish("3.0.0", bad_reference=True)
    out = run_rollout(world.director, "stable", "3.0.0", canary_share=0.3, soak_s=0.5,
                      timeout_s=60, canary=["r0"])
    assert out["status"] == "halted" and "r0" in out["reason"], out
    time.sleep(1.0)
    for a in fleet:
        st = a.status()
        assert version_of(st) == "2.0.0" and st["state"] == "serving"
        assert a.act(act_body())[0] == 200
    assert fleet[0].status()["results"]["3.0.0"]["status"] == "failed"
    rows = {r.robot: r for r in world.director.status()}
    assert "halted" in rows["r2"].why and rows["r2"].assigned == "2.0.0"


def test_pin_floor_and_cli_status(world, fleet, monkeypatch):
    monkeypatch.setenv("WALLWM_RELEASE_KEYS", str(world.keys.root))
    run = CliRunner().invoke
    r = run(release_app, ["pin", "r2", "1.0.0", "--note", "field trial", "--fleet", "f1"])
    assert r.exit_code == 0, (r.output, r.exception)
    fleet[2].wait_for(lambda s: version_of(s) == "1.0.0" and s["active"]["committed"], 30,
                      "pinned back to 1.0.0")
    deadline = time.monotonic() + 30
    while (view := world.director.views()["r2"]).last_known_good != "1.0.0":  # next report
        assert time.monotonic() < deadline, f"director still sees {view}"
        time.sleep(0.2)
    r = run(release_app, ["floor", "2.0.0", "--fleet", "f1"])
    assert r.exit_code == 0, r.output
    with pytest.raises(RolloutError, match="below the floor"):
        world.director.pin("r1", "1.0.0")  # r1's own last known-good is 2.0.0
    # r2 runs 1.0.0 as its last known-good: the floor still lets it stay there
    assert world.director.assignment("r2")["version"] == "1.0.0"
    r = run(release_app, ["pin", "r2", "--clear", "--fleet", "f1"])
    assert r.exit_code == 0, r.output
    r = run(release_app, ["status", "--fleet", "f1", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert {x["robot"] for x in doc["robots"]} == {"r0", "r1", "r2"}
    assert doc["rollout"]["status"] == "halted"
    r = run(release_app, ["rollout", "halt", "--reason", "x", "--fleet", "f1"])
    assert r.exit_code == 2 and "nothing to halt" in r.output


def test_forged_and_replayed_assignments_are_refused(world, fleet):
    a = fleet[0]
    key = "director/f1/assignments/r0.json"
    good = world.store.get(key)
    body = world.director.assignment("r0")
    forged = dict(body, version="1.0.0", counter=body["counter"] + 10)
    world.store.put(key, sign_document(forged, ASSIGNMENT, [CryptoSigner.generate_ed25519()]))
    st = a.poll()
    assert st["last_error"]["kind"] == "bad_signature" and version_of(st) == "2.0.0"
    world.store.put(key, good)
    a.poll()
    old = sign_document(dict(body, counter=1), ASSIGNMENT, world.keys.signers("director"))
    world.store.put(key, old)  # a genuine but older assignment, replayed
    st = a.poll()
    assert st["last_error"]["kind"] == "assignment_replay" and version_of(st) == "2.0.0"
    world.director.sync()  # the director notices nothing changed... but rewrites when asked
    world.store.put(key, good)
    assert not a.poll()["last_error"]


def test_flywheel_uploads_dedups_and_feeds_a_build(world, fleet, tmp_path):
    rec = make_recording(tmp_path / "rec")
    for a, name in ((fleet[0], "ep-a"), (fleet[1], "ep-b")):
        ready = a.dir / "spool" / "ready" / name
        shutil.copytree(rec, a.dir / "spool" / "incoming" / name)
        (a.dir / "spool" / "incoming" / name).rename(ready)
        a.wait_for(lambda s, r=ready: not r.exists(), 30, "spooled")
    s0 = fleet[0].status()["spool"]
    s1 = fleet[1].status()["spool"]
    assert s0["uploaded"] + s1["uploaded"] == 1 and s0["deduplicated"] + s1["deduplicated"] == 1
    src = FleetInboxSource(SourceSpec("fleet_inbox", {
        "url": "s3://wallwm-releases/inbox/f1", "cache": str(tmp_path / "cache")}), DataParams())
    units = src.unit_ids()
    assert len(units) == 1
    ep = src.load(units[0])
    assert ep.tier == "t3_robot_real" and ep.length == 12 and ep.source == "fleet_inbox"
    assert ep.features["flags.recovery"].sum() == 4
    assert all(c.calibrated for c in ep.cameras.values())
    assert ep.extra["fleet_inbox"]["robot"] in ("r0", "r1")
    fp = src.fingerprint()
    assert FleetInboxSource(src.spec, DataParams()).fingerprint() == fp
    # an entry signed by a key the director does not know is not trusted
    digest = units[0].split("/")[0]
    entry_key = f"inbox/f1/{digest}/_entry.json"
    raw = world.store.get(entry_key)
    body = peek_document(raw)
    world.store.put(entry_key, sign_document(body, INBOX_ENTRY, [CryptoSigner.generate_ed25519()]))
    bad = FleetInboxSource(SourceSpec("fleet_inbox", {
        "url": "s3://wallwm-releases/inbox/f1", "cache": str(tmp_path / "cache2")}), DataParams())
    with pytest.raises(SourceError) as e:
        bad.load(units[0])
    assert e.value.check == "signature"
    world.store.put(entry_key, raw)
