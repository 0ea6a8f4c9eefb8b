"""Model registry, automated gates and reviewer approval on MLflow, enforced by its server.

The workflow, per embodiment (names from `registry:` in params.yaml):

1. `register_candidate(bundle_dir, evidence, lineage, params=...)`, as the pipeline user:
   the bundle becomes a version of the *candidates* model (source: a registration run's
   `candidate/` folder with the bundle, report.html, metrics.json), with every gate
   (gates.py) and its evidence (evidence.py; `gather_evidence` reads it from the runs) as
   version tags, lineage tags, and the bundle hash. All gates passed: alias `candidate`.
2. `record_decision("approve" | "reject", version, comment, params=...)`, as a reviewer: a tag
   on the *release* model (approvals.py holds the rules); the server refuses it (403) to
   anyone without EDIT there, which is everyone but reviewers and the promoter.
3. `promote(version, params=...)`, as the promoter or a reviewer: under a ticket lock on MLflow
   (lock.py) every rule is checked again from the server's state, the version is copied into
   the release model (`copy_model_version`), `previous` keeps the old champion and `champion`
   moves. Every attempt, refused or not, is appended to the audit log (audit.py).
4. `registry_status` / `AuditLog.entries` show it; `awaiting_approval` / `promote_ready` are the
   retrain flow's hand-off (status.py).

Identity (identity.py): every call authenticates with `MLFLOW_TRACKING_USERNAME/PASSWORD`; the
name recorded is the one the server authenticated. Refusals raise `RegistryError` whose `rule`
names the rule (errors.RULES).
"""

from components.registry.approvals import Decision, Verdict, judge
from components.registry.audit import AuditLog
from components.registry.decide import record_decision
from components.registry.errors import RULES, RegistryError
from components.registry.evidence import Evidence, gather_evidence, verify_evidence
from components.registry.gates import GATES, GateResult, evaluate_gates
from components.registry.identity import (
    Credentials,
    Identity,
    apply_identity,
    resolve,
    run_user_tags,
    use_identity,
    whoami,
)
from components.registry.names import ModelNames, model_names, reviewers
from components.registry.promotion import Promotion, promote
from components.registry.register import Registration, register_candidate
from components.registry.status import (
    AwaitingApproval,
    VersionRow,
    awaiting_approval,
    promote_ready,
    ready_to_promote,
    registry_status,
)

__all__ = [
    "GATES", "RULES", "AuditLog", "AwaitingApproval", "Credentials", "Decision", "Evidence",
    "GateResult", "Identity", "ModelNames", "Promotion", "Registration", "RegistryError",
    "Verdict", "VersionRow", "apply_identity", "awaiting_approval", "evaluate_gates",
    "gather_evidence", "judge", "model_names", "promote", "promote_ready", "ready_to_promote",
    "record_decision", "register_candidate", "registry_status", "resolve", "reviewers",
    "run_user_tags", "use_identity", "verify_evidence", "whoami",
]
