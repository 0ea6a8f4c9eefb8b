"""Basic-auth for the local stack's MLflow server: secrets, the auth config, users, permissions.

Before the server starts, `prepare(home)` makes (once, first writer wins) the admin password and
Flask's CSRF secret in `<home>/mlflow-users.json` (0600 from its first byte, like the S3 keys)
and writes MLflow's auth config `<home>/mlflow-auth.ini` (0600, `MLFLOW_AUTH_CONFIG_PATH`): user
store `sqlite:///<home>/mlflow/auth.db`, `default_permission = READ`, and the admin account
MLflow creates on its first start. The server runs with `--app-name basic-auth`.

After it answers, `provision(url, registry_params, home)`:
1. logs in as our admin, deletes the legacy default `admin` account if an older auth store has
   it, and gives any account that still accepts the old default password (`password1234`,
   what older MLflow shipped) a new one;
2. creates the users params name (pipeline, promoter, reviewers, the demo reviewer when on),
   each with a generated password kept in the users file, and deletes the ones params dropped;
3. creates the candidates, release and promotion-queue models of every embodiment and the
   audit experiment (owned by the admin, so no pipeline user holds MANAGE on them);
4. sets each user's permission on each of them to exactly `permission_plan(params)`.

Why these permissions make the rules server-enforced: MLflow needs EDIT on a registered model to
register a version, set a tag or an alias there. The pipeline holds EDIT on the candidates
model only and READ on the release model, so its attempt to set `champion` or write an approval
tag on the release model is a 403 from the server, whatever client it uses. Reviewers hold READ
on the candidates model (they cannot change gates, evidence or lineage) and EDIT on the release
model (approvals are release-model tags). Deleting a version, an alias or a tag needs MANAGE,
which only the admin has.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from components.stack.home import private_dir, private_temp, wallwm_home, write_private
from wallwm.config.schema import RegistryParams
from wallwm.util.env import temporary_env

USERS_FILE = "mlflow-users.json"
INI_FILE = "mlflow-auth.ini"
FORMAT = "wallwm-mlflow-users/1"
ADMIN_USERNAME = "wallwm-admin"
# Credentials that must never stay valid: the admin MLflow's basic_auth.ini shipped before it
# stopped shipping a password, and the same password on our admin's name.
DEFAULT_CREDENTIALS = (("admin", "password1234"), (ADMIN_USERNAME, "password1234"))
# Successful credential checks are cached this long per worker: one PBKDF2 check costs ~0.85 s
# on a 2-core machine, on every request otherwise. A deleted user or changed password takes
# effect at once on the worker that handled the change, within this time on the others.
AUTH_CACHE_TTL_S = 30
SERVICE_ROLES = ("pipeline", "promoter", "demo-reviewer")
CURRENT_USER = "/api/2.0/mlflow/users/current"
READ, EDIT = "READ", "EDIT"


class ProvisioningError(RuntimeError):
    """The auth store does not accept our admin and no default credential lets us fix it."""


# ----------------------------------------------------------------------------- files
def users_path(home: os.PathLike | None = None) -> Path:
    return Path(home or wallwm_home()) / USERS_FILE


def _new_password() -> str:
    return secrets.token_urlsafe(24)  # 32 characters of [A-Za-z0-9_-]: no '%' for configparser


def _create_once(path: Path, text: str) -> None:
    """Create `path` holding `text`, 0600 from its first byte; if it exists, keep it."""
    tmp = private_temp(path, text)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # the first writer wins: two `up`s agree on one admin password
    finally:
        tmp.unlink()


def read_users(home: os.PathLike | None = None) -> dict[str, Any] | None:
    """The users file (with `_path` added), or None when the stack never made one."""
    path = users_path(home)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ProvisioningError(f"{path}: not JSON ({e}); delete it and the auth store "
                                f"{Path(path).parent / 'mlflow' / 'auth.db'} to start over") from e
    if data.get("format") != FORMAT or "admin" not in data:
        raise ProvisioningError(f"{path}: field format = {data.get('format')!r}, expected "
                                f"{FORMAT!r} with an admin entry; delete it and the auth store")
    data["_path"] = str(path)
    return data


def _save_users(path: Path, data: dict[str, Any]) -> None:
    clean = {k: v for k, v in data.items() if not k.startswith("_")}
    write_private(path, json.dumps(clean, indent=2, sort_keys=True) + "\n")


def ensure_secrets(home: Path) -> dict[str, Any]:
    """The users file with the admin account and Flask's secret, made once."""
    path = users_path(home)
    if not path.exists():
        _create_once(path, json.dumps({
            "format": FORMAT,
            "admin": {"username": ADMIN_USERNAME, "password": _new_password()},
            "flask_secret_key": secrets.token_hex(32),
            "users": {},
        }, indent=2) + "\n")
    data = read_users(home)
    assert data is not None
    return data


