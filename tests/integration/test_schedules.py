"""The retrain's deployments on the stack's real Prefect server (flows/deployments.py): the
nightly cron and the inbox interval come from params, the two triggers start retrains with the
right parameters, the concurrency limit holds a second retrain back, the inbox watcher emits
once enough new episodes are in the stack's S3 (nanio), and `wallwm schedule` shows, pauses and
resumes them.

The deployments go to a work pool of their own that no worker polls, so the runs the triggers
create stay scheduled and are checked, never executed. Events are emitted from subprocesses (a
fresh interpreter with the stack's addresses), as the flows do it; in this process Prefect's
client runs under `temporary_settings`, because Prefect reads its settings when first imported,
possibly before the stack fixture has loaded the addresses.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
TOKEN = secrets.token_hex(3)
POOL = f"it-schedules-{TOKEN}"
PREFIX = f"it-inbox-{TOKEN}"
SETS = ["schedule.nightly.cron=17 3 * * 1-5", "schedule.nightly.timezone=Europe/Berlin",
        "schedule.on_fleet_inbox.min_new_episodes=5", "schedule.on_fleet_inbox.check_every_s=120",
        f"schedule.on_fleet_inbox.prefix={PREFIX}", "schedule.sets=[train.max_steps=3]"]
SET_ARGS = [a for s in SETS for a in ("--set", s)]


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)}


def _py(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def deployed(prefect) -> Iterator[dict[str, Any]]:
    from flows.deployments import RETRAIN_DEPLOYMENT, WATCH_DEPLOYMENT, apply_deployments
    from wallwm.config import load_params

    p = load_params(ROOT / "params.yaml", sets=SETS)
    ids = apply_deployments(p, POOL)
    deps = {"retrain": prefect.read_deployment_by_name(f"retrain/{RETRAIN_DEPLOYMENT}"),
            "watch": prefect.read_deployment_by_name(f"inbox-watch/{WATCH_DEPLOYMENT}")}
    assert {str(d.id) for d in deps.values()} == set(ids.values())
    try:
        yield {"params": p, **deps}
    finally:
        for d in deps.values():
            for r in _runs(prefect, d.id):
                prefect.delete_flow_run(r.id)
            prefect.delete_resource_owned_automations(f"prefect.deployment.{d.id}")
            prefect.delete_deployment(d.id)
        prefect.delete_work_pool(POOL)


def _runs(client: Any, deployment_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _wait_runs(client: Any, deployment_id: Any, n: int, timeout: float = 60) -> list[Any]:
    """Runs the triggers created (the nightly schedule's are in the future and left out)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for r in _runs(client, deployment_id) if not r.auto_scheduled]
        if len(runs) >= n or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def _clear_runs(client: Any, deployment_id: Any) -> None:
    for r in _runs(client, deployment_id):
        if not r.auto_scheduled:
            client.delete_flow_run(r.id)


def test_deployments_carry_the_schedule_from_params_and_both_triggers(prefect, deployed):
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    from flows.deployments import BUILD_EVENT, EXTRA_LOGGERS, INBOX_EVENT

    dep, watch = deployed["retrain"], deployed["watch"]
    (nightly,) = dep.schedules
    assert (nightly.slug, nightly.schedule.cron, nightly.schedule.timezone, nightly.active) == (
        "nightly", "17 3 * * 1-5", "Europe/Berlin", True)
    assert nightly.parameters == {"params_files": [], "sets": ["train.max_steps=3"]}
    assert dep.entrypoint == "flows.retrain.retrain" and dep.work_pool_name == POOL
    assert dep.job_variables == {"env": {"PREFECT_LOGGING_EXTRA_LOGGERS": EXTRA_LOGGERS}}
    assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
        "directory": str(ROOT)}}]  # runs start in this checkout; nothing is copied
    assert dep.global_concurrency_limit.limit == 1
    assert dep.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
    autos = {a.name: a for a in
             prefect.read_resource_related_automations(f"prefect.deployment.{dep.id}")}
    assert set(autos) == {"on-data-build", "on-fleet-inbox"}
    assert autos["on-data-build"].trigger.expect == {BUILD_EVENT}
    assert autos["on-fleet-inbox"].trigger.expect == {INBOX_EVENT}
    assert all(a.enabled for a in autos.values())
    (tick,) = watch.schedules
    assert tick.schedule.interval.total_seconds() == 120 and watch.entrypoint == (
        "flows.inbox_watch.inbox_watch")


