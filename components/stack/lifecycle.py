"""`up`, `down`, `status` of the local stack, and the env file that points clients at it."""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from components.stack import mlflow_auth
from components.stack.home import (
    credentials,
    private_dir,
    project_root,
    stack_id,
    wallwm_home,
    write_private,
)
from components.stack.lock import LockTimeout, busy, stack_lock
from components.stack.nanio_leftovers import remove_nanio_leftovers
from components.stack.ports import RAY_WORKER_PORTS, free_port, port_is_free, port_open
from components.stack.process import MARKER, alive, spawn, stop_marked, terminate
from components.storage.s3 import ensure_buckets, s3_client
from wallwm.config.schema import RegistryParams, ServicesParams
from wallwm.util.atomic import atomic_write_text

ORDER = ("s3", "mlflow", "prefect", "ray", "worker")
SPEC_FILE = project_root() / "infra" / "local" / "services.yaml"
LOCK_SLACK_S = 300.0  # how much longer than its own start-up budget an `up` waits for another
DOWN_WAIT_S = 900.0


class StackError(RuntimeError):
    """A service could not start or be reached; the message says which and where its log is."""


@dataclass
class ServiceState:
    name: str
    url: str
    external: bool = False
    port: int | None = None
    pid: int | None = None
    log: str | None = None
    running: bool = False
    healthy: bool = False
    note: str = ""
    moved_from: int | None = None  # the configured port, when it was taken and this one used

    def port_note(self) -> str:
        return f"port {self.moved_from} was taken; using {self.port}" if self.moved_from else ""


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


@dataclass
class StackState:
    home: str
    services: dict[str, ServiceState] = field(default_factory=dict)
    busy: str | None = None  # set by status(): an `up`/`down` holds the lock right now

    def save(self, path: Path) -> None:
        data = asdict(self)
        data.pop("busy")
        atomic_write_text(path, json.dumps(data, indent=2))

    @classmethod
    def load(cls, path: Path) -> StackState | None:
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(raw["home"], {k: ServiceState(**v) for k, v in raw["services"].items()})


def _spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_FILE.read_text())


def _fill(template: Any, values: dict[str, Any]) -> Any:
    if isinstance(template, str):
        return template.format(**values)
    if isinstance(template, list):
        return [_fill(t, values) for t in template]
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    return template


def _healthy(spec: dict[str, Any], host: str, port: int, url: str) -> bool:
    check = spec.get("health", {"kind": "tcp"})
    if check["kind"] == "tcp":
        return port_open(host, port)
    base = url[: -len("/api")] if url.endswith("/api") else url
    try:
        r = requests.get(base + check.get("path", "/"), timeout=2)
    except requests.RequestException:
        return False
    return True if check.get("any_status") else r.ok


def _external_healthy(name: str, url: str) -> bool:
    """Best effort reachability of a user-supplied address (never fatal: it is theirs)."""
    if name == "ray":
        host, _, port = url.replace("ray://", "").rpartition(":")
        return port.isdigit() and port_open(host or "127.0.0.1", int(port))
    try:
        requests.get(
            url.rstrip("/") + ("/health" if name in ("mlflow", "prefect") else "/"), timeout=3
        )
        return True
    except requests.RequestException:
        return False


def _log_tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


def _pick_port(
    name: str,
    configured: int,
    host: str,
    policy: str,
    taken: set[int],
    previous: int | None = None,
) -> tuple[int, int | None]:
    """The port to use and, when the configured one was taken, that configured port."""
    if configured and configured in RAY_WORKER_PORTS and name != "ray":
        raise StackError(
            f"services.{name}.port = {configured} lies in Ray's worker port range 10002-19999; "
            f"choose another"
        )
    if configured:
        if configured not in taken and port_is_free(host, configured):
            return configured, None
        if policy == "error":
            raise StackError(
                f"port {configured} for {name} is taken on {host}; free it, set "
                f"services.{name}.port to another port (0 = any free), or set "
                f"services.on_port_taken=next_free"
            )
    if (
        previous
        and previous not in taken
        and (name == "ray" or previous not in RAY_WORKER_PORTS)
        and port_is_free(host, previous)
    ):
        return previous, configured or None  # keep addresses stable (bookmarks, env files)
    return free_port(host, avoid=taken), configured or None


def _ray_tmp(home: Path) -> Path:
    """Ray's --temp-dir, inside a 0700 folder of ours.

    Ray makes its session folders 0777 (`try_make_directory_shared`), so only a private parent
    keeps other users out. Its unix socket paths must stay under ~107 bytes: a long home puts
    the parent in the system temp folder instead (checked to be ours, not a planted link).
    """
    parent = home / "ray"
    if len(str(parent / "r")) > 40:
        parent = Path(tempfile.gettempdir()) / f"wallwm-ray-{stack_id(home)}"
    try:
        private_dir(parent, must_own=True)
    except PermissionError as e:
        raise StackError(f"Ray's temp folder: {e}") from None
    tmp = parent / "r"
    tmp.mkdir(exist_ok=True)
    return tmp


