"""The agent's configuration: a TOML file, then `WALLWM_AGENT_<FIELD>` environment variables.

Example (`agent.toml`):

```toml
robot_id = "arm-07"
fleet = "warehouse-a"
channel = "stable"
repo_url = "s3://wallwm-releases/stable"          # or https://releases.example/stable
director_url = "s3://wallwm-releases/director/warehouse-a"
inbox_url = "s3://wallwm-releases/inbox/warehouse-a"
trusted_root = "/etc/wallwm/root.json"             # provisioned once, from `wallwm release root`
director_keys = ["/etc/wallwm/director.pub.json"]
state_dir = "/var/lib/wallwm-agent"
embodiment = "metaworld-sawyer"
cameras = [{name = "corner", height = 64, width = 64}, {name = "gripperPOV", height = 64, width = 64}]
busy_lock = "/run/robot/episode.lock"
spool_dir = "/var/lib/wallwm-agent/spool"
```

Env values override the file (`WALLWM_AGENT_POLL_INTERVAL_S=5`); lists and tables as JSON.
A bad value fails at start with the file (or variable), the field and the value.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "WALLWM_AGENT_"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the source, field and value."""


class CameraConf(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    height: int = Field(gt=0)
    width: int = Field(gt=0)


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    robot_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    fleet: str = Field("default", pattern=r"^[a-z0-9][a-z0-9._-]*$")
    channel: str = "stable"
    repo_url: str
    director_url: str | None = None
    inbox_url: str | None = None
    s3_endpoint: str | None = None  # default: $AWS_ENDPOINT_URL (unset: AWS)
    trusted_root: Path
    director_keys: list[Path] = []
    state_dir: Path
    # what this robot is
    embodiment: str
    cameras: list[CameraConf] = Field(min_length=1)
    action_dim: int | None = None
    state_dim: int | None = None
    precisions: list[str] = ["fp32"]
    gpu_arch: str | None = None
    trt_version: str | None = None
    providers: list[str] = ["CPUExecutionProvider"]
    threads: int = Field(1, ge=1)
    # timing
    poll_interval_s: float = Field(30.0, gt=0)
    health_window_s: float = Field(300.0, ge=0)
    trial_max_errors: int = Field(0, ge=0)
    max_trial_restarts: int = Field(2, ge=0)
    request_timeout_s: float = Field(20.0, gt=0)
    # robot integration
    busy_lock: Path | None = None
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(8765, ge=0, le=65535)
    min_free_mb: float = Field(64.0, ge=0)
    # flywheel
    spool_dir: Path | None = None
    spool_max_mb: float = Field(2048.0, gt=0)
    upload_interval_s: float = Field(30.0, gt=0)
    log_level: str = "INFO"

    @field_validator("repo_url", "director_url", "inbox_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("s3://", "http://", "https://")):
            raise ValueError("must start with s3://, http:// or https://")
        return v.rstrip("/")

    @field_validator("director_url", "inbox_url")
    @classmethod
    def _s3_only(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("s3://"):
            raise ValueError("the director and the inbox are written to, so they need s3://")
        return v


def _check_director_keys(cfg: AgentConfig) -> AgentConfig:
    if cfg.director_url and not cfg.director_keys:
        raise ValueError("director_url is set but director_keys is empty: give the director's "
                         "public key file(s) (`wallwm release keys` prints where they are)")
    return cfg


def _env_overrides(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in fields.items():
        raw = os.environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        ann = str(info.annotation)
        if raw[:1] in "[{" or "list" in ann:
            try:
                out[name] = json.loads(raw)
                continue
            except ValueError:
                pass
        out[name] = raw
    return out


def load_config(path: Path | str | None = None) -> AgentConfig:
    """File (`path`, else $WALLWM_AGENT_CONFIG) merged with WALLWM_AGENT_* variables."""
    path = path or os.environ.get(ENV_PREFIX + "CONFIG")
    data: dict[str, Any] = {}
    source = "environment"
    if path:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the agent config ({e.strerror})") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not TOML ({e})") from e
    env = _env_overrides(AgentConfig.model_fields)
    data.update(env)
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as e:
        parts = []
        for err in e.errors()[:5]:
            loc = ".".join(str(x) for x in err["loc"])
            origin = (f"${ENV_PREFIX}{loc.split('.')[0].upper()}" if loc.split(".")[0] in env
                      else source)
            parts.append(f"{origin}: field {loc} = {err.get('input')!r}: {err['msg']}")
        raise ConfigError("agent config invalid: " + "; ".join(parts)) from None
    try:
        return _check_director_keys(cfg)
    except ValueError as e:
        raise ConfigError(f"{source}: field director_keys = []: {e}") from None