def test_a_bad_schedule_names_the_key_and_value():
    from wallwm.config import ConfigError, load_params

    for key, value, words in (("nightly.cron", "0 2 * *", "five-field cron"),
                              ("nightly.timezone", "Mars/Base", "unknown time zone"),
                              ("on_fleet_inbox.check_every_s", "5", "greater than or equal")):
        with pytest.raises(ConfigError) as e:
            load_params(ROOT / "params.yaml", sets=[f"schedule.{key}={value}"])
        assert f"schedule.{key} = " in str(e.value) and words in str(e.value), str(e.value)


def test_schedule_list_pause_and_resume(deployed):
    cli = ["-m", "flows.cli_schedule"]
    out = _py(*cli, "list")
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "cron 17 3 * * 1-5 (Europe/Berlin)" in text
    assert "event wallwm.data.build.completed" in text and "event wallwm.fleet.inbox.ready" in text
    assert "every 120 s" in text and "at most 1 retrain(s) at a time (enqueue)" in text
    nightly_line = next(ln for ln in text.splitlines() if ln.startswith("│ nightly"))
    assert "active" in nightly_line and " UTC" in nightly_line  # the next 03:17 Berlin time

    for name in ("nightly", "on-data-build"):
        assert _py(*cli, "pause", name).returncode == 0
    text = _py(*cli, "list").stdout
    for name in ("nightly", "on-data-build", "on-fleet-inbox"):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"│ {name} "))
        assert ("paused" in line) == (name != "on-fleet-inbox"), line
    assert _py(*cli, "resume", "all").returncode == 0
    text = _py(*cli, "list").stdout
    assert "paused" not in text, text
    bad = _py(*cli, "pause", "weekly")
    assert bad.returncode == 2 and "unknown schedule or trigger 'weekly'" in bad.stderr


EMIT = """
import json, sys
from prefect import flow
from flows.deployments import emit_build_completed

def emit(build_id, reused):
    emit_build_completed(build_id, "/builds/" + build_id, reused, ["extra.yaml"],
                         ["data.workers=1"], ["sim:episodes=3"], {"episodes": 3})

@flow(name="it-inner-build")
def inner():
    emit("inner", False)

@flow(name="it-outer")
def outer():
    inner()  # a build inside another flow (the retrain's own): not a trigger

outer()
emit("reused", True)  # nothing new landed
@flow(name="it-build")
def build():
    emit("fresh", False)
build()
"""


def test_a_new_standalone_build_triggers_one_retrain_with_its_parameters(prefect, deployed):
    dep = deployed["retrain"]
    _clear_runs(prefect, dep.id)
    out = _py("-c", EMIT)
    assert out.returncode == 0, out.stdout + out.stderr
    runs = _wait_runs(prefect, dep.id, 1)
    time.sleep(3)  # events are handled in order: had the others triggered, their runs were here
    runs = _wait_runs(prefect, dep.id, 2, timeout=0)
    assert len(runs) == 1, [(r.name, r.parameters) for r in runs]
    run = runs[0]
    assert run.created_by.display_value == "on-data-build"
    assert run.parameters == {"params_files": [str(ROOT / "extra.yaml")],
                              "sets": ["data.workers=1", 'data.sources=["sim:episodes=3"]']}
    assert run.state_type.value == "SCHEDULED"  # no worker on this pool: checked, not run
    _clear_runs(prefect, dep.id)


