"""Fixtures: hand-laid LeRobot datasets (built once per session) and the shared real ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.lerobot_fixtures import make_v21, make_v30

SHARED_LEROBOT = Path(__file__).resolve().parents[3] / ".." / "shared" / "datasets" / "lerobot"


@pytest.fixture(scope="session")
def v30_dataset(tmp_path_factory) -> Path:
    return make_v30(tmp_path_factory.mktemp("v30") / "hand_v30")


@pytest.fixture(scope="session")
def v21_dataset(tmp_path_factory) -> Path:
    return make_v21(tmp_path_factory.mktemp("v21") / "hand_v21")


def shared(name: str) -> Path:
    path = SHARED_LEROBOT / name
    if not (path / "meta" / "info.json").exists():
        pytest.skip(f"real dataset {path} absent (CI provides ../shared/datasets beside the repo)")
    return path
