"""`wallwm release ...`: publish bundles, run staged rollouts, pin robots, see the fleet.

A Typer sub-app (`release_app`), registered by flows/cli.py. Every command takes `--params`
and `--set` like the rest of `wallwm`; S3 comes from `AWS_ENDPOINT_URL` (the local stack's
`stack.env` is loaded when present) and keys from `$WALLWM_RELEASE_KEYS` or
`<WALLWM_HOME>/release-keys`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_options import ParamsOpt, SetOpt, params_or_exit
from wallwm.config import Params

release_app = typer.Typer(help="Signed releases (TUF) on S3 channels, staged rollouts to "
                          "robots, pins and the version floor.", no_args_is_help=True)
rollout_app = typer.Typer(help="Staged rollouts of one fleet (director).", no_args_is_help=True)
keys_app = typer.Typer(help="Release signing keys (offline root/targets, online others).",
                       no_args_is_help=True)
release_app.add_typer(rollout_app, name="rollout")
release_app.add_typer(keys_app, name="keys")
console = Console()
err = Console(stderr=True)

FleetOpt = Annotated[str, typer.Option(help="Fleet name (director/<fleet>/ in the bucket).")]
ChannelOpt = Annotated[str | None, typer.Option(help="Channel (default: release.channel).")]
KeysOpt = Annotated[Path | None, typer.Option("--keys", help="Key folder (default: "
                                              "$WALLWM_RELEASE_KEYS or <WALLWM_HOME>/release-keys).")]


def _params(params: list[Path] | None, sets: list[str] | None) -> Params:
    p = params_or_exit(params, sets)
    from components.stack import load_stack_env

    load_stack_env()
    return p


def _fail(e: Exception, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _director(p: Params, fleet: str, keys: Path | None):
    from components.release import Director, keyring
    from components.storage.release_store import channel_store

    try:
        ring = keyring(keys, create=False)
    except FileNotFoundError as e:
        raise _fail(e, 2) from None
    return Director(channel_store(p.release.bucket), fleet, ring,
                    assignment_days=p.release.metadata_expiry_days)


@release_app.command("publish")
def publish(bundle: Annotated[Path, typer.Argument(help="Bundle folder (wallwm-bundle/1).")],
            version: Annotated[str, typer.Option(help="Release version (PEP 440).")],
            channel: ChannelOpt = None, keys: KeysOpt = None, params: ParamsOpt = None,
            set_: SetOpt = None) -> None:
    """Verify a bundle and publish it to a channel with new signed TUF metadata."""
    from components.release import publish_release
    from wallwm.release.bundle import BundleError
    from wallwm.release.tuf_repo import RepositoryError

    p = _params(params, set_)
    try:
        out = publish_release(bundle, channel or p.release.channel, version, params=p.release,
                              keys_dir=keys)
    except (BundleError, RepositoryError) as e:
        raise _fail(e, 2) from None
    console.print(f"published {version} to {out['repo_url']} (targets v{out['targets_version']}"
                  f", {out['files']} files, {out['bundle_size']} bytes)")


@release_app.command("list")
def list_releases(channel: ChannelOpt = None, keys: KeysOpt = None, params: ParamsOpt = None,
                  set_: SetOpt = None) -> None:
    """Releases in a channel's signed index, with their compatibility."""
    from components.release import repository

    p = _params(params, set_)
    t = Table(title=f"channel {channel or p.release.channel}")
    for c in ("version", "embodiment", "precisions", "runtime", "size", "lineage"):
        t.add_column(c)
    for r in repository(channel or p.release.channel, p.release, keys).releases():
        c = r.custom
        t.add_row(r.version, c["embodiment"], ",".join(c["precisions"]),
                  f"onnxruntime>={c['runtime']['min_version']}", str(c["bundle_size"]),
                  ", ".join(f"{k}={v}" for k, v in c.get("lineage", {}).items()))
    console.print(t)


