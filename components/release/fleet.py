"""A simulated fleet on this machine: N real `wallwm-agent` processes, each with its own
folder, config, key and loopback port, all pointed at one S3 endpoint.

Used by the release flow (the demo rollout), the benchmark and the integration tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wallwm.util.atomic import atomic_write_bytes, atomic_write_text

AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION")


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    atomic_write_text(path, "".join(f"{k} = {_toml(v)}\n" for k, v in cfg.items()
                                    if v is not None))
    return path


@dataclass
class LocalAgent:
    robot_id: str
    dir: Path
    config: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    preexec: Callable[[], None] | None = None

    @property
    def config_path(self) -> Path:
        return self.dir / "agent.toml"

    @property
    def state_dir(self) -> Path:
        return Path(self.config["state_dir"])

    @property
    def log_path(self) -> Path:
        return self.dir / "agent.log"

    def start(self, extra_env: dict[str, str] | None = None, wait: bool = True) -> LocalAgent:
        write_config(self.config_path, self.config)
        port_file = self.state_dir / "agent.port"
        if port_file.exists():
            port_file.unlink()
        env = {**os.environ, **self.env, **(extra_env or {})}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "components.robot_agent", "--config", str(self.config_path),
             "run"], stdout=log, stderr=log, env=env, preexec_fn=self.preexec,
            cwd=str(Path(__file__).resolve().parents[2]))
        log.close()
        if wait:
            self.wait_port()
        return self

    def wait_port(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        p = self.state_dir / "agent.port"
        while time.monotonic() < deadline:
            if p.exists() and p.read_text().strip():
                return int(p.read_text())
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.robot_id} exited ({self.proc.returncode}); log "
                                   f"{self.log_path}:\n{self.log_tail()}")
            time.sleep(0.05)
        raise TimeoutError(f"agent {self.robot_id} did not listen within {timeout}s:\n"
                           f"{self.log_tail()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{int((self.state_dir / 'agent.port').read_text())}"

    def _call(self, method: str, path: str, body: dict | None = None,
              timeout: float = 60) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def status(self) -> dict[str, Any]:
        if self.running:
            try:
                return self._call("GET", "/status")[1]
            except (OSError, ValueError):
                pass
        p = self.state_dir / "status.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def poll(self) -> dict[str, Any]:
        return self._call("POST", "/poll")[1]

    def act(self, body: dict[str, Any], timeout: float = 30) -> tuple[int, dict[str, Any]]:
        return self._call("POST", "/act", body, timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 60,
                 what: str = "condition") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = self.status()
            if st and pred(st):
                return st
            time.sleep(0.1)
        raise TimeoutError(f"agent {self.robot_id}: {what} not reached in {timeout}s; status "
                           f"{json.dumps(st)[:1500]}\nlog:\n{self.log_tail()}")


class SimFleet:
    """N agents of one fleet, provisioned from a channel's root and the director's key."""

    def __init__(self, root: Path, n: int, *, fleet: str, channel: str, bucket: str,
                 trusted_root: bytes, director_key_json: str, embodiment: str,
                 cameras: list[dict[str, Any]], prefix: str = "sim",
                 overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / "root.json", trusted_root)
        atomic_write_text(self.root / "director.pub.json", director_key_json)
        base_env = {k: os.environ[k] for k in AWS_VARS if k in os.environ}
        self.agents: list[LocalAgent] = []
        for i in range(n):
            rid = f"{prefix}-{i}"
            d = self.root / rid
            d.mkdir(parents=True, exist_ok=True)
            cfg = {
                "robot_id": rid, "fleet": fleet, "channel": channel,
                "repo_url": f"s3://{bucket}/{channel}",
                "director_url": f"s3://{bucket}/director/{fleet}",
                "inbox_url": f"s3://{bucket}/inbox/{fleet}",
                "trusted_root": str(self.root / "root.json"),
                "director_keys": [str(self.root / "director.pub.json")],
                "state_dir": str(d / "state"), "spool_dir": str(d / "spool"),
                "embodiment": embodiment, "cameras": cameras,
                "poll_interval_s": 0.5, "health_window_s": 2.0, "upload_interval_s": 1.0,
                "serve_port": 0, "min_free_mb": 1.0,
                **(overrides or {}),
            }
            self.agents.append(LocalAgent(rid, d, cfg, {**base_env, **(env or {})}))

    def start(self) -> SimFleet:
        for a in self.agents:
            a.start(wait=False)
        for a in self.agents:
            a.wait_port()
        return self

    def stop(self) -> None:
        for a in self.agents:
            if a.running and a.proc is not None:
                a.proc.send_signal(signal.SIGTERM)
        for a in self.agents:
            a.stop()

    def statuses(self) -> dict[str, dict[str, Any]]:
        return {a.robot_id: a.status() for a in self.agents}

    def wait_all(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 120,
                 what: str = "condition") -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        st: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            st = self.statuses()
            if all(s and pred(s) for s in st.values()):
                return st
            time.sleep(0.2)
        raise TimeoutError(f"fleet: {what} not reached in {timeout}s: " + json.dumps(
            {k: (v.get("state"), (v.get("active") or {}).get("version"),
                 (v.get("last_error") or {}).get("message")) for k, v in st.items()}))

    def __enter__(self) -> SimFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
