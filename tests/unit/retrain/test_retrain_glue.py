"""The retrain's own logic: stage failures name the stage, release naming and reuse, and the
summary (what a user reads at the end of `make run`)."""

from __future__ import annotations

import pytest

from components.retrain.release import release_result, release_version
from components.retrain.summary import markdown_summary
from flows.retrain import Report, StageFailed


def test_release_version_is_unique_per_bundle_and_ordered_by_the_candidate_version():
    a = release_version({"version": 3, "bundle_sha256": "ab" * 32})
    b = release_version({"version": 4, "bundle_sha256": "cd" * 32})
    from packaging.version import Version

    assert a == "3.0.0+" + "ab" * 6 and Version(b) > Version(a)


@pytest.mark.parametrize("new, running, reused", [
    (False, ["1.0.0+x", "1.0.0+x"], True),    # nothing new: re-announced only
    (True, ["1.0.0+x", "1.0.0+x"], False),    # just published
    (False, ["1.0.0+x", "0.9.0+y"], False),   # a robot is not on it
])
def test_release_counts_as_reused_only_when_nothing_was_new(new, running, reused):
    res = {"status": "complete", "published": [{"new": new}, {"new": False}],
           "robots": [{"robot": f"r{i}", "running": v} for i, v in enumerate(running)]}
    assert release_result("1.0.0+x", res)["reused"] is reused


def test_a_failed_stage_is_named_and_chained():
    cause = ValueError("bad bundle")
    e = StageFailed("register", cause)
    assert e.stage == "register" and "stage `register` failed" in str(e) and "bad bundle" in str(e)


def test_summary_names_every_stage_reuse_gates_and_rollout():
    rep = Report()
    rep.add("data", 1.0, True, build_id="abc")
    rep.add("train", 2.0, False)
    out = {"report": rep, "end": {"state": "AwaitingApproval", "message": "waits for review"},
           "register": {"model": "wallwm-candidates-x", "version": 2, "passed": True,
                        "gates": {"fp8_accuracy": '{"passed": true}'}},
           "release": {"version": "2.0.0+ab", "status": "complete", "seconds": 3.0,
                       "reason": "every robot runs it", "robots": [
                           {"robot": "sim-0", "running": "2.0.0+ab", "state": "serving"}]}}
    md = markdown_summary(out)
    assert "# Retrain: AwaitingApproval" in md and "waits for review" in md
    assert "| data | reused |" in md and "| train | done |" in md
    assert "Gates of wallwm-candidates-x v2: passed" in md and "`fp8_accuracy`" in md
    assert "| sim-0 | 2.0.0+ab | serving |" in md
    assert "Reused stages: data" in md


def test_only_transient_failures_are_retried():
    import requests

    from components.retrain.stage_policy import call_with_retries, is_transient

    calls: list[int] = []

    def flaky(fail_with):
        calls.append(1)
        if len(calls) == 1:
            raise fail_with
        return "ok"

    retried: list[int] = []
    outage = RuntimeError("MLflow call failed")
    outage.__cause__ = requests.ConnectionError("connection refused")
    assert is_transient(outage)
    assert call_with_retries(flaky, (outage,), {}, 1, 0.0, lambda n, e: retried.append(n)) == "ok"
    assert len(calls) == 2 and retried == [1]

    calls.clear()
    with pytest.raises(ValueError, match="bad bundle"):  # deterministic: one attempt only
        call_with_retries(flaky, (ValueError("bad bundle"),), {}, 3, 0.0, lambda n, e: None)
    assert len(calls) == 1


def test_a_stage_flow_gets_the_time_limit():
    from prefect import flow

    from components.retrain.stage_policy import with_time_limit

    @flow
    def stage():
        return 1

    assert with_time_limit(stage, 12.0).timeout_seconds == 12.0
    plain = len
    assert with_time_limit(plain, 12.0) is plain