def wanted_users(params: RegistryParams) -> dict[str, str]:
    """user name -> role, as params say."""
    from components.registry.names import DEMO_REVIEWER

    out = {params.pipeline_user: "pipeline", params.promoter_user: "promoter"}
    out.update({r: "reviewer" for r in params.reviewers})
    if params.demo_reviewer:
        out[DEMO_REVIEWER] = "demo-reviewer"
    return out


def sync_accounts(home: Path, params: RegistryParams) -> tuple[dict[str, Any], list[str]]:
    """Add a generated password for every user params name; drop the ones params no longer
    name. Returns the users file and the dropped user names (to delete on the server)."""
    data = ensure_secrets(home)
    users: dict[str, dict[str, str]] = data.setdefault("users", {})
    want = wanted_users(params)
    dropped = [u for u in users if u not in want or users[u].get("role") != want[u]]
    for u in dropped:
        users.pop(u)
    for u, role in want.items():
        users.setdefault(u, {"role": role, "password": _new_password()})
    _save_users(users_path(home), data)
    return data, dropped


def write_auth_config(home: Path, data: dict[str, Any], default_permission: str = READ) -> Path:
    """MLflow's auth config (0600): it holds the admin password MLflow bootstraps with."""
    store = private_dir(home / "mlflow") / "auth.db"
    cfg = configparser.ConfigParser(interpolation=None)
    cfg["mlflow"] = {
        "default_permission": default_permission,
        "database_uri": f"sqlite:///{store}",
        "admin_username": data["admin"]["username"],
        "admin_password": data["admin"]["password"],
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
        "auth_cache_ttl_seconds": str(AUTH_CACHE_TTL_S),
    }
    buf = io.StringIO()
    buf.write("# written by `wallwm stack up` (components/stack/mlflow_auth.py); MLflow reads it\n"
              "# through MLFLOW_AUTH_CONFIG_PATH. The admin password is used on the first start\n"
              "# only; the same one is kept in mlflow-users.json.\n")
    cfg.write(buf)
    path = home / INI_FILE
    write_private(path, buf.getvalue())
    return path


def prepare(home: Path | None = None) -> dict[str, str]:
    """Everything the server needs before it starts: returns the `services.yaml` values
    `auth_config` (MLFLOW_AUTH_CONFIG_PATH) and `flask_secret` (MLFLOW_FLASK_SERVER_SECRET_KEY)."""
    home = Path(home or wallwm_home())
    data = ensure_secrets(home)
    ini = write_auth_config(home, data)
    return {"auth_config": str(ini), "flask_secret": data["flask_secret_key"]}


