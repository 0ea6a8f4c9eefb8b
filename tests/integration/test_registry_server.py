"""The registry against a real MLflow server with basic-auth: one server for the module, on a
free port, its stores under a temp folder, users and permissions from the stack's own
provisioning (components/stack/mlflow_auth.py). Every "Checked by" point of issue 23:
a failing gate blocks promotion; self-approval is refused; an approval of one version does not
promote another; a changed bundle voids an approval; a rejected version stays blocked; the
pipeline's attempts to set `champion` or write an approval tag on the release model are 403s
from the server; the happy path moves `champion` (the old one becomes `previous`) and is
audited; two concurrent promotions end with one champion and both in the audit."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

import mlflow
import pytest
import requests
import typer
from mlflow import MlflowClient
from mlflow.entities import Metric
from typer.testing import CliRunner

from components.registry import (
    AuditLog,
    Credentials,
    RegistryError,
    gather_evidence,
    model_names,
    promote,
    record_decision,
    register_candidate,
    registry_status,
    run_user_tags,
    use_identity,
)
from components.registry import names as N
from components.stack.home import private_dir
from components.stack.mlflow_auth import (
    DEFAULT_CREDENTIALS,
    permission_plan,
    prepare,
    provision,
    read_users,
    server_env,
)
from components.stack.ports import free_port
from components.stack.process import MARKER, alive, spawn, stop_marked
from flows.cli_registry import approve_cmd, promote_cmd, registry_app
from tests.conftest import ROOT
from tests.fixtures.bundles import make_bundle
from wallwm.config import load_params
from wallwm.release.bundle import write_manifest

pytestmark = pytest.mark.integration
REVIEWERS = ["alice", "bob", "carol"]
EMBODIMENT = "test-arm"


class World:
    """The server, the params, and helpers to act as each user."""

    def __init__(self, root: Path):
        self.root = root
        self.home = private_dir(root / "home")
        self.sets = [f"registry.embodiments=[{EMBODIMENT}]",
                     f"registry.reviewers={json.dumps(REVIEWERS)}",
                     "registry.approvals_required=2", "registry.demo_reviewer=false",
                     "registry.lock_wait_s=60", "project.experiment=registry-test"]
        self.params = load_params(ROOT / "params.yaml", sets=self.sets)
        self.names = model_names(self.params.registry)
        self.sid = "registry-test-" + uuid.uuid4().hex[:8]
        self.url = ""
        self.n = 0

    def start(self) -> World:
        prepare(self.home)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name",
               "basic-auth", "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
               "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        env = {**os.environ, **server_env(self.home), MARKER: self.sid,
               "WALLWM_SERVICE": "mlflow", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(k, None)
        self.log = self.root / "mlflow.log"
        pid = spawn(cmd, env, self.log, cwd=self.root)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if not alive(pid):
                raise RuntimeError(f"mlflow exited: {self.log.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"mlflow did not start: {self.log.read_text()[-3000:]}")
        os.environ["MLFLOW_TRACKING_URI"] = self.url
        mlflow.set_tracking_uri(self.url)
        self.report = provision(self.url, self.params.registry, self.home)
        # the process default, as stack.env gives every command: the pipeline's account
        pipe = self.creds(self.params.registry.pipeline_user)
        os.environ["MLFLOW_TRACKING_USERNAME"] = pipe.username
        os.environ["MLFLOW_TRACKING_PASSWORD"] = pipe.password
        return self

    def stop(self) -> None:
        stop_marked(self.sid)

    def creds(self, user: str) -> Credentials:
        users = read_users(self.home)
        if user == "admin":
            a = users["admin"]
            return Credentials(a["username"], a["password"], "test")
        return Credentials(user, users["users"][user]["password"], "test")

    def as_(self, user: str):
        return use_identity(self.creds(user))

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.url)

    # ------------------------------------------------------------------ lineage and bundles
    def runs(self, *, user: str = "wallwm-pipeline", latency: float = 20.0,
             report: bool = True, success=(0.8, 0.7, 0.9)) -> dict[str, str]:
        """A training, export and evaluation run (made by `user`) with the gates' figures."""
        c = self.client()
        with self.as_(user):
            exp = c.get_experiment_by_name(f"lineage-{user}")
            exp_id = exp.experiment_id if exp else c.create_experiment(f"lineage-{user}")
            tags = run_user_tags(self.url)
            tr = c.create_run(exp_id, run_name="train", tags={**tags,
                                                              "wallwm.data_validation": "passed"})
            ex = c.create_run(exp_id, run_name="export", tags=tags)
            now = int(time.time() * 1000)
            c.log_batch(ex.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in {
                "export.onnx_parity_max_abs": 1e-5, "export.fp8_worst_dim_cosine": 0.999,
                "export.latency_ms": latency}.items()])
            ev = c.create_run(exp_id, run_name="eval", tags=tags)
            rate, lo, hi = success
            c.log_batch(ev.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in {
                "closed_loop.success_rate": rate, "closed_loop.success_ci_low": lo,
                "closed_loop.success_ci_high": hi, "offline.action_mse": 0.1}.items()])
            d = self.root / f"report-{uuid.uuid4().hex[:6]}"
            d.mkdir()
            (d / "metrics.json").write_text(json.dumps({"success": rate}))
            if report:
                (d / "report.html").write_text("<html><body><h1>eval</h1></body></html>")
            c.log_artifacts(ev.info.run_id, str(d), "report")
        return {"train_run": tr.info.run_id, "export_run": ex.info.run_id,
                "eval_run": ev.info.run_id, "data_build": "build-1", "dvc_md5": "abc.dir",
                "git": "0123abc"}

    def bundle(self) -> Path:
        self.n += 1
        return make_bundle(self.root / f"bundle-{self.n}", tag=float(self.n),
                           embodiment=EMBODIMENT)

    def register(self, lineage: dict[str, str], bundle: Path | None = None):
        c = self.client()
        with self.as_(self.params.registry.pipeline_user):
            ev = gather_evidence(c, evaluation_run_id=lineage["eval_run"],
                                 export_run_id=lineage["export_run"],
                                 training_run_id=lineage["train_run"])
            return register_candidate(bundle or self.bundle(), ev, lineage, params=self.params,
                                      client=c)

    def decide(self, user: str, decision: str, version: int, params=None):
        with self.as_(user):
            return record_decision(decision, version, f"{decision} by {user}",
                                   params=params or self.params, client=self.client())

    def promote(self, version: int, user: str = "wallwm-promoter", params=None):
        with self.as_(user):
            return promote(version, params=params or self.params, client=self.client(),
                           poll_s=0.2)

    def audit(self) -> list[dict]:
        with self.as_("wallwm-pipeline"):
            return AuditLog(self.client(), self.params.registry.audit_experiment,
                            self.names.release).entries()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                                            "MLFLOW_TRACKING_PASSWORD", "WALLWM_HOME")}
    for k in saved:
        os.environ.pop(k, None)
    w = World(tmp_path_factory.mktemp("registry"))
    # this server's own accounts file, not the session stack's (same suite, other server)
    os.environ["WALLWM_HOME"] = str(w.home)
    try:
        yield w.start()
    finally:
        w.stop()
        mlflow.set_tracking_uri(None)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def lineage(world):
    return world.runs()


