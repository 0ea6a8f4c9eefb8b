"""e2e_wall_s, e2e_peak_rss_gib, e2e_rerun_wall_s: `make run` with .venv present (the
Makefile's commands: stack up + schedule apply + retrain with profiles/demo.yaml) on a fresh
home: wall time and the peak memory (PSS, so shared pages count once) of every process of ours
(the CLI and its children, every service and Ray worker the stack started, the simulated
fleet's agents); then the same `make run` again with nothing changed, which must reuse every
cached stage."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks.harness import Figure

ROOT = Path(__file__).resolve().parents[1]
SERVICE_VARS = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL",
                "PREFECT_API_URL", "RAY_ADDRESS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _ours(root_pid: int, sid: str) -> list[psutil.Process]:
    procs = {}
    try:
        root = psutil.Process(root_pid)
        procs[root.pid] = root
        for c in root.children(recursive=True):
            procs[c.pid] = c
    except psutil.Error:
        pass
    for p in psutil.process_iter():
        try:
            if p.environ().get("WALLWM_STACK_ID") == sid:
                procs[p.pid] = p
        except (psutil.Error, OSError):
            continue
    return list(procs.values())


def _pss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.Error, OSError):
            continue
    return total


def stage_seconds(console: str) -> dict[str, float]:
    """{stage: seconds} from the retrain's log lines `stage NAME done|reused in S s`."""
    return {m.group(1): float(m.group(3)) for m in re.finditer(
        r"stage (\w+) (done|reused) in ([0-9.]+) s", console)}


def run() -> dict[str, Figure]:
    from components.stack.home import stack_id

    home = Path(tempfile.mkdtemp(prefix="wallwm-bench-")) / "home"
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env.update(WALLWM_HOME=str(home), PREFECT_HOME=str(home / "prefect"))
    wallwm = str(Path(sys.executable).parent / "wallwm")
    sets = [a for s in ("mlflow", "s3", "prefect", "ray") for a in ("--set", f"services.{s}.port=0")]
    repo = home.parent / "repo"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=repo, check=True)
    sid = stack_id(home.resolve())
    # the retrain runs against a scratch DVC repository so the project's data.dvc is untouched
    demo = "--params profiles/demo.yaml"
    script = (f"{wallwm} stack up {demo} {' '.join(sets)} && "
              f"{wallwm} schedule apply {demo} && "
              f"WALLWM_DVC_REPO={repo} {wallwm} retrain {demo}")
    peak, stop = [0], threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _pss(_ours(proc.pid, sid)))
            stop.wait(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    (home.parent / "make_run.log").write_text(out)
    rerun_wall, rerun_out = float("nan"), ""
    if proc.returncode == 0:
        t1 = time.perf_counter()
        again = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        rerun_wall, rerun_out = time.perf_counter() - t1, again.stdout
        if again.returncode != 0:
            out, proc.returncode = rerun_out, again.returncode
    subprocess.run([wallwm, "stack", "down"], cwd=ROOT, env=env, capture_output=True)
    # both runs' consoles (the per-stage summary table) stay beside the home, for profiling
    (home.parent / "make_run_again.log").write_text(rerun_out)
    print(f"e2e: consoles in {home.parent}/make_run.log and make_run_again.log", flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"make run failed:\n{out[-3000:]}")
    stages, again = stage_seconds(out), stage_seconds(rerun_out)
    reused = re.findall(r"stage (\w+) reused in", rerun_out)
    gib = peak[0] / 2**30
    return {
        "e2e_wall_s": Figure("e2e_wall_s", round(wall, 1), (round(wall, 1), round(wall, 1)),
                             "`make run` wall time (venv present): stack up + retrain", "-", None,
                             "<= 900", "s", wall <= 900,
                             "one run; seconds per stage: " + ", ".join(
                                 f"{k} {v}" for k, v in stages.items())
                             + " (release: 5 simulated robots)", extra={"stages": stages}),
        "e2e_rerun_wall_s": Figure("e2e_rerun_wall_s", round(rerun_wall, 1),
                                   (round(rerun_wall, 1), round(rerun_wall, 1)),
                                   "a second `make run` with nothing changed (stack already up)",
                                   "-", None, "<= 60", "s", rerun_wall <= 60,
                                   f"reused {len(reused)} of {len(again)} stages; seconds "
                                   "per stage: " + ", ".join(f"{k} {v}" for k, v in again.items()),
                                   extra={"stages": again, "reused": reused}),
        "e2e_peak_rss_gib": Figure("e2e_peak_rss_gib", round(gib, 2), (round(gib, 2), round(gib, 2)),
                                   "peak memory (PSS) of the whole process tree of `make run`",
                                   "-", None, "<= 8", "GiB", gib <= 8, "sampled every 0.5 s"),
    }
