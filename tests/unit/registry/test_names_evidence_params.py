"""Names and tag keys, evidence URIs, and the `registry:`/`gates:` sections of params."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from components.registry import names as N
from components.registry.errors import RegistryError
from components.registry.evidence import Evidence, artifact_uri, metric_uri, parse_uri, tag_uri
from wallwm.config import ConfigError, load_params
from wallwm.config.schema import GateParams, RegistryParams


def test_tag_keys_are_valid_mlflow_keys_even_for_email_names():
    k = N.decision_key("approve", "wallwm-candidates-arm", 7, "alice@example.com")
    assert k.startswith("wallwm.approve.wallwm-candidates-arm.v7.alice_example.com-")
    from mlflow.utils.validation import _validate_tag_name

    _validate_tag_name(k)
    assert N.key_safe("alice@example.com") != N.key_safe("alice_example.com")  # no collision
    assert k.startswith(N.decision_prefix("wallwm-candidates-arm", 7))


def test_model_names_per_embodiment():
    p = RegistryParams(embodiments=["arm-a", "arm-b"], candidates_model="c-{embodiment}",
                       release_model="r-{embodiment}")
    n = N.model_names(p, "arm-b")
    assert (n.candidates, n.release, n.queue) == ("c-arm-b", "r-arm-b", "r-arm-b-promotion-queue")
    with pytest.raises(RegistryError) as e:
        N.model_names(p)  # two embodiments: which one?
    assert e.value.rule == "embodiment_listed"
    with pytest.raises(RegistryError, match="not in registry.embodiments"):
        N.model_names(p, "arm-c")


def test_demo_reviewer_counts_only_when_switched_on():
    assert N.reviewers(RegistryParams(reviewers=["alice"])) == ["alice"]
    assert N.reviewers(RegistryParams(reviewers=["alice"], demo_reviewer=True)) == [
        "alice", N.DEMO_REVIEWER]


def test_evidence_uris():
    assert parse_uri(metric_uri("abc", "export.latency_ms")) == ("abc", "metric",
                                                                 "export.latency_ms")
    assert parse_uri(tag_uri("abc", "wallwm.data_validation"))[1] == "tag"
    assert parse_uri(artifact_uri("abc", "report/report.html")) == ("abc", "artifact",
                                                                    "report/report.html")
    for bad in ("runs:/abc", "http://x/y", "runs:/abc/../secret", "runs:/abc#metrics=x"):
        with pytest.raises(ValueError, match="evidence URI"):
            parse_uri(bad)
    with pytest.raises(ValueError, match="interval"):
        Evidence(0.5, metric_uri("abc", "m"), (0.9, 0.1))


@pytest.mark.parametrize("kw,msg", [
    ({"reviewers": ["wallwm-pipeline"]}, "four eyes"),
    ({"promoter_user": "wallwm-pipeline"}, "four eyes"),
    ({"embodiments": ["a", "b"]}, "must contain '{embodiment}'"),
    ({"release_model": "wallwm-candidates-{embodiment}"}, "must differ"),
    ({"reviewers": ["bad name"]}, "not valid user names"),
    ({"reviewers": ["alice", "alice"]}, "twice"),
    ({"approvals_required": 0}, "greater than 0"),
])
def test_registry_params_reject_bad_values(kw, msg):
    with pytest.raises(ValidationError, match=msg):
        RegistryParams(**kw)


def test_params_yaml_sections_load_and_name_a_bad_key():
    p = load_params()
    assert p.registry.release_model == "wallwm" and p.gates.latency_budget_ms["onnxruntime"] > 0
    with pytest.raises(ConfigError, match="registry.approvals_required"):
        load_params(sets=["registry.approvals_required=0"])
    with pytest.raises(ConfigError, match="gates.latency_budget_ms"):
        load_params(sets=["gates.latency_budget_ms={onnxruntime: -1}"])
    with pytest.raises(ValidationError):
        GateParams(max_onnx_parity_abs=0)
