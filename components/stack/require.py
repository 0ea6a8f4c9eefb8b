"""Fail fast, with the fix, when a command needs the stack and it is not there.

Without this check every client falls back silently: MLflow writes `mlruns/` or `mlflow.db`
into the working folder, Prefect starts a temporary server per process, Ray starts a private
instance, boto3 talks to real AWS. A stale `stack.env` (the machine rebooted, a service was
killed) would only end in "connection refused" deep inside a run. Call `require_stack()` before
anything imports Prefect, MLflow or Ray (Prefect reads its settings at import).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from components.stack.home import stack_id, wallwm_home
from components.stack.lifecycle import StackError, StackState, load_stack_env, read_stack_env
from components.stack.ports import port_open
from components.stack.process import MARKER

# service -> the variable that names its address (the one a user sets to bring their own)
SERVICE_VARS = {
    "mlflow": "MLFLOW_TRACKING_URI",
    "s3": "AWS_ENDPOINT_URL",
    "prefect": "PREFECT_API_URL",
    "ray": "RAY_ADDRESS",
}
ALL = tuple(SERVICE_VARS)
HINT = (
    "run `wallwm stack up` (or set MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL, PREFECT_API_URL, "
    "RAY_ADDRESS)"
)
EXIT_CODE = 3  # as `wallwm stack status` when a service is down


class StackUnavailable(StackError):
    """A needed service has no address, or its address does not answer."""


def _host_port(name: str, address: str) -> tuple[str, int] | None:
    if name == "ray" and "://" not in address:
        address = "ray://" + address
    u = urlsplit(address)
    if not u.hostname:
        return None
    try:
        port = u.port
    except ValueError:
        return None
    if port is None:
        port = {"https": 443, "http": 80}.get(u.scheme)
    return (u.hostname, port) if port else None


def _ours_alive(pid: int | None, sid: str) -> bool:
    """The recorded pid still runs and is ours (after a reboot the number may be reused)."""
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and p.environ().get(MARKER) == sid
    except (psutil.Error, OSError):
        return False


def check_stack(needs: Collection[str] = ALL, home: Path | None = None) -> dict[str, str]:
    """The address of every service in `needs`, each checked to answer; else StackUnavailable.

    Addresses come from the environment (a user's own service wins) after `<home>/stack.env` is
    loaded; one that comes from stack.env must also still be served by the process recorded in
    `stack.json`, so a stale file after a reboot is named as such.
    """
    unknown = set(needs) - set(SERVICE_VARS)
    if unknown:
        raise ValueError(f"needs: unknown service(s) {sorted(unknown)}; known: {list(ALL)}")
    home = (home or wallwm_home()).resolve()
    load_stack_env(home)
    env_file = read_stack_env(home)
    state = StackState.load(home / "stack.json")
    sid = stack_id(home)
    problems: list[str] = []
    missing: list[str] = []
    stale = False
    found: dict[str, str] = {}
    for name in ALL:
        if name not in needs:
            continue
        var = SERVICE_VARS[name]
        address = os.environ.get(var, "")
        if not address:
            missing.append(var)
            continue
        if name == "ray" and address in ("auto", "local"):
            found[name] = address  # the user's explicit choice: Ray resolves it itself
            continue
        target = _host_port(name, address)
        from_stack = env_file.get(var) == address
        svc = state.services.get(name) if state else None
        if from_stack and svc and not svc.external:
            if not _ours_alive(svc.pid, sid) or not (target and port_open(*target, timeout=1)):
                stale = True
                problems.append(f"{name} (pid {svc.pid}, {address}) is not running")
                continue
        elif not target:
            problems.append(f"{var}={address} names no host and port")
            continue
        elif not port_open(*target, timeout=2):
            origin = f"from {home / 'stack.env'}" if from_stack else "set in the environment"
            problems.append(f"{var}={address} ({origin}) does not answer")
            continue
        found[name] = address
    if missing:
        where = (
            f"(nor in {home / 'stack.env'})"
            if env_file
            else f"and no stack runs under {home} (no stack.env)"
        )
        verb = "is" if len(missing) == 1 else "are"
        problems.insert(0, f"{', '.join(missing)} {verb} not set {where}")
    if problems:
        head = (
            f"{home / 'stack.env'} is stale (the machine restarted or a service was stopped)"
            if stale
            else "the services this command needs are not available"
        )
        raise StackUnavailable(f"{head}: " + "; ".join(problems) + f".\n{HINT}")
    return found


def require_stack(needs: Collection[str] = ALL, home: Path | None = None) -> dict[str, str]:
    """`check_stack`, for command lines: on failure print the reason and the hint, exit 3."""
    try:
        return check_stack(needs, home)
    except StackUnavailable as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CODE) from None
