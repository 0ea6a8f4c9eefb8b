"""`wallwm approve | reject | promote` and `wallwm registry status | audit`.

flows/cli.py registers them: the three decisions as top-level commands (`approve_cmd`,
`reject_cmd`, `promote_cmd`) and `registry_app` as the `registry` group. Every command loads
the local stack's addresses (or uses `MLFLOW_TRACKING_URI`) and authenticates as its role
(components/registry/identity.py): approve/reject as the caller's own account
(`MLFLOW_TRACKING_USERNAME`/`PASSWORD`), promote as the caller or else the stack's promoter,
status/audit as the caller or else the stack's pipeline account. A refusal exits 1 and names
the rule; a bad configuration exits 2; no MLflow exits 3.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_options import ParamsOpt, SetOpt, params_or_exit
from wallwm.config import Params

registry_app = typer.Typer(help="The model registry: candidate versions with their gates, "
                           "approvals and aliases, and the audit log.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

EmbodimentOpt = Annotated[str | None, typer.Option(
    "--embodiment", help="Which embodiment's models (default: the only one in "
    "registry.embodiments).")]
VersionArg = Annotated[str, typer.Argument(help="Version number in the candidates model.")]
CommentOpt = Annotated[str, typer.Option("--comment", help="Why (kept with the decision).")]


def _setup(params: list[Path] | None, sets: list[str] | None, role: str,
           demo: bool = False) -> Params:
    """Configuration, the stack's MLflow address, and the role's credentials."""
    p = params_or_exit(params, sets)
    from components.registry import RegistryError, apply_identity, resolve
    from components.stack import require_stack

    require_stack(["mlflow"])  # exit 3 with the hint when MLflow is not there
    try:
        apply_identity(resolve(role, demo=demo, demo_allowed=p.registry.demo_reviewer))
    except RegistryError as e:
        raise _fail(e) from None
    return p


def _fail(e: Exception) -> typer.Exit:
    err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _decide(decision: str, version: str, comment: str, params, set_, embodiment,
            demo: bool) -> None:
    p = _setup(params, set_, "reviewer", demo=demo)
    from components.registry import RegistryError, record_decision

    try:
        r = record_decision(decision, version, comment, params=p, embodiment=embodiment)
    except (RegistryError, ValueError) as e:
        raise _fail(e) from None
    d = r.decision
    console.print(f"{d.decision}d {d.candidates_model} version {d.version} as {d.reviewer} "
                  f"(bundle {d.bundle_sha256[:12]}...); tag {r.tag} on {r.release_model}; "
                  f"{r.audit}", highlight=False)


def approve_cmd(
    version: VersionArg,
    comment: CommentOpt,
    embodiment: EmbodimentOpt = None,
    demo_reviewer: Annotated[bool, typer.Option(
        "--demo-reviewer", help="Act as the local demo reviewer (registry.demo_reviewer).")]
    = False,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Approve a candidate version as yourself (MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    _decide("approve", version, comment, params, set_, embodiment, demo_reviewer)


def reject_cmd(
    version: VersionArg,
    comment: CommentOpt,
    embodiment: EmbodimentOpt = None,
    demo_reviewer: Annotated[bool, typer.Option(
        "--demo-reviewer", help="Act as the local demo reviewer (registry.demo_reviewer).")]
    = False,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Reject a candidate version for good, as yourself."""
    _decide("reject", version, comment, params, set_, embodiment, demo_reviewer)


def promote_cmd(
    version: VersionArg,
    reason: Annotated[str, typer.Option("--reason", help="Why now (kept in the audit).")] = "",
    embodiment: EmbodimentOpt = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Move `champion` to an approved version (the old one becomes `previous`)."""
    p = _setup(params, set_, "promoter")
    from components.registry import RegistryError, promote

    try:
        r = promote(version, params=p, embodiment=embodiment, reason=reason)
    except RegistryError as e:
        raise _fail(e) from None
    prev = f"; previous: version {r.previous}" if r.previous is not None else ""
    console.print(f"{r.candidates_model} version {r.version} is the champion: {r.release_model} "
                  f"version {r.release_version} (approved by {', '.join(r.approvers)}){prev}; "
                  f"{r.audit}", highlight=False)


@registry_app.command("status")
def status_cmd(
    embodiment: EmbodimentOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Every candidate version with its gates, approvals, aliases and state."""
    p = _setup(params, set_, "pipeline")
    from dataclasses import asdict

    from mlflow import MlflowClient

    from components.registry import RegistryError, model_names, registry_status

    try:
        rows = registry_status(MlflowClient(), p, embodiment)
        names = model_names(p.registry, embodiment)
    except RegistryError as e:
        raise _fail(e) from None
    if as_json:
        sys.stdout.write(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
        return
    t = Table(title=f"{names.candidates} -> {names.release} "
              f"({p.registry.approvals_required} approval(s) required)")
    for col in ("version", "created (UTC)", "state", "gates", "approvals", "rejected by",
                "aliases", "bundle"):
        t.add_column(col)
    for r in rows:
        appr = r.approvals + (f" {', '.join(r.approvers)}" if r.approvers else "")
        t.add_row(str(r.version), r.created, r.state, r.gates, appr, ", ".join(r.rejected_by),
                  ", ".join(r.aliases), r.bundle)
    console.print(t)
    from components.registry.status import champion_warning

    if warning := champion_warning(MlflowClient(), names):
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    for r in rows:
        for why in r.not_counted:
            console.print(f"  version {r.version}: not counted: {why}", highlight=False)


@registry_app.command("audit")
def audit_cmd(
    embodiment: EmbodimentOpt = None,
    limit: Annotated[int, typer.Option(help="Show the newest N entries (0 = all).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")]
    = False,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """The audit log: every registration, decision and promotion attempt, refused ones too."""
    p = _setup(params, set_, "pipeline")
    from mlflow import MlflowClient

    from components.registry import AuditLog, RegistryError, model_names

    try:
        names = model_names(p.registry, embodiment)
    except RegistryError as e:
        raise _fail(e) from None
    entries = AuditLog(MlflowClient(), p.registry.audit_experiment, names.release).entries()
    if limit > 0:
        entries = entries[-limit:]
    if as_json:
        sys.stdout.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
        return
    t = Table(title=f"audit log of {names.release} ({len(entries)} entries)")
    for col in ("time (UTC)", "user", "action", "version", "outcome", "rule / detail"):
        t.add_column(col)
    for e in entries:
        detail = e.get("rule", "")
        if e.get("reason"):
            detail = f"{detail}: {e['reason']}" if detail else e["reason"]
        elif e.get("release_version"):
            prev = e.get("previous_release_version")
            detail = (f"release v{e['release_version']}, previous "
                      f"{f'v{prev}' if prev is not None else 'none'}, approvers "
                      f"{', '.join(e.get('approvers', []))}")
        elif e.get("comment"):
            detail = f"{e['comment']!r} (bundle {str(e.get('bundle_sha256', ''))[:12]})"
        t.add_row(e.get("time", "")[:19].replace("T", " "), str(e.get("user", "")),
                  str(e.get("action", "")), str(e.get("version", "")), str(e.get("outcome", "")),
                  detail[:300])
    console.print(t)
