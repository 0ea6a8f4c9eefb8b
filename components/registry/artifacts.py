"""A candidate version's files in MLflow: the bundle, its manifest, the evaluation report.

A version's source is the registration run's artifact folder `candidate/`:

    candidate/bundle/...         the export bundle as exported (manifest.json + every file)
    candidate/report.html        the evaluation report (renders in MLflow's artifact view)
    candidate/metrics.json       the evaluation figures
    candidate/gates.json         the gate results, as the version's tags hold them

The bundle hash that approvals bind is the sha256 of `bundle/manifest.json`: the manifest lists
the sha256 and size of every other file, so it fixes the whole bundle once the files verify.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from wallwm.release.bundle import MANIFEST, BundleError, verify_bundle
from wallwm.util.atomic import sha256_file

FOLDER = "candidate"
BUNDLE = "bundle"


def manifest_sha256(bundle_dir: Path) -> str:
    return sha256_file(Path(bundle_dir) / MANIFEST)


def check_local_bundle(bundle_dir: Path) -> tuple[str | None, str | None]:
    """(sha256 of manifest.json, None) when every file verifies, else (sha or None, problem)."""
    bundle_dir = Path(bundle_dir)
    sha = manifest_sha256(bundle_dir) if (bundle_dir / MANIFEST).is_file() else None
    try:
        verify_bundle(bundle_dir)
    except BundleError as e:
        return sha, str(e)
    return sha, None


def check_version_bundle(source: str) -> tuple[str | None, str | None]:
    """Download a version's bundle (source = its `candidate/` folder URI) and verify it."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="wallwm-verify-") as d:
        try:
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"{source.rstrip('/')}/{BUNDLE}", dst_path=d))
        except Exception as e:
            return None, f"cannot download the bundle from {source}/{BUNDLE}: {str(e)[:200]}"
        return check_local_bundle(local)


# a run's artifact URI never changes: keep it, so listing or writing artifacts costs one
# request instead of three (MLflow's run-id route fetches the run and its logged models first)
_RUN_ARTIFACT_URIS: dict[tuple[str, str], str] = {}


def run_artifacts(client, run_id: str, artifact_uri: str | None = None):
    """The artifact repository of a run (list_artifacts, download_artifacts, log_artifact(s))."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    key = (client.tracking_uri, run_id)
    if artifact_uri:
        _RUN_ARTIFACT_URIS[key] = artifact_uri
    if key not in _RUN_ARTIFACT_URIS:
        _RUN_ARTIFACT_URIS[key] = client.get_run(run_id).info.artifact_uri
    return get_artifact_repository(_RUN_ARTIFACT_URIS[key], tracking_uri=client.tracking_uri)
