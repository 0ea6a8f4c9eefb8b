"""Read a candidate version back from MLflow: its gates, evidence, lineage and bundle hash."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from components.registry import names as N
from components.registry.errors import RegistryError
from components.registry.evidence import Evidence
from components.registry.gates import Champion, GateResult
from components.registry.names import ModelNames


def _not_found(e: Exception) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in f"{getattr(e, 'error_code', '')} {e}"


@dataclass
class CandidateVersion:
    model: str
    version: int
    source: str
    run_id: str | None
    created_ms: int
    tags: dict[str, str]
    aliases: list[str]
    gates: list[GateResult] = field(default_factory=list)
    evidence: dict[str, Evidence] = field(default_factory=dict)

    @property
    def bundle_sha256(self) -> str | None:
        return self.tags.get(N.BUNDLE_SHA)

    @property
    def lineage_users(self) -> set[str]:
        users = set(json.loads(self.tags.get(N.LINEAGE_USERS, "[]")))
        if self.tags.get(N.REGISTERED_BY):
            users.add(self.tags[N.REGISTERED_BY])
        return users

    @property
    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    @property
    def precisions(self) -> list[str]:
        return self.tags.get(N.PRECISIONS, "").split(",") if self.tags.get(N.PRECISIONS) else []

    def lineage(self) -> dict[str, str]:
        return {k[len(N.LINEAGE_PREFIX):]: v for k, v in self.tags.items()
                if k.startswith(N.LINEAGE_PREFIX)}


def from_model_version(mv: Any) -> CandidateVersion:
    tags = dict(mv.tags or {})
    cv = CandidateVersion(mv.name, int(mv.version), mv.source, mv.run_id,
                          int(mv.creation_timestamp or 0), tags, list(mv.aliases or []))
    for k, v in sorted(tags.items()):
        if k.startswith(N.GATE_PREFIX):
            cv.gates.append(GateResult.from_tag(v))
        elif k.startswith(N.EVIDENCE_PREFIX):
            cv.evidence[k[len(N.EVIDENCE_PREFIX):]] = Evidence.from_json(json.loads(v))
    return cv


def get_candidate(client, names: ModelNames, version: int | str) -> CandidateVersion:
    """The version, or RegistryError `version_exists`."""
    try:
        v = int(str(version).lstrip("v"))
    except ValueError:
        raise RegistryError("version_exists", f"{version!r} is not a version number of "
                            f"{names.candidates}") from None
    try:
        mv = client.get_model_version(names.candidates, str(v))
    except Exception as e:
        if _not_found(e):
            raise RegistryError("version_exists", f"{names.candidates} has no version {v}; "
                                "see `wallwm registry status`") from None
        raise
    return from_model_version(mv)


def list_candidates(client, names: ModelNames) -> list[CandidateVersion]:
    mvs = client.search_model_versions(f"name='{names.candidates}'", max_results=10000)
    return sorted((from_model_version(m) for m in mvs), key=lambda c: c.version)


def release_by_alias(client, names: ModelNames, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(names.release, alias)
    except Exception as e:
        if _not_found(e) or "alias" in str(e).lower():
            return None
        raise


def champion_figures(client, names: ModelNames) -> Champion | None:
    """The champion's success figure and interval, from its (copied) evidence tags."""
    mv = release_by_alias(client, names, N.CHAMPION_ALIAS)
    if mv is None:
        return None
    raw = (mv.tags or {}).get(N.EVIDENCE_PREFIX + "closed_loop.success_rate")
    if raw is None:
        return Champion(str(mv.version), None, None)
    e = Evidence.from_json(json.loads(raw))
    return Champion(str(mv.version), e.value if isinstance(e.value, int | float) else None,
                    e.interval)


def promoted_from(mv: Any) -> tuple[str, int] | None:
    """(candidates model, version) a release version was copied from."""
    src = (mv.tags or {}).get(N.PREFIX + "source_candidate")
    if not src:
        return None
    model, _, version = src.rpartition("/")
    return model, int(version)
