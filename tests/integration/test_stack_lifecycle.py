"""`stack up/status/down`: only our processes stop, and data survives a restart and a kill."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from components.stack import down, read_stack_env, status, up
from components.stack.home import stack_id
from components.stack.ports import port_is_free
from components.stack.process import marked_processes
from components.storage import S3Location, get_bytes, put_bytes, s3_client
from tests.conftest import ROOT, SERVICE_VARS, free_port_params
from wallwm.config import load_params

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def own_services(monkeypatch):
    """These tests start their own stacks: hide the session stack's addresses."""
    for var in SERVICE_VARS:
        monkeypatch.delenv(var, raising=False)


def _client_env(home: Path) -> dict[str, str]:
    return {**os.environ, **read_stack_env(home)}


def _log_artifact(env: dict[str, str], payload: Path) -> str:
    code = textwrap.dedent(f"""
        import mlflow
        mlflow.set_experiment("persist")
        with mlflow.start_run() as r:
            mlflow.log_artifact({str(payload)!r}, artifact_path="p")
            print("RUN_ID=" + r.info.run_id)
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return next(x for x in out.stdout.splitlines() if x.startswith("RUN_ID=")).removeprefix(
        "RUN_ID="
    )


def _artifact_sha(env: dict[str, str], run_id: str, name: str, dst: Path) -> str:
    code = (
        f"import mlflow; print(mlflow.artifacts.download_artifacts(run_id={run_id!r}, "
        f"artifact_path='p/{name}', dst_path={str(dst)!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return hashlib.sha256(Path(out.stdout.strip().splitlines()[-1]).read_bytes()).hexdigest()


def test_up_status_down_restart_keeps_data(tmp_path):
    home = tmp_path / "home"
    params = load_params(ROOT / "params.yaml", sets=free_port_params()).services
    state = up(params, home=home)
    try:
        assert all(s.healthy for s in state.services.values()), state
        env = _client_env(home)
        s3 = s3_client(
            env["AWS_ENDPOINT_URL"],
            credentials=(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]),
        )
        blob = os.urandom(300_000)
        sha = put_bytes(s3, S3Location("wallwm-dvc", "persist/blob"), blob)
        payload = tmp_path / "artifact.bin"
        payload.write_bytes(os.urandom(200_000))
        run_id = _log_artifact(env, payload)
        art_sha = hashlib.sha256(payload.read_bytes()).hexdigest()

        st = status(home=home, params=params)
        assert all(s.healthy for s in st.services.values())
        # an interrupted upload leaves a nanio temp file; the next start must clear it
        (home / "s3" / "wallwm-dvc" / ".tmp.deadbeef").parent.mkdir(parents=True, exist_ok=True)
        (home / "s3" / "wallwm-dvc" / ".tmp.deadbeef").write_bytes(b"partial")
    finally:
        n = down(home)
    assert n > 0
    assert marked_processes(stack_id(home)) == []
    assert all(port_is_free("127.0.0.1", s.port) for s in state.services.values() if s.port)
    assert not (home / "stack.env").exists()

    state2 = up(params, home=home)
    try:
        env = _client_env(home)
        s3 = s3_client(
            env["AWS_ENDPOINT_URL"],
            credentials=(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]),
        )
        assert (
            hashlib.sha256(get_bytes(s3, S3Location("wallwm-dvc", "persist/blob"))).hexdigest()
            == sha
        )
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="wallwm-dvc").get("Contents", [])]
        assert not any(".tmp." in k for k in keys)
        assert _artifact_sha(env, run_id, "artifact.bin", tmp_path / "dl") == art_sha

        # a killed S3 server (SIGKILL, no shutdown) loses nothing either
        os.kill(state2.services["s3"].pid, signal.SIGKILL)
        psutil.Process(state2.services["s3"].pid).wait(10) if psutil.pid_exists(
            state2.services["s3"].pid
        ) else None
        state3 = up(params, home=home)
        env = _client_env(home)
        s3 = s3_client(
            env["AWS_ENDPOINT_URL"],
            credentials=(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]),
        )
        assert (
            hashlib.sha256(get_bytes(s3, S3Location("wallwm-dvc", "persist/blob"))).hexdigest()
            == sha
        )
        assert state3.services["mlflow"].note == "already running"
    finally:
        down(home)
    assert marked_processes(stack_id(home)) == []


def test_taken_port_is_reported_or_replaced(tmp_path):
    import socket

    from components.stack import StackError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        home = tmp_path / "home"
        strict = load_params(
            ROOT / "params.yaml",
            sets=free_port_params(
                **{"services.s3.port": str(taken), "services.on_port_taken": "error"}
            ),
        ).services
        with pytest.raises(StackError, match=f"port {taken} for s3 is taken"):
            up(strict, home=home)
        down(home)


def test_user_supplied_address_is_used_not_started(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    params = load_params(ROOT / "params.yaml", sets=free_port_params()).services
    try:
        state = up(params, home=home)
        for name in ("ray", "prefect", "mlflow"):
            assert state.services[name].external and state.services[name].pid is None
        assert not state.services["s3"].external and state.services["s3"].healthy
        names = {p.environ().get("WALLWM_SERVICE") for p in marked_processes(stack_id(home))}
        assert names == {"s3"}
    finally:
        down(home)
