"""Test isolation and the real local services.

Every test session gets its own WALLWM_HOME and PREFECT_HOME in a temp folder, and none of the
developer's service variables: services are started by the `stack` fixture on free ports,
from the same code `wallwm stack up` runs, and stopped at the end. The folder stays after the
run (its service logs explain a failure) and is removed by a run a day later
(`WALLWM_TEST_KEEP_HOURS`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
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

TMP_PREFIX = "wallwm-test-"


def remove_old_test_homes(parent: Path, keep_hours: float, now: float | None = None) -> list[Path]:
    """Remove the `wallwm-test-*` folders of earlier runs under `parent` older than
    `keep_hours` (their services' logs are what a failed run needs, so they stay that long;
    each run leaves ~1 GiB, which filled a dev machine's /tmp over a few days). Returns what
    was removed; a folder another user owns or that vanishes meanwhile is skipped."""
    now = time.time() if now is None else now
    gone = []
    for d in parent.glob(TMP_PREFIX + "*"):
        try:
            if d.is_dir() and not d.is_symlink() and now - d.stat().st_mtime > keep_hours * 3600:
                shutil.rmtree(d)
                gone.append(d)
        except OSError:
            continue
    return gone


if "PYTEST_XDIST_WORKER" not in os.environ:  # the controlling process only: workers start later
    remove_old_test_homes(Path(tempfile.gettempdir()),
                          float(os.environ.get("WALLWM_TEST_KEEP_HOURS", "24")))
_session_tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
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
# Under pytest-xdist (`make test` runs one worker per core) each worker gets its share of the
# cores for torch's intra-op threads, and so do the subprocesses it starts: two workers each
# running two threads on two cores would only contend.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))


def pytest_collection_modifyitems(config, items) -> None:
    """Modules marked `slow(seconds=...)` run first, longest first (a stable sort: the order
    within a module and among the rest stays). `make test` runs pytest-xdist with `--dist
    loadfile --no-loadscope-reorder`, so a long module that started last would end the run
    alone on one worker while the other idles."""
    def cost(item) -> float:
        m = item.get_closest_marker("slow")
        return -float(m.kwargs.get("seconds", 60)) if m else 0.0

    items.sort(key=cost)


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


# What every worker of one run shares: pytest loads this file in the controlling process
# before it starts the pytest-xdist workers, which inherit its environment.
os.environ.setdefault("WALLWM_TEST_SHARED", str(_session_tmp / "shared"))


def shared_dir() -> Path:
    """A folder every worker of this test run finds, for what costs minutes to make and is only
    read after: the 4-episode build and the micro world of tests/unit/distill/world.py (whose
    `lock()` every writer takes). Without xdist it is this session's own folder."""
    d = Path(os.environ["WALLWM_TEST_SHARED"])
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def sim_build4() -> Path:
    """One real 4-episode sim build (one per task) shared by every test that trains or evaluates
    on real data, and by the micro world: building it costs about a minute on 2 cores, so it
    is made once a run (read-only for the tests)."""
    from tests.unit.distill import world

    return world.build()


@pytest.fixture(scope="session")
def flows_build4(sim_build4) -> Path:
    """`sim_build4` copied where the flows keep builds, <WALLWM_HOME>/builds/<build id> (this
    process's own home), so `wallwm data build` of the same sources reuses it and the flows
    find it by id. Copied to a temporary name, then renamed: never half there."""
    import json
    import shutil

    bid = json.loads((sim_build4 / "manifest.json").read_text())["build_id"]
    final = Path(os.environ["WALLWM_HOME"]) / "builds" / bid
    if not final.exists():
        tmp = final.with_name(f".{bid}.copying")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(sim_build4, tmp)
        tmp.rename(final)
    return final

