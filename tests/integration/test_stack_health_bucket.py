"""The stack health probe writes into its own bucket, never the releases robots pull from."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from components.storage import s3_client
from tests.conftest import ROOT
from wallwm.config import load_params

pytestmark = pytest.mark.integration


def test_health_probe_uses_its_own_bucket(stack):
    p = load_params(ROOT / "params.yaml")
    health, releases = p.services.s3.health_bucket, p.release.bucket
    assert health != releases
    client = s3_client()

    def keys(bucket: str) -> set[str]:  # other tests of the session publish releases
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    before = keys(releases)
    proc = subprocess.run([sys.executable, "-m", "flows.health"], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert report["s3"]["key"].startswith(f"s3://{health}/health/"), report["s3"]
    assert keys(releases) == before  # nothing written into what robots pull
    assert client.list_objects_v2(Bucket=health).get("KeyCount", 0) == 0  # the probe cleans up


def test_health_bucket_may_not_be_the_release_bucket():
    from flows.health import probe_bucket

    p = load_params(ROOT / "params.yaml", sets=["services.s3.health_bucket=wallwm-releases"])
    with pytest.raises(ValueError, match="releases channel robots read"):
        probe_bucket(p)
