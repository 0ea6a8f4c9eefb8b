"""Commands that need the stack refuse to run without it, with the fix in the message, and
leave no `mlruns/`, `mlflow.db` or other fallback behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.stack.home import write_private
from components.stack.lifecycle import ServiceState, StackState
from components.stack.ports import free_port
from tests.conftest import ROOT, SERVICE_VARS

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
HINT = ("run `wallwm stack up` (or set MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL, PREFECT_API_URL, "
        "RAY_ADDRESS)")


@pytest.fixture
def bare(tmp_path) -> tuple[Path, dict[str, str]]:
    """A working folder with the project's params.yaml, an empty home, no service variables."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    shutil.copy(ROOT / "params.yaml", cwd / "params.yaml")
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env.update(WALLWM_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"),
               PYTHONPATH=str(ROOT))
    return cwd, env


def _leftovers(*folders: Path) -> list[str]:
    return [str(p) for f in folders for p in f.rglob("*")
            if p.name in ("mlruns", "mlflow.db", "prefect.db") or p.suffix == ".db"]


def test_data_build_without_a_stack_fails_fast_with_the_hint(bare, tmp_path):
    cwd, env = bare
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=repo, check=True)
    p = subprocess.run([str(BIN / "wallwm"), "data", "build", "--sources", "sim:episodes=1",
                        "--repo", str(repo), "--set", "data.workers=1"], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 3, p.stdout[-2000:] + p.stderr[-3000:]
    assert HINT in p.stderr
    assert _leftovers(cwd, tmp_path / "home", repo) == []
    assert not (repo / "data.dvc").exists()


def test_python_m_flow_without_a_stack_fails_the_same_way(bare):
    cwd, env = bare
    p = subprocess.run([sys.executable, "-m", "flows.health"], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 3 and HINT in p.stderr, p.stderr[-3000:]
    assert _leftovers(cwd) == []


def test_stale_stack_env_after_a_reboot_gets_the_hint(bare):
    cwd, env = bare
    home = Path(env["WALLWM_HOME"])
    home.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    urls = {"mlflow": f"http://127.0.0.1:{free_port()}", "s3": f"http://127.0.0.1:{free_port()}",
            "prefect": f"http://127.0.0.1:{free_port()}/api", "ray": f"127.0.0.1:{free_port()}"}
    StackState(str(home), {n: ServiceState(n, u, pid=dead.pid, running=True, healthy=True)
                           for n, u in urls.items()}).save(home / "stack.json")
    write_private(home / "stack.env", (
        f"MLFLOW_TRACKING_URI={urls['mlflow']}\nAWS_ENDPOINT_URL={urls['s3']}\n"
        f"PREFECT_API_URL={urls['prefect']}\nRAY_ADDRESS={urls['ray']}\n"))
    p = subprocess.run([str(BIN / "wallwm"), "train"], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 3, p.stdout[-2000:] + p.stderr[-3000:]
    assert "stack.env is stale" in p.stderr and HINT in p.stderr
    assert "Connection refused" not in p.stderr
