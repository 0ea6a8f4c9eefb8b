"""Training beyond one machine: a second Ray node joins a head (`ray start --address`, its own
temp folder), a 2-worker Ray Train run of a tiny stage runs one worker on each node, keeps its
checkpoints in the stack's S3 (nanio), is killed, and resumes from S3 with its local checkpoint
folder gone. The workers' Lightning and Ray records reach the Prefect run's logs.

The stack's own head is loopback-only (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`), which also makes
`ray start --address` refuse to join, so this cluster has its own head: node addresses
127.0.0.2 and 127.0.0.3 (loopback; Ray would replace 127.0.0.1 by the machine's address), token
authentication on (its GCS and raylets listen on every interface), every process marked and
stopped by its marker at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.stack.ports import free_port, port_open
from components.stack.process import MARKER, marked_processes, spawn, stop_marked, terminate
from tests.conftest import ROOT
from tests.unit.distill.world import MICRO

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=125)]  # 2 cores, serial
BIN = Path(sys.executable).parent
HEAD_IP, NODE_IP = "127.0.0.2", "127.0.0.3"
STORAGE = "s3://wallwm-ray/it-multinode"
STEPS, EVERY = 15, 5  # three epochs; each ends with a checkpoint reported to S3

DRIVER = """
import json, sys
from prefect import flow
from components.compute.ray_cluster import alive_nodes
from components.compute.ray_train import fit_on_ray
from flows.train import _ray_stage_worker

@flow(name="it-ray-multinode")
def run(cfg):
    from prefect.runtime import flow_run
    print("FLOW_RUN " + str(flow_run.id), flush=True)
    import time
    deadline = time.monotonic() + 90
    while len(alive_nodes()) < 2:  # the second node may still be registering
        assert time.monotonic() < deadline, "the second Ray node never joined"
        time.sleep(1)
    return fit_on_ray(_ray_stage_worker, cfg["config"], 2, cfg["storage"], cfg["name"],
                      placement_strategy="STRICT_SPREAD")

