"""Release and robots: a demo fleet of 5 real agent processes on loopback S3 (nanio).

* `rollout_converge_s`: staged rollout (1 canary robot, 1 s soak, then the fleet) from start
  until all 5 agents run the new release committed (health window 1 s, polls every 0.3 s).
* `bad_release_halted`: 1 when a planted bad release (reference outputs off) stops at the
  canary with every agent still serving the previous engine.
* `agent_swap_gap_ms`: the longest gap between consecutive /act answers while one agent
  hot-swaps engines (baseline: the longest gap in the same client loop without a swap).
* `agent_rss_mib`: resident memory of an agent process while serving (two engines loaded
  at most during a swap; the fixture engine is tiny, so this is the agent's own footprint).

Bundles come from tests/fixtures/bundles.py (real ONNX graphs built without torch).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks.harness import Figure
from components.release.director import Director
from components.release.fleet import SimFleet
from components.storage.release_store import S3Store
from components.storage.s3 import ensure_buckets
from flows.release import run_rollout
from tests.fixtures.bundles import CAMERAS, Nanio, act_body, make_bundle
from wallwm.release.keys import KeyRing, public_key_json
from wallwm.release.tuf_repo import Repository

N = 5
FIGURES = {
    "rollout_converge_s": ("time for 5 local agents to run a new release (staged)", "reported"),
    "bad_release_halted": ("a planted bad release stops at canary, fleet on the previous "
                           "engine", ">= 1"),
    "agent_swap_gap_ms": ("longest request gap during a hot swap", "reported"),
    "agent_rss_mib": ("agent memory while serving", "reported"),
}


def _gaps(agent, stop: threading.Event, out: list[float]) -> None:
    body = act_body()
    last = time.perf_counter()
    while not stop.is_set():
        code, _ = agent.act(body)
        now = time.perf_counter()
        if code == 200:
            out.append((now - last) * 1000)
            last = now


def run() -> dict[str, Figure]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-release-"))
    s3 = Nanio(tmp / "s3").start()
    import os

    os.environ.update(s3.env)
    client = s3.client()
    ensure_buckets(client, ["wallwm-releases"])
    keys = KeyRing.create(tmp / "keys")
    store = S3Store("wallwm-releases", "", client)
    repo = Repository(store, keys, "stable")
    director = Director(store, "bench", keys)

    def publish(v: str, **kw) -> None:
        repo.add_release(make_bundle(tmp / "b" / v, tag=float(v.split(".")[0]), **kw), v)

    publish("1.0.0")
    fleet = SimFleet(tmp / "fleet", N, fleet="bench", channel="stable", bucket="wallwm-releases",
                     trusted_root=repo.root_bytes(),
                     director_key_json=public_key_json(keys.role("director").public_keys()[0]),
                     embodiment="test-arm",
                     cameras=[{"name": c, "height": h, "width": w} for c, h, w in CAMERAS],
                     overrides={"poll_interval_s": 0.3, "health_window_s": 1.0},
                     env=s3.env)
    figs: dict[str, Figure] = {}
    try:
        fleet.start()
        fleet.wait_all(lambda s: (s.get("active") or {}).get("committed"), 120, "v1 everywhere")
        director.sync()
        converge = []
        for v in ("2.0.0", "3.0.0"):
            publish(v)
            out = run_rollout(director, "stable", v, 0.2, soak_s=1.0, timeout_s=180)
            if out["status"] != "complete":
                raise RuntimeError(f"rollout of {v}: {out['status']} {out['reason']}")
            converge.append(out["seconds"])
        figs["rollout_converge_s"] = Figure(
            "rollout_converge_s", round(statistics.median(converge), 2),
            (min(converge), max(converge)), FIGURES["rollout_converge_s"][0], unit="s",
            notes=f"{N} agents, canary 1 robot + 1 s soak, health window 1 s, polls 0.3 s; "
                  f"runs {converge}")
        publish("4.0.0", bad_reference=True)
        out = run_rollout(director, "stable", "4.0.0", 0.2, soak_s=1.0, timeout_s=120)
        time.sleep(1.0)
        running = {k: (s.get("active") or {}).get("version") for k, s in fleet.statuses().items()}
        halted = int(out["status"] == "halted" and set(running.values()) == {"3.0.0"})
        figs["bad_release_halted"] = Figure(
            "bad_release_halted", halted, (halted, halted), FIGURES["bad_release_halted"][0],
            target=">= 1", met=bool(halted),
            notes=f"status {out['status']} after {out['seconds']} s: {out['reason']}; "
                  f"fleet runs {running}")
        # hot swap gap on one agent: pin it to a new release while a client hammers /act
        agent = fleet.agents[0]
        base: list[float] = []
        stop = threading.Event()
        t = threading.Thread(target=_gaps, args=(agent, stop, base))
        t.start()
        time.sleep(2.0)
        stop.set()
        t.join()
        publish("5.0.0")
        swap: list[float] = []
        stop = threading.Event()
        t = threading.Thread(target=_gaps, args=(agent, stop, swap))
        t.start()
        director.pin(agent.robot_id, "5.0.0", "swap benchmark")
        director.sync()
        agent.wait_for(lambda s: (s.get("active") or {}).get("version") == "5.0.0", 60, "swap")
        time.sleep(0.5)
        stop.set()
        t.join()
        figs["agent_swap_gap_ms"] = Figure(
            "agent_swap_gap_ms", round(max(swap), 2), (round(min(swap), 2), round(max(swap), 2)),
            FIGURES["agent_swap_gap_ms"][0], "no swap, same client loop",
            round(max(base), 2), unit="ms",
            notes=f"{len(swap)} requests during the swap window (median gap "
                  f"{statistics.median(swap):.2f} ms), {len(base)} without (median "
                  f"{statistics.median(base):.2f} ms); no request failed: the swap happens "
                  "between requests, the new engine is loaded and checked before it")
        rss = [psutil.Process(a.proc.pid).memory_info().rss / 2**20 for a in fleet.agents]
        figs["agent_rss_mib"] = Figure(
            "agent_rss_mib", round(max(rss), 1), (round(min(rss), 1), round(max(rss), 1)),
            FIGURES["agent_rss_mib"][0], unit="MiB",
            notes=f"RSS of the {N} agents while serving (fixture engine ~30 kB): "
                  f"{[round(r, 1) for r in rss]}; numpy + onnxruntime + boto3 + tuf")
    finally:
        fleet.stop()
        s3.stop()
    return figs


if __name__ == "__main__":
    for k, f in run().items():
        print(k, f.value, f.unit, f.notes)
