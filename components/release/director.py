"""The director: per-robot assignments for one fleet, kept on S3 apart from the signed releases.

Why here and not in components/storage: this is state with rules (signatures, counters,
rollout phases), where `release_store.py` is only the S3 adapter it writes through.

```
director/<fleet>/robots/<robot>.json        registration: the robot's public key (first start)
director/<fleet>/reports/<robot>.json       the robot's latest status, DSSE-signed by its key
director/<fleet>/assignments/<robot>.json   what it should run and why, DSSE-signed (director)
director/<fleet>/rollout.json               the current rollout (wallwm.release.rollout)
director/<fleet>/rollouts/<id>.json         finished or halted rollouts
director/<fleet>/policy.json                pins and the version floor
```

`sync()` is one director step: read reports (only correctly signed ones count), run the pure
`rollout.plan`, write the assignments that changed (counter + 1, so robots refuse replays)
and save the rollout. `wallwm release rollout advance` and the release flow call it.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass
from typing import Any

from components.storage.release_store import S3Store
from wallwm.release import rollout as ro
from wallwm.release.keys import KeyRing, public_key_from_json
from wallwm.release.signing import (
    ASSIGNMENT,
    REPORT,
    SignatureError,
    sign_document,
    verify_document,
)
from wallwm.release.tuf_repo import Repository, parse_release_version


@dataclass
class RobotRow:
    robot: str
    running: str | None
    slot: str | None
    state: str
    assigned: str | None
    why: str
    report_age_s: float | None
    last_error: str
    registered: bool


class Director:
    def __init__(self, store: S3Store, fleet: str, keys: KeyRing, *,
                 assignment_days: int = 7, clock=time.time):
        self.store, self.fleet, self.keys, self.clock = store, fleet, keys, clock
        self.assignment_days = assignment_days
        self.base = f"director/{fleet}"

    # ------------------------------------------------------------------ robots and reports
    def robots(self) -> dict[str, dict[str, Any]]:
        out = {}
        for key in self.store.list(f"{self.base}/robots/"):
            doc = self.store.get_json(key)
            if isinstance(doc, dict) and "robot_id" in doc:
                out[doc["robot_id"]] = doc
        return out

    def reports(self) -> dict[str, dict[str, Any]]:
        """robot -> verified report body, or {"error": why} when it cannot be trusted."""
        out: dict[str, dict[str, Any]] = {}
        regs = self.robots()
        for rid, reg in regs.items():
            raw = self.store.get(f"{self.base}/reports/{rid}.json")
            if raw is None:
                continue
            try:
                key = public_key_from_json(reg["public_key"])
                body = verify_document(raw, REPORT, [key], source=f"report of {rid}")
                if body.get("robot") != rid or body.get("fleet") != self.fleet:
                    raise SignatureError(f"report of {rid} names robot {body.get('robot')!r} "
                                         f"fleet {body.get('fleet')!r}")
                out[rid] = body
            except (SignatureError, KeyError, ValueError) as e:
                out[rid] = {"error": str(e)}
        return out

    @staticmethod
    def view(rid: str, body: dict[str, Any]) -> ro.RobotView:
        if "error" in body:
            return ro.RobotView(rid, state="untrusted report")
        active = body.get("active") or {}
        return ro.RobotView(rid, active.get("version"), bool(active.get("committed")),
                            body.get("last_known_good"), dict(body.get("results") or {}),
                            str(body.get("state", "")), float(body.get("at_unix", 0.0)))

    def views(self) -> dict[str, ro.RobotView]:
        return {r: self.view(r, b) for r, b in self.reports().items()}

    # ------------------------------------------------------------------ policy
    def policy(self) -> ro.Policy:
        d = self.store.get_json(f"{self.base}/policy.json") or {}
        return ro.Policy(dict(d.get("pins", {})), d.get("floor"))

    def _save_policy(self, p: ro.Policy) -> None:
        self.store.put_json(f"{self.base}/policy.json", {"pins": p.pins, "floor": p.floor})

    def pin(self, robot: str, version: str, note: str = "") -> None:
        parse_release_version(version)
        p = self.policy()
        lkg = self.views().get(robot)
        if not ro.allowed(version, p.floor, lkg.last_known_good if lkg else None):
            raise ro.RolloutError(f"pin {robot} to {version}: below the floor {p.floor}")
        p.pins[robot] = {"version": version, "note": note}
        self._save_policy(p)

    def unpin(self, robot: str) -> None:
        p = self.policy()
        if p.pins.pop(robot, None) is None:
            raise ro.RolloutError(f"robot {robot} is not pinned")
        self._save_policy(p)

    def set_floor(self, version: str | None) -> None:
        if version:
            parse_release_version(version)
        p = self.policy()
        p.floor = version
        self._save_policy(p)

    # ------------------------------------------------------------------ rollouts
    def rollout(self) -> ro.Rollout | None:
        d = self.store.get_json(f"{self.base}/rollout.json")
        return ro.Rollout.from_json(d) if d else None

    def _save_rollout(self, r: ro.Rollout) -> None:
        self.store.put_json(f"{self.base}/rollout.json", r.to_json())
        if r.status != "running":
            self.store.put_json(f"{self.base}/rollouts/{r.id}.json", r.to_json())

    def start(self, channel: str, version: str, phases: list[ro.Phase], *,
              max_failure_rate: float = 0.0, min_robots: int = 1,
              repo: Repository | None = None) -> ro.Rollout:
        cur = self.rollout()
        if cur is not None and cur.status == "running":
            raise ro.RolloutError(f"rollout {cur.id} of {cur.version} is running; halt it or "
                                  "let it finish first")
        repo = repo or Repository(self.store, self.keys, channel)
        if version not in {r.version for r in repo.releases()}:
            raise ro.RolloutError(f"version {version} is not in the signed index of channel "
                                  f"{channel}; publish it first (`wallwm release publish`)")
        robots = sorted(self.robots())
        r = ro.start(f"{version}-{uuid.uuid4().hex[:8]}", self.fleet, channel, version, robots,
                     self.views(), phases, self.clock(), max_failure_rate=max_failure_rate,
                     min_robots=min_robots, policy=self.policy())
        self._save_rollout(r)
        self.sync()
        return r

    def halt(self, reason: str) -> ro.Rollout:
        cur = self.rollout()
        if cur is None:
            raise ro.RolloutError(f"fleet {self.fleet} has no rollout")
        r = ro.halt(cur, reason, self.clock())
        self._save_rollout(r)
        self.sync()
        return r

    # ------------------------------------------------------------------ assignments
    def assignment(self, robot: str) -> dict[str, Any] | None:
        raw = self.store.get(f"{self.base}/assignments/{robot}.json")
        if raw is None:
            return None
        keys = self.keys.role("director").public_keys()
        return verify_document(raw, ASSIGNMENT, keys, source=f"assignment of {robot}")

    def _write_assignment(self, d: ro.Decision, cur: ro.Rollout | None,
                          floor: str | None, channel: str) -> bool:
        try:
            old = self.assignment(d.robot)
        except SignatureError:
            old = None
        body = {"type": "assignment", "robot": d.robot, "fleet": self.fleet,
                "channel": channel, "version": d.version, "reason": d.reason,
                "rollout": cur.id if cur else None, "phase": d.phase, "floor": floor}
        now = dt.datetime.now(dt.UTC)
        if old is not None:
            same = all(old.get(k) == v for k, v in body.items())
            left = dt.datetime.fromisoformat(old["expires"]) - now
            if same and left > dt.timedelta(days=self.assignment_days) / 2:
                return False
        # above the stored one and above wall-clock milliseconds: a replayed (older)
        # assignment in the bucket cannot pull the next counter below what robots have seen
        body["counter"] = max(int(old["counter"]) + 1 if old else 1, int(time.time() * 1000))
        body["issued"] = now.replace(microsecond=0).isoformat()
        body["expires"] = (now + dt.timedelta(days=self.assignment_days)).replace(
            microsecond=0).isoformat()
        raw = sign_document(body, ASSIGNMENT, self.keys.signers("director"))
        self.store.put(f"{self.base}/assignments/{d.robot}.json", raw, "application/json")
        return True

    def sync(self, default_channel: str = "stable") -> tuple[ro.Rollout | None,
                                                           dict[str, ro.Decision]]:
        robots = sorted(self.robots())
        views = self.views()
        policy = self.policy()
        cur = self.rollout()
        new, decisions = ro.plan(cur, robots, views, policy, self.clock())
        channel = new.channel if new else default_channel
        if new is not None and (cur is None or new.to_json() != cur.to_json()):
            self._save_rollout(new)
        for d in decisions.values():
            if d.version is None and new is None:
                continue  # no rollout, nothing known: the robot follows its channel
            self._write_assignment(d, new, policy.floor, channel)
        return new, decisions

    # ------------------------------------------------------------------ status
    def status(self) -> list[RobotRow]:
        """Per robot: what it runs (its signed report) and what it should run, and why."""
        regs = self.robots()
        reports = self.reports()
        now = self.clock()
        rows = []
        for rid in sorted(set(regs) | set(reports)):
            body = reports.get(rid, {})
            try:
                a = self.assignment(rid)
            except SignatureError as e:
                a = {"version": None, "reason": f"assignment not trusted: {e}"}
            active = body.get("active") or {}
            err = body.get("error") or (body.get("last_error") or {}).get("message", "")
            rows.append(RobotRow(
                rid, active.get("version"), active.get("slot"),
                ("untrusted report" if "error" in body else body.get("state", "no report")),
                (a or {}).get("version"), (a or {}).get("reason", "no assignment: follows the "
                                                        "channel's newest release"),
                round(now - float(body["at_unix"]), 1) if "at_unix" in body else None,
                str(err or ""), rid in regs))
        return rows
