"""Evidence for the gates: a figure, its interval when it has one, and where it lives in MLflow.

An evidence URI names one thing in one run, so a gate's figure can be checked again later:

- `runs:/<run_id>#metric=<name>`  a metric of the run (its latest value)
- `runs:/<run_id>#tag=<name>`     a tag of the run
- `runs:/<run_id>/<path>`          an artifact of the run (MLflow's own URI form)

`gather_evidence` reads the figures the stages log (names below) from their runs; a figure a run
does not hold is still returned, with `value=None`, so the gate that needs it fails and names the
missing place instead of the whole registration stopping.
"""

from __future__ import annotations

import math
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from components.registry.errors import RegistryError

SUCCESS = "closed_loop.success_rate"
SUCCESS_LOW = "closed_loop.success_ci_low"
SUCCESS_HIGH = "closed_loop.success_ci_high"
ACTION_MSE = "offline.action_mse"
ONNX_PARITY = "export.onnx_parity_max_abs"
FP8_COSINE = "export.fp8_worst_dim_cosine"
LATENCY = "export.latency_ms"
DATA_VALIDATION = "wallwm.data_validation"  # a tag of the training run: passed | failed
REPORT = "closed_loop.report"  # the evaluation's report.html (artifact)
REPORT_METRICS = "closed_loop.metrics_json"  # the evaluation's metrics.json (artifact)

EVAL_METRICS = (SUCCESS, SUCCESS_LOW, SUCCESS_HIGH, ACTION_MSE)
EXPORT_METRICS = (ONNX_PARITY, FP8_COSINE, LATENCY)
REPORT_FILES = {REPORT: "report.html", REPORT_METRICS: "metrics.json"}

_URI = re.compile(r"^runs:/([0-9a-zA-Z_-]+)(?:#(metric|tag)=(.+)|/(.+))$")


@dataclass(frozen=True)
class Evidence:
    """One figure a gate reads. `value` None: the place named by `uri` does not hold it."""

    value: float | str | None
    uri: str
    interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        parse_uri(self.uri)
        if self.interval is not None:
            lo, hi = self.interval
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"evidence {self.uri}: interval {self.interval} is not "
                                 "[low, high] with finite low <= high")

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "uri": self.uri,
                "interval": list(self.interval) if self.interval else None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Evidence:
        iv = d.get("interval")
        return cls(d.get("value"), d["uri"], (float(iv[0]), float(iv[1])) if iv else None)


def metric_uri(run_id: str, name: str) -> str:
    return f"runs:/{run_id}#metric={name}"


def tag_uri(run_id: str, name: str) -> str:
    return f"runs:/{run_id}#tag={name}"


def artifact_uri(run_id: str, path: str) -> str:
    return f"runs:/{run_id}/{path}"


def parse_uri(uri: str) -> tuple[str, str, str]:
    """`uri` -> (run_id, kind in metric|tag|artifact, name or path)."""
    m = _URI.match(uri or "")
    if not m:
        raise ValueError(f"evidence URI {uri!r}: expected runs:/<run_id>#metric=<name>, "
                         "runs:/<run_id>#tag=<name> or runs:/<run_id>/<artifact path>")
    run_id, kind, name, path = m.groups()
    if path is not None:
        if posixpath.normpath(path) != path or path.startswith(("/", "..")):
            raise ValueError(f"evidence URI {uri!r}: artifact path {path!r} is not normalized")
        return run_id, "artifact", path
    return run_id, kind, name


def _run(client, run_id: str, role: str):
    try:
        return client.get_run(run_id)
    except Exception as e:
        raise RegistryError("evidence_present", f"the {role} run {run_id!r} is not in MLflow "
                            f"({type(e).__name__}: {str(e)[:160]})") from None


