"""One error type for every refused registry operation: it names the rule that refused it."""

from __future__ import annotations

# The rules, by the name every message, audit entry and test uses.
RULES = {
    "authentication": "the MLflow server must accept the caller's credentials",
    "server_permission": "the MLflow server refused the write (HTTP 403): the caller lacks the "
                         "permission on that registered model",
    "version_exists": "the candidate version must exist in the candidates model",
    "embodiment_listed": "the bundle's embodiment must be in registry.embodiments",
    "evidence_present": "every gate's evidence (run, metric, tag or artifact) must exist",
    "gates_passed": "every automated gate must pass",
    "bundle_hashes": "every bundle file must match the sha256 and size in its manifest",
    "reviewer_listed": "only users in registry.reviewers may approve or reject",
    "four_eyes": "nobody approves a version whose training, distillation, export or evaluation "
                 "run they made",
    "rejection_final": "a rejected version stays blocked for good",
    "approval_binding": "an approval holds only for the version and bundle hash it names",
    "approval_fresh": "an approval older than registry.max_approval_age_hours is stale",
    "approvals_required": "a promotion needs registry.approvals_required valid approvals",
    "already_champion": "a version that is already the champion is not promoted again",
    "champion_unchanged": "the champion must not move while a promotion holds the lock",
    "promotion_lock": "promotions take turns through the promotion queue",
    "provisioning": "the registry's models, users and permissions must exist",
}


class RegistryError(RuntimeError):
    """A refused registry operation; `rule` is one of RULES."""

    def __init__(self, rule: str, message: str):
        if rule not in RULES:
            raise ValueError(f"unknown registry rule {rule!r}")
        super().__init__(f"refused by rule {rule!r} ({RULES[rule]}): {message}")
        self.rule = rule
        self.detail = message
