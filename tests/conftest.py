"""Test isolation and the real local services.

Every test session gets its own WALLWM_HOME and PREFECT_HOME in a temp folder, and none of the
developer's service variables: services are started by the `stack` fixture on free ports,
from the same code `wallwm stack up` runs, and stopped at the end.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SERVICE_VARS = (
    "MLFLOW_TRACKING_URI",
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
    "PREFECT_API_URL",
    "RAY_ADDRESS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "WALLWM_PARAMS",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"

_session_tmp = Path(tempfile.mkdtemp(prefix="wallwm-test-"))
for _v in SERVICE_VARS:
    os.environ.pop(_v, None)
os.environ["WALLWM_HOME"] = str(_session_tmp / "home")
os.environ["PREFECT_HOME"] = str(_session_tmp / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["MUJOCO_GL"] = "osmesa"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["DVC_NO_ANALYTICS"] = "1"


def free_port_params(**extra: str) -> list[str]:
    """`--set` overrides that put every service on a free port."""
    sets = [f"services.{s}.port=0" for s in ("mlflow", "s3", "prefect", "ray")]
    return sets + [f"{k}={v}" for k, v in extra.items()]


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, str]]:
    """The whole local stack (nanio, MLflow, Prefect, Ray) for this test session."""
    from components.stack import down, load_stack_env, up
    from wallwm.config import load_params

    home = Path(os.environ["WALLWM_HOME"])
    params = load_params(ROOT / "params.yaml", sets=free_port_params())
    try:
        up(params.services, home=home, registry=params.registry)
        env = load_stack_env(home, override=True)
        yield env
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except ImportError:
            pass
        down(home)
        for k in env if "env" in locals() else ():
            os.environ.pop(k, None)


@pytest.fixture(scope="session")
def prefect(stack) -> Iterator[Any]:
    """A Prefect client of the stack's server. Prefect reads its settings when first imported,
    possibly before `stack` loaded the addresses (then its client would talk to a temporary
    server of its own): `temporary_settings` pins the stack's API URL however early that was."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            yield client


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"{SHARED_DATASETS} is absent (CI keeps shared/ beside the checkout)")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def sim_build4(tmp_path_factory) -> Path:
    """One real 4-episode sim build (one per task) shared by every test that trains or evaluates
    on real data: building it costs about a minute on 2 cores, so it is made once a session."""
    from tests.unit.build.test_bad_inputs import _build

    _, res = _build("sim:episodes=4", tmp_path_factory.mktemp("sim_build4") / "b")
    return Path(res.path)
