"""Names in the MLflow registry: models per embodiment, aliases, tag keys.

Tag keys may hold only `[/\\w.\\- :]` (MLflow's rule), so a user name with other characters
(an e-mail address) is encoded in keys; the tag's value always carries the real name.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from components.registry.errors import RegistryError
from wallwm.config.schema import RegistryParams

CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
PREVIOUS_ALIAS = "previous"
DEMO_REVIEWER = "demo-reviewer"

PREFIX = "wallwm."
GATE_PREFIX = PREFIX + "gate."
EVIDENCE_PREFIX = PREFIX + "evidence."
LINEAGE_PREFIX = PREFIX + "lineage."
STATUS = PREFIX + "status"
GATES_SUMMARY = PREFIX + "gates"
BUNDLE_SHA = PREFIX + "bundle_sha256"
EMBODIMENT = PREFIX + "embodiment"
REGISTERED_BY = PREFIX + "registered_by"
LINEAGE_USERS = PREFIX + "lineage_users"
RUNTIME = PREFIX + "runtime"
PRECISIONS = PREFIX + "precisions"

AWAITING = "awaiting_approval"
GATES_FAILED = "gates_failed"

_KEY_OK = re.compile(r"^[\w.\-]+$")


def key_safe(name: str) -> str:
    """`name` usable inside a tag key; names with other characters get a hash suffix."""
    if _KEY_OK.match(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return re.sub(r"[^\w.\-]", "_", name) + "-" + digest


def decision_key(decision: str, candidates_model: str, version: str | int, reviewer: str) -> str:
    """The release-model tag that holds one reviewer's decision on one candidate version."""
    if decision not in ("approve", "reject"):
        raise ValueError(f"decision {decision!r}: expected approve or reject")
    return f"{PREFIX}{decision}.{key_safe(candidates_model)}.v{int(version)}.{key_safe(reviewer)}"


def decision_prefix(candidates_model: str, version: str | int | None = None) -> tuple[str, ...]:
    """Key prefixes of every decision on `candidates_model` (one version, or all)."""
    tail = f".{key_safe(candidates_model)}." + (f"v{int(version)}." if version is not None else "")
    return (f"{PREFIX}approve{tail}", f"{PREFIX}reject{tail}")


@dataclass(frozen=True)
class ModelNames:
    """The registered models of one embodiment."""

    embodiment: str
    candidates: str
    release: str

    @property
    def queue(self) -> str:
        """The promotion queue of the release model (the lock's tickets, see lock.py)."""
        return f"{self.release}-promotion-queue"


def model_names(params: RegistryParams, embodiment: str | None = None) -> ModelNames:
    """The models of `embodiment` (default: the only one listed in registry.embodiments)."""
    if embodiment is None:
        if len(params.embodiments) != 1:
            raise RegistryError("embodiment_listed", f"registry.embodiments lists "
                                f"{params.embodiments}; name one with --embodiment")
        embodiment = params.embodiments[0]
    if embodiment not in params.embodiments:
        raise RegistryError("embodiment_listed", f"embodiment {embodiment!r} is not in "
                            f"registry.embodiments {params.embodiments} (params.yaml); add it "
                            "there and run `wallwm stack up` so its models and permissions exist")
    return ModelNames(embodiment, params.candidates_model.format(embodiment=embodiment),
                      params.release_model.format(embodiment=embodiment))


def all_model_names(params: RegistryParams) -> list[ModelNames]:
    return [model_names(params, e) for e in params.embodiments]


def reviewers(params: RegistryParams) -> list[str]:
    """Who may approve: registry.reviewers, plus the demo reviewer when it is switched on."""
    return list(params.reviewers) + ([DEMO_REVIEWER] if params.demo_reviewer else [])
