"""`stack up/status/down`: only our processes stop, data survives a restart and a kill, only
nanio's own leftovers are cleaned, the Prefect UI knows its port, a moved port stays reported,
and everything in the stack home is private.

One stack serves the whole module: up (Prefect's configured port taken, so it moves), seed data,
kill nanio in the middle of an upload, down, age an abandoned multipart upload, up again.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from components.stack import StackError, check_stack, down, read_stack_env, status, up
from components.stack.home import stack_id
from components.stack.lifecycle import StackState, _ray_tmp
from components.stack.nanio_leftovers import PUT_TEMP
from components.stack.ports import port_is_free
from components.stack.process import alive, marked_processes, stop_marked
from components.storage import S3Location, get_bytes, put_bytes, s3_client
from tests.conftest import ROOT, SERVICE_VARS, free_port_params
from wallwm.config import load_params

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=70)]  # 2 cores, serial
BUCKET = "wallwm-dvc"


@pytest.fixture(autouse=True)
def own_services(monkeypatch):
    """These tests start their own stacks: hide the session stack's addresses."""
    for var in SERVICE_VARS:
        monkeypatch.delenv(var, raising=False)


def _client_env(home: Path) -> dict[str, str]:
    return {**os.environ, **read_stack_env(home)}


def _s3(home: Path):
    env = _client_env(home)
    return s3_client(
        env["AWS_ENDPOINT_URL"],
        credentials=(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]),
    )


