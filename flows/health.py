"""The stack health flow: one real write and read through each service, recorded in MLflow.

Run before the real stages so that a broken service fails in seconds with its name, not an hour
into a build. `python -m flows.health` runs it alone.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time
from typing import Any

import mlflow
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from components.compute import connect
from components.stack.home import project_root
from components.storage import S3Location, get_bytes, put_bytes, s3_client
from components.tracking import artifact_sha256, log_bytes, log_json, start_run
from components.versioning import dvc_md5
from wallwm.config import load_params
from wallwm.config.schema import Params


@task(retries=2, retry_delay_seconds=2)
def s3_roundtrip(bucket: str) -> dict[str, Any]:
    """Put random bytes into the bucket, read them back, compare sha256, delete."""
    client = s3_client()
    data = secrets.token_bytes(256 * 1024)
    loc = S3Location(bucket, f"health/{socket.gethostname()}-{time.time_ns()}.bin")
    t0 = time.perf_counter()
    sent = put_bytes(client, loc, data)
    back = hashlib.sha256(get_bytes(client, loc)).hexdigest()
    seconds = time.perf_counter() - t0
    client.delete_object(Bucket=loc.bucket, Key=loc.key)
    if back != sent:
        raise RuntimeError(
            f"S3 round trip through {os.environ.get('AWS_ENDPOINT_URL')} changed the bytes"
        )
    return {
        "endpoint": os.environ.get("AWS_ENDPOINT_URL", "aws"),
        "key": loc.url,
        "sha256": sent,
        "seconds": seconds,
    }


@task(retries=2, retry_delay_seconds=2)
def mlflow_artifact_roundtrip(run_id: str, artifact_bucket: str | None) -> dict[str, Any]:
    """Log an artifact through the server, download it, and (S3 store) find it in the bucket."""
    data = secrets.token_bytes(128 * 1024)
    sent = hashlib.sha256(data).hexdigest()
    t0 = time.perf_counter()
    log_bytes(data, "health/payload.bin")
    back = artifact_sha256(run_id, "health/payload.bin")
    out: dict[str, Any] = {"sha256": sent, "seconds": time.perf_counter() - t0}
    if back != sent:
        raise RuntimeError("MLflow artifact round trip changed the bytes")
    if artifact_bucket:
        run = mlflow.get_run(run_id)
        key = f"{run.info.experiment_id}/{run_id}/artifacts/health/payload.bin"
        obj = get_bytes(s3_client(), S3Location(artifact_bucket, key))
        if hashlib.sha256(obj).hexdigest() != sent:
            raise RuntimeError(f"s3://{artifact_bucket}/{key} differs from the logged artifact")
        out["s3_object"] = f"s3://{artifact_bucket}/{key}"
    return out


@task(retries=1)
def ray_roundtrip() -> dict[str, Any]:
    """Hash a payload on a Ray worker of the cluster at RAY_ADDRESS."""
    import ray

    resources = connect()
    data = secrets.token_bytes(64 * 1024)

    @ray.remote(num_cpus=1)
    def digest(blob: bytes) -> tuple[str, str]:
        return hashlib.sha256(blob).hexdigest(), socket.gethostname()

    t0 = time.perf_counter()
    remote_sha, host = ray.get(digest.remote(data), timeout=120)
    if remote_sha != hashlib.sha256(data).hexdigest():
        raise RuntimeError("Ray worker computed a different digest")
    return {
        "address": os.environ.get("RAY_ADDRESS", "local"),
        "cpus": resources.get("CPU", 0),
        "worker_host": host,
        "seconds": time.perf_counter() - t0,
    }


def probe_bucket(p: Params) -> str:
    """The probe's own bucket (`services.s3.health_bucket`), never the one robots pull from."""
    bucket = p.services.s3.health_bucket
    if bucket == p.release.bucket:
        raise ValueError(
            f"services.s3.health_bucket = {bucket!r} is release.bucket: the health probe would "
            f"write into the releases channel robots read; give it its own bucket"
        )
    return bucket


@task
def dvc_pin() -> dict[str, Any]:
    root = project_root()
    return {"data.dvc": str(root / "data.dvc"), "md5": dvc_md5(root, "data")}


@flow(name="stack-health", log_prints=True)
def stack_health(
    params_files: list[str] | None = None, sets: list[str] | None = None
) -> dict[str, Any]:
    """Write and read one artifact through S3 (its own bucket), MLflow (stored in S3), Ray and
    Prefect."""
    log = get_run_logger()
    p = load_params(extra_files=params_files or [], sets=sets or [])
    artifact_bucket = p.services.mlflow.bucket if p.services.mlflow.artifact_store == "s3" else None
    report: dict[str, Any] = {
        "prefect": {
            "flow_run_id": flow_run.get_id(),
            "api": os.environ.get("PREFECT_API_URL", "ephemeral"),
        }
    }
    with start_run(p.project.experiment, "stack-health", tags={"wallwm.stage": "health"}) as run:
        report["s3"] = s3_roundtrip(probe_bucket(p))
        log.info("S3 round trip ok: %s", report["s3"]["key"])
        report["mlflow"] = mlflow_artifact_roundtrip(run.info.run_id, artifact_bucket)
        log.info(
            "MLflow artifact round trip ok (%s)", report["mlflow"].get("s3_object", "local store")
        )
        report["ray"] = ray_roundtrip()
        log.info("Ray round trip ok on %s CPUs", report["ray"]["cpus"])
        report["dvc"] = dvc_pin()
        mlflow.log_metrics(
            {
                f"health.{k}_seconds": v["seconds"]
                for k, v in report.items()
                if isinstance(v, dict) and "seconds" in v
            }
        )
        mlflow.set_tags(
            {
                "wallwm.data_dvc_md5": report["dvc"]["md5"],
                "prefect.flow_run_id": str(report["prefect"]["flow_run_id"]),
            }
        )
        log_json(report, "health/report.json")
        report["mlflow"]["run_id"] = run.info.run_id
    return report


if __name__ == "__main__":
    from components.stack import require_stack

    require_stack()  # loads stack.env; exits 3 with the hint when a service is missing
    print(stack_health(sets=[]))
