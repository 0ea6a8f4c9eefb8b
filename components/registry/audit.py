"""The registry's audit log: an append-only folder of JSON entries in one MLflow run.

Each entry (who, what, when, why, outcome, the evidence hashes) is its own artifact
`audit/<UTC time>-<uuid>.json`: an append is one new object, written whole or not at all, and
never rewrites an earlier one, so concurrent writers (two promotions at once) lose nothing and
no lock is needed. Readers list the folder and sort by time. Refused attempts are entries too.

The run lives in the experiment `registry.audit_experiment` and carries the tag
`wallwm.audit_log=<release model>`. The local stack creates the experiment and lets every
registry actor append (EDIT); the first writer creates the run. Should two first writers race,
both runs are read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

from components.registry.artifacts import run_artifacts

AUDIT_TAG = "wallwm.audit_log"
FOLDER = "audit"
# (tracking URI, experiment, release model) -> the run this process appends to (runs are never
# deleted by our code; a deleted one fails the append, which is reported)
_WRITER_RUNS: dict[tuple[str, str, str], str] = {}


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (how entries name the evidence they relied on)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class AuditLog:
    def __init__(self, client, experiment: str, release_model: str):
        self.client, self.experiment, self.release_model = client, experiment, release_model

    def _experiment_id(self, create: bool) -> str | None:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        if not create:
            return None
        try:
            return self.client.create_experiment(self.experiment,
                                                 tags={"wallwm.role": "registry-audit"})
        except Exception:  # created meanwhile by another writer
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def _runs(self, create: bool) -> list[str]:
        exp_id = self._experiment_id(create)
        if exp_id is None:
            return []
        runs = self.client.search_runs(
            [exp_id], filter_string=f"tags.`{AUDIT_TAG}` = '{self.release_model}'",
            order_by=["attributes.start_time ASC"], max_results=50)
        ids = [r.info.run_id for r in runs]
        for r in runs:
            run_artifacts(self.client, r.info.run_id, r.info.artifact_uri)
        if not ids and create:
            run = self.client.create_run(exp_id, run_name=f"audit-{self.release_model}",
                                         tags={AUDIT_TAG: self.release_model,
                                               "mlflow.note.content": (
                                                   "Audit log of the registry: one JSON file "
                                                   "per attempt under audit/ (append-only).")})
            ids = [run.info.run_id]
            run_artifacts(self.client, run.info.run_id, run.info.artifact_uri)
        return ids

    def _writer_run(self) -> str:
        key = (self.client.tracking_uri, self.experiment, self.release_model)
        if key not in _WRITER_RUNS:
            _WRITER_RUNS[key] = self._runs(create=True)[0]
        return _WRITER_RUNS[key]

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Write one entry (with `time` and `id` added) and return it as written."""
        t = now_utc()
        full = {"time": iso(t), "id": uuid.uuid4().hex, "release_model": self.release_model,
                **entry}
        name = f"{t.strftime('%Y%m%dT%H%M%S.%fZ')}-{full['id'][:12]}.json"
        run_id = self._writer_run()
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(json.dumps(full, indent=2, sort_keys=True, default=str) + "\n")
            run_artifacts(self.client, run_id).log_artifact(str(p), FOLDER)
        full["_artifact"] = f"runs:/{run_id}/{FOLDER}/{name}"
        return full

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first."""
        out = []
        for run_id in self._runs(create=False):
            repo = run_artifacts(self.client, run_id)
            files = [f for f in repo.list_artifacts(FOLDER) if not f.is_dir]
            if not files:
                continue
            with tempfile.TemporaryDirectory() as d:
                local = Path(repo.download_artifacts(FOLDER, d))
                for f in files:
                    p = local / Path(f.path).name
                    try:
                        e = json.loads(p.read_text())
                    except (OSError, ValueError) as err:
                        e = {"time": "", "action": "unreadable", "outcome": str(err)}
                    e["_artifact"] = f"runs:/{run_id}/{f.path}"
                    out.append(e)
        return sorted(out, key=lambda e: (e.get("time", ""), e.get("id", "")))


def try_append(log: AuditLog, entry: dict[str, Any]) -> str:
    """Append, and say so; an audit write that fails is reported, never hidden or fatal."""
    try:
        written = log.append(entry)
        return f"audit entry {written['_artifact']}"
    except Exception as e:
        return f"the audit log could not record this ({type(e).__name__}: {str(e)[:200]})"
