"""Runs and artifacts on the MLflow tracking server named by `MLFLOW_TRACKING_URI`.

Artifacts go through the server (`--serve-artifacts`), so clients need no storage credentials.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run

from wallwm.util.atomic import sha256_file


def git_state(cwd: Path | None = None) -> tuple[str, bool]:
    """(commit sha, dirty) of the checkout; ("unknown", False) outside git. Dirty means
    tracked *code* differs from the commit: untracked files and the DVC pins (`*.dvc`,
    `dvc.lock`) do not count, because the data stage itself rewrites `data.dvc` when it pins a
    new build (its md5 is on every run as `wallwm.data_dvc_md5`), and a run on a clean clone
    would otherwise be tagged dirty by the pipeline's own write."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
             ":(top,exclude)*.dvc", ":(top,exclude)**/dvc.lock", ":(top,exclude)dvc.lock"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev, bool(dirty)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown", False


def git_revision(cwd: Path | None = None) -> str:
    """The checkout's commit, with `-dirty` when it has uncommitted changes (for humans and
    manifests; MLflow's `mlflow.source.git.commit` gets the plain sha)."""
    rev, dirty = git_state(cwd)
    return rev + ("-dirty" if dirty else "")


def prefect_flow_run_id() -> str | None:
    """The Prefect flow run this code runs in, if any (`prefect.runtime`, which knows it in
    any flow run; the environment variable only exists in worker-launched runs)."""
    try:
        from prefect.runtime import flow_run

        fid = flow_run.id
    except Exception:  # noqa: BLE001 - outside Prefect or an old runtime
        fid = None
    return str(fid) if fid else os.environ.get("PREFECT__FLOW_RUN_ID")


def base_tags() -> dict[str, str]:
    rev, dirty = git_state()
    tags = {"wallwm.git_revision": rev + ("-dirty" if dirty else ""),
            "mlflow.source.git.commit": rev, "wallwm.git_dirty": str(dirty).lower()}
    if pr := prefect_flow_run_id():
        tags["prefect.flow_run_id"] = pr
    from components.registry.identity import run_user_tags

    tags.update(run_user_tags())  # the authenticated MLflow account: the four-eyes rule reads it
    return tags


@contextlib.contextmanager
def start_run(
    experiment: str, run_name: str, tags: dict[str, str] | None = None, nested: bool = False,
    log_system_metrics: bool = True,
) -> Iterator[Run]:
    """An MLflow run in `experiment`, tagged with the git revision (plain sha + dirty flag)
    and the Prefect flow run; system metrics (CPU, memory) are sampled while it is open."""
    mlflow.set_experiment(experiment)
    with mlflow.start_run(
        run_name=run_name, tags={**base_tags(), **(tags or {})}, nested=nested,
        log_system_metrics=log_system_metrics,
    ) as run:
        yield run


def log_bytes(data: bytes, artifact_path: str) -> None:
    """Log raw bytes as an artifact at `artifact_path` (folder/name) in the active run."""
    folder, _, name = artifact_path.rpartition("/")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_bytes(data)
        mlflow.log_artifact(str(p), artifact_path=folder or None)


def log_json(obj: Any, artifact_path: str) -> None:
    log_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), artifact_path)


def download_artifact(run_id: str, artifact_path: str, dst: Path) -> Path:
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=str(dst)
        )
    )


def artifact_sha256(run_id: str, artifact_path: str) -> str:
    with tempfile.TemporaryDirectory() as d:
        return sha256_file(download_artifact(run_id, artifact_path, Path(d)))


def mlflow_ui_url() -> str:
    return mlflow.get_tracking_uri()


def run_url(run: Run) -> str:
    base = mlflow.get_tracking_uri().rstrip("/")
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
