"""What the registry holds now, per candidate version, and the retrain flow's hand-off.

`registry_status` is the table `wallwm registry status` prints. Approvals are counted with the
bundle hash the version was registered with (no download); `wallwm promote` downloads and
verifies the bundle again before it counts them.

The retrain flow ends once a version is registered and gated: `awaiting_approval` says what
the run leaves behind (the flow returns it in a Completed state named "AwaitingApproval"), and a
later run, or `wallwm promote`, picks it up: `ready_to_promote` lists the versions whose
approvals now hold and `promote_ready` promotes the newest of them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from components.registry import names as N
from components.registry.approvals import judge, read_decisions
from components.registry.versions import (
    list_candidates,
    promoted_from,
    release_by_alias,
)
from wallwm.config.schema import Params


@dataclass
class VersionRow:
    version: int
    created: str
    state: str
    gates: str
    approvals: str
    rejected_by: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    bundle: str = ""
    failed_gates: list[str] = field(default_factory=list)
    approvers: list[str] = field(default_factory=list)
    not_counted: list[str] = field(default_factory=list)


def _released(client, names: N.ModelNames) -> dict[int, list[str]]:
    """candidate version -> release aliases (and 'released vN') of the copies made of it."""
    out: dict[int, list[str]] = {}
    for alias in (N.CHAMPION_ALIAS, N.PREVIOUS_ALIAS):
        mv = release_by_alias(client, names, alias)
        src = promoted_from(mv) if mv is not None else None
        if src and src[0] == names.candidates:
            out.setdefault(src[1], []).append(f"{alias} ({names.release} v{mv.version})")
    return out


def champion_warning(client, names: N.ModelNames) -> str | None:
    """Say so when `champion` points at a version `wallwm promote` did not make (a reviewer's
    direct alias edit: the server allows it to reviewers, our rules and audit never saw it)."""
    mv = release_by_alias(client, names, N.CHAMPION_ALIAS)
    if mv is None or (mv.tags or {}).get(N.PREFIX + "promotion"):
        return None
    return (f"{names.release} version {mv.version} holds `champion` without a promotion record: "
            "it was moved outside `wallwm promote` (no gates, approvals or audit checked it)")


def registry_status(client, params: Params, embodiment: str | None = None,
                    now: dt.datetime | None = None) -> list[VersionRow]:
    names = N.model_names(params.registry, embodiment)
    now = now or dt.datetime.now(dt.UTC)
    released = _released(client, names)
    decisions, unreadable = read_decisions(client, names.release, names.candidates)
    rows = []
    for cv in list_candidates(client, names):
        mine = [d for d in decisions if d.version == cv.version]
        v = judge(mine, candidates_model=names.candidates, version=cv.version,
                  bundle_sha256=cv.bundle_sha256, reviewers=N.reviewers(params.registry),
                  lineage_users=cv.lineage_users, required=params.registry.approvals_required,
                  max_age=dt.timedelta(hours=params.registry.max_approval_age_hours), now=now,
                  unreadable=[u for u in unreadable if f".v{cv.version}." in u[0]])
        failed = [g.name for g in cv.failed_gates]
        aliases = list(cv.aliases) + released.get(cv.version, [])
        if any(a.startswith(N.CHAMPION_ALIAS) for a in aliases):
            state = "champion"
        elif v.rejections:
            state = "rejected"
        elif failed or not cv.gates:
            state = "gates failed"
        elif any(a.startswith(N.PREVIOUS_ALIAS) for a in aliases):
            state = "previous"
        elif v.ok:
            state = "approved: ready to promote"
        else:
            state = "awaiting approval"
        created = dt.datetime.fromtimestamp(cv.created_ms / 1000, dt.UTC)
        rows.append(VersionRow(
            cv.version, created.strftime("%Y-%m-%d %H:%M"), state,
            "pass" if cv.gates and not failed else "FAIL: " + ",".join(failed or ["none ran"]),
            f"{len(v.approvers)}/{v.required}", sorted({d.reviewer for d in v.rejections}),
            aliases, (cv.bundle_sha256 or "")[:12], failed, v.approvers,
            [f"{why} ({rule})" for _, rule, why in v.void]))
    return rows


@dataclass
class AwaitingApproval:
    """What a retrain run leaves behind when its candidate passed the gates."""

    candidates_model: str
    version: int
    approvals_required: int
    reviewers: list[str]
    message: str


def awaiting_approval(registration, params: Params) -> AwaitingApproval:
    """The flow's end state for a registered candidate (`registration`: register_candidate's)."""
    revs = N.reviewers(params.registry)
    if registration.passed:
        msg = (f"{registration.model} version {registration.version} passed every gate and "
               f"awaits {params.registry.approvals_required} approval(s) by {revs or 'reviewers'}"
               f": `wallwm approve {registration.version} --comment ...`, then "
               f"`wallwm promote {registration.version}` (or the next retrain promotes it)")
    else:
        msg = (f"{registration.model} version {registration.version} failed gates and cannot "
               f"be promoted: {registration.reason()}")
    return AwaitingApproval(registration.model, registration.version,
                            params.registry.approvals_required, revs, msg)


def ready_to_promote(client, params: Params, embodiment: str | None = None) -> list[VersionRow]:
    return [r for r in registry_status(client, params, embodiment)
            if r.state == "approved: ready to promote"]


def promote_ready(params: Params, client=None, embodiment: str | None = None):
    """Promote the newest approved version (as the caller: use the promoter identity);
    None when no version is ready."""
    from mlflow import MlflowClient

    from components.registry.promotion import promote

    client = client or MlflowClient()
    ready = ready_to_promote(client, params, embodiment)
    if not ready:
        return None
    return promote(ready[-1].version, params=params, client=client, embodiment=embodiment,
                   reason="approved while awaiting: picked up by a later run")
