"""Build a versioned dataset: sources -> Ray (load + probe) -> GX validation -> LeRobot v3.0
build folder (content-addressed) -> `data/` + `data.dvc` (+ push) -> MLflow lineage.

`wallwm data build --sources sim:episodes=20` runs it; `python -m flows.build_dataset` too.
An unchanged input and unchanged parameters reuse the existing build (no rework); an
interrupted build leaves the previous build and `data.dvc` untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import State
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from components.compute.parallel import ordered_map
from components.stack.home import credentials, project_root, wallwm_home
from components.tracking import log_build, start_run
from components.tracking.datasets import log_failed_build
from components.validation import validate_tables
from components.versioning import configure_remotes, dvc_add, dvc_push
from flows.deployments import emit_build_completed
from wallwm.config import load_params
from wallwm.config.schema import DataParams, Params
from wallwm.data.build import (
    BuildFailedError,
    BuildPlan,
    assemble,
    failed_dir,
    keep_failed,
    load_unit,
    make_plan,
)
from wallwm.data.build.publish import publish
from wallwm.util.atomic import atomic_dir


def gx_validator(staging: Path, episodes: pd.DataFrame, frames: pd.DataFrame, run_name: str):
    """Adapter from the GX report to what the assembler takes: failures per episode + summary."""
    report = validate_tables(staging, episodes, frames, run_name=run_name)
    failed = {k: [asdict(f) for f in v] for k, v in report.failed_episodes().items()}
    for fails in failed.values():
        for f in fails:  # the frame table stores NaN for both NaN and inf (tiers.probe)
            if f["value"] is None and f["rule"].startswith("frames.not_null"):
                f["value"] = "NaN or inf"
    return failed, {"run": run_name, "success": report.success, "suites": report.suites}


# Deterministic failures: the same inputs and code fail the same way again, so a retry only adds
# a traceback (a bad spec or input is a ValueError; a build where every episode was quarantined
# is a BuildFailedError). Everything else (a lost Ray worker, a full disk) may be transient.
DETERMINISTIC = (BuildFailedError, ValueError)


def retry_unless_deterministic(task: Any, task_run: Any, state: State) -> bool:
    """Prefect `retry_condition_fn`: retry only errors that are not deterministic."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - unreadable state: let the retry policy decide
            return True
    return not isinstance(exc, DETERMINISTIC)


@task(name="plan-build", retries=1, cache_policy=NO_CACHE,  # fingerprints must be fresh
      retry_condition_fn=retry_unless_deterministic)
def plan_build(specs: list[str], data: DataParams) -> BuildPlan:
    plan = make_plan(specs, data)
    get_run_logger().info("build %s: %d units from %s", plan.build_id, len(plan.units), specs)
    return plan


