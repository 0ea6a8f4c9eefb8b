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
