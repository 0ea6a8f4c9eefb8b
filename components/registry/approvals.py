"""Reviewer decisions: how they are stored, and the rules that make an approval count.

A decision is a tag on the *release* model, `wallwm.<approve|reject>.<candidates model>.v<N>.
<reviewer>`, whose value is JSON: decision, reviewer (the name the server authenticated),
candidates model, version, the bundle hash it binds, time (UTC), comment. Only reviewers and the
promoter hold EDIT on the release model, so the server refuses (403) anyone else's decision,
including the pipeline's direct tag edit. `judge` applies the rules every time a decision is
counted (by `wallwm registry status` and, under the promotion lock, by `wallwm promote`):

- reviewer_listed: the reviewer is in registry.reviewers (or is the demo reviewer when on);
- four_eyes: an approver made none of the version's lineage runs and did not register it
  (rejecting one's own version is allowed);
- approval_binding: the decision names this model, this version and the bundle hash the version
  holds now (a changed artifact voids it); the tag key matches the reviewer it names;
- approval_fresh: an approval older than registry.max_approval_age_hours is stale;
- rejection_final: one rejection blocks the version for good;
- approvals_required: registry.approvals_required distinct valid approvals.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from components.registry import names as N
from components.registry.errors import RegistryError

MAX_COMMENT = 2000


@dataclass(frozen=True)
class Decision:
    decision: str  # approve | reject
    reviewer: str
    candidates_model: str
    version: int
    bundle_sha256: str
    time: dt.datetime
    comment: str
    authenticated: bool = True
    key: str = ""

    def to_json(self) -> str:
        return json.dumps({"decision": self.decision, "reviewer": self.reviewer,
                           "candidates_model": self.candidates_model, "version": self.version,
                           "bundle_sha256": self.bundle_sha256,
                           "time": self.time.astimezone(dt.UTC).isoformat(),
                           "comment": self.comment, "authenticated": self.authenticated},
                          sort_keys=True)

    @classmethod
    def from_tag(cls, key: str, value: str) -> Decision:
        d = json.loads(value)
        t = dt.datetime.fromisoformat(d["time"])
        if t.tzinfo is None:
            raise ValueError("time has no time zone")
        return cls(d["decision"], d["reviewer"], d["candidates_model"], int(d["version"]),
                   d["bundle_sha256"], t, d.get("comment", ""),
                   bool(d.get("authenticated", True)), key)


@dataclass
class Verdict:
    """What the decisions on one version add up to."""

    required: int
    valid: list[Decision] = field(default_factory=list)
    void: list[tuple[str, str, str]] = field(default_factory=list)  # (key, rule, reason)
    rejections: list[Decision] = field(default_factory=list)

    @property
    def approvers(self) -> list[str]:
        return sorted({d.reviewer for d in self.valid})

    @property
    def ok(self) -> bool:
        return not self.rejections and len(self.approvers) >= self.required

    def refusal(self) -> RegistryError | None:
        if self.rejections:
            r = self.rejections[0]
            return RegistryError("rejection_final", f"version {r.version} was rejected by "
                                 f"{r.reviewer} at {r.time.isoformat()}: {r.comment!r}")
        if len(self.approvers) >= self.required:
            return None
        # name the rule that voided the approvals, when one did
        rule = self.void[0][1] if self.void else "approvals_required"
        voided = "; ".join(f"{k}: {why}" for k, _, why in self.void)
        return RegistryError(rule, f"{len(self.approvers)} valid approval(s) "
                             f"{self.approvers} of {self.required} required"
                             + (f"; not counted: {voided}" if voided else ""))


def read_decisions(client, release_model: str, candidates_model: str,
                   version: int | str | None = None) -> tuple[list[Decision], list[tuple]]:
    """Decisions on `candidates_model` (one version or all) from the release model's tags;
    plus (key, rule, reason) for tags under our prefixes that do not parse."""
    try:
        tags = client.get_registered_model(release_model).tags
    except Exception as e:
        if "RESOURCE_DOES_NOT_EXIST" in f"{getattr(e, 'error_code', '')} {e}":
            return [], []  # no release model yet: no decisions (writing one says so)
        raise
    prefixes = N.decision_prefix(candidates_model, version)
    out, bad = [], []
    for k, v in sorted(tags.items()):
        if not k.startswith(prefixes):
            continue
        try:
            out.append(Decision.from_tag(k, v))
        except (ValueError, KeyError, TypeError) as e:
            bad.append((k, "approval_binding", f"unreadable decision tag ({e})"))
    return out, bad


def judge(decisions: list[Decision], *, candidates_model: str, version: int,
          bundle_sha256: str | None, reviewers: list[str], lineage_users: set[str],
          required: int, max_age: dt.timedelta, now: dt.datetime,
          unreadable: list[tuple] | None = None) -> Verdict:
    """Apply the rules of the module docstring (pure: no MLflow)."""
    v = Verdict(required, void=list(unreadable or []))
    for d in decisions:
        expected_key = N.decision_key(d.decision, candidates_model, version, d.reviewer)
        if d.candidates_model != candidates_model or d.version != int(version):
            v.void.append((d.key, "approval_binding", f"names {d.candidates_model} version "
                           f"{d.version}, not version {version}"))
            continue
        if d.key and d.key != expected_key:
            v.void.append((d.key, "approval_binding", f"the tag key does not match the "
                           f"reviewer {d.reviewer!r} it names"))
            continue
        if d.reviewer not in reviewers:
            v.void.append((d.key, "reviewer_listed", f"{d.reviewer!r} is not in "
                           f"registry.reviewers {reviewers}"))
            continue
        if d.decision == "reject":
            v.rejections.append(d)  # final, whatever the bundle, the age or who trained it
            continue
        if d.reviewer in lineage_users:
            v.void.append((d.key, "four_eyes", f"{d.reviewer!r} made a run of this version's "
                           "lineage (or registered it)"))
            continue
        if bundle_sha256 is None or d.bundle_sha256 != bundle_sha256:
            v.void.append((d.key, "approval_binding", f"{d.reviewer} approved bundle "
                           f"{d.bundle_sha256[:12]}..., the version's bundle is now "
                           f"{(bundle_sha256 or 'unverifiable')[:12]}..."))
            continue
        age = now - d.time
        if age > max_age:
            v.void.append((d.key, "approval_fresh", f"{d.reviewer}'s approval of "
                           f"{d.time.isoformat(timespec='seconds')} is {age} old, more than "
                           f"registry.max_approval_age_hours ({max_age})"))
            continue
        if age < -dt.timedelta(minutes=5):
            v.void.append((d.key, "approval_fresh", f"{d.reviewer}'s approval is dated "
                           f"{d.time.isoformat()}, in the future"))
            continue
        v.valid.append(d)
    return v


def check_comment(comment: str) -> str:
    comment = (comment or "").strip()
    if not comment:
        raise ValueError("--comment is required: say why (it is kept with the decision)")
    if len(comment) > MAX_COMMENT:
        raise ValueError(f"--comment is {len(comment)} characters; at most {MAX_COMMENT}")
    return comment
