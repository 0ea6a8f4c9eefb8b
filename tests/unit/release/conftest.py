"""Keys, bundles and a simulated channel shared by the release unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.bundles import make_bundle
from tests.unit.release.simulator import BASE, MemoryStore, Simulator
from wallwm.release.client import ReleaseClient
from wallwm.release.keys import KeyRing
from wallwm.release.tuf_repo import Repository


@pytest.fixture(scope="session")
def bundle_v1(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b1") / "bundle", tag=1.0)


@pytest.fixture(scope="session")
def bundle_v2(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b2") / "bundle", tag=2.0)


@pytest.fixture
def keys(tmp_path) -> KeyRing:
    return KeyRing.create(tmp_path / "keys", root_keys=2, root_threshold=2)


@pytest.fixture
def channel(keys, bundle_v1):
    """(store, repo, sim) with release 1.0.0 published to `stable`."""
    store = MemoryStore()
    repo = Repository(store, keys, "stable")
    repo.add_release(bundle_v1, "1.0.0")
    return store, repo, Simulator(store)


@pytest.fixture
def client_for(tmp_path):
    def make(sim: Simulator, root: bytes, name: str = "robot") -> ReleaseClient:
        return ReleaseClient(tmp_path / name / "tuf", f"{BASE}/stable", sim, root)

    return make
