"""Two `wallwm stack up` at once on one home: the second waits for the first, then finds its
services running instead of starting (and killing) its own. Only S3 and Prefect are started
here (MLflow and Ray are given as unreachable external addresses) to keep it short; the lock
covers the whole `up` the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from components.stack import down, status
from components.stack.home import stack_id
from components.stack.lifecycle import StackState
from components.stack.process import marked_processes
from tests.conftest import ROOT, SERVICE_VARS, free_port_params

pytestmark = pytest.mark.integration
WALLWM = str(Path(sys.executable).parent / "wallwm")
WAITING = "waiting for another `wallwm stack` command"


def test_concurrent_up_waits_and_then_sees_the_running_stack(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env.update(WALLWM_HOME=str(home), PREFECT_HOME=str(tmp_path / "prefect"), COLUMNS="200",
               MLFLOW_TRACKING_URI="http://127.0.0.1:1", RAY_ADDRESS="127.0.0.1:1",
               PYTHONPATH=str(ROOT))  # this checkout's code, whatever is installed
    sets = [a for s in free_port_params() for a in ("--set", s)]
    try:
        first = subprocess.Popen([WALLWM, "stack", "up", *sets], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        second = subprocess.Popen([WALLWM, "stack", "up", *sets], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        outs = [p.communicate(timeout=300) for p in (first, second)]
        for p, (out, err) in zip((first, second), outs, strict=True):
            assert p.returncode == 0, out + err
        waited = [o + e for o, e in outs if WAITING in o + e]
        assert len(waited) == 1, outs  # exactly one found the other holding the lock
        assert "already running" in waited[0]  # ... and then used its services

        state = StackState.load(home / "stack.json")
        sid = stack_id(home.resolve())
        for name in ("s3", "prefect"):
            svc = state.services[name]
            tree = {svc.pid} | {c.pid for c in psutil.Process(svc.pid).children(recursive=True)}
            ours = {p.pid for p in marked_processes(sid, name)}
            assert ours and ours <= tree, (name, ours, tree)  # no orphan of a second start
        for name in ("mlflow", "ray"):  # given by the user: never started by either `up`
            assert state.services[name].external, state.services[name]
            assert marked_processes(sid, name) == []
        st = status(home=home.resolve())
        assert st.services["s3"].healthy and st.services["prefect"].healthy, st
        assert (home / "stack.env").exists()
    finally:
        down(home.resolve())
    assert marked_processes(stack_id(home.resolve())) == []
