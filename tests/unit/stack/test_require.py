"""`require_stack`: no stack, a stale stack.env, or an address that does not answer all fail
fast with the hint; live addresses pass."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from components.stack.home import write_private
from components.stack.lifecycle import ServiceState, StackState
from components.stack.ports import free_port
from components.stack.require import (
    ALL,
    HINT,
    SERVICE_VARS,
    StackUnavailable,
    check_stack,
    require_stack,
)


@pytest.fixture(autouse=True)
def clean_env():
    """No service variables; check_stack loads stack.env into os.environ, so restore it all."""
    saved = dict(os.environ)
    for var in SERVICE_VARS.values():
        os.environ.pop(var, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _urls(ports: dict[str, int]) -> dict[str, str]:
    return {
        "mlflow": f"http://127.0.0.1:{ports['mlflow']}",
        "s3": f"http://127.0.0.1:{ports['s3']}",
        "prefect": f"http://127.0.0.1:{ports['prefect']}/api",
        "ray": f"127.0.0.1:{ports['ray']}",
    }


def _write_stack(home: Path, urls: dict[str, str], pids: dict[str, int]) -> None:
    """stack.json + stack.env as `stack up` leaves them."""
    home.mkdir(parents=True, exist_ok=True)
    state = StackState(str(home), {
        n: ServiceState(n, urls[n], port=int(urls[n].rsplit(":", 1)[1].split("/")[0]),
                        pid=pids[n], running=True, healthy=True) for n in ALL})
    state.save(home / "stack.json")
    write_private(home / "stack.env", "".join(f"{SERVICE_VARS[n]}={urls[n]}\n" for n in ALL))


def test_no_stack_names_every_variable_and_the_fix(tmp_path):
    with pytest.raises(StackUnavailable) as e:
        check_stack(home=tmp_path)
    msg = str(e.value)
    assert HINT in msg and "run `wallwm stack up`" in msg
    assert "MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL, PREFECT_API_URL, RAY_ADDRESS are not set" in msg


def test_stale_stack_env_after_a_reboot_is_named(tmp_path):
    urls = _urls({n: free_port() for n in ALL})  # nothing listens there any more
    _write_stack(tmp_path, urls, {n: _dead_pid() for n in ALL})
    with pytest.raises(StackUnavailable, match="stack.env is stale") as e:
        check_stack(home=tmp_path)
    assert "mlflow (pid" in str(e.value) and HINT in str(e.value)


def test_a_reused_pid_that_is_not_ours_is_stale(tmp_path):
    with socket.socket() as s:  # the port answers, and the pid lives, but it is not our service
        s.bind(("127.0.0.1", 0))
        s.listen()
        urls = _urls({n: s.getsockname()[1] for n in ALL})
        _write_stack(tmp_path, urls, {n: os.getpid() for n in ALL})
        with pytest.raises(StackUnavailable, match="stale"):
            check_stack(home=tmp_path)


def test_own_addresses_are_checked_and_used(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for name, url in _urls({n: port for n in ALL}).items():
            monkeypatch.setenv(SERVICE_VARS[name], url)
        assert check_stack(home=tmp_path)["prefect"] == f"http://127.0.0.1:{port}/api"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
        with pytest.raises(StackUnavailable, match="MLFLOW_TRACKING_URI=.*does not answer"):
            check_stack(home=tmp_path)
        assert check_stack(needs=("prefect",), home=tmp_path) == {
            "prefect": f"http://127.0.0.1:{port}/api"}
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # an explicit choice Ray resolves itself
    assert check_stack(needs=("ray",), home=tmp_path) == {"ray": "auto"}


def test_require_stack_exits_3_with_the_hint(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        require_stack(home=tmp_path)
    assert e.value.code == 3
    assert HINT in capsys.readouterr().err
