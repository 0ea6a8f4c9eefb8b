"""Staged rollout as a pure function: (rollout, robots' reports, pins, floor, now) -> assignments.

As in Uptane, what exists (the signed release index, TUF) is kept apart from what each robot
should run (the director's assignments, decided here). A rollout moves one fleet of one
channel to `version` in phases (a canary share or robot list, then wider, then the fleet):

* a phase's robots are assigned the new version, the others stay on their baseline (the
  version each committed before the rollout started);
* the next phase starts once every robot of the current phase committed the new version
  (health window passed) and the phase's soak time has elapsed since;
* as soon as at least `min_robots` robots ran it and the share that failed (health check,
  trial rollback) exceeds `max_failure_rate`, the rollout halts and every robot is assigned
  its baseline again (revert);
* a pinned robot runs its pin and is left out; a robot that cannot run the release
  (incompatible) is left out and listed;
* the version floor blocks assignments below it, except a robot's own last known-good
  version, so rollback stays possible while downgrades past the floor do not.

Nothing here does I/O; `components/release/director.py` keeps the state on S3.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from packaging.version import Version

OK_RESULTS = ("committed",)
FAIL_RESULTS = ("failed", "rolled_back")
SKIP_RESULTS = ("incompatible",)
Status = Literal["running", "halted", "complete", "aborted"]


class RolloutError(ValueError):
    """A rollout request that cannot be carried out; the message says what to change."""


@dataclass
class Phase:
    name: str
    share: float | None = None  # of the fleet (cumulative), or
    robots: list[str] | None = None  # an explicit list (cumulative with earlier phases)
    soak_s: float = 0.0

    def __post_init__(self) -> None:
        if (self.share is None) == (self.robots is None):
            raise RolloutError(f"phase {self.name!r}: give exactly one of share or robots")
        if self.share is not None and not 0 < self.share <= 1:
            raise RolloutError(f"phase {self.name!r}: share {self.share} must be in (0, 1]")
        if self.soak_s < 0:
            raise RolloutError(f"phase {self.name!r}: soak_s {self.soak_s} < 0")


@dataclass
class Rollout:
    id: str
    fleet: str
    channel: str
    version: str
    phases: list[Phase]
    robots: list[str]  # the fleet at start (later robots join at the last phase)
    baseline: dict[str, str | None]  # robot -> version it committed before the rollout
    max_failure_rate: float = 0.0
    min_robots: int = 1
    created: float = 0.0
    status: Status = "running"
    phase: int = 0
    phase_started: float = 0.0
    phase_done_at: float | None = None
    reason: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Rollout:
        d = dict(d)
        d["phases"] = [Phase(**p) for p in d["phases"]]
        return cls(**d)


@dataclass
class RobotView:
    """What a robot's latest verified report says."""

    robot: str
    active_version: str | None = None
    committed: bool = False
    last_known_good: str | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> {status,...}
    state: str = ""
    at: float = 0.0


@dataclass
class Policy:
    pins: dict[str, dict[str, str]] = field(default_factory=dict)  # robot -> {version, note}
    floor: str | None = None


@dataclass
class Decision:
    robot: str
    version: str | None
    reason: str
    phase: str | None = None


def start(rollout_id: str, fleet: str, channel: str, version: str, robots: list[str],
          views: dict[str, RobotView], phases: list[Phase], now: float, *,
          max_failure_rate: float = 0.0, min_robots: int = 1,
          policy: Policy | None = None) -> Rollout:
    """A new rollout; refuses versions below the floor and empty fleets."""
    if not robots:
        raise RolloutError(f"fleet {fleet!r} has no registered robots; start agents first")
    if not phases:
        raise RolloutError("a rollout needs at least one phase")
    if not 0 <= max_failure_rate < 1:
        raise RolloutError(f"max_failure_rate {max_failure_rate} must be in [0, 1)")
    if min_robots < 1:
        raise RolloutError(f"min_robots {min_robots} must be >= 1")
    floor = (policy or Policy()).floor
    if floor and Version(version) < Version(floor):
        raise RolloutError(f"version {version} is below the fleet's floor {floor}")
    last = phases[-1]
    if not (last.share == 1.0 or (last.robots is not None and set(robots) <= set(last.robots))):
        phases = [*phases, Phase("fleet", share=1.0)]
    baseline = {r: (views[r].last_known_good if r in views else None) for r in robots}
    ro = Rollout(rollout_id, fleet, channel, version, phases, sorted(robots), baseline,
                 max_failure_rate, min_robots, now, phase_started=now)
    ro.events.append({"at": now, "event": "started", "phase": phases[0].name})
    return ro


def _order(rollout_id: str, robots: list[str]) -> list[str]:
    """A stable pseudo-random order per rollout: the canary set differs between rollouts."""
    return sorted(robots, key=lambda r: hashlib.sha256(f"{rollout_id}/{r}".encode()).hexdigest())


def members(ro: Rollout, upto: int, eligible: list[str]) -> list[str]:
    """Robots in phases 0..upto (cumulative)."""
    out: list[str] = []
    order = _order(ro.id, eligible)
    for ph in ro.phases[: upto + 1]:
        if ph.robots is not None:
            extra = [r for r in ph.robots if r in eligible]
        else:
            n = max(1, math.ceil((ph.share or 0) * len(eligible)))
            extra = order[:n]
        out += [r for r in extra if r not in out]
    return out


def outcome(view: RobotView | None, version: str) -> str:
    """pending | committed | failed | incompatible for this robot and version."""
    if view is None:
        return "pending"
    res = view.results.get(version, {}).get("status")
    if res in OK_RESULTS:
        return "committed"
    if res in FAIL_RESULTS:
        return "failed"
    if res in SKIP_RESULTS:
        return "incompatible"
    return "pending"