@pytest.fixture(scope="module")
def passing(world, lineage):
    """One version that passed every gate, for tests that do not change its state."""
    reg = world.register(lineage)
    assert reg.passed, reg.reason()
    return reg


def _refused(rule: str, fn, *args, **kw) -> RegistryError:
    with pytest.raises(RegistryError) as e:
        fn(*args, **kw)
    assert e.value.rule == rule, str(e.value)
    return e.value


# ----------------------------------------------------------------------------- the stack's auth
def test_provisioning_sets_the_plan_and_leaves_no_default_admin(world):
    from mlflow.server.auth.client import AuthServiceClient

    assert (world.home / "mlflow-users.json").stat().st_mode & 0o777 == 0o600
    assert (world.home / "mlflow-auth.ini").stat().st_mode & 0o777 == 0o600
    for user, pw in DEFAULT_CREDENTIALS:
        r = requests.get(world.url + "/api/2.0/mlflow/users/current", auth=(user, pw))
        assert r.status_code == 401, (user, r.status_code)
    with world.as_("admin"):
        auth = AuthServiceClient(world.url)
        for g in permission_plan(world.params.registry):
            rid = g.resource
            if g.resource_type == "experiment":
                rid = world.client().get_experiment_by_name(g.resource).experiment_id
            assert auth.get_user_permission(g.username, g.resource_type, rid).permission == \
                g.permission, g
        # what an old auth store may hold: the legacy default admin, and an account that still
        # accepts the legacy default password; the next provisioning removes both
        auth.create_user("admin", "password1234")
        auth.update_user_admin("admin", True)
        auth.create_user("legacy-user", "password1234")
    r = requests.get(world.url + "/api/2.0/mlflow/users/current",
                     auth=("legacy-user", "password1234"))
    assert r.status_code == 200
    report = provision(world.url, world.params.registry, world.home)
    assert "admin (the legacy default admin account)" in report.deleted_users
    assert "legacy-user (had the legacy default password)" in report.rotated
    for user in ("admin", "legacy-user"):
        r = requests.get(world.url + "/api/2.0/mlflow/users/current",
                         auth=(user, "password1234"))
        assert r.status_code == 401, user