# The content-addressed folder is the cache: it is checked on disk, so a deleted build is rebuilt
# (a Prefect result cache would claim a build that is gone).
@task(name="materialize-build", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_deterministic)
def materialize(plan: BuildPlan, builds_root: Path, workers: int) -> tuple[Path, bool]:
    """Run the build into the content-addressed folder, or reuse it if it is already there.

    A build where every episode fails leaves no build folder; its quarantine and manifest are
    kept in `<builds>/failed/<build id>/` and the BuildFailedError says so."""
    log = get_run_logger()
    final = builds_root / plan.build_id
    if (final / "manifest.json").exists():
        log.info("build %s exists: reused, nothing recomputed", plan.build_id)
        return final, True
    params_json = plan.params.model_dump_json()
    args = [(u.spec, params_json, u.unit_id, u.key) for u in plan.units]
    total = len(args)
    with atomic_dir(final) as staging, Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), transient=not sys.stdout.isatty(),
    ) as bar:
        job = bar.add_task(f"build {plan.build_id}", total=total)
        step = max(1, total // 10)

        def progress(res) -> None:
            bar.advance(job)
            done = bar.tasks[0].completed
            if done % step == 0 or done == total:
                log.info("episodes done: %d/%d", done, total)

        results = ordered_map(load_unit, args, workers)
        try:
            result = assemble(plan, results, staging, gx_validator, progress=progress)
        except BuildFailedError as e:
            kept = keep_failed(staging, failed_dir(builds_root, plan.build_id))
            raise BuildFailedError(
                f"{e}; the quarantine and manifest are in {kept}/ (quarantine.jsonl, "
                "manifest.json, gx/ Data Docs)", build_id=e.build_id, records=kept,
                manifest=e.manifest) from None
        c = result.manifest["counts"]
        log.info("build %s: %d episodes, %d frames, %d quarantined", plan.build_id,
                 c["episodes"], c["frames"], c["quarantined"])
    return final, False


@task(name="publish-and-pin", retries=2, retry_delay_seconds=3, cache_policy=NO_CACHE)
def publish_and_pin(build_dir: Path, repo: Path, p: Params, push: bool) -> dict[str, Any]:
    """Swap the build into `data/`, `dvc add` it (data.dvc) and push to the chosen remote."""
    log = get_run_logger()
    home = wallwm_home()
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    key, secret = (os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"))
    if endpoint and not key and (home / "s3-credentials").exists():
        key, secret = credentials(home)
    configure_remotes(repo, home / "dvc-remote", endpoint, key, secret, p.services.s3.region)
    changed = publish(build_dir, repo / p.data.output_dir)
    md5 = dvc_add(repo, p.data.output_dir)
    out = {"dvc_md5": md5, "data_changed": changed, "pushed_to": None}
    if push:
        dvc_push(repo, p.data.dvc_remote, f"{p.data.output_dir}.dvc")
        out["pushed_to"] = p.data.dvc_remote
    log.info("data.dvc md5 %s (%s)%s", md5, "updated" if changed else "unchanged",
             f", pushed to {p.data.dvc_remote}" if push else "")
    return out


@flow(name="build-dataset", log_prints=True)
def build_dataset(
    params_files: list[str] | None = None,
    sets: list[str] | None = None,
    sources: list[str] | None = None,
    repo: str | None = None,
) -> dict[str, Any]:
    """The data stage: returns the build id, its folder, the DVC md5 and the MLflow run id.

    `repo` (or `$WALLWM_DVC_REPO`) is the DVC repository that receives `data.dvc`; default: this
    project.
    """
    p = load_params(extra_files=params_files or [], sets=sets or [])
    specs = sources or p.data.sources
    repo_dir = Path(repo or os.environ.get("WALLWM_DVC_REPO") or project_root())
    plan = plan_build(specs, p.data)
    t0 = time.perf_counter()
    try:
        build_dir, reused = materialize(plan, wallwm_home() / "builds", p.data.workers)
    except BuildFailedError as e:
        raise _logged_failure(p, e) from None
    build_seconds = time.perf_counter() - t0
    pin = publish_and_pin(build_dir, repo_dir, p, p.data.push)
    manifest = json.loads((build_dir / "manifest.json").read_text())
    episodes = pd.read_parquet(build_dir / "episodes.parquet")
    with start_run(p.project.experiment, f"data-build-{plan.build_id}",
                   tags={"wallwm.stage": "data", "wallwm.build_reused": str(reused),
                         "wallwm.build_status": "ok"}) as run:
        log_build(build_dir, manifest, episodes, pin["dvc_md5"],
                  source=str(repo_dir / p.data.output_dir))
        if not reused:
            mlflow.log_metric("build_seconds", build_seconds)
        mlflow.log_metric("build_reused", int(reused))
    emit_build_completed(plan.build_id, build_dir, reused, params_files, sets, specs,
                         manifest["counts"])  # the retrain deployment's on-data-build trigger
    return {"build_id": plan.build_id, "build_dir": str(build_dir), "reused": reused,
            "counts": manifest["counts"], "mlflow_run_id": run.info.run_id, **pin}


def _logged_failure(p: Params, e: BuildFailedError) -> BuildFailedError:
    """Log a failed build's records into the data build's MLflow run; the error to raise says
    where both are (an unreachable MLflow does not hide the build's own error)."""
    try:
        with start_run(p.project.experiment, f"data-build-{e.build_id}",
                       tags={"wallwm.stage": "data", "wallwm.build_status": "failed"}) as run:
            if e.records is not None:
                log_failed_build(e.records, e.manifest)
        where = f"; logged to MLflow run {run.info.run_id}"
    except Exception as log_error:  # noqa: BLE001 - reported in the message
        where = f"; logging it to MLflow failed too ({type(log_error).__name__}: {log_error})"
    return BuildFailedError(f"{e}{where}", build_id=e.build_id, records=e.records,
                            manifest=e.manifest)


def main(argv: list[str] | None = None) -> int:
    from components.stack import require_stack

    require_stack()  # exit 3 with the hint when a service is missing or stale
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sources", action="append", default=None)
    ap.add_argument("--params", action="append", default=[])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args(argv)
    print(build_dataset(a.params, a.sets, a.sources))
    return 0


if __name__ == "__main__":
    sys.exit(main())
