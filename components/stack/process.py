"""Start service processes detached (own session, log file) and stop exactly those.

Each process we start carries `WALLWM_STACK_ID` in its environment; children inherit it, so
`stop_marked` finds every process of ours (Ray's raylet and GCS too) and nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

MARKER = "WALLWM_STACK_ID"


# Service data (objects, mlflow.db, prefect.db, logs) is for the stack's owner only.
SERVICE_UMASK = 0o077


def spawn(cmd: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path | None = None) -> int:
    """Start `cmd` in a new session (umask 077) with output appended to `log`; return its pid."""
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(cmd),
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
            umask=SERVICE_UMASK,
        )
    return proc.pid


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def marked_processes(stack_id: str, service: str | None = None) -> list[psutil.Process]:
    """Every live process whose environment carries our marker (optionally of one service)."""
    found = []
    me = os.getpid()
    for p in psutil.process_iter(["pid"]):
        if p.pid == me:
            continue
        try:
            env = p.environ()
        except (psutil.Error, OSError):
            continue
        if env.get(MARKER) != stack_id:
            continue
        if service is not None and env.get("WALLWM_SERVICE") != service:
            continue
        if p.status() == psutil.STATUS_ZOMBIE:
            continue
        found.append(p)
    return found


def terminate(procs: list[psutil.Process], timeout: float = 20.0) -> None:
    """SIGTERM, wait, then SIGKILL whatever is left."""
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(procs, timeout=timeout)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=5)


def stop_marked(stack_id: str, service: str | None = None, timeout: float = 20.0) -> int:
    """Stop every process of ours (of one service, or all); return how many there were."""
    procs = marked_processes(stack_id, service)
    if procs:
        terminate(procs, timeout)
    # Ray respawns nothing once its parent is gone, but children forked during shutdown may remain.
    late = marked_processes(stack_id, service)
    if late:
        terminate(late, 5.0)
    return len(procs) + len(late)