def test_the_server_refuses_the_pipeline_on_the_release_model(world, passing):
    reg = passing
    pipe = world.creds("wallwm-pipeline")
    auth = (pipe.username, pipe.password)
    api = world.url + "/api/2.0/mlflow"
    alias = requests.post(f"{api}/registered-models/alias", auth=auth, json={
        "name": world.names.release, "alias": "champion", "version": "1"})
    key = N.decision_key("approve", world.names.candidates, reg.version, "wallwm-pipeline")
    tag = requests.post(f"{api}/registered-models/set-tag", auth=auth, json={
        "name": world.names.release, "key": key, "value": json.dumps({"decision": "approve"})})
    forged = N.decision_key("approve", world.names.candidates, reg.version, "alice")
    tag2 = requests.post(f"{api}/registered-models/set-tag", auth=auth, json={
        "name": world.names.release, "key": forged, "value": "{}"})
    copy = requests.post(f"{api}/model-versions/create", auth=auth, json={
        "name": world.names.release, "source": f"models:/{world.names.candidates}/{reg.version}"})
    assert (alias.status_code, tag.status_code, tag2.status_code, copy.status_code) == \
        (403, 403, 403, 403)
    # the same through MLflow's own client and through ours
    with world.as_("wallwm-pipeline"):
        with pytest.raises(Exception, match="PERMISSION_DENIED|403"):
            world.client().set_registered_model_alias(world.names.release, "champion", "1")
    e = _refused("reviewer_listed", world.decide, "wallwm-pipeline", "approve", reg.version)
    assert "pipeline" in str(e)
    e = _refused("server_permission", world.promote, reg.version, user="wallwm-pipeline")
    assert "403" in str(e) or "refused" in str(e)
    assert world.client().get_registered_model(world.names.release).tags.get(key) is None
    refused = [a for a in world.audit() if a.get("outcome") == "refused"
               and a.get("user") == "wallwm-pipeline"]
    assert {a["rule"] for a in refused} >= {"reviewer_listed", "server_permission"}


# ----------------------------------------------------------------------------- gates
def test_a_failing_gate_blocks_approval_and_promotion(world):
    slow = world.runs(latency=999.0)
    reg = world.register(slow)
    assert not reg.passed and reg.status == N.GATES_FAILED
    assert [g.name for g in reg.failed] == ["latency"]
    mv = world.client().get_model_version(world.names.candidates, str(reg.version))
    gate = json.loads(mv.tags["wallwm.gate.latency"])
    assert (gate["figure"], gate["threshold"], gate["passed"]) == (999.0, 200.0, False)
    assert gate["evidence"] == [f"runs:/{slow['export_run']}#metric=export.latency_ms"]
    assert "candidate" not in mv.aliases
    e = _refused("gates_passed", world.decide, "alice", "approve", reg.version)
    assert "latency" in str(e)
    e = _refused("gates_passed", world.promote, reg.version)
    assert "latency" in str(e) and "999" in str(e)


def test_missing_evidence_artifact_names_the_rule(world):
    bare = world.runs(report=False)
    reg = world.register(bare)
    failed = {g.name: g for g in reg.failed}
    assert set(failed) == {"closed_loop_success"}
    assert failed["closed_loop_success"].rule == "evidence_present"
    assert "report.html" in failed["closed_loop_success"].reason
    e = _refused("evidence_present", world.promote, reg.version)
    assert "report.html" in str(e)


# ----------------------------------------------------------------------------- approvals
def test_self_approval_is_refused(world):
    mine = world.runs(user="alice")  # alice trained, exported and evaluated it
    reg = world.register(mine)
    assert reg.passed, reg.reason()
    e = _refused("four_eyes", world.decide, "alice", "approve", reg.version)
    assert "alice" in str(e)
    assert world.decide("bob", "approve", reg.version).decision.reviewer == "bob"


