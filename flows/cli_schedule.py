"""`wallwm schedule apply|list|run|pause|resume`: the retrain's deployments (flows/deployments.py).

`schedule_app` is a Typer app; flows/cli.py registers it with
`app.add_typer(schedule_app, name="schedule")`. `python -m flows.cli_schedule ...` runs it alone.

Names in `pause`/`resume`: `nightly` (the cron schedule), `on-data-build` and `on-fleet-inbox`
(the triggers), `inbox-watch` (the watcher's schedule), or `all`. A pause lasts until the next
`wallwm schedule apply`, which sets everything as params.yaml says.

Exit codes: 0 done; 1 a waited-for run did not complete; 2 bad input (options, parameters, an
unknown name); 3 the stack (Prefect) is not running; 4 the deployments are not applied.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_options import ParamsOpt, SetOpt, params_or_exit
from flows.deployments import (
    NIGHTLY,
    ON_BUILD,
    ON_INBOX,
    RETRAIN_DEPLOYMENT,
    RETRAIN_FLOW,
    WATCH_DEPLOYMENT,
    WATCH_FLOW,
    WATCHER,
    full_name,
)

console = Console()
err = Console(stderr=True)
EXIT_FAILED, EXIT_INPUT, EXIT_STACK, EXIT_MISSING = 1, 2, 3, 4
NAMES = (NIGHTLY, ON_BUILD, ON_INBOX, WATCHER)
RETRAIN, WATCH = full_name(RETRAIN_FLOW, RETRAIN_DEPLOYMENT), full_name(WATCH_FLOW,
                                                                       WATCH_DEPLOYMENT)

schedule_app = typer.Typer(
    help="Deployments of the retrain: the nightly schedule, the data-build and fleet-inbox "
    "triggers, manual runs.", no_args_is_help=True)



def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _params(params: list[Path] | None, sets: list[str] | None) -> Any:
    return params_or_exit(params, sets)


def _require_prefect() -> None:
    """Exit 3 with the hint when Prefect is not reachable (before Prefect is imported)."""
    from components.stack import require_stack

    require_stack(("prefect",))


def _client() -> Any:
    """A Prefect client for the running stack (exit 3 without one)."""
    _require_prefect()
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _deployment(client: Any, name: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise _fail(f"no deployment {name} on {client.api_url}; run `wallwm schedule apply` "
                    "first", EXIT_MISSING) from None


def _automations(client: Any, deployment_id: Any) -> dict[str, Any]:
    return {a.name: a for a in
            client.read_resource_related_automations(f"prefect.deployment.{deployment_id}")}


def _schedule(deployment: Any, slug: str) -> Any:
    for s in deployment.schedules:
        if s.slug == slug:
            return s
    raise _fail(f"deployment {deployment.name} has no schedule {slug!r}; run `wallwm schedule "
                "apply`", EXIT_MISSING)


def _next_run(client: Any, deployment_id: Any, schedule: Any) -> str:
    """The next scheduled run: the server's, else (right after `apply`, before the server's
    scheduler has made the runs) the schedule's own next time."""
    import datetime as dt

    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
    now = dt.datetime.now(dt.UTC)
    if runs:
        when = runs[0].expected_start_time
    elif getattr(schedule, "cron", None):
        from zoneinfo import ZoneInfo

        from cronsim import CronSim

        local = now.astimezone(ZoneInfo(schedule.timezone or "UTC")).replace(microsecond=0)
        when = next(CronSim(schedule.cron, local))
    elif getattr(schedule, "interval", None):
        step = schedule.interval.total_seconds()
        ticks = max(0, -(-(now - schedule.anchor_date).total_seconds() // step))  # ceil
        when = schedule.anchor_date + dt.timedelta(seconds=ticks * step)
    else:
        return "-"
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def rows(client: Any) -> list[dict[str, str]]:
    """One row per schedule and trigger of both deployments, as `list` shows them."""
    dep, watch = _deployment(client, RETRAIN), _deployment(client, WATCH)
    autos = _automations(client, dep.id)
    out = []
    nightly = _schedule(dep, NIGHTLY)
    out.append({"name": NIGHTLY, "deployment": RETRAIN,
                "when": f"cron {nightly.schedule.cron} ({nightly.schedule.timezone or 'UTC'})",
                "state": "active" if nightly.active else "paused",
                "next": _next_run(client, dep.id, nightly.schedule) if nightly.active else "-"})
    for name in (ON_BUILD, ON_INBOX):
        a = autos.get(name)
        if a is None:
            raise _fail(f"deployment {RETRAIN} has no trigger {name!r}; run `wallwm schedule "
                        "apply`", EXIT_MISSING)
        match = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in a.trigger.match.root.items()
                          if k != "prefect.resource.id")
        out.append({"name": name, "deployment": RETRAIN,
                    "when": "event " + " ".join(sorted(a.trigger.expect))
                    + (f" ({match})" if match else ""),
                    "state": "active" if a.enabled else "paused", "next": "on the event"})
    ws = _schedule(watch, WATCHER)
    out.append({"name": WATCHER, "deployment": WATCH,
                "when": f"every {int(ws.schedule.interval.total_seconds())} s",
                "state": "active" if ws.active else "paused",
                "next": _next_run(client, watch.id, ws.schedule) if ws.active else "-"})
    out.append({"name": "manual", "deployment": RETRAIN,
                "when": "wallwm schedule run [--set k=v]", "state": "-", "next": "-"})
    return out


def _limit(dep: Any) -> str:
    gcl = dep.global_concurrency_limit
    if gcl is None:
        return "no concurrency limit"
    strategy = getattr(dep.concurrency_options, "collision_strategy", None)
    how = getattr(strategy, "value", strategy) or "ENQUEUE"
    return (f"at most {gcl.limit} retrain(s) at a time ({how.lower()}); "
            f"{gcl.active_slots} running now")


@schedule_app.command("apply")
def apply_cmd(params: ParamsOpt = None, set_: SetOpt = None,
              work_pool: Annotated[str | None, typer.Option(
                  help="work pool (default: schedule.work_pool)")] = None) -> None:
    """Create or update the deployments from params.yaml (`schedule:`)."""
    p = _params(params, set_)
    _require_prefect()
    from flows.deployments import apply_deployments

    for name, dep_id in apply_deployments(p, work_pool).items():
        console.print(f"applied {name} ({dep_id}) on work pool "
                      f"{work_pool or p.schedule.work_pool}")


@schedule_app.command("list")
def list_cmd() -> None:
    """Every schedule and trigger: what it waits for, whether it is on, the next run."""
    with _client() as client:
        table_rows = rows(client)
        limit = _limit(_deployment(client, RETRAIN))
    t = Table(title="wallwm schedules")
    for col in ("name", "when", "state", "next"):
        t.add_column(col, no_wrap=col != "when", overflow="fold")
    for r in table_rows:
        t.add_row(*(r[c] for c in ("name", "when", "state", "next")))
    console.print(t)
    for dep in (RETRAIN, WATCH):
        names = ", ".join(r["name"] for r in table_rows if r["deployment"] == dep)
        console.print(f"deployment {dep}: {names}", highlight=False)
    console.print(f"concurrency: {limit}", highlight=False)


@schedule_app.command("run")
def run_cmd(params: ParamsOpt = None, set_: SetOpt = None,
            wait: Annotated[bool, typer.Option(help="wait for the run to end")] = False) -> None:
    """Start a retrain now through the deployment (it waits for a free slot like the others)."""
    _params(params, set_)  # fail fast on a bad configuration
    files = [str(Path(f).resolve()) for f in params or []]
    with _client() as client:
        from prefect.client.schemas.objects import StateType

        dep = _deployment(client, RETRAIN)
        fr = client.create_flow_run_from_deployment(
            dep.id, parameters={"params_files": files, "sets": list(set_ or [])},
            tags=["manual"])
        api = str(client.api_url).rstrip("/")
        ui = api[: -len("/api")] if api.endswith("/api") else api
        console.print(f"flow run {fr.name} ({fr.id}): {ui}/runs/flow-run/{fr.id}")
        if not wait:
            return
        final = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
        state = fr.state
        while state is None or state.type not in final:
            time.sleep(3)
            state = client.read_flow_run(fr.id).state
        console.print(f"{fr.name}: {state.name}")
        if state.type != StateType.COMPLETED:
            raise typer.Exit(EXIT_FAILED)


def _set_active(client: Any, name: str, active: bool) -> None:
    if name in (NIGHTLY, WATCHER):
        dep = _deployment(client, RETRAIN if name == NIGHTLY else WATCH)
        s = _schedule(dep, name)
        client.update_deployment_schedule(dep.id, s.id, active=active)
        return
    dep = _deployment(client, RETRAIN)
    a = _automations(client, dep.id).get(name)
    if a is None:
        raise _fail(f"deployment {RETRAIN} has no trigger {name!r}; run `wallwm schedule apply`",
                    EXIT_MISSING)
    (client.resume_automation if active else client.pause_automation)(a.id)


def _toggle(name: str, active: bool) -> None:
    names = NAMES if name == "all" else (name,)
    if name != "all" and name not in NAMES:
        raise _fail(f"unknown schedule or trigger {name!r}; one of {', '.join(NAMES)}, all",
                    EXIT_INPUT)
    with _client() as client:
        for n in names:
            _set_active(client, n, active)
            console.print(f"{n}: {'active' if active else 'paused'}")


@schedule_app.command("pause")
def pause_cmd(name: Annotated[str, typer.Argument(
        help=f"{', '.join(NAMES)} or all")]) -> None:
    """Stop a schedule or trigger from starting retrains (until resumed or re-applied)."""
    _toggle(name, False)


@schedule_app.command("resume")
def resume_cmd(name: Annotated[str, typer.Argument(
        help=f"{', '.join(NAMES)} or all")]) -> None:
    """Let a paused schedule or trigger start retrains again."""
    _toggle(name, True)


if __name__ == "__main__":
    schedule_app()
