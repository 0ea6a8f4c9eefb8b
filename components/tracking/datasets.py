"""Dataset lineage in MLflow: the build's manifest, quarantine, GX results and an `mlflow.data`
entry whose digest is the DVC md5, so a training run can link to the exact data. A build where
every episode failed logs its quarantine and failed manifest the same way (no dataset entry)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd


def dataset_entry(episodes: pd.DataFrame, build_id: str, dvc_md5: str, source: str):
    """An `mlflow.data` dataset named after the build, its digest the DVC md5."""
    with warnings.catch_warnings():  # MLflow's hints about local sources and int columns
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_pandas(
            episodes, source=source, name=f"wallwm-build-{build_id}", digest=dvc_md5[:32]
        )


def event_metrics(events: dict[str, Any]) -> dict[str, float]:
    """Flat metrics from the manifest's `events` report (annotation score, balance, packing)."""
    out: dict[str, float] = {}
    score = events.get("annotations", {}).get("score_vs_ground_truth")
    if score:
        out["annotation_boundary_f1"] = score["boundary_f1"]
        out["annotation_label_accuracy"] = score["label_accuracy"]
    for unit, b in events.get("clusters", {}).get("balance", {}).items():
        out[f"balance_{unit}_normalized_entropy"] = b["normalized_entropy"]
        out[f"balance_{unit}_effective_clusters"] = b["effective_clusters"]
    pk = events.get("packing")
    if pk:
        out["packing_padding_packed"] = pk["padding_packed"]
        out["packing_padding_one_per_row"] = pk["padding_one_per_row"]
    return out


def _log_identity(manifest: dict[str, Any]) -> None:
    mlflow.log_params({
        "build_id": manifest["build_id"],
        "sources": ";".join(s["spec"] for s in manifest["sources"]),
        "params_hash": manifest["params_hash"],
        "code_version": manifest["code_version"][:16],
    })
    mlflow.set_tags({"wallwm.build_id": manifest["build_id"]})


def _log_gx(build_dir: Path) -> None:
    gx = build_dir / "gx"
    for sub, dest in (("uncommitted/validations", "gx/validations"),
                      ("uncommitted/data_docs", "gx/data_docs")):
        if (gx / sub).is_dir():
            mlflow.log_artifacts(str(gx / sub), artifact_path=dest)


def log_build(build_dir: Path, manifest: dict[str, Any], episodes: pd.DataFrame, dvc_md5: str,
              source: str, context: str = "build") -> None:
    """Log everything a reviewer needs about a build into the active run."""
    counts = manifest["counts"]
    _log_identity(manifest)
    mlflow.log_metrics({
        "episodes": counts["episodes"], "frames": counts["frames"],
        "quarantined": counts["quarantined"],
        **{f"episodes_{t}": v["episodes"] for t, v in counts["per_tier"].items()},
    })
    mlflow.set_tags({"wallwm.data_dvc_md5": dvc_md5})
    for name in ("manifest.json", "quarantine.jsonl", "splits.json", "tokenizer.json"):
        if (build_dir / name).exists():
            mlflow.log_artifact(str(build_dir / name), artifact_path="build")
    if (build_dir / "figures").is_dir():
        mlflow.log_artifacts(str(build_dir / "figures"), artifact_path="figures")
    if (build_dir / "clusters").is_dir():
        mlflow.log_artifacts(str(build_dir / "clusters"), artifact_path="build/clusters")
    mlflow.log_metrics(event_metrics(manifest.get("events", {})))
    _log_gx(build_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mlflow.log_input(dataset_entry(episodes, manifest["build_id"], dvc_md5, source),
                         context=context)


def log_failed_build(records: Path, manifest: dict[str, Any]) -> None:
    """Log a build where every episode failed into the active run: the same identity as a
    build, its quarantine and failed manifest (and GX results), so the reasons are reviewable
    where every other build is."""
    _log_identity(manifest)
    counts = manifest["counts"]
    mlflow.log_metrics({"episodes": 0, "quarantined": counts["quarantined"]})
    mlflow.set_tags({"wallwm.build_failed_reason": str(manifest.get("reason", ""))[:5000]})
    for name in ("manifest.json", "quarantine.jsonl"):
        if (records / name).exists():
            mlflow.log_artifact(str(records / name), artifact_path="build")
    _log_gx(records)
