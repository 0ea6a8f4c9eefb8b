"""The end-to-end retrain: the one flow `make run` runs, and what the schedules deploy.

    health -> data build -> train -> evaluate -> distill -> export (+ runtime evaluation)
           -> register (gates) -> approval -> promote -> release (canary + channel) -> rollout

Each stage is its own flow (flows/<stage>.py) or a plain function of components/; this file
only wires them, names the run after the data build, times and reports every stage, and
writes a Prefect markdown artifact with links to every MLflow run, the gates and the rollout.

Reuse: every stage finds its own earlier result by its inputs (data: the content-addressed
build id; train: the run name from build id + params hash, complete; evaluate, distill,
export: a hash of model URI, settings and code; register: the bundle's sha256; promote: the
champion alias; release: TUF targets are idempotent per version; rollout: robots already on
the version). A rerun with nothing changed trains nothing and the summary says which stages
were reused. A failure raises `StageFailed` naming the stage; what earlier stages produced
stays in MLflow, DVC and `<WALLWM_HOME>`, so the next run picks up from there.

Approval: without a recorded approval the run ends in the named state `AwaitingApproval`
(a Completed state, not a paused run: approval may take days and a paused run would hold its
worker and infrastructure; the approval lives in MLflow, so `wallwm promote VERSION` or the
next retrain (which promotes approved versions first) picks it up). `profiles/demo.yaml`
(make run) lets the local demo reviewer approve, clearly labelled.

`python -m flows.retrain [--params FILE] [--set k=v ...]` runs it too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, State
from rich.console import Console

from components.stack import load_stack_env
from flows.build_dataset import build_dataset
from flows.health import stack_health
from flows.train import train
from wallwm.config import load_params
from wallwm.config.schema import Params

STAGES = ("health", "data", "train", "evaluate", "distill_export", "register", "approve",
          "promote", "release")


class StageFailed(RuntimeError):
    """A retrain stage failed; `stage` names it, the cause is chained."""

    def __init__(self, stage: str, cause: BaseException):
        self.stage = stage
        super().__init__(f"retrain stage `{stage}` failed: {type(cause).__name__}: {cause}")


@dataclass
class Report:
    """What the summary (console and Prefect artifact) says about each stage."""

    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    policy: Any = None  # the run's `retrain:` params: stage time limit and retries

    def add(self, name: str, seconds: float, reused: bool, status: str = "done",
            **info: Any) -> None:
        self.stages[name] = {"seconds": round(seconds, 1), "reused": reused, "status": status,
                             **info}

    @property
    def reused(self) -> list[str]:
        return [k for k, v in self.stages.items() if v["reused"]]


def _run_stage(report: Report, name: str, fn, *args, reused=lambda out: False,
               info=lambda out: {}, **kw) -> Any:
    """Run one stage under `retrain.stage_timeout_s`, retrying transient failures
    (`retrain.stage_retries`; components/retrain/stage_policy.py), timed and reported."""
    from components.retrain.stage_policy import call_with_retries, with_time_limit

    log = get_run_logger()
    log.info("stage %s ...", name)
    r = report.policy or _default_policy()
    t0 = time.perf_counter()
    try:
        out = call_with_retries(
            with_time_limit(fn, r.stage_timeout_s), args, kw, r.stage_retries, r.retry_delay_s,
            lambda n, e: log.warning("stage %s: transient failure (%s: %s); retry %d of %d",
                                     name, type(e).__name__, str(e)[:200], n, r.stage_retries))
    except Exception as e:  # noqa: BLE001 - named, chained, re-raised
        report.add(name, time.perf_counter() - t0, False, "failed", error=str(e)[:500])
        raise StageFailed(name, e) from e
    dt = time.perf_counter() - t0
    was_reused = bool(reused(out))
    report.add(name, dt, was_reused, **info(out))
    log.info("stage %s %s in %.1f s", name, "reused" if was_reused else "done", dt)
    return out


def _default_policy() -> Any:
    from wallwm.config.schema import RetrainParams

    return RetrainParams()


def _rename_flow_run(build_id: str) -> None:
    """The flow run carries the data build id (known only after the data stage)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    fid = flow_run.id
    if not fid:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(fid, name=f"retrain-{build_id[:12]}-{time.strftime('%m%d-%H%M')}")