def server_env(home: Path | None = None) -> dict[str, str]:
    """The server's environment variables (what services.yaml fills from `prepare`)."""
    v = prepare(home)
    return {"MLFLOW_AUTH_CONFIG_PATH": v["auth_config"],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": v["flask_secret"]}


def client_env(home: Path | None = None, role: str = "pipeline") -> dict[str, str]:
    """`MLFLOW_TRACKING_USERNAME`/`PASSWORD` of the stack's account for `role` (for stack.env)."""
    data = read_users(home)
    for name, entry in (data or {}).get("users", {}).items():
        if entry.get("role") == role:
            return {"MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": entry["password"]}
    return {}


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Grant:
    username: str
    resource_type: str  # "registered_model" or "experiment"
    resource: str  # model name, or experiment name (resolved to its id when applied)
    permission: str


def permission_plan(params: RegistryParams) -> list[Grant]:
    """Every (user, resource, permission) the registry's rules rely on."""
    from components.registry.names import all_model_names, reviewers

    pipe, prom, revs = params.pipeline_user, params.promoter_user, reviewers(params)
    plan: list[Grant] = []
    for n in all_model_names(params):
        plan.append(Grant(pipe, "registered_model", n.candidates, EDIT))
        plan += [Grant(u, "registered_model", n.candidates, READ) for u in (prom, *revs)]
        plan.append(Grant(pipe, "registered_model", n.release, READ))
        plan += [Grant(u, "registered_model", n.release, EDIT) for u in (prom, *revs)]
        plan.append(Grant(pipe, "registered_model", n.queue, READ))
        plan += [Grant(u, "registered_model", n.queue, EDIT) for u in (prom, *revs)]
    # the audit log: every actor appends its own entries (refused attempts too)
    plan += [Grant(u, "experiment", params.audit_experiment, EDIT) for u in (pipe, prom, *revs)]
    return plan


# ----------------------------------------------------------------------------- the server side
@dataclass
class ProvisionReport:
    rotated: list[str] = field(default_factory=list)
    created_users: list[str] = field(default_factory=list)
    reset_passwords: list[str] = field(default_factory=list)
    deleted_users: list[str] = field(default_factory=list)
    created_resources: list[str] = field(default_factory=list)
    changed_grants: list[str] = field(default_factory=list)
    users_file: str = ""

    def summary(self) -> str:
        parts = [f"{k.replace('_', ' ')}: {', '.join(v)}" for k, v in vars(self).items()
                 if isinstance(v, list) and v]
        return "; ".join(parts) or "users and permissions already as params say"


def _as(username: str, password: str) -> contextlib.AbstractContextManager[None]:
    """MLflow's client authenticates as this account inside the block."""
    return temporary_env({"MLFLOW_TRACKING_USERNAME": username,
                          "MLFLOW_TRACKING_PASSWORD": password})


def _login(url: str, username: str, password: str) -> bool:
    r = requests.get(url.rstrip("/") + CURRENT_USER, auth=(username, password), timeout=30)
    if r.status_code == 404:
        raise ProvisioningError(f"MLflow at {url} has no basic-auth ({CURRENT_USER} is 404): "
                                "start it with `--app-name basic-auth` (needs mlflow[auth]); a stack MLflow "
                                "started before basic-auth was on: `wallwm stack down`, then up")
    return r.status_code == 200


def _error_code(e: Exception) -> str:
    return str(getattr(e, "error_code", ""))


def _ensure_admin(url: str, admin: dict[str, str], report: ProvisionReport) -> None:
    """Our admin logs in; no account is left with MLflow's old default admin password.

    MLflow 3.17 itself refuses admin logins with the legacy default (`admin`/`password1234`,
    GHSA-gq3w-7jj3-x7gr) and, at start, replaces it on the configured admin with the password
    of the config file. What it leaves: the legacy `admin` account (when ours has another
    name) and non-admin accounts that still accept the default. We delete the former and give
    the latter a new password (ours from the users file; anyone else's a random one)."""
    from mlflow.server.auth.client import AuthServiceClient

    name, pw = admin["username"], admin["password"]
    if not _login(url, name, pw):
        raise ProvisioningError(
            f"MLflow at {url} refuses the admin {name!r} with the password in the users file. "
            f"If the auth store comes from another setup, stop the stack and delete it "
            f"(.wallwm/mlflow/auth.db: its users are lost) so the next `wallwm stack up` makes "
            f"a new one; MLflow rotates a default admin password itself at start")
    legacy_user, legacy_pw = DEFAULT_CREDENTIALS[0]
    with _as(name, pw):
        auth = AuthServiceClient(url)
        users = auth._request("/api/2.0/mlflow/users/list", "GET").get("users", [])
        for u in users:
            uname = u.get("username")
            if uname == name:
                continue
            if uname == legacy_user and u.get("is_admin"):
                auth.delete_user(uname)
                report.deleted_users.append(f"{uname} (the legacy default admin account)")
            elif _login(url, uname, legacy_pw):
                auth.update_user_password(uname, _new_password())
                report.rotated.append(f"{uname} (had the legacy default password)")


def _ensure_users(url: str, data: dict[str, Any], dropped: list[str],
                  report: ProvisionReport) -> None:
    from mlflow.server.auth.client import AuthServiceClient

    auth = AuthServiceClient(url)
    for name, entry in data["users"].items():
        try:
            auth.get_user(name)
        except Exception as e:  # RestException RESOURCE_DOES_NOT_EXIST
            if "RESOURCE_DOES_NOT_EXIST" not in _error_code(e) + str(e):
                raise
            auth.create_user(name, entry["password"])
            report.created_users.append(name)
            continue
        if not _login(url, name, entry["password"]):
            if entry["role"] in SERVICE_ROLES:
                auth.update_user_password(name, entry["password"])
                report.reset_passwords.append(name)
            # a reviewer who changed their own password keeps it
    for name in dropped:
        with contextlib.suppress(Exception):
            auth.get_user(name)
            auth.delete_user(name)  # its grants go with its role rows
            report.deleted_users.append(name)


def _ensure_resources(url: str, params: RegistryParams,
                      report: ProvisionReport) -> dict[str, str]:
    """Create the models and the audit experiment as the admin; experiment name -> id."""
    from mlflow import MlflowClient

    from components.registry.names import all_model_names

    client = MlflowClient(tracking_uri=url)
    descriptions = {
        "candidates": "WALL-WM candidates: written by the pipeline (gates, lineage, evidence as "
                      "tags); reviewers read. Alias `candidate`: the newest version that passed.",
        "release": "WALL-WM releases: written only by reviewers and the promotion service. "
                   "Aliases `champion` (what robots get) and `previous` (rollback); approvals "
                   "are tags wallwm.approve.* / wallwm.reject.*.",
        "queue": "Promotion queue: one version per `wallwm promote` attempt (a ticket lock, "
                 "components/registry/lock.py); not a model.",
    }
    for n in all_model_names(params):
        for kind, name in (("candidates", n.candidates), ("release", n.release),
                           ("queue", n.queue)):
            try:
                client.get_registered_model(name)
            except Exception as e:
                if "RESOURCE_DOES_NOT_EXIST" not in _error_code(e) + str(e):
                    raise
                client.create_registered_model(name, description=descriptions[kind],
                                               tags={"wallwm.role": kind,
                                                     "wallwm.embodiment": n.embodiment})
                report.created_resources.append(f"model {name}")
    exp = client.get_experiment_by_name(params.audit_experiment)
    if exp is None:
        exp_id = client.create_experiment(params.audit_experiment,
                                          tags={"wallwm.role": "registry-audit"})
        report.created_resources.append(f"experiment {params.audit_experiment}")
    else:
        exp_id = exp.experiment_id
    return {params.audit_experiment: exp_id}


def _apply_grants(url: str, plan: list[Grant], experiments: dict[str, str],
                  report: ProvisionReport) -> None:
    from mlflow.server.auth.client import AuthServiceClient

    auth = AuthServiceClient(url)
    for g in plan:
        rid = experiments[g.resource] if g.resource_type == "experiment" else g.resource
        have = auth.get_user_permission(g.username, g.resource_type, rid).permission
        if have == g.permission:
            continue
        with contextlib.suppress(Exception):  # no explicit grant (the default applied)
            auth.revoke_user_permission(g.username, g.resource_type, rid)
        if auth.get_user_permission(g.username, g.resource_type, rid).permission != g.permission:
            auth.grant_user_permission(g.username, g.resource_type, rid, g.permission)
        report.changed_grants.append(f"{g.username} {g.permission} on {g.resource_type} "
                                     f"{g.resource} (was {have})")


def provision(url: str, params: RegistryParams, home: Path | None = None) -> ProvisionReport:
    """Make the server's users, models and permissions what params say (idempotent)."""
    home = Path(home or wallwm_home())
    report = ProvisionReport(users_file=str(users_path(home)))
    data, dropped = sync_accounts(home, params)
    admin = data["admin"]
    _ensure_admin(url, admin, report)
    with _as(admin["username"], admin["password"]):
        _ensure_users(url, data, dropped, report)
        experiments = _ensure_resources(url, params, report)
        _apply_grants(url, permission_plan(params), experiments, report)
    return report
