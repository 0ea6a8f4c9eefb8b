"""The typed configuration: every key validated, errors name the key path and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from wallwm.config import ConfigError, load_params, parse_set
from wallwm.config.load import deep_merge, params_hash

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"


def test_params_yaml_is_complete_and_valid():
    p = load_params(PARAMS)
    assert {"data", "model", "train", "distill", "export", "gates", "release", "services"} <= set(
        p.model_dump()
    )
    assert p.model.preset == "tiny"
    assert set(p.model.presets) == {"tiny", "base", "large"}
    # presets are one architecture at three sizes
    sizes = [p.model.presets[k] for k in ("tiny", "base", "large")]
    assert sizes[0].width < sizes[1].width < sizes[2].width


def test_unknown_preset_names_key_and_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_params(PARAMS, sets=["model.preset=nope"])
    msg = str(e.value)
    assert "model.preset" in msg and "'nope'" in msg
    assert "base, large, tiny" in msg


@pytest.mark.parametrize(
    "override, key, fragment",
    [
        ("train.optimizer=sgd", "train.optimizer", "'muon' or 'adamw'"),
        ("train.max_steps=-3", "train.max_steps", "greater than 0"),
        ("train.max_stepz=3", "train.max_stepz", "unknown key"),
        ("services.mlflow.port=70000", "services.mlflow.port", "less than or equal to 65535"),
        ("model.presets.tiny.patch=7", "model.presets.tiny", "not divisible by patch"),
        ("data.sim.perturb_prob=2", "data.sim.perturb_prob", "less than or equal to 1"),
        ("train.stage_steps={end_to_endd: 3}", "train.stage_steps.end_to_endd",
         "'end_to_end'"),
        ("train.stage_steps={video: 0}", "train.stage_steps.video", "greater than 0"),
        ("train.stage_lr={end_to_end: 0}", "train.stage_lr.end_to_end", "greater than 0"),
        ("train.stage_lr={e2e: 0.5}", "train.stage_lr.e2e", "'end_to_end'"),
    ],
)
def test_bad_values_name_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as e:
        load_params(PARAMS, sets=[override])
    assert key in str(e.value) and fragment in str(e.value)


def test_set_overrides_and_yaml_typing():
    p = load_params(PARAMS, sets=["train.max_steps=50", "train.stages=[video]", "data.push=false"])
    assert p.train.max_steps == 50 and p.train.stages == ["video"] and p.data.push is False
    assert parse_set("a.b.c=1.5") == (["a", "b", "c"], 1.5)
    for bad in ("novalue", "=3", "a..b=1"):
        with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
            parse_set(bad)


def test_set_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="train.max_steps is a value"):
        load_params(PARAMS, sets=["train.max_steps.x=1"])


def test_second_file_merges_and_set_wins(tmp_path):
    extra = tmp_path / "gpu.yaml"
    extra.write_text(
        yaml.safe_dump(
            {"train": {"precision": "bf16-mixed", "max_steps": 10}, "model": {"preset": "base"}}
        )
    )
    p = load_params(PARAMS, extra_files=[extra], sets=["train.max_steps=20"])
    assert (
        p.train.precision == "bf16-mixed" and p.model.preset == "base" and p.train.max_steps == 20
    )
    assert p.model.size.width == p.model.presets["base"].width


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_params(tmp_path / "missing.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_params(scalar)


def test_deep_merge_and_hash_are_stable():
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}
    a, b = load_params(PARAMS), load_params(PARAMS)
    assert params_hash(a) == params_hash(b)
    assert params_hash(a) != params_hash(load_params(PARAMS, sets=["train.max_steps=7"]))


def test_cli_config_show_exits_nonzero_with_key(monkeypatch):
    from flows.cli import app

    monkeypatch.chdir(ROOT)
    r = CliRunner().invoke(app, ["config", "show", "--set", "model.preset=nope"])
    assert r.exit_code == 2
    assert "model.preset" in r.output and "tiny" in r.output
    ok = CliRunner().invoke(
        app, ["config", "show", "--format", "json", "--set", "train.max_steps=9"]
    )
    assert ok.exit_code == 0 and '"max_steps": 9' in ok.output


def test_cli_help_lists_stages():
    from flows.cli import app

    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("stack", "config", "retrain"):
        assert cmd in r.output