@flow(name="retrain", log_prints=True)
def retrain(params_files: list[str] | None = None, sets: list[str] | None = None
            ) -> dict[str, Any]:
    """Every stage in order (see the module docstring); returns each stage's result and the
    report. Ends in `AwaitingApproval` when a passing candidate has no approval yet."""
    from components.retrain.register import register_bundle
    from components.retrain.review import approve_for_demo, pending_promotions, promote_version
    from flows.distill_export import after_evaluation
    from flows.evaluate import evaluate_after_training

    log = get_run_logger()
    p = load_params(extra_files=params_files or [], sets=sets or [])
    from prefect.runtime import flow_run

    rep = Report(policy=p.retrain)
    out: dict[str, Any] = {"report": rep, "flow_run_id": str(flow_run.id or "")}
    # approvals recorded since the last run: promote them first (as the promoter)
    out["picked_up"] = pending_promotions(p)
    out["health"] = _run_stage(rep, "health", stack_health, params_files, sets,
                               info=lambda o: {"run_id": o["mlflow"]["run_id"]})
    out["data"] = _run_stage(rep, "data", build_dataset, params_files, sets,
                             reused=lambda o: o["reused"],
                             info=lambda o: {"build_id": o["build_id"],
                                             "run_id": o["mlflow_run_id"],
                                             "episodes": o["counts"]["episodes"]})
    _rename_flow_run(out["data"]["build_id"])
    out["train"] = _run_stage(rep, "train", train, params_files, sets,
                              out["data"]["build_dir"], reused=lambda o: o.get("reused"),
                              info=lambda o: {"run_id": o["mlflow_run_id"],
                                              "model_uri": o.get("model_uri")})
    out["evaluate"] = _run_stage(
        rep, "evaluate", evaluate_after_training, out["train"], p,
        closed_loop_episodes=p.retrain.closed_loop_episodes, reused=lambda o: o["reused"],
        info=lambda o: {"run_id": o["evaluation_run_id"], "headline": o.get("headline")})
    r = p.retrain
    pe = p.model_copy(update={  # the retrain's own episode counts (params: retrain.*)
        "export": p.export if r.runtime_episodes is None else p.export.model_copy(
            update={"runtime_episodes": r.runtime_episodes}),
        "distill": p.distill if r.distill_closed_loop_episodes is None else
        p.distill.model_copy(update={"closed_loop_episodes": r.distill_closed_loop_episodes})})
    out["distill_export"] = _run_stage(
        rep, "distill_export", after_evaluation, out["train"], pe, out["evaluate"],
        reused=lambda o: o["distill"].get("reused") and o["export"].get("reused"),
        info=lambda o: {"run_id": o["export"]["export_run_id"],
                        "distill_run_id": o["distill"]["mlflow_run_id"],
                        "bundle": o["export"]["bundle_dir"]})
    out["register"] = _run_stage(rep, "register", register_bundle, p, out,
                                 reused=lambda o: o["reused"],
                                 info=lambda o: {"model": o["model"], "version": o["version"],
                                                 "passed": o["passed"], "reason": o["reason"]})
    reg = out["register"]
    if not reg["passed"]:
        rep.add("approve", 0, False, "skipped", reason="gates failed")
        return _finish(p, out, "GatesFailed", f"{reg['model']} v{reg['version']} failed gates: "
                       f"{reg['reason']}")
    out["approve"] = _run_stage(rep, "approve", approve_for_demo, p, reg,
                                reused=lambda o: o["reused"],
                                info=lambda o: {"state": o["state"], "by": o.get("by")})
    if not out["approve"]["approved"]:
        return _finish(p, out, "AwaitingApproval", out["approve"]["message"])
    out["promote"] = _run_stage(rep, "promote", promote_version, p, reg,
                                reused=lambda o: o["reused"],
                                info=lambda o: {"champion": o["champion"]})
    if p.retrain.release:
        out["release"] = _run_stage(rep, "release", release_champion, p, out, params_files,
                                    sets, reused=lambda o: o["reused"],
                                    info=lambda o: {"version": o["version"],
                                                    "status": o["status"]})
        if out["release"]["status"] != "complete":
            log.warning("rollout %s: %s", out["release"]["status"], out["release"]["reason"])
    return _finish(p, out, None, "released" if p.retrain.release else "promoted")


def release_champion(p: Params, out: dict[str, Any], params_files: list[str] | None,
                     sets: list[str] | None) -> dict[str, Any]:
    """Publish the promoted bundle to canary + the channel and roll it out (flows/release)."""
    from components.retrain.release import release_result, release_version
    from flows.release import release_flow
    from wallwm.release.bundle import load_manifest

    bundle = out["distill_export"]["export"]["bundle_dir"]
    load_manifest(bundle)  # a bad bundle fails here, before any robot hears of it
    version = release_version(out["register"])
    r = p.retrain
    res = release_flow(bundle, version, fleet=r.fleet, robots=r.fleet_robots,
                       simulate=r.simulate_fleet, timeout_s=r.rollout_timeout_s,
                       params_files=params_files, sets=sets)
    return release_result(version, res)


def _finish(p: Params, out: dict[str, Any], state: str | None, message: str) -> Any:
    """Write the Prefect markdown artifact; a named end state where the run stops early."""
    from components.retrain.summary import markdown_summary

    out["end"] = {"state": state or "Completed", "message": message}
    try:
        create_markdown_artifact(markdown=markdown_summary(out), key="retrain-summary",
                                 description=f"retrain: {message}"[:500])
    except Exception as e:  # noqa: BLE001 - the summary must not fail a finished retrain
        get_run_logger().warning("could not write the summary artifact: %s", e)
    if state is None:
        return out
    return Completed(name=state, message=message[:1000], data=out)


def main(params: list[str] | None = None, sets: list[str] | None = None) -> int:
    from components.stack import require_stack

    require_stack()  # exit 3 with the hint when a service is missing or stale
    load_stack_env()
    from components.retrain.summary import console_summary

    console = Console()
    t0 = time.perf_counter()
    try:
        result = retrain(params or [], sets or [])
        if isinstance(result, State):  # a named end state (AwaitingApproval, GatesFailed)
            result = result.result()
    except StageFailed as e:
        console.print(f"[bold red]retrain failed in stage `{e.stage}`:[/] {e.__cause__}",
                      highlight=False, soft_wrap=True)
        console.print("what earlier stages produced is kept (MLflow, data.dvc, .wallwm/); "
                      "rerun `wallwm retrain` after the fix: they are reused")
        return 1
    console_summary(console, result, time.perf_counter() - t0, _prefect_ui())
    return 0


def _prefect_ui() -> str:
    api = os.environ.get("PREFECT_API_URL", "")
    return api[: -len("/api")] if api.endswith("/api") else (api or "(ephemeral Prefect server)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", action="append", default=[])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    sys.exit(main(a.params, a.sets))
