"""The same inputs and parameters give the same bytes, so data.dvc's md5 reproduces anywhere."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.unit.build.test_bad_inputs import _build

pytest.importorskip("metaworld")


def _digests(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file() and "gx" not in f.parts}


def test_two_builds_are_byte_identical(tmp_path):
    plan1, r1 = _build("sim:episodes=2,perturb_prob=0", tmp_path / "a")
    plan2, r2 = _build("sim:episodes=2,perturb_prob=0", tmp_path / "b")
    assert plan1.build_id == plan2.build_id
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert a == b and any(k.endswith(".mp4") for k in a)


def test_balance_report_on_a_build(tmp_path):
    """The paper's claim on our data: events are more balanced units than episodes (same
    clusters), and the balanced sampler is closer to uniform than natural sampling."""
    import json

    _build("sim:episodes=2,perturb_prob=0", tmp_path / "a")
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    b = m["events"]["clusters"]["balance"]
    assert b["events_language"]["normalized_entropy"] > b["episodes_language"]["normalized_entropy"]
    assert b["sampled_balanced"]["normalized_entropy"] > b["sampled_natural"]["normalized_entropy"]
    assert (tmp_path / "a" / "tokenizer.json").exists()
    assert (tmp_path / "a" / "clusters" / "events.parquet").exists()
    assert m["events"]["annotations"]["score_vs_ground_truth"]["boundary_f1"] >= 0.8
