"""`wallwm promote`: move `champion` to an approved candidate, keep `previous`, audit it.

Under the promotion lock (lock.py), everything is checked again from the server's state, not
from what an earlier command saw: the version exists; every gate passes again with today's
params and today's champion (the regression gate), and every evidence URI still resolves; the
bundle downloads and verifies and still has the hash it was registered and approved with; no
rejection; enough fresh, bound, four-eyes approvals by listed reviewers; it is not already the
champion. Then the version is copied into the release model (`copy_model_version`: the release
version's source is `models:/<candidates>/<N>` and it carries the candidate's tags), `previous`
is set to the old champion and `champion` to the copy, compare-and-set style: right before the
alias moves, the lock must still be held and `champion` must still be the version read under
the lock. Every attempt, refused or done, is an audit entry.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from components.registry import names as N
from components.registry.approvals import judge, read_decisions
from components.registry.artifacts import check_version_bundle
from components.registry.audit import AuditLog, digest, iso, now_utc, try_append
from components.registry.errors import RegistryError
from components.registry.evidence import verify_evidence
from components.registry.gates import evaluate_gates
from components.registry.identity import whoami
from components.registry.lock import PromotionLock
from components.registry.versions import (
    CandidateVersion,
    champion_figures,
    get_candidate,
    promoted_from,
    release_by_alias,
)
from wallwm.config.schema import Params


@dataclass
class Promotion:
    candidates_model: str
    version: int
    release_model: str
    release_version: int
    previous: int | None
    approvers: list[str]
    audit: str = ""
    notes: list[str] = field(default_factory=list)


def check_promotable(client, params: Params, names: N.ModelNames, cv: CandidateVersion,
                     now: dt.datetime) -> tuple[list[str], str]:
    """Raise RegistryError with the first rule that blocks `cv`; return (approvers, sha)."""
    champ = release_by_alias(client, names, N.CHAMPION_ALIAS)
    if champ is not None and promoted_from(champ) == (names.candidates, cv.version):
        raise RegistryError("already_champion", f"{names.candidates} version {cv.version} is "
                            f"the champion already (release version {champ.version})")
    problems = verify_evidence(client, cv.evidence)
    sha, bundle_problem = check_version_bundle(cv.source)
    results = evaluate_gates(
        cv.evidence, gates=params.gates, margin=params.registry.regression_margin,
        champion=champion_figures(client, names), bundle_problem=bundle_problem,
        precisions=cv.precisions, runtime=cv.tags.get(N.RUNTIME, ""), problems=problems)
    failed = [g for g in results if not g.passed]
    if failed:
        g = failed[0]
        raise RegistryError(g.rule, f"version {cv.version} fails gate(s) " + "; ".join(
            f"{x.name}: {x.reason}" for x in failed))
    if sha != cv.bundle_sha256:
        raise RegistryError("approval_binding", f"version {cv.version}'s bundle is "
                            f"{(sha or '?')[:12]}... now, registered as "
                            f"{(cv.bundle_sha256 or '?')[:12]}...")
    decisions, unreadable = read_decisions(client, names.release, names.candidates, cv.version)
    verdict = judge(decisions, candidates_model=names.candidates, version=cv.version,
                    bundle_sha256=sha, reviewers=N.reviewers(params.registry),
                    lineage_users=cv.lineage_users,
                    required=params.registry.approvals_required,
                    max_age=dt.timedelta(hours=params.registry.max_approval_age_hours), now=now,
                    unreadable=unreadable)
    if (err := verdict.refusal()) is not None:
        raise err
    return verdict.approvers, sha or ""


def promote(version: int | str, *, params: Params, client=None, embodiment: str | None = None,
            reason: str = "", poll_s: float = 0.5) -> Promotion:
    """Promote candidate `version` (see the module docstring); raise RegistryError if refused."""
    from mlflow import MlflowClient

    client = client or MlflowClient()
    names = N.model_names(params.registry, embodiment)
    me = whoami()
    log = AuditLog(client, params.registry.audit_experiment, names.release)
    base = {"action": "promote", "user": me.username, "authenticated": me.authenticated,
            "candidates_model": names.candidates, "version": str(version), "why": reason}

    def refused(e: RegistryError, **extra) -> RegistryError:
        note = try_append(log, {**base, **extra, "outcome": "refused", "rule": e.rule,
                                "reason": e.detail})
        return RegistryError(e.rule, f"{e.detail} [{note}]")

    try:
        cv = get_candidate(client, names, version)
    except RegistryError as e:
        raise refused(e) from None
    base["version"] = cv.version
    lock = PromotionLock(client, names.queue, lease_s=params.registry.lock_lease_s,
                         wait_s=params.registry.lock_wait_s, poll_s=poll_s)
    try:
        ticket = lock.acquire(me.username, f"{names.candidates}/{cv.version}")
    except RegistryError as e:
        raise refused(e) from None
    outcome = "refused"
    try:
        champ = release_by_alias(client, names, N.CHAMPION_ALIAS)
        try:
            approvers, sha = check_promotable(client, params, names, cv, now_utc())
        except RegistryError as e:
            raise refused(e, ticket=ticket.number) from None
        evidence_sha = digest({k: e.to_json() for k, e in cv.evidence.items()})
        record = {"by": me.username, "time": iso(now_utc()), "approvers": approvers,
                  "candidate": f"{names.candidates}/{cv.version}", "bundle_sha256": sha,
                  "evidence_sha256": evidence_sha, "ticket": ticket.number,
                  "previous_release_version": int(champ.version) if champ else None}
        try:
            new = client.copy_model_version(f"models:/{names.candidates}/{cv.version}",
                                            names.release)
        except Exception as e:
            if "PERMISSION_DENIED" in str(e) or "403" in str(e):
                raise refused(RegistryError("server_permission", f"the server refused "
                              f"{me.username!r} a version of {names.release} (HTTP 403)"),
                              ticket=ticket.number) from None
            raise
        # the copy carries the candidate's tags (gates, evidence, lineage); say what it is now
        client.set_model_version_tag(names.release, new.version, N.STATUS, "released")
        client.set_model_version_tag(names.release, new.version, N.PREFIX + "source_candidate",
                                     f"{names.candidates}/{cv.version}")
        client.set_model_version_tag(names.release, new.version, N.PREFIX + "promotion",
                                     json.dumps(record, sort_keys=True))
        # compare-and-set: nobody moved `champion` since we read it under the lock
        now_champ = release_by_alias(client, names, N.CHAMPION_ALIAS)
        before = champ.version if champ else None
        if (now_champ.version if now_champ else None) != before or not lock.still_held(ticket):
            client.set_model_version_tag(names.release, new.version, N.STATUS, "aborted")
            raise refused(RegistryError("champion_unchanged", f"champion moved from {before} to "
                                        f"{now_champ.version if now_champ else None} during the "
                                        "promotion, or the lock's lease ran out; nothing moved"),
                          ticket=ticket.number, release_version=int(new.version))
        if champ is not None:
            client.set_registered_model_alias(names.release, N.PREVIOUS_ALIAS, champ.version)
        client.set_registered_model_alias(names.release, N.CHAMPION_ALIAS, new.version)
        outcome = f"promoted to {names.release} version {new.version}"
        note = try_append(log, {**base, "outcome": "promoted", "release_version":
                                int(new.version), **record})
        return Promotion(names.candidates, cv.version, names.release, int(new.version),
                         int(champ.version) if champ else None, approvers, note)
    finally:
        lock.release(ticket, outcome)
