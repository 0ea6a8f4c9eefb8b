"""The local stack's auth files (0600, made once), the accounts from params, the permission
plan that makes the rules server-enforced, and identity resolution per role."""

from __future__ import annotations

import configparser
import json
import os

import pytest

from components.registry.errors import RegistryError
from components.registry.identity import (
    PASSWORD_VAR,
    USER_VAR,
    Credentials,
    resolve,
    use_identity,
    whoami,
)
from components.registry.names import DEMO_REVIEWER, all_model_names
from components.stack.mlflow_auth import (
    AUTH_CACHE_TTL_S,
    ProvisioningError,
    client_env,
    ensure_secrets,
    permission_plan,
    prepare,
    read_users,
    server_env,
    sync_accounts,
)
from wallwm.config.schema import RegistryParams

PARAMS = RegistryParams(reviewers=["alice", "bob"], demo_reviewer=True)


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    return h


@pytest.fixture(autouse=True)
def no_creds(monkeypatch):
    monkeypatch.delenv(USER_VAR, raising=False)
    monkeypatch.delenv(PASSWORD_VAR, raising=False)


def test_secrets_are_private_and_made_once(home):
    v = prepare(home)
    users, ini = home / "mlflow-users.json", home / "mlflow-auth.ini"
    assert users.stat().st_mode & 0o777 == 0o600 and ini.stat().st_mode & 0o777 == 0o600
    first = read_users(home)
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(v["auth_config"])
    m = cfg["mlflow"]
    assert m["default_permission"] == "READ"
    assert m["database_uri"] == f"sqlite:///{home / 'mlflow' / 'auth.db'}"
    assert (m["admin_username"], m["admin_password"]) == (first["admin"]["username"],
                                                          first["admin"]["password"])
    assert m["admin_username"] != "admin" and len(m["admin_password"]) >= 12
    assert int(m["auth_cache_ttl_seconds"]) == AUTH_CACHE_TTL_S
    prepare(home)  # a second `up` keeps the password the auth store was bootstrapped with
    assert read_users(home)["admin"] == first["admin"]
    assert server_env(home)["MLFLOW_FLASK_SERVER_SECRET_KEY"] == first["flask_secret_key"]
    assert not list(home.glob(".*.tmp"))  # no temp file left behind


def test_a_corrupt_users_file_names_the_fix(home):
    (home / "mlflow-users.json").write_text("{nope")
    with pytest.raises(ProvisioningError, match="delete it"):
        ensure_secrets(home)


def test_accounts_follow_params_and_keep_their_passwords(home):
    data, dropped = sync_accounts(home, PARAMS)
    roles = {u: e["role"] for u, e in data["users"].items()}
    assert roles == {"wallwm-pipeline": "pipeline", "wallwm-promoter": "promoter",
                     "alice": "reviewer", "bob": "reviewer", DEMO_REVIEWER: "demo-reviewer"}
    assert dropped == []
    pw = data["users"]["alice"]["password"]
    data2, dropped = sync_accounts(home, RegistryParams(reviewers=["alice"]))
    assert dropped == ["bob", DEMO_REVIEWER]
    assert data2["users"]["alice"]["password"] == pw
    assert client_env(home) == {USER_VAR: "wallwm-pipeline",
                                PASSWORD_VAR: data2["users"]["wallwm-pipeline"]["password"]}
    assert (home / "mlflow-users.json").stat().st_mode & 0o777 == 0o600


def test_permission_plan_keeps_the_release_model_from_the_pipeline():
    plan = permission_plan(PARAMS)
    n = all_model_names(PARAMS)[0]
    perm = {(g.username, g.resource): g.permission for g in plan}
    assert perm[("wallwm-pipeline", n.candidates)] == "EDIT"
    assert perm[("wallwm-pipeline", n.release)] == "READ"
    assert perm[("wallwm-pipeline", n.queue)] == "READ"
    for r in ("alice", "bob", DEMO_REVIEWER):
        assert perm[(r, n.candidates)] == "READ" and perm[(r, n.release)] == "EDIT"
    assert {u for (u, res), p in perm.items() if res == n.release and p == "EDIT"} == {
        "wallwm-promoter", "alice", "bob", DEMO_REVIEWER}
    assert {g.username for g in plan if g.resource_type == "experiment"} == {
        "wallwm-pipeline", "wallwm-promoter", "alice", "bob", DEMO_REVIEWER}
    assert not any(g.permission == "MANAGE" for g in plan)  # deleting stays the admin's


def test_identity_per_role(home, monkeypatch):
    sync_accounts(home, PARAMS)
    users = read_users(home)["users"]
    with pytest.raises(RegistryError) as e:
        resolve("reviewer", home=home)
    assert e.value.rule == "authentication" and "your own" in str(e.value)
    with pytest.raises(RegistryError, match="registry.demo_reviewer"):
        resolve("reviewer", demo=True, demo_allowed=False, home=home)
    assert resolve("reviewer", demo=True, demo_allowed=True, home=home).username == DEMO_REVIEWER
    assert resolve("pipeline", home=home).username == "wallwm-pipeline"
    assert resolve("promoter", home=home).username == "wallwm-promoter"
    # the stack's default identity in the variables (from stack.env) is not the user's own
    monkeypatch.setenv(USER_VAR, "wallwm-pipeline")
    monkeypatch.setenv(PASSWORD_VAR, users["wallwm-pipeline"]["password"])
    assert resolve("promoter", home=home).username == "wallwm-promoter"
    monkeypatch.setenv(USER_VAR, "alice")
    monkeypatch.setenv(PASSWORD_VAR, "her-own-password")
    c = resolve("promoter", home=home)
    assert (c.username, c.password) == ("alice", "her-own-password")
    assert resolve("reviewer", home=home).username == "alice"


def test_use_identity_restores_the_variables(monkeypatch):
    monkeypatch.setenv(USER_VAR, "before")
    with use_identity(Credentials("x", "y")):
        assert (os.environ[USER_VAR], os.environ[PASSWORD_VAR]) == ("x", "y")
    assert os.environ[USER_VAR] == "before" and PASSWORD_VAR not in os.environ


def test_whoami_without_a_server_is_unauthenticated(monkeypatch):
    who = whoami("sqlite:///x.db", Credentials("alice", "pw"))
    assert (who.username, who.authenticated) == ("alice", False)
    json.dumps(who.__dict__)