def _python(env: dict[str, str], code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


def _log_artifact(env: dict[str, str], payload: Path) -> str:
    out = _python(env, f"""
        import mlflow
        mlflow.set_experiment("persist")
        with mlflow.start_run() as r:
            mlflow.log_artifact({str(payload)!r}, artifact_path="p")
            print("RUN_ID=" + r.info.run_id)
    """)
    return next(x for x in out.splitlines() if x.startswith("RUN_ID=")).removeprefix("RUN_ID=")


def _artifact_sha(env: dict[str, str], run_id: str, name: str, dst: Path) -> str:
    out = _python(env, (
        f"import mlflow; print(mlflow.artifacts.download_artifacts(run_id={run_id!r}, "
        f"artifact_path='p/{name}', dst_path={str(dst)!r}))"
    ))
    return hashlib.sha256(Path(out.strip().splitlines()[-1]).read_bytes()).hexdigest()


def _killed_mid_upload(home: Path, s3_pid: int) -> Path:
    """Start a PUT through a presigned URL, SIGKILL nanio while the body streams: the temp file
    nanio was writing stays behind. Returns it (its name is nanio's real temp naming)."""
    url = _s3(home).generate_presigned_url(
        "put_object", Params={"Bucket": BUCKET, "Key": "big/cut.bin"}, ExpiresIn=300
    )
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.putrequest("PUT", f"{u.path}?{u.query}")
    conn.putheader("Content-Length", str(50_000_000))
    conn.endheaders()
    conn.send(os.urandom(300_000))
    folder = home / "s3" / BUCKET / "big"
    found: list[Path] = []
    for _ in range(100):
        found = list(folder.glob(".tmp.*")) if folder.is_dir() else []
        if found:
            break
        time.sleep(0.05)
    os.kill(s3_pid, signal.SIGKILL)
    psutil.Process(s3_pid).wait(10)
    conn.close()
    assert len(found) == 1, f"nanio wrote no temp file under {folder}"
    return found[0]


def _age_uploads(s3_dir: Path, days: int) -> list[Path]:
    """Make every multipart upload under nanio's data look `days` old (init.json and mtimes)."""
    dirs = sorted((s3_dir / ".nanio" / "multipart").iterdir())
    old = datetime.now(tz=UTC) - timedelta(days=days)
    for d in dirs:
        init = d / "init.json"
        data = json.loads(init.read_text())
        data["initiated"] = old.isoformat()
        init.write_text(json.dumps(data))
        for p in [*d.rglob("*"), d]:
            os.utime(p, (old.timestamp(), old.timestamp()))
    return dirs


@dataclass
class Cycle:
    home: Path
    params: object
    moved_from: int
    first: StackState
    first_status: StackState
    second: StackState
    blob_sha: str
    run_id: str
    art_sha: str
    leftover: Path
    uploads: list[Path]
    stopped: int
    left_after_down: list
    ports_free_after_down: bool
    env_after_down: bool


@pytest.fixture(scope="module")
def cycle(tmp_path_factory):
    # module-scoped, so set up before the function-scoped `own_services`: hide the session
    # stack's addresses here too, or this stack would use them instead of starting its own
    with pytest.MonkeyPatch.context() as mp:
        for var in SERVICE_VARS:
            mp.delenv(var, raising=False)
        yield from _cycle(tmp_path_factory)


def _cycle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lifecycle")
    home = tmp / "home"
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        params = load_params(
            ROOT / "params.yaml", sets=free_port_params(**{"services.prefect.port": str(taken)})
        ).services
        try:
            first = up(params, home=home)
            first_status = status(home=home, params=params)
            s3 = _s3(home)
            blob = os.urandom(300_000)
            sha = put_bytes(s3, S3Location(BUCKET, "persist/blob"), blob)
            s3.put_object(
                Bucket=BUCKET,
                Key="notes/.tmp.keepme",
                Body=b"mine",
                ContentType="text/plain",
                Metadata={"owner": "me"},
            )
            mpu = s3.create_multipart_upload(Bucket=BUCKET, Key="big/abandoned.bin")
            s3.upload_part(
                Bucket=BUCKET,
                Key="big/abandoned.bin",
                UploadId=mpu["UploadId"],
                PartNumber=1,
                Body=os.urandom(100_000),
            )
            payload = tmp / "artifact.bin"
            payload.write_bytes(os.urandom(200_000))
            run_id = _log_artifact(_client_env(home), payload)
            leftover = _killed_mid_upload(home, first.services["s3"].pid)
        finally:
            stopped = down(home)
        left = marked_processes(stack_id(home))
        ports_free = all(port_is_free("127.0.0.1", s.port) for s in first.services.values()
                         if s.port and s.port != taken)
        env_after = (home / "stack.env").exists()
        uploads = _age_uploads(home / "s3", days=8)
        assert leftover.exists() and all(d.is_dir() for d in uploads)
        second = up(params, home=home)
        try:
            yield Cycle(home, params, taken, first, first_status, second, sha, run_id,
                        hashlib.sha256(payload.read_bytes()).hexdigest(), leftover, uploads,
                        stopped, left, ports_free, env_after)
        finally:
            down(home)
    assert marked_processes(stack_id(home)) == []


def test_down_stops_exactly_ours(cycle):
    assert all(s.healthy for s in cycle.first.services.values()), cycle.first
    assert cycle.stopped > 0
    assert cycle.left_after_down == []
    assert cycle.ports_free_after_down
    assert not cycle.env_after_down


def test_restart_keeps_objects_and_artifacts(cycle, tmp_path):
    s3 = _s3(cycle.home)
    got = get_bytes(s3, S3Location(BUCKET, "persist/blob"))
    assert hashlib.sha256(got).hexdigest() == cycle.blob_sha
    assert _artifact_sha(_client_env(cycle.home), cycle.run_id, "artifact.bin",
                         tmp_path / "dl") == cycle.art_sha


def test_user_tmp_object_survives_restart_with_metadata(cycle):
    head = _s3(cycle.home).head_object(Bucket=BUCKET, Key="notes/.tmp.keepme")
    assert head["Metadata"] == {"owner": "me"}
    assert head["ContentType"] == "text/plain"
    body = _s3(cycle.home).get_object(Bucket=BUCKET, Key="notes/.tmp.keepme")["Body"].read()
    assert body == b"mine"


def test_nanio_leftover_of_a_killed_upload_is_removed(cycle):
    assert PUT_TEMP.fullmatch(cycle.leftover.name), cycle.leftover.name  # nanio's real naming
    assert not cycle.leftover.exists()
    keys = [o["Key"] for o in _s3(cycle.home).list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert "notes/.tmp.keepme" in keys
    assert not [k for k in keys if PUT_TEMP.fullmatch(k.rsplit("/", 1)[-1])], keys


def test_abandoned_multipart_upload_is_collected(cycle):
    assert cycle.uploads and not any(d.exists() for d in cycle.uploads)
    listed = _s3(cycle.home).list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert listed == []


def test_prefect_ui_points_at_the_stacks_port(cycle):
    prefect = cycle.second.services["prefect"]
    assert prefect.port != cycle.moved_from  # the configured port was taken: it moved
    base = prefect.url.removesuffix("/api")
    settings = requests.get(f"{base}/ui-settings", timeout=10).json()
    assert settings["api_url"] == f"http://127.0.0.1:{prefect.port}/api"


def test_moved_port_stays_reported(cycle):
    note = f"port {cycle.moved_from} was taken; using"
    assert note in cycle.first.services["prefect"].note
    assert note in cycle.first_status.services["prefect"].note  # `status` right after `up`
    later = status(home=cycle.home, params=cycle.params)  # and after a restart
    assert later.services["prefect"].note.startswith(note)
    assert later.services["prefect"].healthy
    saved = json.loads((cycle.home / "stack.json").read_text())["services"]["prefect"]
    assert saved["moved_from"] == cycle.moved_from


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_stack_home_is_private(cycle):
    home = cycle.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for secret in ("s3-credentials", "stack.env"):
        assert stat.S_IMODE((home / secret).stat().st_mode) == 0o600, secret
    data = [home / "s3", home / "s3" / BUCKET, home / "s3" / BUCKET / "notes",
            home / "s3" / BUCKET / "notes" / ".tmp.keepme", home / "s3" / BUCKET / "persist" /
            "blob", home / "mlflow" / "mlflow.db", home / "prefect" / "prefect.db",
            home / "logs" / "s3.log"]
    loose = [str(p) for p in data if not _private(p)]
    assert not loose, f"readable by group/others: {loose}"
    ray_tmp = _ray_tmp(home)  # under the home, or /tmp/wallwm-ray-<id> for a long home path
    assert (ray_tmp / "session_latest").exists(), "Ray does not use the stack's temp folder"
    assert stat.S_IMODE(ray_tmp.parent.stat().st_mode) == 0o700  # Ray makes its own 0777
    assert ray_tmp.parent.stat().st_uid == os.getuid()


def test_check_stack_accepts_the_running_stack(cycle, monkeypatch):
    for k, v in read_stack_env(cycle.home).items():
        monkeypatch.setenv(k, v)
    found = check_stack(home=cycle.home)
    assert found["mlflow"] == cycle.second.services["mlflow"].url
    assert set(found) == {"mlflow", "s3", "prefect", "ray"}


def test_killed_s3_loses_nothing(cycle):
    pid = cycle.second.services["s3"].pid
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(10)
    third = up(cycle.params, home=cycle.home)
    got = get_bytes(_s3(cycle.home), S3Location(BUCKET, "persist/blob"))
    assert hashlib.sha256(got).hexdigest() == cycle.blob_sha
    assert third.services["mlflow"].note.startswith("already running")  # not restarted


def test_failed_strict_up_leaves_running_services_alone(cycle):
    """`on_port_taken: error` fails on MLflow's port; what already ran before stays running."""
    before = StackState.load(cycle.home / "stack.json")
    sid = stack_id(cycle.home)
    mlflow_port = before.services["mlflow"].port
    stop_marked(sid, "mlflow")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # its closed connections linger
        s.bind(("127.0.0.1", mlflow_port))
        s.listen()
        strict = load_params(ROOT / "params.yaml", sets=free_port_params(**{
            "services.prefect.port": str(cycle.moved_from),
            "services.mlflow.port": str(mlflow_port), "services.on_port_taken": "error"})).services
        with pytest.raises(StackError, match=f"port {mlflow_port} for mlflow is taken") as e:
            up(strict, home=cycle.home)
        assert "stopped again" not in str(e.value)  # it had started nothing
    after = StackState.load(cycle.home / "stack.json")
    for name in ("s3", "prefect", "ray"):
        assert after.services[name].pid == before.services[name].pid, name
        assert alive(after.services[name].pid), name
    assert not any(p.environ().get("WALLWM_SERVICE") == "mlflow" for p in marked_processes(sid))


def test_taken_port_with_error_policy_stops_what_this_up_started(tmp_path):
    home = tmp_path / "home"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        strict = load_params(ROOT / "params.yaml", sets=free_port_params(**{
            "services.mlflow.port": str(taken), "services.on_port_taken": "error"})).services
        try:
            with pytest.raises(StackError, match=f"port {taken} for mlflow is taken") as e:
                up(strict, home=home)
            assert "stopped again what this `up` had started: s3, prefect, ray" in str(e.value)
            assert marked_processes(stack_id(home)) == []
            st = status(home=home, params=strict)
            assert not any(x.running for x in st.services.values()), st
        finally:
            down(home)


def test_user_supplied_address_is_used_not_started(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    params = load_params(ROOT / "params.yaml", sets=free_port_params()).services
    try:
        state = up(params, home=home)
        for name in ("ray", "prefect", "mlflow"):
            assert state.services[name].external and state.services[name].pid is None
        assert not state.services["s3"].external and state.services["s3"].healthy
        names = {p.environ().get("WALLWM_SERVICE") for p in marked_processes(stack_id(home))}
        assert names == {"s3"}
    finally:
        down(home)
