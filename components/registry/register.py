"""Register an export bundle as a version of its embodiment's candidates model, gates included.

`register_candidate` runs as the pipeline: it verifies the bundle, checks every evidence URI
against MLflow, evaluates the gates (against the current champion for the regression gate),
logs the bundle and the evaluation report into a registration run, creates the version from
that run's `candidate/` folder (MLflow 3 registers a run artifact folder or a `models:/m-...`
URI, never `runs:/`), records gates, evidence, lineage and the bundle hash as version tags, and
moves the alias `candidate` to it when every gate passed. The audit log gets an entry either way.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from components.registry import artifacts as A
from components.registry import names as N
from components.registry.audit import AuditLog, digest, try_append
from components.registry.errors import RegistryError
from components.registry.evidence import (
    REPORT,
    REPORT_METRICS,
    Evidence,
    parse_uri,
    run_user,
    verify_evidence,
)
from components.registry.gates import GateResult, evaluate_gates
from components.registry.identity import whoami
from components.registry.names import ModelNames
from components.registry.versions import _not_found, champion_figures
from wallwm.config.schema import Params
from wallwm.release.bundle import BundleError, load_manifest

# lineage keys: the run ids among them are the runs whose users the four-eyes rule excludes
LINEAGE_RUNS = ("train_run", "distill_run", "export_run", "eval_run")
LINEAGE_KEYS = ("data_build", "dvc_md5", "git", *LINEAGE_RUNS)
REQUIRED_LINEAGE = ("data_build", "dvc_md5", "git", "train_run", "export_run", "eval_run")


@dataclass
class Registration:
    model: str
    version: int
    passed: bool
    gates: list[GateResult]
    status: str
    run_id: str
    bundle_sha256: str
    audit: str = ""
    failed: list[GateResult] = field(default_factory=list)

    def reason(self) -> str:
        return "; ".join(f"{g.name}: {g.reason}" for g in self.failed) or "every gate passed"


def check_lineage(lineage: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(lineage) - set(LINEAGE_KEYS))
    if unknown:
        raise ValueError(f"lineage keys {unknown} unknown; allowed: {', '.join(LINEAGE_KEYS)}")
    missing = [k for k in REQUIRED_LINEAGE if not lineage.get(k)]
    if missing:
        raise ValueError(f"lineage misses {missing}: every candidate names its data build, DVC "
                         "md5, git revision and its training, export and evaluation runs")
    return {k: str(v) for k, v in lineage.items() if v}


def _ensure_model(client, name: str) -> None:
    try:
        client.get_registered_model(name)
    except Exception as e:
        if not _not_found(e):
            raise
        try:  # a server without the stack's provisioning (a user's own MLflow)
            client.create_registered_model(name)
        except Exception as e2:
            raise RegistryError("provisioning", f"registered model {name!r} does not exist and "
                                f"this user cannot create it ({str(e2)[:160]}); run `wallwm "
                                "stack up` (local) or ask the MLflow admin to create it") from None


def _report_files(client, evidence: dict[str, Evidence], report_dir: Path | None,
                  dst: Path) -> list[Path]:
    """report.html and metrics.json: from `report_dir`, else from the evaluation run."""
    out = []
    for key, filename in ((REPORT, "report.html"), (REPORT_METRICS, "metrics.json")):
        if report_dir is not None:
            p = Path(report_dir) / filename
            if p.is_file():
                out.append(p)
            continue
        e = evidence.get(key)
        if e is None or e.value is None:
            continue
        run_id, _, path = parse_uri(e.uri)
        try:
            out.append(Path(A.run_artifacts(client, run_id).download_artifacts(path, str(dst))))
        except Exception:
            continue  # the gate that needs it fails with the reason
    return out


def _copy_regular_files(src: Path, dst: Path) -> None:
    """Copy the bundle's regular files (a symlink is never followed; its gate already failed)."""
    for p in sorted(src.rglob("*")):
        if p.is_symlink() or not p.is_file():
            continue
        out = dst / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, out)


def _names_for(params: Params, bundle_dir: Path) -> tuple[ModelNames, object]:
    try:
        manifest = load_manifest(bundle_dir)
    except BundleError as e:
        raise RegistryError("bundle_hashes", f"{bundle_dir}: no readable manifest ({e}); "
                            "re-export the bundle") from None
    return N.model_names(params.registry, manifest.embodiment), manifest