print("RESULT " + json.dumps(run(json.loads(sys.argv[1]))), flush=True)
"""


def _ray_env(token: str, head: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=token, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


@pytest.fixture(scope="module")
def cluster(stack, tmp_path_factory) -> Iterator[dict[str, str]]:
    """A head (1 CPU) and a second node (1 CPU) joining it, both `ray start --block` with their
    own temp folder; yields the environment of a driver that uses this cluster."""
    base = Path(f"/tmp/wallwm-mn-{secrets.token_hex(3)}")  # Ray's socket paths must stay short
    token, sid = secrets.token_hex(16), f"it-multinode-{secrets.token_hex(4)}"
    port = free_port()
    head = f"{HEAD_IP}:{port}"
    env = {**_ray_env(token, head), MARKER: sid}
    common = ["--num-cpus", "1", "--object-store-memory", str(150 * 1024 * 1024),
              "--disable-usage-stats", "--block"]
    try:
        spawn([str(BIN / "ray"), "start", "--head", "--port", str(port),
               "--node-ip-address", HEAD_IP, "--temp-dir", str(base / "head"),
               "--include-dashboard", "false",
               "--dashboard-agent-listen-port", str(free_port()), *common],
              {**env, "WALLWM_SERVICE": "ray-head"}, base / "head.log")
        deadline = time.monotonic() + 90
        while not port_open(HEAD_IP, port):
            assert time.monotonic() < deadline, (base / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        spawn([str(BIN / "ray"), "start", "--address", head,
               "--node-ip-address", NODE_IP, "--temp-dir", str(base / "node"),
               "--dashboard-agent-listen-port", str(free_port()), *common],
              {**env, "WALLWM_SERVICE": "ray-node"}, base / "node.log")
        yield {**_ray_env(token, head), "RAY_ADDRESS": head,
               "PREFECT_LOGGING_EXTRA_LOGGERS": "lightning.pytorch,ray"}
    finally:
        # the joining node first, then the head (GCS last); each node's processes all at once:
        # SIGTERM to `ray start --block` alone makes it stop its children one by one (17 s for
        # the head, measured), while its children signalled together exit within a second
        for service in ("ray-node", "ray-head"):
            terminate(marked_processes(sid, service), timeout=8)
        stop_marked(sid)  # whatever a `ray start` left behind
        shutil.rmtree(base, ignore_errors=True)


def _s3():
    from components.storage.s3 import s3_client

    return s3_client()


def _checkpoints(name: str) -> list[str]:
    from botocore.exceptions import ClientError

    bucket, _, prefix = STORAGE[len("s3://"):].partition("/")
    pages = _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                           Prefix=f"{prefix}/{name}/")
    try:
        return sorted(o["Key"] for page in pages for o in page.get("Contents", [])
                      if o["Key"].endswith("/last.ckpt"))
    except ClientError as e:
        if e.response["Error"]["Code"] == "NoSuchBucket":  # the first run makes it
            return []
        raise


def _registered(name: str) -> int:
    """Checkpoints Ray Train's checkpoint manager has recorded for `name` (its snapshot in S3:
    what a restarted run resumes from)."""
    from botocore.exceptions import ClientError

    bucket, _, prefix = STORAGE[len("s3://"):].partition("/")
    try:
        body = _s3().get_object(Bucket=bucket,
                                Key=f"{prefix}/{name}/checkpoint_manager_snapshot.json")["Body"]
    except ClientError as e:
        if e.response["Error"]["Code"] in ("NoSuchBucket", "NoSuchKey", "404"):
            return 0
        raise
    return len(json.loads(body.read()).get("checkpoint_results", []))


def _driver(cluster: dict[str, str], cfg: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(cfg)], cwd=ROOT,
                            env=cluster, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _line(out: str, tag: str) -> str:
    hits = [ln[len(tag) + 1:] for ln in out.splitlines() if ln.startswith(tag + " ")]
    assert hits, out[-6000:]
    return hits[-1]


def test_two_node_training_keeps_checkpoints_in_s3_and_resumes(cluster, sim_build4, tmp_path,
                                                              prefect):
    import mlflow

    from wallwm.config import load_params

    p = load_params(ROOT / "params.yaml", sets=[
        "train.stages=[action]", f"train.max_steps={STEPS}", f"train.val_every={EVERY}",
        "train.batch_size=4", "train.val_batches=2",
        f"model.presets.micro={MICRO}", "model.preset=micro"])  # Ray's wiring, not learning
    mlflow.set_experiment("it-ray-multinode")
    run = mlflow.MlflowClient().create_run(mlflow.get_experiment_by_name(
        "it-ray-multinode").experiment_id, run_name="multinode")
    stage_dir = tmp_path / "ckpt" / "action"
    name = f"it-{secrets.token_hex(4)}"
    env_keys = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "WALLWM_HOME")
    cfg = {"storage": STORAGE, "name": name, "config": {
        "params": p.model_dump(mode="json"), "stage": "action", "build_dir": str(sim_build4),
        "stage_dir": str(stage_dir), "init_from": None, "resume": True,
        "run_id": run.info.run_id, "figures_dir": str(tmp_path / "ckpt" / "figures"),
        "env": {k: os.environ[k] for k in env_keys if k in os.environ}}}

    first = _driver(cluster, cfg)
    try:  # killed as soon as Ray Train has recorded its first checkpoint in S3
        deadline = time.monotonic() + 240
        while not _registered(name):
            assert first.poll() is None, first.stdout.read()[-6000:]
            assert time.monotonic() < deadline, "no checkpoint reached S3"
            time.sleep(0.5)
    finally:
        first.kill()
        first.communicate(timeout=30)
    assert first.returncode == -9 and len(_checkpoints(name)) < STEPS // EVERY  # not finished
    shutil.rmtree(stage_dir)  # nothing local left: the resume has to come from S3
    # what a run killed between uploading a checkpoint and recording it leaves behind: a folder
    # Ray Train's checkpoint manager does not know, so num_to_keep alone would never delete it
    bucket, _, prefix = STORAGE[len("s3://"):].partition("/")
    orphan = f"{prefix}/{name}/checkpoint_2000-01-01_00-00-00.000000/last.ckpt"
    _s3().put_object(Bucket=bucket, Key=orphan, Body=b"left by a killed run")

    second = _driver(cluster, cfg)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out[-6000:]
    result = json.loads(_line(out, "RESULT"))
    assert sorted(result["ray_worker_nodes"]) == [HEAD_IP, NODE_IP]  # one worker per node
    assert result["steps"] == STEPS
    assert result["initial_val"] is None  # run_stage validates first only on a fresh start
    assert result["final_val"] is not None and result["final_val"] == result["final_val"]
    assert (stage_dir / "last.ckpt").is_file() and (stage_dir / "result.json").is_file()
    keys = _checkpoints(name)
    assert orphan not in keys, keys  # the unrecorded folder was pruned after the run
    assert 1 <= len(keys) <= 2, keys  # kept in S3; older ones deleted (num_to_keep=2)
    assert all(k.startswith(STORAGE.split("/", 3)[3] + f"/{name}/checkpoint_") for k in keys)

    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    flow_run = _line(out, "FLOW_RUN")
    names: set[str] = set()
    for offset in range(0, 5000, 200):
        page = prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run])),
                                 limit=200, offset=offset)
        names |= {lg.name for lg in page}
        if len(page) < 200:
            break
    assert any(n.startswith("lightning.pytorch") for n in names), sorted(names)
    assert any(n.startswith("ray") for n in names), sorted(names)
    mlflow.MlflowClient().set_terminated(run.info.run_id)