def test_bad_input_names_the_rule(world, passing):
    from mlflow.server.auth.client import AuthServiceClient

    _refused("version_exists", world.decide, "alice", "approve", 9999)
    _refused("version_exists", world.promote, 9999)
    rules = {a.get("rule") for a in world.audit() if a.get("outcome") == "refused"}
    assert "version_exists" in rules
    # listed as a reviewer in params, but never given the permission on the server: our rules
    # let the approval through, the server does not
    reg = passing
    with world.as_("admin"):
        AuthServiceClient(world.url).create_user("dave", "dave-password-0123456789")
    more = load_params(ROOT / "params.yaml",
                       sets=world.sets + [f"registry.reviewers={json.dumps(REVIEWERS + ['dave'])}"])
    with use_identity(Credentials("dave", "dave-password-0123456789")):
        e = _refused("server_permission", record_decision, "approve", reg.version, "looks good",
                     params=more, client=world.client())
    assert "HTTP 403" in str(e)
    tags = world.client().get_registered_model(world.names.release).tags
    assert not [k for k in tags if k.endswith(".dave")]


def test_an_approval_of_one_version_does_not_promote_another(world, lineage):
    a = world.register(lineage)
    b = world.register(lineage)
    world.decide("alice", "approve", a.version)
    world.decide("bob", "approve", a.version)
    e = _refused("approvals_required", world.promote, b.version)
    assert "0 valid approval" in str(e)
    # one approval is not enough either (approvals_required = 2)
    world.decide("carol", "approve", b.version)
    e = _refused("approvals_required", world.promote, b.version)
    assert "1 valid approval(s) ['carol'] of 2" in str(e)


def test_a_changed_bundle_voids_the_approval(world, lineage):
    reg = world.register(lineage)
    world.decide("alice", "approve", reg.version)
    world.decide("bob", "approve", reg.version)
    # the pipeline (which owns the registration run) rewrites a graph and a consistent manifest
    bundle = world.root / f"bundle-{world.n}"
    changed = world.root / "changed"
    shutil.copytree(bundle, changed)
    graph = changed / "graphs" / "fp32" / "event_encoder.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest.pop("files")
    manifest.pop("format")
    manifest.pop("created")
    write_manifest(changed, manifest)
    with world.as_("wallwm-pipeline"):
        c = world.client()
        c.log_artifact(reg.run_id, str(graph), "candidate/bundle/graphs/fp32")
        c.log_artifact(reg.run_id, str(changed / "manifest.json"), "candidate/bundle")
    e = _refused("approval_binding", world.promote, reg.version)
    assert "registered as" in str(e)


def test_a_rejected_version_stays_blocked(world, lineage):
    reg = world.register(lineage)
    world.decide("bob", "reject", reg.version)
    _refused("rejection_final", world.decide, "alice", "approve", reg.version)
    e = _refused("rejection_final", world.promote, reg.version)
    assert "bob" in str(e)


def test_a_stale_approval_is_refused(world, lineage):
    reg = world.register(lineage)
    world.decide("alice", "approve", reg.version)
    world.decide("bob", "approve", reg.version)
    time.sleep(1.2)
    quick = load_params(ROOT / "params.yaml",
                        sets=world.sets + ["registry.max_approval_age_hours=0.0002"])  # 0.72 s
    e = _refused("approval_fresh", world.promote, reg.version, params=quick)
    assert "max_approval_age_hours" in str(e)


# ----------------------------------------------------------------------------- promotion
def test_the_happy_path_moves_champion_and_is_audited(world, lineage):
    first = world.register(lineage)
    world.decide("alice", "approve", first.version)
    world.decide("carol", "approve", first.version)
    p1 = world.promote(first.version)
    c = world.client()
    champ = c.get_model_version_by_alias(world.names.release, "champion")
    assert int(champ.version) == p1.release_version
    assert champ.source == f"models:/{world.names.candidates}/{first.version}"
    assert champ.tags["wallwm.source_candidate"] == f"{world.names.candidates}/{first.version}"
    assert sorted(p1.approvers) == ["alice", "carol"]
    _refused("already_champion", world.promote, first.version, user="alice")

    second = world.register(lineage)
    world.decide("alice", "approve", second.version)
    world.decide("bob", "approve", second.version)
    p2 = world.promote(second.version, user="bob")  # a reviewer may promote too
    assert p2.previous == p1.release_version
    assert int(c.get_model_version_by_alias(world.names.release, "champion").version) == \
        p2.release_version
    assert int(c.get_model_version_by_alias(world.names.release, "previous").version) == \
        p1.release_version
    done = [a for a in world.audit() if a.get("action") == "promote"
            and a.get("outcome") == "promoted"]
    last = done[-1]
    assert (last["user"], last["version"], last["release_version"]) == \
        ("bob", second.version, p2.release_version)
    assert last["bundle_sha256"] == second.bundle_sha256 and len(last["evidence_sha256"]) == 64
    rows = {r.version: r for r in registry_status(c, world.params)}
    assert rows[second.version].state == "champion"
    assert rows[first.version].state == "previous"