def _prestart(name: str, data: Path) -> None:
    if name == "s3":
        remove_nanio_leftovers(data)  # exactly nanio's own temp names; user objects stay


def _stop_service(sid: str, name: str, pid: int | None) -> int:
    """Stop one service of ours; Ray through its `ray start --block` parent first (raylet, then
    GCS), then whatever still carries the service's marker."""
    stopped = 0
    if name == "ray" and alive(pid):
        import psutil

        try:
            terminate([psutil.Process(pid)], timeout=20)
            stopped += 1
        except psutil.Error:
            pass
    return stopped + stop_marked(sid, name)


def _is_ours(name: str, env_value: str, prev: StackState | None) -> bool:
    """The variable holds the address of a service this stack started (loaded from stack.env)."""
    old = prev.services.get(name) if prev else None
    return bool(old and not old.external and old.url == env_value)


def up(
    params: ServicesParams,
    home: Path | None = None,
    timeout: float | None = None,
    on_wait: Callable[[str], None] | None = None,
    registry: RegistryParams | None = None,
) -> StackState:
    """Start every service not already running or provided; wait until all are healthy.

    Holds the stack's lock for the whole operation: a second `up` (or a `down`) of the same home
    waits, telling `on_wait` why, and then finds this one's services running. If the start
    fails, the services this call started are stopped again; ones already running stay.
    """
    home = private_dir((home or wallwm_home()).resolve())
    budget = timeout or params.startup_timeout_s
    try:
        with stack_lock(home, "up", wait_s=budget + LOCK_SLACK_S, on_wait=on_wait):
            return _up_locked(params, home, budget, registry or RegistryParams())
    except LockTimeout as e:
        raise StackError(str(e)) from None


