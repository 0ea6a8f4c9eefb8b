"""The automated gates as pure functions: each bound, missing evidence, and the interval rule."""

from __future__ import annotations

import math

import pytest

from components.registry import evidence as E
from components.registry.evidence import Evidence
from components.registry.gates import GATES, Champion, GateResult, evaluate_gates
from wallwm.config.schema import GateParams

RUN = "0123abcd"


def good(**over) -> dict[str, Evidence]:
    ev = {
        E.DATA_VALIDATION: Evidence("passed", E.tag_uri(RUN, E.DATA_VALIDATION)),
        E.SUCCESS: Evidence(0.8, E.metric_uri(RUN, E.SUCCESS), (0.7, 0.9)),
        E.REPORT: Evidence("report/report.html", E.artifact_uri(RUN, "report/report.html")),
        E.ACTION_MSE: Evidence(0.1, E.metric_uri(RUN, E.ACTION_MSE)),
        E.ONNX_PARITY: Evidence(1e-5, E.metric_uri(RUN, E.ONNX_PARITY)),
        E.FP8_COSINE: Evidence(0.999, E.metric_uri(RUN, E.FP8_COSINE)),
        E.LATENCY: Evidence(20.0, E.metric_uri(RUN, E.LATENCY)),
    }
    ev.update(over)
    return ev


def run(ev=None, *, gates=None, champion=None, bundle_problem=None, precisions=("fp32", "fp8"),
        runtime="onnxruntime", problems=None, margin=0.05) -> dict[str, GateResult]:
    out = evaluate_gates(ev if ev is not None else good(), gates=gates or GateParams(),
                         margin=margin, champion=champion, bundle_problem=bundle_problem,
                         precisions=list(precisions), runtime=runtime, problems=problems)
    assert [g.name for g in out] == list(GATES)
    return {g.name: g for g in out}


def test_good_evidence_passes_every_gate():
    res = run()
    assert all(g.passed for g in res.values()), [g.line() for g in res.values()]
    assert res["latency"].threshold == 200.0 and res["latency"].op == "<="
    assert res["closed_loop_success"].evidence == (E.metric_uri(RUN, E.SUCCESS),
                                                   E.artifact_uri(RUN, "report/report.html"))


@pytest.mark.parametrize("key,value,gate", [
    (E.LATENCY, 250.0, "latency"),
    (E.SUCCESS, 0.3, "closed_loop_success"),
    (E.ACTION_MSE, 0.9, "action_error"),
    (E.ONNX_PARITY, 0.01, "onnx_parity"),
    (E.FP8_COSINE, 0.95, "fp8_accuracy"),
])
def test_each_bound_fails_alone_with_figure_and_threshold(key, value, gate):
    old = good()[key]
    res = run(good(**{key: Evidence(value, old.uri, old.interval)}))
    assert [n for n, g in res.items() if not g.passed] == [gate]
    assert res[gate].figure == value and f"{value:g}" in res[gate].reason
    assert res[gate].rule == "gates_passed"


def test_latency_budget_per_runtime():
    gates = GateParams(max_latency_ms=200.0, latency_budget_ms={"tensorrt": 10.0})
    res = run(gates=gates, runtime="tensorrt")
    assert not res["latency"].passed and res["latency"].threshold == 10.0
    assert "'tensorrt'" in res["latency"].reason
    assert run(gates=gates, runtime="onnxruntime")["latency"].passed


def test_failed_data_validation_blocks():
    res = run(good(**{E.DATA_VALIDATION: Evidence("failed", E.tag_uri(RUN, E.DATA_VALIDATION))}))
    assert not res["data_validation"].passed and "'failed'" in res["data_validation"].reason


def test_missing_or_unresolvable_evidence_fails_with_evidence_present():
    ev = good()
    del ev[E.ONNX_PARITY]
    res = run(ev)
    assert not res["onnx_parity"].passed and res["onnx_parity"].rule == "evidence_present"
    why = "artifact runs:/x/report.html is missing"
    res = run(problems={E.REPORT: why})
    assert not res["closed_loop_success"].passed
    assert res["closed_loop_success"].rule == "evidence_present"
    assert why in res["closed_loop_success"].reason
    nothing = Evidence(None, E.metric_uri(RUN, E.LATENCY))
    assert not run(good(**{E.LATENCY: nothing}))["latency"].passed


def test_nan_is_not_a_pass():
    res = run(good(**{E.LATENCY: Evidence(math.nan, E.metric_uri(RUN, E.LATENCY))}))
    assert not res["latency"].passed and "finite" in res["latency"].reason


def test_fp8_gate_only_when_the_bundle_has_fp8():
    ev = good()
    del ev[E.FP8_COSINE]
    res = run(ev, precisions=("fp32",))
    assert res["fp8_accuracy"].passed and "no FP8" in res["fp8_accuracy"].reason
    assert not run(ev, precisions=("fp32", "fp8"))["fp8_accuracy"].passed


def test_bundle_problem_fails_its_gate():
    res = run(bundle_problem="graphs/x.onnx: sha256 ... != manifest")
    assert not res["bundle_hashes"].passed and res["bundle_hashes"].rule == "bundle_hashes"


@pytest.mark.parametrize("cand,champ,passes", [
    ((0.70, 0.90), (0.75, 0.95), True),    # overlapping intervals: no evidence of regression
    ((0.60, 0.72), (0.75, 0.95), True),    # below, but within the margin of 0.05
    ((0.50, 0.69), (0.75, 0.95), False),   # the whole interval is below by more than 0.05
])
def test_regression_uses_intervals(cand, champ, passes):
    ev = good(**{E.SUCCESS: Evidence(sum(cand) / 2, E.metric_uri(RUN, E.SUCCESS), cand)})
    res = run(ev, champion=Champion("3", sum(champ) / 2, champ), margin=0.05)
    assert res["no_regression"].passed is passes, res["no_regression"].reason
    if not passes:
        assert "release version 3" in res["no_regression"].reason


def test_regression_point_estimates_alone_do_not_decide():
    # the point estimate dropped by 0.2, but the intervals overlap: not a regression
    ev = good(**{E.SUCCESS: Evidence(0.55, E.metric_uri(RUN, E.SUCCESS), (0.3, 0.8))})
    assert run(ev, champion=Champion("1", 0.75, (0.6, 0.9)))["no_regression"].passed
    no_iv = good(**{E.SUCCESS: Evidence(0.9, E.metric_uri(RUN, E.SUCCESS))})
    res = run(no_iv, champion=Champion("1", 0.75, (0.6, 0.9)))
    assert not res["no_regression"].passed and "interval" in res["no_regression"].reason
    assert run(no_iv, champion=None)["no_regression"].passed


def test_gate_result_round_trips_through_its_tag():
    g = run()["closed_loop_success"]
    assert GateResult.from_tag(g.to_tag()) == g