def test_concurrent_promotions_end_with_one_champion_both_audited(world, lineage):
    regs = [world.register(lineage) for _ in range(2)]
    for r in regs:
        world.decide("alice", "approve", r.version)
        world.decide("carol", "approve", r.version)
    before = {a["id"] for a in world.audit()}
    out: dict[int, object] = {}

    def go(version: int) -> None:
        try:
            out[version] = promote(version, params=world.params, client=world.client(),
                                   poll_s=0.2)
        except RegistryError as e:
            out[version] = e

    threads = [threading.Thread(target=go, args=(r.version,)) for r in regs]
    with world.as_("wallwm-promoter"):  # process-wide: both threads promote as the promoter
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    new = [a for a in world.audit() if a["id"] not in before and a["action"] == "promote"]
    assert sorted(a["version"] for a in new) == sorted(r.version for r in regs)
    done = [a for a in new if a["outcome"] == "promoted"]
    assert len(done) == 2, new  # both approved: they took turns
    first, second = sorted(done, key=lambda a: a["ticket"])
    assert second["previous_release_version"] == first["release_version"]  # serialized
    # and they did overlap: the second ticket was taken while the first was held
    c = world.client()
    t1 = c.get_model_version(world.names.queue, str(first["ticket"]))
    t2 = c.get_model_version(world.names.queue, str(second["ticket"]))
    assert t2.creation_timestamp < int(t1.tags["wallwm.lock.released_ms"])
    assert int(t2.tags["wallwm.lock.held_since_ms"]) >= int(t1.tags["wallwm.lock.released_ms"])
    champ = world.client().get_model_version_by_alias(world.names.release, "champion")
    assert int(champ.version) == second["release_version"]
    aliases = world.client().get_registered_model(world.names.release).aliases
    assert sum(1 for a in aliases if a == "champion") == 1


# ----------------------------------------------------------------------------- command line
def test_cli_status_audit_and_a_refusal(world, lineage, monkeypatch):
    app = typer.Typer()
    app.command("approve")(approve_cmd)
    app.command("promote")(promote_cmd)
    app.add_typer(registry_app, name="registry")
    runner = CliRunner()
    sets = sum((["--set", s] for s in world.sets), [])
    pipe = world.creds("wallwm-pipeline")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", pipe.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", pipe.password)
    r = runner.invoke(app, ["registry", "status", "--json", *sets])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert any(x["state"] == "champion" for x in rows)
    r = runner.invoke(app, ["approve", "9999", "--comment", "x", *sets])
    assert r.exit_code == 1 and "version_exists" in r.output
    r = runner.invoke(app, ["registry", "audit", "--json", "--limit", "0", *sets])
    assert r.exit_code == 0, r.output
    entries = [json.loads(line) for line in r.stdout.splitlines()]
    assert any(e["action"] == "approve" and e["outcome"] == "refused" for e in entries)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    r = runner.invoke(app, ["approve", "1", "--comment", "x", *sets])
    assert r.exit_code == 1 and "your own" in r.output


def test_a_champion_moved_outside_promote_is_flagged(world, passing):
    from components.registry.status import champion_warning

    assert champion_warning(world.client(), world.names) is None  # every move so far audited
    reg = passing
    with world.as_("alice"):  # a reviewer may write the release model directly (trusted role)
        c = world.client()
        mv = c.copy_model_version(f"models:/{world.names.candidates}/{reg.version}",
                                  world.names.release)
        c.set_registered_model_alias(world.names.release, "champion", mv.version)
    warning = champion_warning(world.client(), world.names)
    assert warning and f"version {mv.version}" in warning and "outside `wallwm promote`" in warning