def _up_locked(params: ServicesParams, home: Path, budget: float,
               registry: RegistryParams) -> StackState:
    sid = stack_id(home)
    state_file = home / "stack.json"
    prev = StackState.load(state_file)
    spec = _spec()
    host = params.host
    key, secret = credentials(home)
    deadline = time.monotonic() + budget
    state = StackState(str(home))
    taken: set[int] = set()
    values: dict[str, Any] = {
        "bin": str(Path(sys.executable).parent),
        "host": host,
        "home": str(home),
        "access_key": key,
        "secret_key": secret,
        "region": params.s3.region,
        "workers": params.mlflow.workers,
        "num_cpus": params.ray.num_cpus or os.cpu_count() or 1,
        "object_store_bytes": params.ray.object_store_mb * 1024 * 1024,
        "ray_tmp": str(_ray_tmp(home)),
    }
    # Ray's head also listens on fixed defaults (dashboard 8265, its agent 52365): a second
    # stack or another Ray on this machine would collide, so give it free ones
    for k in ("ray_dashboard_port", "ray_agent_port"):
        values[k] = free_port(host, avoid=taken)
        taken.add(values[k])
    started: list[str] = []
    s3_moved = False

    def launch(name: str, client_env: dict[str, str] | None = None) -> None:
        svc_spec = spec[name]
        env_value = os.environ.get(svc_spec["env_var"]) if "env_var" in svc_spec else None
        old = prev.services.get(name) if prev else None
        follows = svc_spec.get("follows")
        if follows and state.services[follows].external:  # e.g. a user's Prefect: its workers
            state.services[name] = ServiceState(
                name, "", external=True, note=f"not started: {follows} is not the stack's own"
            )
            return
        if env_value and not _is_ours(name, env_value, prev):
            state.services[name] = ServiceState(
                name,
                env_value,
                external=True,
                healthy=_external_healthy(name, env_value),
                note=f"from ${svc_spec['env_var']}; not started",
            )
            return
        # mlflow follows a moved S3; the worker hands the stack's addresses to its flow runs, so
        # it restarts with any service this `up` (re)started
        depends_moved = (name == "mlflow" and s3_moved) or (name == "worker" and bool(started))
        if (
            old
            and not old.external
            and alive(old.pid)
            and old.port is not None
            and not depends_moved
        ):
            if _healthy(svc_spec, host, old.port, old.url):
                state.services[name] = ServiceState(
                    **{
                        **asdict(old),
                        "running": True,
                        "healthy": True,
                        "note": _join("already running", old.port_note()),
                    }
                )
                taken.add(old.port)
                return
        # A stale process of ours (e.g. after a crash of `up`) would hold the data dir: stop it.
        stop_marked(sid, name, timeout=10)
        previous = old.port if old and not old.external else None
        port, moved_from = _pick_port(  # (the worker has no section: any free port)
            name, getattr(getattr(params, name, None), "port", 0), host, params.on_port_taken,
            taken, previous,
        )
        taken.add(port)
        data = private_dir(home / name)
        _prestart(name, data)
        v = {**values, "port": port, "data": str(data)}
        url = _fill(svc_spec["url"], v)
        cmd = _fill(svc_spec["command"], v)
        base = dict(os.environ)
        if client_env is not None:  # the addresses of this stack, none left from an old one
            for k in set(read_stack_env(home)) | set(client_env):
                base.pop(k, None)
            base.update(client_env)
        env = {
            **base,
            **_fill(svc_spec.get("env", {}), v),
            MARKER: sid,
            "WALLWM_SERVICE": name,
        }
        if name == "mlflow" and state.services["s3"].external:
            for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                env.pop(k, None)
                if k in os.environ:
                    env[k] = os.environ[k]
        log = home / "logs" / f"{name}.log"
        pid = spawn(cmd, env, log, cwd=data)
        svc = ServiceState(name, url, port=port, pid=pid, log=str(log), moved_from=moved_from)
        svc.note = svc.port_note()
        state.services[name] = svc
        started.append(name)

    def wait(name: str) -> None:
        s = state.services[name]
        if s.external or s.healthy:
            return
        while time.monotonic() < deadline:
            if not alive(s.pid):
                raise StackError(
                    f"{name} exited during start (command in infra/local/services.yaml); "
                    f"last lines of {s.log}:\n{_log_tail(Path(s.log or ''))}"
                )
            if _healthy(spec[name], host, s.port or 0, s.url):
                s.running = s.healthy = True
                return
            time.sleep(0.5)
        raise StackError(
            f"{name} did not become healthy at {s.url} in time; raise services.startup_timeout_s "
            f"or read {s.log}:\n{_log_tail(Path(s.log or ''))}"
        )

    try:
        launch("s3")
        s3 = state.services["s3"]
        values["s3_url"] = s3.url
        prev_s3 = prev.services.get("s3") if prev else None
        s3_moved = bool(prev_s3 and prev_s3.url != s3.url)  # mlflow must follow a moved S3
        for name in ("prefect", "ray"):
            launch(name)
        wait("s3")
        if not s3.external:
            client = s3_client(s3.url, params.s3.region, credentials=(key, secret))
            ensure_buckets(client, params.s3.buckets)
        mlflow_art = home / "mlflow" / "artifacts"
        values["artifacts_destination"] = (
            f"s3://{params.mlflow.bucket}"
            if params.mlflow.artifact_store == "s3"
            else str(mlflow_art)
        )
        values.update(mlflow_auth.prepare(home))  # {auth_config}, {flask_secret}: before start
        launch("mlflow")
        for name in ("mlflow", "prefect", "ray"):
            wait(name)
        mlf = state.services["mlflow"]
        if not mlf.external:
            try:  # users, models, permissions as params say; no default admin left
                mlflow_auth.provision(mlf.url, registry, home)
            except mlflow_auth.ProvisioningError as e:
                raise StackError(f"MLflow basic-auth: {e}") from None
            mlf.note = _join(mlf.note, f"basic-auth; accounts in {home / mlflow_auth.USERS_FILE}")
        addresses = client_env(home, state, key, secret, params)
        launch("worker", addresses)  # last: it needs Prefect, and hands all addresses to runs
        wait("worker")
    except BaseException as e:
        _roll_back(sid, state, started)
        # keep what this call did not reach (still running from before) so status and down see it
        kept = {k: v for k, v in (prev.services if prev else {}).items() if k not in state.services}
        StackState(str(home), {**kept, **state.services}).save(state_file)
        if isinstance(e, StackError) and started:
            raise StackError(
                f"{e}\nstopped again what this `up` had started: {', '.join(started)}"
            ) from None
        raise
    state.save(state_file)
    write_env_file(home, state, key, secret, params)
    return state


def _roll_back(sid: str, state: StackState, started: list[str]) -> None:
    """Stop exactly the services this `up` started (reverse order); leave the others alone."""
    for name in reversed(started):
        s = state.services[name]
        _stop_service(sid, name, s.pid)
        s.running = s.healthy = False
        s.pid = None
        s.note = _join("stopped: `up` failed", s.port_note())


