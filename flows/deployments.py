"""The retrain's deployments, schedules and triggers, declared from `params.yaml` (`schedule:`).

One deployment, `retrain/wallwm-retrain` (the flow `flows.retrain.retrain`), carries every way
a retrain starts:

- `nightly`: a cron schedule (`schedule.nightly.cron`, in `schedule.nightly.timezone`);
- `on-data-build`: a trigger on the event `wallwm.data.build.completed` that a data build
  emits (`emit_build_completed`), for a new build made outside a retrain; the retrain gets that
  build's `--params`, `--set` and sources, so its own build step finds the build and reuses it;
- `on-fleet-inbox`: a trigger on `wallwm.fleet.inbox.ready`, which the inbox watcher
  (flows/inbox_watch.py, deployment `inbox-watch/fleet-inbox`, every
  `schedule.on_fleet_inbox.check_every_s`) emits once robots have uploaded
  `min_new_episodes` episodes since the last successful retrain started;
- manual runs with parameters (`wallwm schedule run --set ...`).

Its concurrency limit (`schedule.max_concurrent_retrains`, default 1) is enforced by the Prefect
server whatever started a run: a second one waits in `AwaitingConcurrencySlot` (or is cancelled
with `on_collision: cancel_new`). One deployment rather than one per trigger because Prefect
3.8's deployment limit belongs to its deployment: the server can attach one global
concurrency limit to several deployments (`global_concurrency_limit_id`), but deleting or
re-applying any of them deletes that shared limit. Declared in code rather than `prefect.yaml`
because the cron, the thresholds and the work pool come from the validated `params.yaml`
(`prefect.yaml` cannot read it); `wallwm schedule apply` (or `python -m flows.deployments`)
creates or updates both deployments, and the work pool if it is missing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RETRAIN_FLOW = "retrain"  # flows.retrain.retrain.name
RETRAIN_DEPLOYMENT = "wallwm-retrain"
WATCH_FLOW = "inbox-watch"  # flows.inbox_watch.inbox_watch.name
WATCH_DEPLOYMENT = "fleet-inbox"
BUILD_EVENT = "wallwm.data.build.completed"
INBOX_EVENT = "wallwm.fleet.inbox.ready"
NIGHTLY, ON_BUILD, ON_INBOX, WATCHER = "nightly", "on-data-build", "on-fleet-inbox", "inbox-watch"


def full_name(flow: str, deployment: str) -> str:
    return f"{flow}/{deployment}"


def _from_event(key: str) -> dict[str, Any]:
    """A deployment parameter filled from the triggering event's payload (JSON, not a string)."""
    template = "{{ event.payload." + key + " | tojson }}"
    return {"__prefect_kind": "json", "value": {"__prefect_kind": "jinja", "template": template}}


def retrain_deployment(p: Any, pool_type: str = "process") -> Any:
    """The retrain deployment: nightly schedule, both triggers, the concurrency limit."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.events import DeploymentEventTrigger
    from prefect.flows import EntrypointType
    from prefect.schedules import Cron

    from flows.retrain import retrain

    s = p.schedule
    params = {"params_files": list(s.params_files), "sets": list(s.sets)}
    strategy = {"enqueue": ConcurrencyLimitStrategy.ENQUEUE,
                "cancel_new": ConcurrencyLimitStrategy.CANCEL_NEW}[s.on_collision]
    triggers = [
        DeploymentEventTrigger(
            name=ON_BUILD, enabled=s.on_data_build.active, expect={BUILD_EVENT},
            match={"prefect.resource.id": "wallwm.data.build.*", "wallwm.build.reused": "false",
                   "wallwm.build.standalone": "true"},
            description="retrain on a new data build made outside a retrain",
            parameters={"params_files": _from_event("retrain_params_files"),
                        "sets": _from_event("retrain_sets")}),
        DeploymentEventTrigger(
            name=ON_INBOX, enabled=s.on_fleet_inbox.active, expect={INBOX_EVENT},
            match={"prefect.resource.id": "wallwm.fleet-inbox.*"},
            description=f"retrain once {s.on_fleet_inbox.min_new_episodes} new episodes are "
                        "in the fleet inbox", parameters=params),
    ]
    return retrain.to_deployment(
        name=RETRAIN_DEPLOYMENT,
        schedules=[Cron(s.nightly.cron, timezone=s.nightly.timezone, active=s.nightly.active,
                        parameters=params, slug=NIGHTLY)],
        triggers=triggers, parameters=params,
        concurrency_limit=ConcurrencyLimitConfig(limit=s.max_concurrent_retrains,
                                                 collision_strategy=strategy),
        description="The end-to-end retrain (flows/retrain.py): nightly, on a new data build, "
                    "on a full fleet inbox, or by hand (`wallwm schedule run`).",
        tags=["wallwm", "retrain"], entrypoint_type=EntrypointType.MODULE_PATH,
        job_variables=job_variables(pool_type))


def watcher_deployment(p: Any, pool_type: str = "process") -> Any:
    """The inbox watcher on its interval; one tick at a time (a late one is dropped)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.flows import EntrypointType
    from prefect.schedules import Interval

    from flows.inbox_watch import inbox_watch

    s = p.schedule
    params = {"params_files": list(s.params_files), "sets": list(s.sets)}
    return inbox_watch.to_deployment(
        name=WATCH_DEPLOYMENT,
        schedules=[Interval(s.on_fleet_inbox.check_every_s, active=s.on_fleet_inbox.active,
                            parameters=params, slug=WATCHER)],
        parameters=params,
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        description="Counts new fleet-inbox episodes; emits wallwm.fleet.inbox.ready at "
                    f"{s.on_fleet_inbox.min_new_episodes}.",
        tags=["wallwm", "inbox"], entrypoint_type=EntrypointType.MODULE_PATH,
        job_variables=job_variables(pool_type))


