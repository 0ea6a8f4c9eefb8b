"""`up`, `down`, `status` of the local stack, and the env file that points clients at it."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from components.stack.home import credentials, project_root, stack_id, wallwm_home
from components.stack.ports import RAY_WORKER_PORTS, free_port, port_is_free, port_open
from components.stack.process import MARKER, alive, spawn, stop_marked, terminate
from components.storage.s3 import ensure_buckets, s3_client
from wallwm.config.schema import ServicesParams
from wallwm.util.atomic import atomic_write_text

ORDER = ("s3", "mlflow", "prefect", "ray")
SPEC_FILE = project_root() / "infra" / "local" / "services.yaml"


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


@dataclass
class StackState:
    home: str
    services: dict[str, ServiceState] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2))

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


def _pick_port(name: str, wanted: int, host: str, policy: str, taken: set[int]) -> tuple[int, str]:
    if wanted and wanted in RAY_WORKER_PORTS and name != "ray":
        raise StackError(
            f"services.{name}.port = {wanted} lies in Ray's worker port range 10002-19999; choose another"
        )
    if wanted and wanted not in taken and port_is_free(host, wanted):
        return wanted, ""
    if wanted and policy == "error":
        raise StackError(
            f"port {wanted} for {name} is taken on {host}; free it, set services.{name}.port to "
            f"another port (0 = any free), or set services.on_port_taken=next_free"
        )
    port = free_port(host, avoid=taken)
    return port, (f"port {wanted} was taken; using {port}" if wanted else "")


def _ray_tmp(home: Path) -> Path:
    # Ray's unix socket paths must stay under ~107 bytes: keep the temp dir short.
    tmp = home / "ray"
    if len(str(tmp)) > 40:
        tmp = Path("/tmp") / f"wallwm-ray-{stack_id(home)}"
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def _prestart(name: str, data: Path) -> None:
    if name == "s3":
        # A killed upload leaves nanio `.tmp.<uuid>` files that would list as keys.
        for leftover in data.rglob(".tmp.*"):
            if leftover.is_file():
                leftover.unlink()


def _is_ours(name: str, env_value: str, prev: StackState | None) -> bool:
    return bool(prev and name in prev.services and prev.services[name].url == env_value)


def up(
    params: ServicesParams, home: Path | None = None, timeout: float | None = None
) -> StackState:
    """Start every service not already running or provided; wait until all are healthy."""
    home = (home or wallwm_home()).resolve()
    home.mkdir(parents=True, exist_ok=True)
    sid = stack_id(home)
    state_file = home / "stack.json"
    prev = StackState.load(state_file)
    spec = _spec()
    host = params.host
    key, secret = credentials(home)
    deadline = time.monotonic() + (timeout or params.startup_timeout_s)
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
    started: list[str] = []
    s3_moved = False

    def launch(name: str) -> None:
        svc_spec = spec[name]
        env_value = os.environ.get(svc_spec["env_var"])
        old = prev.services.get(name) if prev else None
        if env_value and not _is_ours(name, env_value, prev):
            state.services[name] = ServiceState(
                name,
                env_value,
                external=True,
                healthy=_external_healthy(name, env_value),
                note=f"from ${svc_spec['env_var']}; not started",
            )
            return
        depends_moved = name == "mlflow" and s3_moved
        if (
            old
            and not old.external
            and alive(old.pid)
            and old.port is not None
            and not depends_moved
        ):
            if _healthy(svc_spec, host, old.port, old.url):
                state.services[name] = ServiceState(
                    **{**asdict(old), "running": True, "healthy": True, "note": "already running"}
                )
                taken.add(old.port)
                return
        # A stale process of ours (e.g. after a crash of `up`) would hold the data dir: stop it.
        stop_marked(sid, name, timeout=10)
        wanted = getattr(params, name).port
        if old and not old.external and old.port and (not wanted or wanted == old.port):
            wanted = old.port  # keep addresses stable across restarts (bookmarks, env files)
        port, note = _pick_port(name, wanted, host, params.on_port_taken, taken)
        taken.add(port)
        data = home / name
        data.mkdir(parents=True, exist_ok=True)
        _prestart(name, data)
        v = {**values, "port": port, "data": str(data)}
        url = _fill(svc_spec["url"], v)
        cmd = _fill(svc_spec["command"], v)
        env = {
            **os.environ,
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
        state.services[name] = ServiceState(name, url, port=port, pid=pid, log=str(log), note=note)
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
        launch("mlflow")
        for name in ("mlflow", "prefect", "ray"):
            wait(name)
    except BaseException:
        state.save(state_file)  # so `down` can still find what did start
        raise
    state.save(state_file)
    write_env_file(home, state, key, secret, params)
    return state


def write_env_file(
    home: Path, state: StackState, key: str, secret: str, params: ServicesParams
) -> Path:
    """`<home>/stack.env`: what a client needs (shell-sourceable, also read by load_stack_env)."""
    s = state.services
    env: dict[str, str] = {
        "WALLWM_HOME": str(home),
        "MLFLOW_TRACKING_URI": s["mlflow"].url,
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
    path = home / "stack.env"
    text = "# written by `wallwm stack up`; `set -a; . this; set +a` to use it in a shell\n"
    text += "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items())
    atomic_write_text(path, text, mode=0o600)
    return path


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
    """What runs now: each service's URL, whether its process lives and whether it answers."""
    home = home or wallwm_home()
    spec = _spec()
    prev = StackState.load(home / "stack.json") or StackState(str(home))
    host = (params or ServicesParams()).host
    out = StackState(str(home))
    for name in ORDER:
        env_value = os.environ.get(spec[name]["env_var"])
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
                    "note": "" if running else "stopped",
                }
            )
        elif old:
            out.services[name] = old
        else:
            out.services[name] = ServiceState(name, "", note="not started")
    return out


def down(home: Path | None = None) -> int:
    """Stop every process this stack started (and nothing else); return how many were stopped."""
    home = (home or wallwm_home()).resolve()
    sid = stack_id(home)
    prev = StackState.load(home / "stack.json")
    stopped = 0
    # Ray first through its `ray start --block` parent (it tears down raylet, then GCS).
    if prev and "ray" in prev.services and alive(prev.services["ray"].pid):
        import psutil

        try:
            terminate([psutil.Process(prev.services["ray"].pid)], timeout=20)
            stopped += 1
        except psutil.Error:
            pass
    for name in ("mlflow", "prefect", "ray", "s3"):
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