def allowed(version: str | None, floor: str | None, last_known_good: str | None) -> bool:
    """The floor rule: at or above the floor, or the robot's own last known-good."""
    if version is None or floor is None:
        return True
    return Version(version) >= Version(floor) or version == last_known_good


def plan(ro: Rollout | None, robots: list[str], views: dict[str, RobotView],
         policy: Policy, now: float) -> tuple[Rollout | None, dict[str, Decision]]:
    """Advance `ro` (a copy is returned) and decide every robot's assignment."""
    decisions: dict[str, Decision] = {}
    pins = policy.pins
    for r in robots:
        if r in pins:
            decisions[r] = Decision(r, pins[r]["version"],
                                    f"pinned to {pins[r]['version']}: {pins[r].get('note', '')}"
                                    .rstrip(": "))
    if ro is None:
        for r in robots:
            if r not in decisions:
                v = views.get(r)
                decisions[r] = Decision(r, None, "no rollout: follows the channel's newest "
                                        "compatible release" if not v or not v.last_known_good
                                        else f"no rollout: stays on {v.last_known_good}")
                if v and v.last_known_good:
                    decisions[r].version = v.last_known_good
        return None, _apply_floor(decisions, views, policy)
    ro = Rollout.from_json(ro.to_json())
    eligible = [r for r in robots if r not in pins]
    skipped = [r for r in eligible if outcome(views.get(r), ro.version) == "incompatible"]
    eligible = [r for r in eligible if r not in skipped]
    if ro.status == "running":
        _evaluate(ro, eligible, views, now)
    current = members(ro, ro.phase, eligible) if ro.status in ("running", "complete") else []
    for r in robots:
        if r in decisions:
            continue
        base = ro.baseline.get(r)
        if r in skipped:
            decisions[r] = Decision(r, base, f"cannot run {ro.version} (incompatible: "
                                    f"{views[r].results[ro.version].get('reason', '')}); "
                                    f"stays on {base}")
        elif ro.status == "halted":
            decisions[r] = Decision(r, base, f"rollout {ro.id} of {ro.version} halted "
                                    f"({ro.reason}); reverted to {base}")
        elif ro.status == "aborted":
            decisions[r] = Decision(r, base, f"rollout {ro.id} aborted by an operator "
                                    f"({ro.reason}); reverted to {base}")
        elif r in current:
            ph = ro.phases[ro.phase].name
            decisions[r] = Decision(r, ro.version, f"rollout {ro.id}: phase {ph}"
                                    + (" (complete)" if ro.status == "complete" else ""), ph)
        else:
            decisions[r] = Decision(r, base, f"rollout {ro.id}: waiting for a later phase "
                                    f"(now {ro.phases[ro.phase].name}); stays on {base}")
    return ro, _apply_floor(decisions, views, policy)


def _apply_floor(decisions: dict[str, Decision], views: dict[str, RobotView],
                 policy: Policy) -> dict[str, Decision]:
    for d in decisions.values():
        lkg = views[d.robot].last_known_good if d.robot in views else None
        if not allowed(d.version, policy.floor, lkg):
            d.reason = (f"{d.version} is below the floor {policy.floor}; not assigned "
                        f"(was: {d.reason})")
            d.version = lkg if allowed(lkg, policy.floor, lkg) else None
    return decisions


def _evaluate(ro: Rollout, eligible: list[str], views: dict[str, RobotView], now: float) -> None:
    everyone = members(ro, len(ro.phases) - 1, eligible)
    ran = [r for r in everyone if outcome(views.get(r), ro.version) in ("committed", "failed")]
    failed = [r for r in ran if outcome(views.get(r), ro.version) == "failed"]
    if len(ran) >= ro.min_robots and ran and len(failed) / len(ran) > ro.max_failure_rate:
        reasons = "; ".join(f"{r}: {views[r].results[ro.version].get('reason', '')}"
                            for r in failed[:3])
        ro.status, ro.reason = "halted", (f"{len(failed)}/{len(ran)} robots failed "
                                          f"(> {ro.max_failure_rate:.0%}): {reasons}")
        ro.events.append({"at": now, "event": "halted", "phase": ro.phases[ro.phase].name,
                          "reason": ro.reason})
        return
    while True:
        phase_robots = members(ro, ro.phase, eligible)
        done = all(outcome(views.get(r), ro.version) == "committed" for r in phase_robots)
        if not done:
            ro.phase_done_at = None
            return
        if ro.phase_done_at is None:
            ro.phase_done_at = now
            ro.events.append({"at": now, "event": "phase_done", "phase": ro.phases[ro.phase].name})
        if now - ro.phase_done_at < ro.phases[ro.phase].soak_s:
            return
        if ro.phase == len(ro.phases) - 1:
            ro.status, ro.reason = "complete", f"{len(phase_robots)} robots run {ro.version}"
            ro.events.append({"at": now, "event": "complete"})
            return
        ro.phase += 1
        ro.phase_started, ro.phase_done_at = now, None
        ro.events.append({"at": now, "event": "widened", "phase": ro.phases[ro.phase].name})


def halt(ro: Rollout, reason: str, now: float) -> Rollout:
    """Operator halt: every robot goes back to its baseline."""
    ro = Rollout.from_json(ro.to_json())
    if ro.status != "running":
        raise RolloutError(f"rollout {ro.id} is {ro.status}; nothing to halt")
    ro.status, ro.reason = "aborted", reason or "halted by an operator"
    ro.events.append({"at": now, "event": "aborted", "reason": ro.reason})
    return ro
