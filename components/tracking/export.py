"""MLflow for the export: the export run, the bundle as ONE artifact folder, its figures.

The export run (`wallwm.stage=export`, child of the distillation run) holds `bundle/` (the
whole `wallwm-bundle/1` folder as written: what the registry registers and the release
publishes), `report/export.json` (parity per graph output, cosines per dimension, bytes, the
FP8 choices, TensorRT status, health checks) and the metrics the gates read
(components/registry/evidence.py): `export.onnx_parity_max_abs`,
`export.fp8_worst_dim_cosine`, `export.bf16_worst_dim_cosine`, `export.latency_ms` (FP32 per
action chunk, batch 1, the student's steps), `export.fp8_bytes_ratio`, and the rest per mode
and dimension. Tags: `wallwm.student_model_uri`, `wallwm.distill_run`,
`wallwm.bundle_manifest_sha256` (what approvals bind).

A runtime evaluation (the student, ONNX FP32, ONNX FP8 on the same closed-loop episodes) is a
child run of the export run, `wallwm.stage=runtime_eval`, with the evaluation's metric names,
its headline (`closed_loop.success_rate`) being the policy that ships (the bundle's default
precision).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from wallwm.util.atomic import sha256_file

STAGE = "export"
RUNTIME_STAGE = "runtime_eval"
BUNDLE = "bundle"
STUDENT_TAG = "wallwm.student_model_uri"
DISTILL_RUN_TAG = "wallwm.distill_run"
EXPORT_RUN_TAG = "wallwm.export_run"
MANIFEST_TAG = "wallwm.bundle_manifest_sha256"


def export_tags(student_uri: str, lineage: Mapping[str, Any]) -> dict[str, str]:
    distill = str(lineage.get("distill_run") or "")
    tags = {"wallwm.stage": STAGE, STUDENT_TAG: student_uri,
            DISTILL_RUN_TAG: distill or "unknown",
            "wallwm.train_run": str(lineage.get("train_run") or "unknown"),
            "wallwm.build_id": str(lineage.get("build_id") or "unknown"),
            "wallwm.data_dvc_md5": str(lineage.get("dvc_md5") or "unknown")}
    if distill:
        tags["mlflow.parentRunId"] = distill
    return tags


def log_export_params(p: Any) -> None:
    d = p.export.model_dump(mode="json")
    mlflow.log_params({f"export.{k}": (",".join(map(str, v)) if isinstance(v, list) else
                                       str(v) if isinstance(v, dict) else v)
                       for k, v in d.items()})


def log_bundle(bundle_dir: Path, metrics: Mapping[str, float], report: Path) -> str:
    """`bundle/`, `report/export.json`, the metrics and the manifest tag; returns the URI of
    the bundle folder (`runs:/<id>/bundle` form is not registrable: the artifact URI is)."""
    mlflow.log_artifacts(str(bundle_dir), artifact_path=BUNDLE)
    mlflow.log_artifact(str(report), artifact_path="report")
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    mlflow.set_tag(MANIFEST_TAG, sha256_file(Path(bundle_dir) / "manifest.json"))
    return f"{mlflow.get_artifact_uri()}/{BUNDLE}"


def download_bundle(run_id: str, dst: Path | None = None) -> Path:
    """The `bundle/` folder of an export run on local disk."""
    d = dst or Path(tempfile.mkdtemp(prefix="wallwm-bundle-"))
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=BUNDLE,
                                                    dst_path=str(d)))


def runtime_tags(export_run: str, student_uri: str, build_id: str) -> dict[str, str]:
    return {"wallwm.stage": RUNTIME_STAGE, EXPORT_RUN_TAG: export_run, STUDENT_TAG: student_uri,
            "wallwm.build_id": build_id, "mlflow.parentRunId": export_run}