def write_env_file(
    home: Path, state: StackState, key: str, secret: str, params: ServicesParams
) -> Path:
    """`<home>/stack.env`: what a client needs (shell-sourceable, also read by load_stack_env)."""
    env = client_env(home, state, key, secret, params)
    path = home / "stack.env"
    text = "# written by `wallwm stack up`; `set -a; . this; set +a` to use it in a shell\n"
    text += "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items())
    write_private(path, text)  # holds the S3 secret key: 0600 from its first byte
    return path


def client_env(
    home: Path, state: StackState, key: str, secret: str, params: ServicesParams
) -> dict[str, str]:
    """The variables that point a client (a command, a flow run of the worker) at this stack."""
    s = state.services
    env: dict[str, str] = {
        "WALLWM_HOME": str(home),
        "MLFLOW_TRACKING_URI": s["mlflow"].url,
        **({} if s["mlflow"].external else mlflow_auth.client_env(home)),
        "PREFECT_API_URL": s["prefect"].url,
        "RAY_ADDRESS": s["ray"].url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    if not s["prefect"].external:
        env["PREFECT_HOME"] = str(home / "prefect")
    if not s["ray"].external:
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        env["RAY_AUTH_MODE"] = "disabled"
    env["AWS_ENDPOINT_URL"] = s["s3"].url
    env["MLFLOW_S3_ENDPOINT_URL"] = s["s3"].url
    if not s["s3"].external:
        env.update(
            {
                "AWS_ACCESS_KEY_ID": key,
                "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_DEFAULT_REGION": params.s3.region,
            }
        )
    return env


def read_stack_env(home: Path | None = None) -> dict[str, str]:
    """The addresses in `<home>/stack.env` ({} when the stack is down)."""
    path = (home or wallwm_home()) / "stack.env"
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            out[k] = shlex.split(v)[0] if v else ""
    return out


def load_stack_env(home: Path | None = None, override: bool = False) -> dict[str, str]:
    """Put the running stack's addresses into `os.environ` (user-set variables win)."""
    loaded = {}
    for k, v in read_stack_env(home).items():
        if override or k not in os.environ:
            os.environ[k] = v
            loaded[k] = v
    return loaded


def status(home: Path | None = None, params: ServicesParams | None = None) -> StackState:
    """What runs now: each service's URL, whether its process lives and whether it answers.

    Reads `stack.json` once (it is replaced atomically, so never half-written) and never waits
    for the lock: while an `up` or `down` holds it, `busy` names that command.
    """
    home = (home or wallwm_home()).resolve()
    spec = _spec()
    prev = StackState.load(home / "stack.json") or StackState(str(home))
    host = (params or ServicesParams()).host
    out = StackState(str(home), busy=busy(home))
    for name in ORDER:
        var = spec[name].get("env_var")
        env_value = os.environ.get(var) if var else None
        old = prev.services.get(name)
        if env_value and not _is_ours(name, env_value, prev):
            out.services[name] = ServiceState(
                name,
                env_value,
                external=True,
                running=True,
                healthy=_external_healthy(name, env_value),
                note=f"from ${spec[name]['env_var']}",
            )
        elif old and not old.external:
            running = alive(old.pid)
            healthy = running and _healthy(spec[name], host, old.port or 0, old.url)
            out.services[name] = ServiceState(
                **{
                    **asdict(old),
                    "running": running,
                    "healthy": healthy,
                    "note": old.port_note() if running else "stopped",
                }
            )
        elif old:
            out.services[name] = old
        else:
            out.services[name] = ServiceState(name, "", note="not started")
    return out


def down(home: Path | None = None, on_wait: Callable[[str], None] | None = None) -> int:
    """Stop every process this stack started (and nothing else); return how many were stopped.

    Takes the stack's lock, so it waits for an `up` in progress instead of racing it.
    """
    home = private_dir((home or wallwm_home()).resolve())
    try:
        with stack_lock(home, "down", wait_s=DOWN_WAIT_S, on_wait=on_wait):
            return _down_locked(home)
    except LockTimeout as e:
        raise StackError(str(e)) from None


def _down_locked(home: Path) -> int:
    sid = stack_id(home)
    prev = StackState.load(home / "stack.json")
    stopped = stop_marked(sid, "worker")  # first: its flow runs use every other service
    ray_pid = prev.services["ray"].pid if prev and "ray" in prev.services else None
    stopped += _stop_service(sid, "ray", ray_pid)
    for name in ("mlflow", "prefect", "s3"):
        stopped += stop_marked(sid, name)
    stopped += stop_marked(sid)
    env_file = home / "stack.env"
    if env_file.exists():
        env_file.unlink()
    if prev:
        for s in prev.services.values():
            if not s.external:
                s.running = s.healthy = False
                s.pid = None
        prev.save(home / "stack.json")
    return stopped
