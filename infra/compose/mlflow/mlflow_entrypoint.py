"""Start the production MLflow tracking server from environment variables.

The basic-auth app reads its user database URI from an ini file, not from the environment,
and that URI carries a password. So this entrypoint writes the ini at start-up into a private
folder (0600 file, written under a temporary name and renamed), points
`MLFLOW_AUTH_CONFIG_PATH` at it, and execs `mlflow server` with:
- the run/registry store on PostgreSQL (`MLFLOW_DB_*`), the auth users in a second database;
- artifacts proxied by the server (`--serve-artifacts`) into `MLFLOW_ARTIFACTS_DESTINATION`
  (an `s3://` URI; the S3 endpoint and keys come from the usual `MLFLOW_S3_ENDPOINT_URL` and
  `AWS_*` variables, which boto3 reads itself);
- `--app-name basic-auth` (needs `mlflow[auth]`, which brings Flask-WTF);
- `--allowed-hosts` from `MLFLOW_ALLOWED_HOSTS` (required: MLflow's default allows only
  localhost and private IPs, which rejects service names such as `mlflow:5000`).

`MLFLOW_AUTH_ADMIN_USERNAME` / `MLFLOW_AUTH_ADMIN_PASSWORD` are read by MLflow itself (they
create the admin on first start; MLflow ships no default password), and
`MLFLOW_FLASK_SERVER_SECRET_KEY` must be the same for every worker and replica (CSRF tokens).
A missing variable stops the start with its name and what to set.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

REQUIRED = {
    "MLFLOW_DB_PASSWORD": "the password of the PostgreSQL role MLFLOW_DB_USER",
    "MLFLOW_ARTIFACTS_DESTINATION": "where artifacts go, e.g. s3://mlflow-artifacts",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "the MLflow admin's password (MLflow has no default)",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "a random string shared by all workers (CSRF)",
    "MLFLOW_ALLOWED_HOSTS": "Host headers clients use, e.g. mlflow,mlflow:5000,mlflow.example.com",
}
DEFAULTS = {
    "MLFLOW_DB_HOST": "postgres",
    "MLFLOW_DB_PORT": "5432",
    "MLFLOW_DB_USER": "mlflow",
    "MLFLOW_DB_NAME": "mlflow",
    "MLFLOW_AUTH_DB_NAME": "mlflow_auth",
    "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
    "MLFLOW_AUTH_DEFAULT_PERMISSION": "READ",
    "MLFLOW_PORT": "5000",
    "MLFLOW_WORKERS": "2",
    "MLFLOW_AUTH_CONFIG_DIR": "/tmp/mlflow-auth",
}
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
MIN_ADMIN_PASSWORD = 12  # MLflow 3.17 refuses to create the admin with a shorter one


class ConfigError(ValueError):
    """A missing or bad environment variable; the message says which and what to do."""


def settings(env: Mapping[str, str]) -> dict[str, str]:
    """The resolved settings: defaults overlaid with `env`; raises ConfigError when incomplete."""
    missing = [k for k in REQUIRED if not env.get(k)]
    if missing:
        lines = [f"  {k}: {REQUIRED[k]}" for k in missing]
        raise ConfigError("mlflow entrypoint: set these environment variables (see "
                          "infra/compose/.env.example or infra/k8s/secrets.template.yaml):\n"
                          + "\n".join(lines))
    out = {**DEFAULTS, **{k: v for k, v in env.items() if k in DEFAULTS or k in REQUIRED}}
    if out["MLFLOW_AUTH_DEFAULT_PERMISSION"] not in PERMISSIONS:
        raise ConfigError(f"mlflow entrypoint: MLFLOW_AUTH_DEFAULT_PERMISSION = "
                          f"{out['MLFLOW_AUTH_DEFAULT_PERMISSION']!r}; use one of "
                          f"{', '.join(PERMISSIONS)}")
    if len(out["MLFLOW_AUTH_ADMIN_PASSWORD"]) < MIN_ADMIN_PASSWORD:
        raise ConfigError(f"mlflow entrypoint: MLFLOW_AUTH_ADMIN_PASSWORD has "
                          f"{len(out['MLFLOW_AUTH_ADMIN_PASSWORD'])} characters; MLflow needs at "
                          f"least {MIN_ADMIN_PASSWORD}")
    for key in ("MLFLOW_DB_PORT", "MLFLOW_PORT", "MLFLOW_WORKERS"):
        if not out[key].isdigit():
            raise ConfigError(f"mlflow entrypoint: {key} = {out[key]!r} is not a positive "
                              "integer")
    return out


def db_uri(s: Mapping[str, str], database: str) -> str:
    """A SQLAlchemy PostgreSQL URI with the user and password percent-encoded."""
    user = quote(s["MLFLOW_DB_USER"], safe="")
    password = quote(s["MLFLOW_DB_PASSWORD"], safe="")
    return (f"postgresql+psycopg2://{user}:{password}@{s['MLFLOW_DB_HOST']}:"
            f"{s['MLFLOW_DB_PORT']}/{database}")


def auth_ini(s: Mapping[str, str]) -> str:
    """The basic-auth app's config (the admin password stays in the environment)."""
    # configparser treats % as interpolation: a percent-encoded password must be doubled.
    uri = db_uri(s, s["MLFLOW_AUTH_DB_NAME"]).replace("%", "%%")
    return ("[mlflow]\n"
            f"default_permission = {s['MLFLOW_AUTH_DEFAULT_PERMISSION']}\n"
            f"database_uri = {uri}\n"
            f"admin_username = {s['MLFLOW_AUTH_ADMIN_USERNAME']}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "grant_default_workspace_access = false\n")


def server_argv(s: Mapping[str, str]) -> list[str]:
    """The `mlflow server` command line."""
    return ["mlflow", "server",
            "--app-name", "basic-auth",
            "--backend-store-uri", db_uri(s, s["MLFLOW_DB_NAME"]),
            "--artifacts-destination", s["MLFLOW_ARTIFACTS_DESTINATION"],
            "--serve-artifacts",
            "--host", "0.0.0.0",
            "--port", s["MLFLOW_PORT"],
            "--workers", s["MLFLOW_WORKERS"],
            "--allowed-hosts", s["MLFLOW_ALLOWED_HOSTS"]]


def write_private(folder: Path, name: str, text: str) -> Path:
    """Write `text` to folder/name, 0600 from the first byte, through a temp file + rename."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        path = folder / name
        os.replace(tmp, path)
        return path
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    try:
        s = settings(os.environ)
    except ConfigError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    ini = write_private(Path(s["MLFLOW_AUTH_CONFIG_DIR"]), "basic_auth.ini", auth_ini(s))
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
    argv = server_argv(s)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
