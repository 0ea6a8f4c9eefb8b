"""Create or update the MLflow accounts the stack's services log in with (one-shot job).

MLflow's basic-auth app creates only the admin. The pipeline (Prefect flows, Ray jobs) should
not run as the admin, so this job, run with the admin's credentials in the usual
`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`, makes each account named in
`MLFLOW_ACCOUNTS` (comma-separated labels, e.g. `PIPELINE`) from `MLFLOW_<LABEL>_USERNAME` and
`MLFLOW_<LABEL>_PASSWORD`. An existing account gets the password from the environment, so
rotating a secret and rerunning the job converges. Permissions on experiments and registered
models are granted by the registry component, not here.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request

from mlflow.exceptions import RestException
from mlflow.server.auth.client import AuthServiceClient


def wait_healthy(uri: str, timeout_s: float) -> None:
    """Poll `<uri>/health` until it answers 200 (the server may still be migrating)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(2)
    raise SystemExit(f"mlflow-users: {uri}/health did not answer within {timeout_s:.0f} s "
                     f"({last}); check the mlflow service's logs")


def accounts(env: dict[str, str]) -> list[tuple[str, str]]:
    """(username, password) for each label in MLFLOW_ACCOUNTS; exits naming a missing one."""
    labels = [x.strip().upper() for x in env.get("MLFLOW_ACCOUNTS", "").split(",") if x.strip()]
    if not labels:
        raise SystemExit("mlflow-users: MLFLOW_ACCOUNTS is empty; set it, e.g. PIPELINE")
    out = []
    for label in labels:
        user_key, pw_key = f"MLFLOW_{label}_USERNAME", f"MLFLOW_{label}_PASSWORD"
        user, pw = env.get(user_key, ""), env.get(pw_key, "")
        if not user or not pw:
            raise SystemExit(f"mlflow-users: MLFLOW_ACCOUNTS names {label}; set {user_key} "
                             f"and {pw_key}")
        out.append((user, pw))
    return out


def ensure(client: AuthServiceClient, username: str, password: str) -> str:
    """Create `username`, or reset its password; returns what was done."""
    try:
        client.get_user(username)
    except RestException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_user(username, password)
        return "created"
    client.update_user_password(username, password)
    return "password updated"


def main() -> None:
    env = dict(os.environ)
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if not uri or not env.get("MLFLOW_TRACKING_USERNAME") or not env.get(
            "MLFLOW_TRACKING_PASSWORD"):
        raise SystemExit("mlflow-users: set MLFLOW_TRACKING_URI and the admin's "
                         "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
    wanted = accounts(env)
    wait_healthy(uri, float(env.get("MLFLOW_WAIT_SECONDS", "180")))
    client = AuthServiceClient(uri)
    for username, password in wanted:
        print(f"mlflow-users: {username}: {ensure(client, username, password)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