def _find_file(client, run, filename: str, depth: int = 2) -> str | None:
    """The artifact path of the first `filename` within `depth` folders of the run's root."""
    from components.registry.artifacts import run_artifacts

    repo = run_artifacts(client, run.info.run_id, run.info.artifact_uri)
    level = [""]
    for _ in range(depth + 1):
        nxt = []
        for folder in level:
            for f in repo.list_artifacts(folder or None):
                if f.is_dir:
                    nxt.append(f.path)
                elif posixpath.basename(f.path) == filename:
                    return f.path
        level = nxt
    return None


def gather_evidence(client, *, evaluation_run_id: str, export_run_id: str,
                    training_run_id: str) -> dict[str, Evidence]:
    """Every figure the gates read, from the runs that logged them (see module docstring)."""
    out: dict[str, Evidence] = {}
    ev = _run(client, evaluation_run_id, "evaluation")
    m = ev.data.metrics
    for name in EVAL_METRICS:
        out[name] = Evidence(m.get(name), metric_uri(evaluation_run_id, name))
    if m.get(SUCCESS_LOW) is not None and m.get(SUCCESS_HIGH) is not None:
        out[SUCCESS] = Evidence(m.get(SUCCESS), metric_uri(evaluation_run_id, SUCCESS),
                                (m[SUCCESS_LOW], m[SUCCESS_HIGH]))
    for key, filename in REPORT_FILES.items():
        path = _find_file(client, ev, filename)
        out[key] = Evidence(path, artifact_uri(evaluation_run_id, path or filename))
    ex = _run(client, export_run_id, "export")
    for name in EXPORT_METRICS:
        out[name] = Evidence(ex.data.metrics.get(name), metric_uri(export_run_id, name))
    tr = _run(client, training_run_id, "training")
    out[DATA_VALIDATION] = Evidence(tr.data.tags.get(DATA_VALIDATION),
                                    tag_uri(training_run_id, DATA_VALIDATION))
    return out


def verify_evidence(client, evidence: dict[str, Evidence]) -> dict[str, str]:
    """Check every URI against MLflow: key -> what is wrong (only the keys with a problem)."""
    runs: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for key, e in evidence.items():
        run_id, kind, name = parse_uri(e.uri)
        if run_id not in runs:
            try:
                runs[run_id] = client.get_run(run_id)
            except Exception:
                runs[run_id] = None
        run = runs[run_id]
        if run is None:
            problems[key] = f"run {run_id} of {e.uri} does not exist"
        elif e.value is None:
            problems[key] = f"{e.uri} is missing ({kind} {name!r} not found in run {run_id})"
        elif kind == "metric":
            have = run.data.metrics.get(name)
            if have is None:
                problems[key] = f"{e.uri} is missing (run {run_id} has no metric {name!r})"
            elif not isinstance(e.value, int | float) or not math.isclose(
                    have, float(e.value), rel_tol=1e-9, abs_tol=1e-12):
                problems[key] = f"{e.uri} is {have}, the evidence says {e.value!r}"
        elif kind == "tag":
            have = run.data.tags.get(name)
            if have is None:
                problems[key] = f"{e.uri} is missing (run {run_id} has no tag {name!r})"
            elif have != str(e.value):
                problems[key] = f"{e.uri} is {have!r}, the evidence says {e.value!r}"
        else:
            from components.registry.artifacts import run_artifacts

            folder = posixpath.dirname(name)
            repo = run_artifacts(client, run_id, run.info.artifact_uri)
            listed = {f.path for f in repo.list_artifacts(folder or None)}
            if name not in listed:
                problems[key] = f"artifact {e.uri} is missing (not among run {run_id}'s artifacts)"
    return problems


def run_user(client, run_id: str, role: str) -> str:
    """The MLflow user a lineage run names (its `mlflow.user`, i.e. `user_id`)."""
    run = _run(client, run_id, role)
    user = run.data.tags.get("mlflow.user") or run.info.user_id
    if not user or user == "unknown":
        raise RegistryError("four_eyes", f"the {role} run {run_id} names no user (tag "
                            "mlflow.user); runs must be made with MLFLOW_TRACKING_USERNAME set")
    return user
