"""Approval and promotion in the retrain: what is already decided is reused, the demo reviewer
approves only under `retrain.demo_approve` + `registry.demo_reviewer` (profiles/demo.yaml),
promotion runs as the promoter account (the pipeline cannot write the release model)."""

from __future__ import annotations

from typing import Any

from components.registry.decide import record_decision
from components.registry.identity import resolve, use_identity
from components.registry.promotion import promote
from components.registry.status import awaiting_approval, promote_ready, registry_status
from wallwm.config.schema import Params

DEMO_COMMENT = ("DEMO approval by the local demo reviewer account (profiles/demo.yaml, "
                "retrain.demo_approve): not a review")


def _state(p: Params, version: int) -> str:
    from mlflow import MlflowClient

    rows = [r for r in registry_status(MlflowClient(), p) if r.version == version]
    return rows[0].state if rows else "unknown"


def approve_for_demo(p: Params, reg: dict[str, Any]) -> dict[str, Any]:
    """{approved, reused, state, by, message} for the registered version."""
    version = int(reg["version"])
    state = _state(p, version)
    if state in ("champion", "approved: ready to promote", "previous"):
        return {"approved": True, "reused": True, "state": state, "by": "earlier approval"}
    if state == "rejected":
        return {"approved": False, "reused": True, "state": state,
                "message": f"{reg['model']} v{version} was rejected by a reviewer: blocked"}
    if p.retrain.demo_approve and p.registry.demo_reviewer:
        with use_identity(resolve("reviewer", demo=True, demo_allowed=True)):
            rec = record_decision("approve", version, DEMO_COMMENT, params=p)
        state = _state(p, version)
        return {"approved": state == "approved: ready to promote", "reused": False,
                "state": f"{state} (demo)", "by": rec.decision.reviewer,
                "message": DEMO_COMMENT if state == "approved: ready to promote" else
                f"demo approval recorded; the version is {state!r}"}
    msg = awaiting_approval(_Reg(reg), p).message
    return {"approved": False, "reused": False, "state": "awaiting approval", "message": msg}


class _Reg:
    """The fields of a `Registration` that `awaiting_approval` reads."""

    def __init__(self, reg: dict[str, Any]):
        self.model, self.version, self.passed = reg["model"], int(reg["version"]), reg["passed"]
        self._reason = reg.get("reason", "")

    def reason(self) -> str:
        return self._reason


def promote_version(p: Params, reg: dict[str, Any]) -> dict[str, Any]:
    """Move `champion` to the version (as the promoter); a version already champion is
    reused."""
    version = int(reg["version"])
    if _state(p, version) == "champion":
        return {"champion": version, "reused": True}
    with use_identity(resolve("promoter")):
        pr = promote(version, params=p, reason="retrain: gates passed and approved")
    return {"champion": version, "reused": False, "release_version": pr.release_version,
            "previous": pr.previous, "approvers": pr.approvers}


def pending_promotions(p: Params) -> dict[str, Any] | None:
    """Promote a version approved since the last run (the retrain's first step)."""
    try:
        with use_identity(resolve("promoter")):
            pr = promote_ready(p)
    except Exception as e:  # noqa: BLE001 - a pickup must not stop a retrain; say why
        return {"error": str(e)[:500]}
    return None if pr is None else {"version": pr.version, "release_version": pr.release_version}
