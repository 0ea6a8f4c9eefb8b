"""Register the retrain's bundle as a candidate, with the gates' evidence from its runs.

Evidence: the offline figures and reports from the evaluation run of the trained model; the
closed-loop success (and its interval) from the runtime evaluation of the bundle that ships
(ONNX at `export.default_precision`), because the gates must judge what robots will run; the
export figures from the export run; data validation from the training run. A bundle that is
already a candidate version (same manifest sha256) is not registered twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.registry import names as N
from components.registry.artifacts import manifest_sha256
from components.registry.evidence import (
    SUCCESS,
    SUCCESS_HIGH,
    SUCCESS_LOW,
    Evidence,
    gather_evidence,
    metric_uri,
)
from components.registry.register import register_candidate
from components.tracking.runs import git_revision
from wallwm.config.schema import Params
from wallwm.release.bundle import load_manifest


def evidence_for(client, out: dict[str, Any]) -> dict[str, Evidence]:
    ev = gather_evidence(client, evaluation_run_id=out["evaluate"]["evaluation_run_id"],
                         export_run_id=out["distill_export"]["export"]["export_run_id"],
                         training_run_id=out["train"]["mlflow_run_id"])
    runtime = out["distill_export"]["export"].get("runtime")
    if runtime:  # success of the runtime that ships, not of the PyTorch teacher
        rid, m = runtime["run_id"], runtime["metrics"]
        if SUCCESS in m and SUCCESS_LOW in m and SUCCESS_HIGH in m:
            ev[SUCCESS] = Evidence(m[SUCCESS], metric_uri(rid, SUCCESS),
                                   (m[SUCCESS_LOW], m[SUCCESS_HIGH]))
            ev[SUCCESS_LOW] = Evidence(m[SUCCESS_LOW], metric_uri(rid, SUCCESS_LOW))
            ev[SUCCESS_HIGH] = Evidence(m[SUCCESS_HIGH], metric_uri(rid, SUCCESS_HIGH))
    return ev


def lineage_for(out: dict[str, Any]) -> dict[str, str]:
    ex = out["distill_export"]["export"]
    return {"data_build": out["data"]["build_id"], "dvc_md5": out["data"]["dvc_md5"],
            "git": git_revision(), "train_run": out["train"]["mlflow_run_id"],
            "distill_run": out["distill_export"]["distill"]["mlflow_run_id"],
            "export_run": ex["export_run_id"],
            "eval_run": out["evaluate"]["evaluation_run_id"]}


def existing_version(client, model: str, bundle_sha: str) -> Any | None:
    """The candidate version holding this very bundle, if one exists."""
    try:
        versions = client.search_model_versions(f"name = '{model}'")
    except Exception:  # noqa: BLE001 - no such model yet
        return None
    same = [v for v in versions if (v.tags or {}).get(N.BUNDLE_SHA) == bundle_sha]
    return max(same, key=lambda v: int(v.version)) if same else None


def register_bundle(p: Params, out: dict[str, Any]) -> dict[str, Any]:
    """Register (or find) the retrain's bundle; returns model, version, passed, reason."""
    from mlflow import MlflowClient

    client = MlflowClient()
    bundle = Path(out["distill_export"]["export"]["bundle_dir"])
    names = N.model_names(p.registry, load_manifest(bundle).embodiment)
    sha = manifest_sha256(bundle)
    old = existing_version(client, names.candidates, sha)
    if old is not None:
        tags = old.tags or {}
        passed = tags.get(N.STATUS) != N.GATES_FAILED
        return {"model": names.candidates, "version": int(old.version), "passed": passed,
                "reason": tags.get(N.GATES_SUMMARY, ""), "bundle_sha256": sha,
                "reused": True, "gates": {k[len(N.GATE_PREFIX):]: v for k, v in tags.items()
                                          if k.startswith(N.GATE_PREFIX)}}
    reg = register_candidate(bundle, evidence_for(client, out), lineage_for(out), params=p,
                             client=client)
    return {"model": reg.model, "version": reg.version, "passed": reg.passed,
            "reason": reg.reason(), "bundle_sha256": reg.bundle_sha256, "reused": False,
            "run_id": reg.run_id, "gates": {g.name: g.to_tag() for g in reg.gates}}
