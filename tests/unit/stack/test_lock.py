"""The stack lock: a second holder waits (and says for whom), a dead holder leaves no lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from components.stack.lock import LockTimeout, busy, stack_lock
from tests.conftest import ROOT

HOLD = """
import sys, time
from pathlib import Path
from components.stack.lock import stack_lock
with stack_lock(Path(sys.argv[1]), "up"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
print("released", flush=True)
"""


def _holder(home, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(home), str(seconds)], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_holder_waits_for_the_first(tmp_path):
    p = _holder(tmp_path, 2.0)
    try:
        assert f"pid {p.pid}" in (busy(tmp_path) or "")
        messages: list[str] = []
        t0 = time.monotonic()
        with stack_lock(tmp_path, "down", on_wait=messages.append):
            waited = time.monotonic() - t0
            assert p.stdout.readline().strip() == "released"  # the first one had let go
        assert waited > 1.0
        assert len(messages) == 1 and f"`stack up` pid {p.pid}" in messages[0]
        assert "waiting for another `wallwm stack` command" in messages[0]
    finally:
        p.kill()
        p.wait()
    assert busy(tmp_path) is None


def test_wait_has_a_limit_and_a_killed_holder_frees_the_lock(tmp_path):
    p = _holder(tmp_path, 60.0)
    try:
        with pytest.raises(LockTimeout, match=f"pid {p.pid}.*still holds"):
            with stack_lock(tmp_path, "up", wait_s=0.5, on_wait=lambda m: None):
                pass
    finally:
        p.kill()
        p.wait()
    with stack_lock(tmp_path, "up", wait_s=0.5, on_wait=pytest.fail):
        assert busy(tmp_path) == f"`stack up` pid {os.getpid()}"  # status sees who holds it
    assert busy(tmp_path) is None
