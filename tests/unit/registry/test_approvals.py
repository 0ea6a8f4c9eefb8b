"""The approval rules (pure): listed reviewers, four eyes, N approvals, binding, staleness,
rejection final, and tags that lie about their reviewer."""

from __future__ import annotations

import datetime as dt

import pytest

from components.registry import names as N
from components.registry.approvals import Decision, check_comment, judge

MODEL, SHA = "wallwm-candidates-arm", "a" * 64
NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
REVIEWERS = ["alice", "bob", "carol"]


def dec(reviewer: str, decision: str = "approve", version: int = 3, sha: str = SHA,
        age_h: float = 1.0, key_reviewer: str | None = None) -> Decision:
    return Decision(decision, reviewer, MODEL, version, sha, NOW - dt.timedelta(hours=age_h),
                    "ok", True, N.decision_key(decision, MODEL, version, key_reviewer or reviewer))


def verdict(decisions, *, version=3, sha=SHA, lineage=frozenset({"wallwm-pipeline"}),
            required=2, max_age_h=72.0):
    return judge(decisions, candidates_model=MODEL, version=version, bundle_sha256=sha,
                 reviewers=REVIEWERS, lineage_users=set(lineage), required=required,
                 max_age=dt.timedelta(hours=max_age_h), now=NOW)


def test_two_distinct_valid_approvals_are_enough():
    v = verdict([dec("alice"), dec("bob")])
    assert v.ok and v.approvers == ["alice", "bob"] and v.refusal() is None


def test_one_approval_is_not_n():
    v = verdict([dec("alice")])
    assert not v.ok and v.refusal().rule == "approvals_required"
    assert "1 valid approval(s) ['alice'] of 2" in str(v.refusal())


@pytest.mark.parametrize("d,rule", [
    (dec("mallory"), "reviewer_listed"),
    (dec("alice", version=4), "approval_binding"),
    (dec("alice", sha="b" * 64), "approval_binding"),
    (dec("alice", age_h=73), "approval_fresh"),
    (dec("alice", age_h=-1), "approval_fresh"),  # dated in the future
    (dec("alice", key_reviewer="bob"), "approval_binding"),  # a tag naming someone else
])
def test_an_approval_that_breaks_a_rule_is_not_counted(d, rule):
    v = verdict([d, dec("carol")])
    assert v.approvers == ["carol"]
    assert [r for _, r, _ in v.void] == [rule]
    assert v.refusal().rule == rule


def test_four_eyes_voids_the_lineage_users_approval():
    v = verdict([dec("alice"), dec("bob")], lineage={"wallwm-pipeline", "alice"})
    assert v.approvers == ["bob"] and v.void[0][1] == "four_eyes"


def test_a_rejection_blocks_whatever_the_approvals():
    v = verdict([dec("alice"), dec("bob"), dec("carol", "reject", age_h=500, sha="c" * 64)])
    assert not v.ok and v.refusal().rule == "rejection_final" and "carol" in str(v.refusal())


def test_a_rejection_by_a_non_reviewer_does_not_count():
    v = verdict([dec("alice"), dec("bob"), dec("mallory", "reject")])
    assert v.ok and v.void[0][1] == "reviewer_listed"


def test_decision_round_trips_through_its_tag():
    d = dec("alice@example.com")
    assert N.decision_key("approve", MODEL, 3, "alice@example.com") == d.key
    back = Decision.from_tag(d.key, d.to_json())
    assert back == d


def test_comment_is_required_and_bounded():
    with pytest.raises(ValueError, match="--comment is required"):
        check_comment("  ")
    with pytest.raises(ValueError, match="at most"):
        check_comment("x" * 5000)
    assert check_comment(" fine ") == "fine"


def test_rejecting_ones_own_version_counts():
    v = verdict([dec("alice", "reject")], lineage={"alice"})
    assert v.refusal().rule == "rejection_final"