# The loggers whose records join the flow run's logs in Prefect (Lightning's and Ray's, also from
# Ray Train workers: components/compute/ray_train.py forwards those)
EXTRA_LOGGERS = "lightning.pytorch,ray"
IMAGE_PROJECT_DIR = "/opt/wallwm"  # the project in the image (infra/compose/wallwm.Dockerfile)


def job_variables(pool_type: str) -> dict[str, Any]:
    """What every flow run of ours needs from its infrastructure: Lightning's and Ray's logs in
    Prefect."""
    return {"env": {"PREFECT_LOGGING_EXTRA_LOGGERS": EXTRA_LOGGERS}}


def code_storage(pool_type: str) -> Any:
    """Where a flow run finds the project: this checkout for a process pool (its pull step
    changes into it, and no code is copied), the image's project folder elsewhere.

    Without storage Prefect 3.8 copies the folder `apply` ran in into the run's workspace.
    """
    from prefect.runner.storage import LocalStorage

    from components.stack.home import project_root

    return LocalStorage(str(project_root()) if pool_type == "process" else IMAGE_PROJECT_DIR)


def ensure_work_pool(name: str, kind: str = "process") -> str:
    """The pool's type, after creating it (as `kind`) when it does not exist."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(name).type
        except ObjectNotFound:
            pass
        try:
            return client.create_work_pool(WorkPoolCreate(name=name, type=kind)).type
        except ObjectAlreadyExists:  # created meanwhile by a worker starting up
            return client.read_work_pool(name).type


def apply_deployments(p: Any, work_pool: str | None = None) -> dict[str, str]:
    """Create or update both deployments (and a missing work pool, as a process pool); returns
    name -> deployment id.

    Schedules, triggers and their on/off state come from params: what `wallwm schedule pause`
    changed since is reset.
    """
    pool = work_pool or p.schedule.work_pool
    kind = ensure_work_pool(pool)
    out = {}
    for dep in (retrain_deployment(p, kind), watcher_deployment(p, kind)):
        dep.storage = code_storage(kind)
        out[full_name(dep.flow_name, dep.name)] = str(dep.apply(work_pool_name=pool))
    return out


# ----------------------------------------------------------------------------- the events
def emit_build_completed(build_id: str, build_dir: str | Path, reused: bool,
                         params_files: list[str] | None, sets: list[str] | None,
                         sources: list[str], counts: dict[str, Any]) -> Any:
    """Emit `wallwm.data.build.completed` for a finished data build (what `on-data-build`
    listens to). The payload carries what a retrain needs to find this very build: the build's
    `--params` (absolute paths), `--set` and its sources."""
    from prefect.context import FlowRunContext
    from prefect.events import emit_event

    ctx = FlowRunContext.get()
    standalone = not (ctx and ctx.flow_run and ctx.flow_run.parent_task_run_id)  # not a subflow
    files = [str(Path(f).resolve()) for f in params_files or []]
    return emit_event(
        event=BUILD_EVENT,
        resource={"prefect.resource.id": f"wallwm.data.build.{build_id}",
                  "prefect.resource.name": build_id,
                  "wallwm.build.reused": str(bool(reused)).lower(),
                  "wallwm.build.standalone": str(standalone).lower()},
        payload={"build_id": build_id, "build_dir": str(build_dir), "counts": counts,
                 "sources": list(sources), "retrain_params_files": files,
                 "retrain_sets": [*(sets or []), f"data.sources={json.dumps(list(sources))}"]},
    )


def emit_inbox_ready(bucket: str, prefix: str, new_entries: int, new_episodes: int,
                     since: str | None, fleets: list[str]) -> Any:
    """Emit `wallwm.fleet.inbox.ready` (what `on-fleet-inbox` listens to)."""
    from prefect.events import emit_event

    return emit_event(
        event=INBOX_EVENT,
        resource={"prefect.resource.id": f"wallwm.fleet-inbox.{bucket}.{prefix}",
                  "prefect.resource.name": f"s3://{bucket}/{prefix}"},
        payload={"new_entries": new_entries, "new_episodes": new_episodes, "since": since,
                 "fleets": fleets},
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.deployments [--params F] [--set k=v] [--work-pool P]`: apply them."""
    import argparse

    from components.stack import require_stack

    require_stack(("prefect",))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", action="append", default=[])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--work-pool", default=None)
    a = ap.parse_args(argv)
    from wallwm.config import load_params

    p = load_params(extra_files=a.params, sets=a.sets)
    for name, dep_id in apply_deployments(p, a.work_pool).items():
        print(f"{name}: {dep_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
