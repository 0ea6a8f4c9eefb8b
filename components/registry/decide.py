"""`wallwm approve` / `wallwm reject`: record a reviewer's decision on a candidate version.

Runs as the reviewer (their own MLflow credentials). Before writing, the rules that can be
checked now are checked here, and a refusal is written to the audit log with its rule:
the version exists; the caller is a listed reviewer; four eyes (for approvals); a rejected
version takes no approval; an approval needs every gate passed and a bundle that verifies and
still has the hash the version was registered with. The decision binds that hash. The write
itself is a tag on the release model, which the server allows only to reviewers and the
promoter (else 403).
"""

from __future__ import annotations

from dataclasses import dataclass

from components.registry import names as N
from components.registry.approvals import Decision, check_comment, read_decisions
from components.registry.artifacts import check_version_bundle
from components.registry.audit import AuditLog, now_utc, try_append
from components.registry.errors import RegistryError
from components.registry.identity import whoami
from components.registry.versions import get_candidate
from wallwm.config.schema import Params


@dataclass
class Recorded:
    decision: Decision
    release_model: str
    tag: str
    audit: str


def _forbidden(e: Exception) -> bool:
    s = f"{getattr(e, 'error_code', '')} {e}"
    return "PERMISSION_DENIED" in s or "403" in s


def record_decision(decision: str, version: int | str, comment: str, *, params: Params,
                    client=None, embodiment: str | None = None) -> Recorded:
    """Write `decision` (approve | reject) on `version` as the authenticated caller."""
    from mlflow import MlflowClient

    if decision not in ("approve", "reject"):
        raise ValueError(f"decision {decision!r}: expected approve or reject")
    client = client or MlflowClient()
    names = N.model_names(params.registry, embodiment)
    me = whoami()
    log = AuditLog(client, params.registry.audit_experiment, names.release)
    base = {"action": decision, "user": me.username, "authenticated": me.authenticated,
            "candidates_model": names.candidates, "version": str(version)}

    def refuse(rule: str, why: str) -> RegistryError:
        note = try_append(log, {**base, "outcome": "refused", "rule": rule, "reason": why})
        return RegistryError(rule, f"{why} [{note}]")

    try:
        comment = check_comment(comment)
        cv = get_candidate(client, names, version)
    except RegistryError as e:
        raise refuse(e.rule, e.detail) from None
    reviewers = N.reviewers(params.registry)
    if me.username not in reviewers:
        hint = (" (that is the pipeline's account: set MLFLOW_TRACKING_USERNAME/PASSWORD to "
                "your own)" if me.username == params.registry.pipeline_user else "")
        raise refuse("reviewer_listed", f"{me.username!r} is not in registry.reviewers "
                     f"{reviewers}{hint}")
    if decision == "approve" and me.username in cv.lineage_users:
        raise refuse("four_eyes", f"{me.username!r} made a run of version {cv.version}'s "
                     f"lineage or registered it ({sorted(cv.lineage_users)})")
    decisions, _ = read_decisions(client, names.release, names.candidates, cv.version)
    rejected = [d for d in decisions if d.decision == "reject" and d.reviewer in reviewers]
    if decision == "approve":
        if rejected:
            r = rejected[0]
            raise refuse("rejection_final", f"version {cv.version} was rejected by "
                         f"{r.reviewer} ({r.comment!r}); a rejected version stays blocked")
        if cv.failed_gates or not cv.gates:
            failed = ", ".join(f"{g.name} ({g.reason})" for g in cv.failed_gates) or "none ran"
            raise refuse("gates_passed", f"version {cv.version} failed gates: {failed}")
        sha, problem = check_version_bundle(cv.source)
        if problem:
            raise refuse("bundle_hashes", f"version {cv.version}: {problem}")
        if sha != cv.bundle_sha256:
            raise refuse("approval_binding", f"version {cv.version}'s bundle is {sha[:12]}... "
                         f"now, but it was registered as {(cv.bundle_sha256 or '?')[:12]}...")
    else:
        sha = cv.bundle_sha256 or ""
    d = Decision(decision, me.username, names.candidates, cv.version, sha or "", now_utc(),
                 comment, me.authenticated)
    key = N.decision_key(decision, names.candidates, cv.version, me.username)
    try:
        client.set_registered_model_tag(names.release, key, d.to_json())
    except Exception as e:
        if _forbidden(e):
            raise refuse("server_permission", f"the server refused {me.username!r} writing "
                         f"{key} on {names.release} (HTTP 403)") from None
        if "RESOURCE_DOES_NOT_EXIST" in f"{getattr(e, 'error_code', '')} {e}":
            raise refuse("provisioning", f"the release model {names.release!r} does not exist; "
                         "`wallwm stack up` (local) or the MLflow admin creates it") from None
        raise
    note = try_append(log, {**base, "version": cv.version, "outcome": "recorded",
                            "bundle_sha256": sha, "comment": comment, "tag": key})
    return Recorded(d, names.release, key, note)
