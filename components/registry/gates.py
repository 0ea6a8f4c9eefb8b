"""The automated gates: pure functions from evidence and params to pass/fail with the reason.

Each gate is recorded on the model version as the tag `wallwm.gate.<name>` holding its figure,
threshold, comparison, interval and evidence URIs, so the version's page in the MLflow UI shows
why it passed or failed. A gate whose evidence is missing fails (rule `evidence_present`).

The regression gate compares intervals, not point estimates: it fails only when the candidate's
whole success interval lies more than `registry.regression_margin` below the champion's interval
(`candidate.high < champion.low - margin`); a drop that the evaluation cannot tell apart from
noise does not block, a clear one does.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from components.registry import evidence as E
from components.registry.evidence import Evidence
from wallwm.config.schema import GateParams

GATES = ("data_validation", "closed_loop_success", "action_error", "no_regression",
         "onnx_parity", "fp8_accuracy", "latency", "bundle_hashes")


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    figure: float | str | None
    threshold: float | str | None
    op: str
    evidence: tuple[str, ...] = ()
    interval: tuple[float, float] | None = None
    reason: str = ""
    rule: str = "gates_passed"

    def to_tag(self) -> str:
        d = asdict(self)
        d["evidence"] = list(self.evidence)
        d["interval"] = list(self.interval) if self.interval else None
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_tag(cls, value: str) -> GateResult:
        d = json.loads(value)
        d["evidence"] = tuple(d.get("evidence") or ())
        d["interval"] = tuple(d["interval"]) if d.get("interval") else None
        return cls(**d)

    def line(self) -> str:
        mark = "pass" if self.passed else "FAIL"
        return f"{self.name}: {mark} ({self.figure} {self.op} {self.threshold}) {self.reason}"


@dataclass(frozen=True)
class Champion:
    """The current champion's success figure (from its release version's evidence tags)."""

    release_version: str
    success: float | None
    interval: tuple[float, float] | None


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _bound(name: str, ev: dict[str, Evidence], key: str, threshold: float, op: str,
           problems: dict[str, str], needs: tuple[str, ...] = (), note: str = "") -> GateResult:
    """figure `op` threshold, with every needed evidence present (`note` explains a failure)."""
    keys = (key, *needs)
    uris = tuple(ev[k].uri for k in keys if k in ev)
    missing = [k for k in keys if k not in ev]
    if missing:
        return GateResult(name, False, None, threshold, op, uris,
                          reason=f"no evidence for {', '.join(missing)}", rule="evidence_present")
    bad = [problems[k] for k in keys if k in problems]
    e = ev[key]
    if bad:
        return GateResult(name, False, e.value, threshold, op, uris, e.interval,
                          reason="; ".join(bad), rule="evidence_present")
    if not _finite(e.value):
        return GateResult(name, False, e.value, threshold, op, uris, e.interval,
                          reason=f"{key} = {e.value!r} is not a finite number")
    ok = e.value >= threshold if op == ">=" else e.value <= threshold
    why = "" if ok else f"{key} = {e.value:g} is not {op} {threshold:g}{note}"
    return GateResult(name, ok, e.value, threshold, op, uris, e.interval, reason=why)


def latency_budget(gates: GateParams, runtime: str) -> float:
    return gates.latency_budget_ms.get(runtime, gates.max_latency_ms)


def evaluate_gates(ev: dict[str, Evidence], *, gates: GateParams, margin: float,
                   champion: Champion | None, bundle_problem: str | None,
                   precisions: list[str], runtime: str,
                   problems: dict[str, str] | None = None) -> list[GateResult]:
    """Every gate of GATES, in order. `problems`: evidence key -> why it does not resolve."""
    problems = problems or {}
    out: list[GateResult] = []

    # data validation: a tag, compared for equality
    key = E.DATA_VALIDATION
    if key not in ev:
        out.append(GateResult("data_validation", False, None, "passed", "==",
                              reason=f"no evidence for {key}", rule="evidence_present"))
    elif key in problems:
        out.append(GateResult("data_validation", False, ev[key].value, "passed", "==",
                              (ev[key].uri,), reason=problems[key], rule="evidence_present"))
    else:
        ok = ev[key].value == "passed"
        out.append(GateResult("data_validation", ok, ev[key].value, "passed", "==",
                              (ev[key].uri,), reason="" if ok else
                              f"the training run's data validation is {ev[key].value!r}"))

    out.append(_bound("closed_loop_success", ev, E.SUCCESS, gates.min_success_rate, ">=",
                      problems, needs=(E.REPORT,)))
    out.append(_bound("action_error", ev, E.ACTION_MSE, gates.max_action_mse, "<=", problems))
    out.append(_regression(ev, champion, margin, problems))
    out.append(_bound("onnx_parity", ev, E.ONNX_PARITY, gates.max_onnx_parity_abs, "<=",
                      problems))
    if "fp8" in precisions:
        out.append(_bound("fp8_accuracy", ev, E.FP8_COSINE, gates.min_fp8_cosine, ">=",
                          problems))
    else:
        out.append(GateResult("fp8_accuracy", True, None, gates.min_fp8_cosine, ">=",
                              reason="the bundle has no FP8 graphs"))
    out.append(_bound("latency", ev, E.LATENCY, latency_budget(gates, runtime), "<=", problems,
                      note=f" ms (the budget for runtime {runtime!r})"))
    out.append(GateResult("bundle_hashes", bundle_problem is None,
                          "verified" if bundle_problem is None else "mismatch", "manifest", "==",
                          reason=bundle_problem or "", rule="bundle_hashes"))
    return out


def _regression(ev: dict[str, Evidence], champion: Champion | None, margin: float,
                problems: dict[str, str]) -> GateResult:
    name, op = "no_regression", "interval not below"
    if champion is None:
        return GateResult(name, True, None, None, op, reason="no champion yet")
    e = ev.get(E.SUCCESS)
    if e is None or E.SUCCESS in problems:
        return GateResult(name, False, None, None, op, (e.uri,) if e else (),
                          reason=problems.get(E.SUCCESS, f"no evidence for {E.SUCCESS}"),
                          rule="evidence_present")
    if e.interval is None:
        return GateResult(name, False, e.value, None, op, (e.uri,), reason=(
            f"the candidate's {E.SUCCESS} has no interval ({E.SUCCESS_LOW}/{E.SUCCESS_HIGH}); "
            "the regression gate compares intervals"), rule="evidence_present")
    if champion.interval is None:
        return GateResult(name, False, e.value, None, op, (e.uri,), e.interval, reason=(
            f"champion (release version {champion.release_version}) has no success interval"),
            rule="evidence_present")
    threshold = champion.interval[0] - margin
    ok = e.interval[1] >= threshold
    why = "" if ok else (
        f"the candidate's success interval [{e.interval[0]:.3f}, {e.interval[1]:.3f}] lies "
        f"below the champion's (release version {champion.release_version}) "
        f"[{champion.interval[0]:.3f}, {champion.interval[1]:.3f}] by more than the margin "
        f"{margin:g}")
    return GateResult(name, ok, e.interval[1], round(threshold, 6), op, (e.uri,), e.interval,
                      reason=why)


def failed(results: list[GateResult]) -> list[GateResult]:
    return [g for g in results if not g.passed]
