"""Where the stack keeps its state: `$WALLWM_HOME`, else `.wallwm/` in the project."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

HOME_ENV = "WALLWM_HOME"


def project_root() -> Path:
    """The project checkout (the folder holding params.yaml and infra/)."""
    return Path(__file__).resolve().parents[2]


def wallwm_home() -> Path:
    home = Path(os.environ.get(HOME_ENV) or project_root() / ".wallwm").resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def stack_id(home: Path) -> str:
    """A marker every process we start carries in its environment, so `down` finds only ours."""
    return hashlib.sha256(str(home).encode()).hexdigest()[:16]


def credentials(home: Path) -> tuple[str, str]:
    """The local S3 server's key pair, made once and kept (mode 600) so data stays readable."""
    path = home / "s3-credentials"
    if not path.exists():
        key, secret = "wallwm" + secrets.token_hex(6), secrets.token_urlsafe(30)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{key}\n{secret}\n")
        tmp.chmod(0o600)
        tmp.replace(path)
    key, secret = path.read_text().split()[:2]
    return key, secret
