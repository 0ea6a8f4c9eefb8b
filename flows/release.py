"""The release flow: publish a bundle to canary and the fleet's channel, then roll it out in
stages to a fleet (by default a simulated fleet of agent processes on this machine).

`python -m flows.release BUNDLE VERSION [--robots 5]` runs it alone; promotion calls
`components.release.publish_release` directly and this flow for the rollout. The Prefect
flow only wires the plain functions below it and records the outcome (a markdown artifact
with every robot's status and the rollout's events).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.release import Director, keyring, publish_release, repository
from components.release.fleet import SimFleet
from components.stack import load_stack_env
from components.stack.home import wallwm_home
from components.storage.release_store import channel_store
from wallwm.config import Params, load_params
from wallwm.release.bundle import load_manifest
from wallwm.release.keys import public_key_json
from wallwm.release.rollout import Phase


@task(cache_policy=NO_CACHE)
def publish(bundle_dir: str, channels: list[str], version: str, params: Params) -> list[dict]:
    return [publish_release(bundle_dir, c, version, params=params.release) for c in channels]


@task(cache_policy=NO_CACHE)
def rollout(fleet: str, channel: str, version: str, params: Params, canary_share: float,
            soak_s: float, timeout_s: float, max_failure_rate: float) -> dict[str, Any]:
    d = Director(channel_store(params.release.bucket), fleet, keyring(),
                 assignment_days=params.release.metadata_expiry_days)
    return run_rollout(d, channel, version, canary_share, soak_s, timeout_s, max_failure_rate)


@flow(name="release", log_prints=False)
def release_flow(bundle_dir: str, version: str, fleet: str = "demo", robots: int = 5,
                 channel: str | None = None, canary_share: float | None = None,
                 soak_s: float = 2.0, timeout_s: float = 300.0, max_failure_rate: float = 0.0,
                 simulate: bool = True, params_files: list[str] | None = None,
                 sets: list[str] | None = None) -> dict[str, Any]:
    """Publish `bundle_dir` as `version` to canary and the channel, then the staged rollout.
    With `simulate`, a fleet of `robots` local agents is started first (own folders under
    <WALLWM_HOME>/fleets/<fleet>/) and stopped after."""
    log = get_run_logger()
    load_stack_env()
    p = load_params(extra_files=params_files or [], sets=sets or [])
    channel = channel or p.release.channel
    sim = start_simulated_fleet(fleet, robots, channel, p, bundle_dir) if simulate else None
    try:
        # robots that already run a release get "stay" assignments before the new one is
        # visible; robots with nothing installed yet follow the channel and take it at once
        Director(channel_store(p.release.bucket), fleet, keyring()).sync(channel)
        pub = publish(bundle_dir, sorted({"canary", channel}), version, p)
        log.info("published %s to %s", version, [x["repo_url"] for x in pub])
        out = rollout(fleet, channel, version, p, canary_share or p.release.canary_share,
                      soak_s, timeout_s, max_failure_rate)
        out["published"] = pub
    finally:
        if sim is not None:
            sim.stop()
    create_markdown_artifact(markdown=report_markdown(out), key=f"release-{fleet}",
                             description=f"rollout of {version} to fleet {fleet}")
    log.info("rollout %s: %s in %.1fs", out["rollout"], out["status"], out["seconds"])
    return out


# ----------------------------------------------------------------------------- plain functions
def start_simulated_fleet(fleet: str, n: int, channel: str, p: Params,
                          bundle_dir: str | Path) -> SimFleet:
    """`n` agent processes provisioned for `channel`, with the robot profile of the bundle."""
    m = load_manifest(bundle_dir)
    repo = repository(channel, p.release)
    if not repo.exists():
        repo.create()
    ring = keyring()
    sim = SimFleet(wallwm_home() / "fleets" / fleet, n, fleet=fleet, channel=channel,
                   bucket=p.release.bucket, trusted_root=repo.root_bytes(),
                   director_key_json=public_key_json(ring.role("director").public_keys()[0]),
                   embodiment=m.embodiment, cameras=[c.model_dump() for c in m.cameras])
    sim.start()
    sim.wait_all(lambda s: bool(s.get("at_unix")), 60, "first report")
    return sim


def run_rollout(d: Director, channel: str, version: str, canary_share: float, soak_s: float,
                timeout_s: float, max_failure_rate: float = 0.0, poll_s: float = 0.5,
                canary: list[str] | None = None) -> dict[str, Any]:
    """Start the rollout and advance it until it completes, halts or times out.

    Returns the outcome with `seconds` (until every robot runs the version committed, or
    until the halt) and every robot's status row."""
    first = (Phase("canary", robots=canary, soak_s=soak_s) if canary
             else Phase("canary", share=canary_share, soak_s=soak_s))
    t0 = time.monotonic()
    r = d.start(channel, version, [first, Phase("fleet", share=1.0)],
                max_failure_rate=max_failure_rate)
    rid = r.id
    while True:
        r, _ = d.sync(channel)
        assert r is not None
        views = d.views()
        done = r.status == "complete" and all(
            v.active_version == version and v.committed for v in views.values())
        if done or r.status in ("halted", "aborted") or time.monotonic() - t0 > timeout_s:
            break
        time.sleep(poll_s)
    seconds = time.monotonic() - t0
    return {"rollout": rid, "version": version, "status": r.status if (
                r.status != "running") else "timeout", "reason": r.reason,
            "seconds": round(seconds, 2), "events": r.events,
            "robots": [vars(row) for row in d.status()]}


def report_markdown(out: dict[str, Any]) -> str:
    lines = [f"# Rollout {out['rollout']} of {out['version']}: {out['status']}", "",
             f"{out['reason']} ({out['seconds']} s)", "",
             "| robot | runs | state | assigned | why | last error |", "|---|---|---|---|---|---|"]
    for r in out["robots"]:
        lines.append(f"| {r['robot']} | {r['running']} | {r['state']} | {r['assigned']} | "
                     f"{r['why']} | {r['last_error'][:80]} |")
    lines += ["", "Events:", "", *[f"- {e}" for e in out["events"]]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="publish + staged rollout to a simulated fleet")
    ap.add_argument("bundle")
    ap.add_argument("version")
    ap.add_argument("--fleet", default="demo")
    ap.add_argument("--robots", type=int, default=5)
    ap.add_argument("--soak-s", type=float, default=2.0)
    a = ap.parse_args(argv)
    print(json.dumps(release_flow(a.bundle, a.version, a.fleet, a.robots, soak_s=a.soak_s),
                     indent=2, default=str))


if __name__ == "__main__":
    main()
