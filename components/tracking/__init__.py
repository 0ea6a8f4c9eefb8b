"""MLflow adapter: runs, params, metrics, artifacts and dataset lineage against the tracking server."""

from components.tracking.datasets import dataset_entry, log_build
from components.tracking.runs import (
    artifact_sha256,
    download_artifact,
    git_revision,
    git_state,
    log_bytes,
    log_json,
    mlflow_ui_url,
    run_url,
    start_run,
)

__all__ = [
    "dataset_entry",
    "log_build",
    "artifact_sha256",
    "download_artifact",
    "git_revision",
    "git_state",
    "log_bytes",
    "log_json",
    "mlflow_ui_url",
    "run_url",
    "start_run",
]
