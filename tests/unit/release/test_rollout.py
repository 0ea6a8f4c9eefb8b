"""Staged rollout decisions: phases, soak, halt + revert, pins, floor, incompatible robots."""

from __future__ import annotations

import pytest

from wallwm.release import rollout as ro_mod
from wallwm.release.rollout import Phase, Policy, RobotView, RolloutError, plan, start

ROBOTS = [f"r{i}" for i in range(10)]


def views(version="1.0.0", results=None):
    out = {r: RobotView(r, version, True, version) for r in ROBOTS}
    for r, (v, status) in (results or {}).items():
        out[r].results[v] = {"status": status, "reason": f"{status} on {r}"}
    return out


def begin(**kw):
    phases = kw.pop("phases", [Phase("canary", share=0.2, soak_s=10), Phase("fleet", share=1.0)])
    return start("ro1", "f", "stable", "2.0.0", ROBOTS, views(), phases, now=0.0, **kw)


def committed(rs, v="2.0.0"):
    return {r: (v, "committed") for r in rs}


def test_canary_then_soak_then_fleet():
    ro = begin()
    ro, d = plan(ro, ROBOTS, views(), Policy(), now=1)
    canary = [r for r, x in d.items() if x.version == "2.0.0"]
    assert len(canary) == 2 and all(d[r].version == "1.0.0" for r in ROBOTS if r not in canary)
    assert "waiting for a later phase" in d[next(r for r in ROBOTS if r not in canary)].reason
    v = views(results=committed(canary))
    ro, d = plan(ro, ROBOTS, v, Policy(), now=5)
    assert ro.phase == 0 and ro.phase_done_at == 5  # soaking
    ro, d = plan(ro, ROBOTS, v, Policy(), now=16)
    assert ro.phase == 1 and all(x.version == "2.0.0" for x in d.values())
    ro, d = plan(ro, ROBOTS, views(results=committed(ROBOTS)), Policy(), now=20)
    assert ro.status == "complete" and [e["event"] for e in ro.events] == [
        "started", "phase_done", "widened", "phase_done", "complete"]


def test_failure_halts_and_reverts_everyone():
    ro = begin()
    ro, d = plan(ro, ROBOTS, views(), Policy(), now=1)
    canary = sorted(r for r, x in d.items() if x.version == "2.0.0")
    v = views(results={canary[0]: ("2.0.0", "failed"), canary[1]: ("2.0.0", "committed")})
    ro, d = plan(ro, ROBOTS, v, Policy(), now=2)
    assert ro.status == "halted" and "1/2 robots failed" in ro.reason
    assert all(x.version == "1.0.0" and "halted" in x.reason for x in d.values())


def test_threshold_waits_for_min_robots():
    ro = begin(max_failure_rate=0.3, min_robots=4,
               phases=[Phase("canary", share=0.5), Phase("fleet", share=1.0)])
    ro, d = plan(ro, ROBOTS, views(), Policy(), now=1)
    canary = sorted(r for r, x in d.items() if x.version == "2.0.0")
    v = views(results={canary[0]: ("2.0.0", "failed"), canary[1]: ("2.0.0", "committed")})
    ro, _ = plan(ro, ROBOTS, v, Policy(), now=2)
    assert ro.status == "running"  # 1 of 2 failed, but only 2 < min_robots ran it
    v = views(results={canary[0]: ("2.0.0", "failed"), **committed(canary[1:4])})
    ro, _ = plan(ro, ROBOTS, v, Policy(), now=3)
    assert ro.status == "running"  # 1/4 = 25% <= 30%
    v = views(results={canary[0]: ("2.0.0", "failed"), canary[1]: ("2.0.0", "failed"),
                       **committed(canary[2:4])})
    ro, _ = plan(ro, ROBOTS, v, Policy(), now=4)
    assert ro.status == "halted"


def test_pins_incompatible_and_robot_lists():
    ro = begin(phases=[Phase("bench", robots=["r3"]), Phase("fleet", share=1.0)])
    pol = Policy(pins={"r0": {"version": "0.9.0", "note": "field trial"}})
    v = views(results={"r5": ("2.0.0", "incompatible")})
    ro, d = plan(ro, ROBOTS, v, pol, now=1)
    assert d["r3"].version == "2.0.0" and d["r3"].phase == "bench"
    assert d["r0"].version == "0.9.0" and "pinned" in d["r0"].reason
    assert d["r5"].version == "1.0.0" and "incompatible" in d["r5"].reason
    v = views(results={"r3": ("2.0.0", "committed"), "r5": ("2.0.0", "incompatible")})
    ro, d = plan(ro, ROBOTS, v, pol, now=2)
    assert ro.phase == 1 and d["r0"].version == "0.9.0" and d["r5"].version == "1.0.0"
    done = {**committed([r for r in ROBOTS if r not in ("r0", "r5")]),
            "r5": ("2.0.0", "incompatible")}
    ro, _ = plan(ro, ROBOTS, views(results=done), pol, now=3)
    assert ro.status == "complete"


def test_floor_blocks_downgrades_but_not_last_known_good():
    pol = Policy(pins={"r1": {"version": "0.5.0", "note": ""}}, floor="1.0.0")
    _, d = plan(None, ROBOTS, views(), pol, now=0)
    assert d["r1"].version == "1.0.0" and "below the floor" in d["r1"].reason
    assert ro_mod.allowed("0.9.0", "1.0.0", last_known_good="0.9.0")
    assert not ro_mod.allowed("0.9.0", "1.0.0", last_known_good="1.0.0")
    with pytest.raises(RolloutError, match="below the fleet's floor"):
        begin(policy=Policy(floor="3.0.0"))


def test_operator_halt_and_bad_requests():
    ro = begin()
    ro = ro_mod.halt(ro, "looks wrong", now=1)
    _, d = plan(ro, ROBOTS, views(), Policy(), now=2)
    assert all(x.version == "1.0.0" and "aborted" in x.reason for x in d.values())
    with pytest.raises(RolloutError):
        ro_mod.halt(ro, "again", now=3)
    with pytest.raises(RolloutError, match="no registered robots"):
        start("x", "f", "stable", "2.0.0", [], {}, [Phase("a", share=1.0)], 0)
    with pytest.raises(RolloutError, match="exactly one"):
        Phase("bad")
    # the canary set depends on the rollout id but not on the order robots are listed
    a = ro_mod.members(begin(), 0, ROBOTS)
    assert a == ro_mod.members(begin(), 0, list(reversed(ROBOTS)))