def test_the_concurrency_limit_holds_a_second_retrain_back(prefect, deployed):
    from prefect.client.schemas.objects import StateType
    from prefect.states import Completed, Pending, Running

    dep = deployed["retrain"]
    first, second = (prefect.create_flow_run_from_deployment(dep.id) for _ in range(2))
    assert prefect.set_flow_run_state(first.id, Pending()).status.value == "ACCEPT"
    assert prefect.set_flow_run_state(first.id, Running()).status.value == "ACCEPT"
    held = prefect.set_flow_run_state(second.id, Pending())  # what a worker asks before starting
    assert held.status.value == "REJECT" and held.state.name == "AwaitingConcurrencySlot"
    assert prefect.read_flow_run(second.id).state_type == StateType.SCHEDULED
    assert prefect.set_flow_run_state(first.id, Completed()).status.value == "ACCEPT"
    assert prefect.set_flow_run_state(second.id, Pending()).status.value == "ACCEPT"
    prefect.set_flow_run_state(second.id, Completed(), force=True)
    _clear_runs(prefect, dep.id)


def _put_entry(client: Any, bucket: str, episodes: int, signer: Any) -> str:
    from wallwm.release.signing import INBOX_ENTRY, sign_document

    digest = secrets.token_hex(32)
    body = {"type": "inbox-entry", "robot": "arm-01", "fleet": "fleet-a", "hash": digest,
            "files": {}, "episodes": episodes, "uploaded_at": time.time()}
    key = f"{PREFIX}/fleet-a/{digest}/_entry.json"
    client.put_object(Bucket=bucket, Key=key, Body=sign_document(body, INBOX_ENTRY, [signer]))
    return key


def _watch() -> dict[str, Any]:
    out = _py("-m", "flows.inbox_watch", *SET_ARGS)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_inbox_watcher_emits_once_enough_new_episodes_arrived(prefect, deployed):
    from prefect.states import Completed, Pending, Running
    from securesystemslib.signer import CryptoSigner

    from components.storage.s3 import s3_client

    dep, p = deployed["retrain"], deployed["params"]
    _clear_runs(prefect, dep.id)
    s3, bucket, robot = s3_client(), p.release.bucket, CryptoSigner.generate_ed25519()
    _put_entry(s3, bucket, 4, robot)  # uploaded before the last retrain: already trained on
    time.sleep(1.1)  # S3 times have whole seconds
    last = prefect.create_flow_run_from_deployment(dep.id)  # the last successful retrain
    for state in (Pending(), Running(), Completed()):
        prefect.set_flow_run_state(last.id, state)
    time.sleep(1.1)
    _put_entry(s3, bucket, 2, robot)
    _put_entry(s3, bucket, 2, robot)
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/fleet-a/{'0' * 64}/_entry.json", Body=b"{not")

    below = _watch()
    assert (below["entries"], below["episodes"], below["emitted"]) == (2, 4, False), below
    assert below["unreadable"] == [f"{PREFIX}/fleet-a/{'0' * 64}/_entry.json"]
    assert below["since"] is not None  # the start of `last`: the first entry is not new
    assert [r.id for r in _wait_runs(prefect, dep.id, 2, timeout=0)] == [last.id]  # no trigger

    _put_entry(s3, bucket, 1, robot)
    fired = _watch()
    assert (fired["entries"], fired["episodes"], fired["emitted"]) == (3, 5, True), fired
    assert fired["fleets"] == ["fleet-a"]
    runs = [r for r in _wait_runs(prefect, dep.id, 2) if r.id != last.id]
    assert len(runs) == 1 and runs[0].created_by.display_value == "on-fleet-inbox", runs
    assert runs[0].parameters == {"params_files": [], "sets": ["train.max_steps=3"]}

    again = _watch()  # that retrain is queued: no second event for the same episodes
    assert again["emitted"] is False and again["queued"] == [runs[0].name], again
    _clear_runs(prefect, dep.id)