@release_app.command("root")
def root(channel: ChannelOpt = None, out: Annotated[Path | None, typer.Option(
         help="Write here instead of stdout.")] = None, keys: KeysOpt = None,
         params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """The channel's newest root.json: what a new robot is provisioned with (trusted_root)."""
    from components.release import repository

    p = _params(params, set_)
    raw = repository(channel or p.release.channel, p.release, keys).root_bytes()
    if out:
        out.write_bytes(raw)
    else:
        sys.stdout.write(raw.decode())


@release_app.command("refresh")
def refresh(channel: ChannelOpt = None, keys: KeysOpt = None, params: ParamsOpt = None,
            set_: SetOpt = None) -> None:
    """Re-sign the timestamp (run more often than release.metadata_expiry_days, e.g. cron)."""
    from components.release import repository

    p = _params(params, set_)
    v = repository(channel or p.release.channel, p.release, keys).refresh_timestamp()
    console.print(f"timestamp v{v} signed")


@release_app.command("status")
def status(fleet: FleetOpt = "default", keys: KeysOpt = None, as_json: Annotated[
           bool, typer.Option("--json")] = False, params: ParamsOpt = None,
           set_: SetOpt = None) -> None:
    """Per robot: what it runs (its signed report), what it should run, and why."""
    p = _params(params, set_)
    d = _director(p, fleet, keys)
    rows = d.status()
    ro = d.rollout()
    if as_json:
        from dataclasses import asdict

        sys.stdout.write(json.dumps({"rollout": ro.to_json() if ro else None,
                                     "robots": [asdict(r) for r in rows]}, indent=2) + "\n")
        return
    if ro:
        console.print(f"rollout {ro.id}: {ro.version} on {ro.channel} is [bold]{ro.status}[/] "
                      f"(phase {ro.phases[ro.phase].name}) {ro.reason}")
    t = Table(title=f"fleet {fleet}")
    for c in ("robot", "runs", "slot", "state", "assigned", "why", "report age", "last error"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(r.robot, r.running or "-", r.slot or "-", r.state, r.assigned or "-", r.why,
                  "-" if r.report_age_s is None else f"{r.report_age_s:.0f}s",
                  r.last_error[:120])
    console.print(t)


def _phases(canary_share: float | None, canary: list[str] | None, soak_s: float):
    from wallwm.release.rollout import Phase

    first = (Phase("canary", robots=list(canary), soak_s=soak_s) if canary
             else Phase("canary", share=canary_share, soak_s=soak_s))
    return [first, Phase("fleet", share=1.0)]


@rollout_app.command("start")
def rollout_start(version: Annotated[str, typer.Option(help="Release to roll out.")],
                  fleet: FleetOpt = "default", channel: ChannelOpt = None,
                  canary_share: Annotated[float | None, typer.Option(
                      help="Share of the fleet in the canary phase (default release."
                      "canary_share).")] = None,
                  canary: Annotated[list[str] | None, typer.Option(
                      help="Canary robot ids instead of a share (repeatable).")] = None,
                  soak_s: Annotated[float, typer.Option(help="Soak after the canary phase.")]
                  = 300.0,
                  max_failure_rate: float = 0.0, min_robots: int = 1, keys: KeysOpt = None,
                  params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Start a staged rollout: canary (share or robot list), soak, then the fleet."""
    from wallwm.release.rollout import RolloutError

    p = _params(params, set_)
    d = _director(p, fleet, keys)
    try:
        r = d.start(channel or p.release.channel, version,
                    _phases(canary_share or p.release.canary_share, canary, soak_s),
                    max_failure_rate=max_failure_rate, min_robots=min_robots)
    except RolloutError as e:
        raise _fail(e, 2) from None
    console.print(f"rollout {r.id} started: {version} to fleet {fleet} "
                  f"({', '.join(ph.name for ph in r.phases)})")


@rollout_app.command("advance")
def rollout_advance(fleet: FleetOpt = "default", watch: Annotated[bool, typer.Option(
                    help="Keep advancing until the rollout completes or halts.")] = False,
                    interval_s: float = 5.0, timeout_s: float = 3600.0, keys: KeysOpt = None,
                    params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Read the robots' reports, widen or halt, write assignments (one step, or --watch)."""
    p = _params(params, set_)
    d = _director(p, fleet, keys)
    deadline = time.monotonic() + timeout_s
    while True:
        r, _ = d.sync(p.release.channel)
        if r is None:
            raise _fail(ValueError(f"fleet {fleet} has no rollout; start one"), 2)
        console.print(f"{r.id}: {r.status}, phase {r.phases[r.phase].name} {r.reason}")
        if not watch or r.status != "running" or time.monotonic() > deadline:
            break
        time.sleep(interval_s)
    if r.status == "halted":
        raise typer.Exit(3)


@rollout_app.command("halt")
def rollout_halt(reason: Annotated[str, typer.Option(help="Why (shown to everyone).")],
                 fleet: FleetOpt = "default", keys: KeysOpt = None, params: ParamsOpt = None,
                 set_: SetOpt = None) -> None:
    """Halt the running rollout: every robot goes back to its baseline."""
    from wallwm.release.rollout import RolloutError

    p = _params(params, set_)
    try:
        r = _director(p, fleet, keys).halt(reason)
    except RolloutError as e:
        raise _fail(e, 2) from None
    console.print(f"rollout {r.id} halted: {r.reason}")


@release_app.command("pin")
def pin(robot: str, version: Annotated[str | None, typer.Argument(
        help="Version to pin to; omit with --clear.")] = None,
        clear: Annotated[bool, typer.Option("--clear", help="Remove the pin.")] = False,
        note: str = "", fleet: FleetOpt = "default", keys: KeysOpt = None,
        params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Pin a robot to a version (rollouts leave it alone), or --clear the pin."""
    from wallwm.release.rollout import RolloutError

    p = _params(params, set_)
    d = _director(p, fleet, keys)
    try:
        if clear:
            d.unpin(robot)
        elif version:
            d.pin(robot, version, note)
        else:
            raise RolloutError("give a VERSION or --clear")
        d.sync(p.release.channel)
    except RolloutError as e:
        raise _fail(e, 2) from None
    console.print(f"{robot}: " + ("unpinned" if clear else f"pinned to {version}"))


@release_app.command("floor")
def floor(version: Annotated[str | None, typer.Argument(help="Lowest version robots may be "
          "assigned (their own last known-good stays allowed).")] = None,
          clear: Annotated[bool, typer.Option("--clear")] = False, fleet: FleetOpt = "default",
          keys: KeysOpt = None, params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Set (or --clear) the fleet's version floor against downgrades."""
    p = _params(params, set_)
    d = _director(p, fleet, keys)
    d.set_floor(None if clear else version)
    d.sync(p.release.channel)
    console.print(f"fleet {fleet} floor: {None if clear else version}")


@keys_app.command("init")
def keys_init(keys: KeysOpt = None, root_keys: int = 2, root_threshold: int = 2,
              targets_keys: int = 1, targets_threshold: int = 1) -> None:
    """Generate every role's keys (files, 0600; offline/ and online/ kept apart)."""
    from components.release.publish import default_keys_dir
    from wallwm.release.keys import KeyFileError, KeyRing

    try:
        ring = KeyRing.create(keys or default_keys_dir(), root_keys, root_threshold,
                              targets_keys, targets_threshold)
    except KeyFileError as e:
        raise _fail(e, 2) from None
    console.print(f"keys in {ring.root}: root {root_threshold}-of-{root_keys}, targets "
                  f"{targets_threshold}-of-{targets_keys}, snapshot, timestamp, director")


@keys_app.command("rotate")
def keys_rotate(role: Annotated[str, typer.Argument(help="root, targets, snapshot or "
                "timestamp")], channel: Annotated[list[str] | None, typer.Option(
                help="Channels to update (repeatable; default release.channel and canary).")]
                = None, count: int = 1, threshold: int | None = None,
                uri: Annotated[str | None, typer.Option(help="Signer URI of a KMS/HSM key "
                               "(e.g. awskms:<arn>) instead of a new file key.")] = None,
                public_key: Annotated[Path | None, typer.Option(help="Its public key (JSON "
                                      "{keyid, key}), needed with --uri.")] = None,
                keys: KeysOpt = None, params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Replace a role's keys in every channel through a new root version."""
    from components.release import keyring
    from components.release.publish import repository
    from wallwm.release.keys import public_key_from_json
    from wallwm.release.tuf_repo import rotate_keys

    p = _params(params, set_)
    ring = keyring(keys, create=False)
    chans = channel or sorted({p.release.channel, "canary"})
    repos = [r for r in (repository(c, p.release, keys) for c in chans) if r.exists()]
    for r in repos:
        r.keys = ring  # one key index for the whole rotation
    new = None
    if uri:
        if public_key is None:
            raise _fail(ValueError("--uri needs --public-key"), 2)
        new = [(uri, public_key_from_json(public_key.read_text()))]
    ids = rotate_keys(ring, repos, role, count=count,
                      threshold=threshold, new_keys=new)
    console.print(f"{role}: new key(s) {[i[:12] for i in ids]} in "
                  f"{[r.channel for r in repos]}")