def register_candidate(bundle_dir: Path | str, evidence: dict[str, Evidence],
                       lineage: dict[str, str], *, params: Params, client=None,
                       report_dir: Path | str | None = None,
                       experiment: str | None = None) -> Registration:
    """Register `bundle_dir` with its gates; see the module docstring. Runs as the pipeline."""
    from mlflow import MlflowClient

    client = client or MlflowClient()
    bundle_dir = Path(bundle_dir)
    lineage = check_lineage(lineage)
    names, manifest = _names_for(params, bundle_dir)
    me = whoami()
    log = AuditLog(client, params.registry.audit_experiment, names.release)
    base = {"action": "register", "user": me.username, "authenticated": me.authenticated,
            "candidates_model": names.candidates}
    try:
        _ensure_model(client, names.candidates)
        users = {run_user(client, lineage[k], k.replace("_run", "")) for k in LINEAGE_RUNS
                 if k in lineage}
    except RegistryError as e:
        try_append(log, {**base, "outcome": "refused", "rule": e.rule, "reason": e.detail})
        raise
    bundle_sha, bundle_problem = A.check_local_bundle(bundle_dir)
    problems = verify_evidence(client, evidence)
    results = evaluate_gates(
        evidence, gates=params.gates, margin=params.registry.regression_margin,
        champion=champion_figures(client, names), bundle_problem=bundle_problem,
        precisions=list(manifest.precisions), runtime=manifest.runtime.name, problems=problems)
    failed = [g for g in results if not g.passed]
    status = N.AWAITING if not failed else N.GATES_FAILED

    exp_name = experiment or params.project.experiment
    exp = client.get_experiment_by_name(exp_name)
    exp_id = exp.experiment_id if exp else client.create_experiment(exp_name)
    run_tags = {"mlflow.user": me.username, "wallwm.stage": "register",
                **{N.LINEAGE_PREFIX + k: v for k, v in lineage.items()}}
    run = client.create_run(exp_id, run_name=f"register-{names.embodiment}-{bundle_sha[:8]}"
                            if bundle_sha else f"register-{names.embodiment}", tags=run_tags)
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory(prefix="wallwm-register-") as d:
        stage = Path(d) / A.FOLDER
        _copy_regular_files(bundle_dir, stage / A.BUNDLE)
        for f in _report_files(client, evidence, Path(report_dir) if report_dir else None,
                               Path(d) / "dl"):
            shutil.copy2(f, stage / f.name)
        (stage / "gates.json").write_text(json.dumps(
            [json.loads(g.to_tag()) for g in results], indent=2) + "\n")
        A.run_artifacts(client, run_id, run.info.artifact_uri).log_artifacts(str(stage), A.FOLDER)
    client.set_terminated(run_id)

    tags = {N.STATUS: status, N.GATES_SUMMARY: "passed" if not failed else
            "failed: " + ",".join(g.name for g in failed),
            N.BUNDLE_SHA: bundle_sha or "", N.EMBODIMENT: names.embodiment,
            N.REGISTERED_BY: me.username, N.LINEAGE_USERS: json.dumps(sorted(users)),
            N.RUNTIME: manifest.runtime.name, N.PRECISIONS: ",".join(manifest.precisions),
            **{N.LINEAGE_PREFIX + k: v for k, v in lineage.items()},
            **{N.GATE_PREFIX + g.name: g.to_tag() for g in results},
            **{N.EVIDENCE_PREFIX + k: json.dumps(e.to_json(), sort_keys=True)
               for k, e in evidence.items()}}
    description = (f"Bundle {bundle_sha[:12] if bundle_sha else '?'} for {names.embodiment}. "
                   + ("All gates passed: awaiting reviewer approval (`wallwm approve`)."
                      if not failed else "Gates failed: " + "; ".join(
                          f"{g.name}: {g.reason}" for g in failed)))
    mv = client.create_model_version(names.candidates, source=f"{run.info.artifact_uri}/"
                                     f"{A.FOLDER}", run_id=run_id, tags=tags,
                                     description=description[:5000])
    if not failed:
        client.set_registered_model_alias(names.candidates, N.CANDIDATE_ALIAS, mv.version)
    audit = try_append(log, {**base, "outcome": status, "version": int(mv.version),
                             "bundle_sha256": bundle_sha, "run_id": run_id,
                             "gates": {g.name: g.passed for g in results},
                             "failed": {g.name: g.reason for g in failed},
                             "evidence_sha256": digest({k: e.to_json()
                                                        for k, e in evidence.items()})})
    return Registration(names.candidates, int(mv.version), not failed, results, status, run_id,
                        bundle_sha or "", audit, failed)
