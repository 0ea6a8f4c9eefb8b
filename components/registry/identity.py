"""Who is calling MLflow: credentials per role, and the identity the server authenticated.

Every `wallwm` command talks to MLflow as one user, through the variables MLflow's client reads
on every request (`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`):

- `pipeline` (data, train, export, register): the variables when the user set them, else the
  local stack's pipeline account (`<WALLWM_HOME>/mlflow-users.json`, written by
  components/stack/mlflow_auth.py);
- `reviewer` (approve, reject): the user's own variables, never a stored account (the demo
  reviewer only when asked for and switched on in params);
- `promoter` (promote): the variables when set (a reviewer, or a production promotion
  service), else the local stack's promoter account.

Decisions record the name the *server* authenticated (`GET /api/2.0/mlflow/users/current`),
never a name the client claims. A server without basic-auth answers 404 there: the name from
the variables (or the OS user) is then used and flagged as unauthenticated.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
from dataclasses import dataclass, field
from typing import Literal

import requests

from components.registry.errors import RegistryError
from wallwm.util.env import temporary_env

USER_VAR, PASSWORD_VAR = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
CURRENT_USER = "/api/2.0/mlflow/users/current"
Role = Literal["pipeline", "reviewer", "promoter", "demo-reviewer", "admin"]


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str = ""  # where they came from, for messages


@dataclass(frozen=True)
class Identity:
    """The user the server authenticated (or, without auth on the server, the claimed one)."""

    username: str
    authenticated: bool
    is_admin: bool = False


def from_env() -> Credentials | None:
    user, pw = os.environ.get(USER_VAR), os.environ.get(PASSWORD_VAR)
    if not user:
        return None
    return Credentials(user, pw or "", f"${USER_VAR}")


def stack_credentials(role: Role, home: os.PathLike | None = None) -> Credentials | None:
    """The local stack's account for `role`, or None when there is no stack account file."""
    from components.stack.mlflow_auth import read_users

    users = read_users(home)
    if users is None:
        return None
    for name, entry in users.get("users", {}).items():
        if entry.get("role") == role:
            return Credentials(name, entry["password"], f"{users['_path']} ({role})")
    if role == "admin" and "admin" in users:
        a = users["admin"]
        return Credentials(a["username"], a["password"], f"{users['_path']} (admin)")
    return None


def resolve(role: Role, *, demo: bool = False, demo_allowed: bool = False,
            home: os.PathLike | None = None) -> Credentials | None:
    """The credentials a command in `role` uses (None: no credentials, a server without auth)."""
    env = from_env()
    if role == "reviewer":
        if demo:
            if not demo_allowed:
                raise RegistryError("reviewer_listed", "--demo-reviewer needs "
                                    "registry.demo_reviewer: true (local demo only)")
            creds = stack_credentials("demo-reviewer", home)
            if creds is None:
                raise RegistryError("authentication", "no demo reviewer account in the local "
                                    "stack; run `wallwm stack up` with registry.demo_reviewer: true")
            return creds
        if env is None:
            raise RegistryError("authentication", f"approve/reject record YOUR identity: set "
                                f"{USER_VAR} and {PASSWORD_VAR} to your own MLflow account")
        return env
    if env is not None and role == "promoter":
        pipe = stack_credentials("pipeline", home)
        if pipe is not None and (pipe.username, pipe.password) == (env.username, env.password):
            env = None  # the stack's default identity (from stack.env), not the user's own
    if env is not None:
        return env
    return stack_credentials(role, home)


def use_identity(creds: Credentials | None) -> contextlib.AbstractContextManager[None]:
    """Make MLflow's client authenticate as `creds` inside the block (process-wide)."""
    return temporary_env({USER_VAR: creds.username if creds else None,
                          PASSWORD_VAR: creds.password if creds else None})


def apply_identity(creds: Credentials | None) -> None:
    """Authenticate as `creds` from now on in this process (None: no credentials)."""
    if creds is None:
        os.environ.pop(USER_VAR, None)
        os.environ.pop(PASSWORD_VAR, None)
    else:
        os.environ[USER_VAR], os.environ[PASSWORD_VAR] = creds.username, creds.password


# (server, user, sha256 of the password) -> who the server said they are, for this process
_SEEN: dict[tuple[str, str, str], Identity] = {}


def whoami(tracking_uri: str | None = None, creds: Credentials | None = None) -> Identity:
    """Ask the server who `creds` (default: the variables) are; raise on refused credentials."""
    import mlflow

    uri = (tracking_uri or mlflow.get_tracking_uri()).rstrip("/")
    creds = creds or from_env()
    key = (uri, creds.username if creds else "",
           hashlib.sha256(creds.password.encode()).hexdigest() if creds else "")
    if key not in _SEEN:
        _SEEN[key] = _ask(uri, creds)
    return _SEEN[key]


def _ask(uri: str, creds: Credentials | None) -> Identity:
    if not uri.startswith(("http://", "https://")):
        return Identity(creds.username if creds else getpass.getuser(), authenticated=False)
    auth = (creds.username, creds.password) if creds else None
    try:
        r = requests.get(uri + CURRENT_USER, auth=auth, timeout=30)
    except requests.RequestException as e:
        raise RegistryError("authentication", f"cannot reach MLflow at {uri}: {e}") from None
    if r.status_code == 404:  # no basic-auth app on this server
        return Identity(creds.username if creds else getpass.getuser(), authenticated=False)
    if r.status_code == 401:
        who = f"user {creds.username!r} (from {creds.source})" if creds else "no credentials"
        raise RegistryError("authentication", f"MLflow at {uri} refused {who} (HTTP 401); set "
                            f"{USER_VAR}/{PASSWORD_VAR} to a valid account")
    r.raise_for_status()
    user = r.json().get("user", {})
    return Identity(user["username"], authenticated=True, is_admin=bool(user.get("is_admin")))


def run_user_tags(tracking_uri: str | None = None) -> dict[str, str]:
    """Tags that make a new run name the authenticated user (`mlflow.user`, i.e. its user_id).

    MLflow's client fills `mlflow.user` from the OS user; the four-eyes rule needs the MLflow
    account, so every stage's `start_run` merges these tags."""
    return {"mlflow.user": whoami(tracking_uri).username}
