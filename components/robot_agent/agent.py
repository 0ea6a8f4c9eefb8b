"""The robot agent: pull, verify, install into the inactive slot, check, switch, serve, report.

One `cycle()` (every `poll_interval_s`, or on POST /poll):

1. **Trial.** A freshly switched engine runs on trial: more than `trial_max_errors` engine
   faults while serving roll it back to the previous slot; `health_window_s` without them
   commits it (it becomes the last known-good). Nothing new installs during a trial.
2. **Verify.** TUF refresh of the channel (any failure leaves the running engine alone and
   says why in the status); the newest verified root becomes the next bootstrap.
3. **Decide.** The director's assignment for this robot (DSSE-signed by a director key,
   counter never lower than the last one seen, not expired, for this robot, fleet and
   channel), or without a director the newest compatible release. The version floor carried
   in assignments blocks anything below it except the robot's own last known-good.
4. **Install.** Compatibility from the signed custom fields first; then a resumable,
   TUF-verified download into `staging/`, a free-space check, and the move into the
   inactive slot; then the health check (the reference sample through the same engine code
   that will serve). A failed check marks the version failed and reports it.
5. **Switch.** Only while holding the robot's busy lock (never mid-episode): trial intent
   saved, `active` symlink swapped with fsync, the checked engine handed to the server.
6. **Report.** A status signed with the robot's own key to the director (and `status.json`).

On start (`recover()`), the link decides which slot is active; it is verified file by file and
health-checked before it serves; a slot that fails falls back to the other one. Fault
injection for the crash tests: `WALLWM_AGENT_CRASH_AT=<point>[,<point>]` exits the process at
the named points (`after_download`, `before_switch`, `after_switch`, `mid_download`).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort

from components.robot_agent.config import AgentConfig
from components.robot_agent.flywheel import Flywheel
from components.robot_agent.logs import event
from components.robot_agent.sdnotify import notify, watchdog_period_s
from components.robot_agent.server import ActionServer, EngineHolder
from components.robot_agent.slots import AgentState, Slots
from components.robot_agent.transport import HttpFetcher, S3Fetcher, make_s3_client, split_s3
from components.storage.release_store import S3Store
from wallwm.release.client import ReleaseClient, ReleaseClientError, classify, describe
from wallwm.release.compat import RobotProfile, check_compat
from wallwm.release.engine import Engine
from wallwm.release.keys import load_or_create_device_key, public_key_from_json, public_key_json
from wallwm.release.rollout import allowed
from wallwm.release.signing import (
    ASSIGNMENT,
    REPORT,
    SignatureError,
    sign_document,
    verify_document,
)
from wallwm.util.atomic import atomic_write_text

CRASH_ENV = "WALLWM_AGENT_CRASH_AT"


def crashpoint(name: str) -> None:
    """Fault injection for the crash tests: exit hard (no cleanup) at a named point."""
    if name in os.environ.get(CRASH_ENV, "").split(","):
        os._exit(86)


class BusyLock:
    """The robot's episode lock (flock on a file): held by the controller during an episode."""

    def __init__(self, path: Path | None):
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self.path is None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Agent:
    def __init__(self, cfg: AgentConfig, log: logging.Logger):
        self.cfg, self.log = cfg, log
        self.dir = cfg.state_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.slots = Slots(self.dir)
        self.state_path = self.dir / "agent.json"
        self.state = AgentState.load(self.state_path)
        self.signer = load_or_create_device_key(self.dir / "robot.key")
        self.holder = EngineHolder()
        self.busy = BusyLock(cfg.busy_lock)
        self._cycle_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.profile = RobotProfile(
            cfg.embodiment, {c.name: (c.height, c.width) for c in cfg.cameras},
            ort.__version__, tuple(cfg.precisions), cfg.gpu_arch, cfg.trt_version,
            cfg.action_dim, cfg.state_dim)
        self._s3 = None
        self.fetcher = (S3Fetcher(self.s3) if cfg.repo_url.startswith("s3://")
                        else HttpFetcher(cfg.request_timeout_s))
        self.director_keys = [public_key_from_json(Path(p).read_text())
                              for p in cfg.director_keys]
        self.status_info: dict[str, Any] = {"state": "starting", "last_error": None,
                                            "desired": None, "note": ""}
        self.pending_switch: dict[str, Any] | None = None
        self.metadata_versions: dict[str, int] = {}
        self.flywheel: Flywheel | None = None
        self.server: ActionServer | None = None
        self.started_at = time.time()

    # ------------------------------------------------------------------ helpers
    @property
    def s3(self):
        if self._s3 is None:
            self._s3 = make_s3_client(self.cfg.s3_endpoint, self.cfg.request_timeout_s)
        return self._s3

    def _director(self) -> tuple[S3Store, str] | None:
        if not self.cfg.director_url:
            return None
        bucket, prefix = split_s3(self.cfg.director_url)
        return S3Store(bucket, "", self.s3), prefix

    def save(self) -> None:
        self.state.save(self.state_path)

    def trusted_root(self) -> bytes:
        p = self.dir / "trusted_root.json"
        if p.exists():
            return p.read_bytes()
        try:
            return self.cfg.trusted_root.read_bytes()
        except OSError as e:
            raise ReleaseClientError("config", f"{self.cfg.trusted_root}: cannot read the "
                                     f"provisioned TUF root ({e.strerror})") from e

    def _client(self) -> ReleaseClient:
        return ReleaseClient(self.dir / "tuf" / self.cfg.channel.replace("/", "_"),
                             self.cfg.repo_url, self.fetcher, self.trusted_root())

    def _fail(self, kind: str, message: str) -> None:
        self.status_info["last_error"] = {"kind": kind, "message": message[:800],
                                          "at": round(time.time(), 3)}
        event(self.log, "error", logging.WARNING, kind=kind, message=message[:800])

    def _load_engine(self, slot: str, precision: str | None = None) -> tuple[Engine, dict]:
        """Verify a slot file by file, load it and run its health check."""
        manifest = self.slots.verify(slot)
        prec = precision or next((p for p in self.cfg.precisions if p in manifest.precisions),
                                 None)
        if prec is None:
            raise ReleaseClientError("incompatible", f"slot {slot}: no precision of "
                                     f"{manifest.precisions} is enabled on this robot")
        eng = Engine(self.slots.path(slot), precision=prec, providers=self.cfg.providers,
                     verify=False, threads=self.cfg.threads)
        report = eng.health_check()
        if not report.ok:
            raise ReleaseClientError("health_check_failed", f"slot {slot} "
                                     f"{self.slots.version(slot)}: {report.error}")
        return eng, {"version": self.slots.version(slot), "slot": slot, "precision": prec,
                     "health": report.to_json()}

    # ------------------------------------------------------------------ start
    def register(self) -> None:
        """First start: publish this robot's public key to the director (trust on first use;
        a registration with another key is refused and reported)."""
        d = self._director()
        if d is None:
            return
        store, prefix = d
        key = f"{prefix}/robots/{self.cfg.robot_id}.json"
        mine = json.loads(public_key_json(self.signer.public_key))
        have = store.get_json(key)
        if have is None:
            store.put_json(key, {"robot_id": self.cfg.robot_id, "fleet": self.cfg.fleet,
                                 "channel": self.cfg.channel, "public_key": mine,
                                 "registered_at": round(time.time(), 3),
                                 "embodiment": self.cfg.embodiment})
            event(self.log, "registered", keyid=mine["keyid"])
        elif have.get("public_key", {}).get("keyid") != mine["keyid"]:
            raise ReleaseClientError("registration_mismatch", f"{key} holds another key "
                                     f"({have.get('public_key', {}).get('keyid', '')[:12]}); "
                                     "an operator must remove it to re-register this robot")

    def recover(self) -> None:
        """After any restart: serve only a fully verified, health-checked engine."""
        active = self.slots.active()
        trial = self.state.trial
        if trial and trial.get("slot") != active:
            event(self.log, "switch_not_applied", logging.WARNING, wanted=trial.get("slot"),
                  active=active)
            self.state.trial = None
            self.save()
        candidates = [s for s in (active, self.slots.other(active)) if s]
        for slot in candidates:
            if self.slots.meta(slot) is None:
                continue
            bad = self.state.results.get(self.slots.version(slot) or "", {}).get("status")
            if bad in ("failed", "rolled_back") and not (self.state.trial and slot == active):
                continue  # never fall back onto an engine that already failed here
            try:
                eng, info = self._load_engine(slot)
            except Exception as e:
                why = f"slot {slot} failed verification after restart: {e}"
                self._fail(classify(e), why)
                continue
            if slot != active:
                self.slots.switch(slot)
                self.state.trial = None
                self.status_info["note"] = (f"active slot {active} failed verification; "
                                            f"switched to {slot} ({info['version']})")
                self.state.last_known_good = info["version"]
            elif self.state.trial:
                self.state.trial["restarts"] = int(self.state.trial.get("restarts", 0)) + 1
                self.state.trial["started"] = time.time()
                if self.state.trial["restarts"] > self.cfg.max_trial_restarts:
                    self.holder.swap(eng, info)
                    self.save()
                    self._rollback(f"agent restarted {self.state.trial['restarts']} times "
                                   "during the trial")
                    return
            elif info["version"] and not self.state.last_known_good:
                self.state.last_known_good = info["version"]
            self.save()
            self.holder.swap(eng, info)
            event(self.log, "serving", version=info["version"], slot=slot,
                  trial=bool(self.state.trial))
            return
        self.holder.swap(None, {})
        event(self.log, "no_engine", logging.WARNING, reason="no verified slot")

    # ------------------------------------------------------------------ trial
    def _trial_step(self) -> None:
        trial = self.state.trial
        if not trial:
            return
        if self.holder.failures > self.cfg.trial_max_errors:
            self._rollback(f"{self.holder.failures} engine fault(s) during the trial: "
                           f"{self.holder.last_failure}")
        elif time.time() - float(trial["started"]) >= self.cfg.health_window_s:
            v = trial["version"]
            self.state.trial = None
            self.state.last_known_good = v
            self.state.result(v, "committed")
            self.save()
            event(self.log, "committed", version=v, slot=self.slots.active())

    def _rollback(self, reason: str) -> None:
        trial = self.state.trial or {}
        prev = trial.get("previous_slot")
        v = trial.get("version")
        if not prev or self.slots.meta(prev) is None:
            self._fail("rollback_impossible", f"{v} is failing ({reason}) but there is no "
                       "previous engine to go back to")
            self.state.trial = None
            self.state.result(v, "failed", reason)
            self.save()
            return
        try:
            eng, info = self._load_engine(prev)
        except Exception as e:
            self._fail("rollback_impossible", f"previous slot {prev} unusable ({e}); keeping {v}")
            return
        if not self.busy.try_acquire():
            self.status_info["note"] = f"rollback of {v} waiting for the busy lock"
            return
        try:
            self.state.trial = None
            self.state.result(v, "rolled_back", reason)
            self.save()
            self.slots.switch(prev)
            self.holder.swap(eng, info)
        finally:
            self.busy.release()
        self.status_info["note"] = f"rolled back {v}: {reason}"
        event(self.log, "rolled_back", logging.WARNING, version=v, to=info["version"],
              reason=reason)

    # ------------------------------------------------------------------ decide
    def _assignment(self) -> dict[str, Any] | None:
        d = self._director()
        if d is None:
            return None
        store, prefix = d
        raw = store.get(f"{prefix}/assignments/{self.cfg.robot_id}.json")
        if raw is None:
            return None
        body = verify_document(raw, ASSIGNMENT, self.director_keys,
                               source=f"assignment of {self.cfg.robot_id}")
        for field, want in (("robot", self.cfg.robot_id), ("fleet", self.cfg.fleet),
                            ("channel", self.cfg.channel)):
            if body.get(field) != want:
                raise SignatureError(f"assignment names {field} {body.get(field)!r}, this "
                                     f"robot is {want!r}")
        if dt.datetime.fromisoformat(body["expires"]) < dt.datetime.now(dt.UTC):
            raise ReleaseClientError("assignment_expired", f"assignment expired at "
                                     f"{body['expires']} (director down? robot clock?)")
        if int(body["counter"]) < self.state.assignment_counter:
            raise ReleaseClientError("assignment_replay", f"assignment counter "
                                     f"{body['counter']} < {self.state.assignment_counter} "
                                     "already seen (replayed or rolled back director state)")
        self.state.assignment_counter = int(body["counter"])
        floor = body.get("floor")
        if floor and (self.state.floor_seen is None or _newer(floor, self.state.floor_seen)):
            self.state.floor_seen = floor
        return body

    def _desired(self, client: ReleaseClient) -> tuple[str | None, str]:
        """(version, why) this robot should run."""
        a = self._assignment()
        active_v = self.holder.info.get("version")
        if a is not None:  # the director decides; version None = wait (a later phase)
            return a.get("version") or active_v, a.get("reason", "assigned")
        best = None
        for c in client.releases():
            v = c["version"]
            if self.state.results.get(v, {}).get("status") in ("failed", "rolled_back",
                                                               "incompatible"):
                continue
            compat = check_compat(c, self.profile)
            if not compat.ok:
                if v not in self.state.results:  # say once why it is not installed
                    self.state.result(v, "incompatible", compat.reason)
                continue
            if not allowed(v, self.state.floor_seen, self.state.last_known_good):
                continue
            if best is None or _newer(v, best):
                best = v
        return best, "newest compatible release of the channel"

    # ------------------------------------------------------------------ install + switch
    def _install(self, client: ReleaseClient, version: str) -> tuple[Engine, dict] | None:
        res = self.state.results.get(version, {})
        if res.get("status") in ("failed", "rolled_back"):
            self.status_info["note"] = (f"not retrying {version}: {res['status']} "
                                        f"({res.get('reason', '')})")
            return None
        if not allowed(version, self.state.floor_seen, self.state.last_known_good):
            raise ReleaseClientError("below_floor", f"{version} is below the version floor "
                                     f"{self.state.floor_seen} and is not this robot's last "
                                     "known-good; refusing the downgrade")
        custom = client.release(version)
        compat = check_compat(custom, self.profile)
        if not compat.ok:
            self.state.result(version, "incompatible", compat.reason)
            self.save()
            raise ReleaseClientError("incompatible", f"{version} cannot run here: "
                                     f"{compat.reason}")
        active = self.slots.active()
        target = self.slots.other(active)
        if self.slots.version(target) == version:
            try:
                return self._load_checked(target, version, compat.precision)
            except ReleaseClientError:
                raise
            except Exception as e:
                event(self.log, "slot_reinstall", logging.WARNING, slot=target, reason=str(e))
        staging = self.slots.staging / version
        for other in self.slots.staging.iterdir():
            if other.name != version:
                shutil.rmtree(other, ignore_errors=True)
        need = int(custom.get("bundle_size", 0)) + int(self.cfg.min_free_mb * 1024 * 1024)
        free = shutil.disk_usage(self.dir).free
        if free < need - _size(staging):
            raise ReleaseClientError("disk_full", f"{version} needs {need >> 20} MiB free "
                                     f"(bundle + min_free_mb), {free >> 20} MiB left on "
                                     f"{self.dir}")
        self.status_info["state"] = "downloading"
        event(self.log, "downloading", version=version, bytes=custom.get("bundle_size"))

        def progress(p) -> None:
            if p.total > 1 << 20 and p.done > p.total // 2:
                crashpoint("mid_download")

        try:
            client.download(version, staging, progress)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                shutil.rmtree(staging, ignore_errors=True)  # give the space back
            raise
        crashpoint("after_download")
        self.slots.install(staging, target, version)
        event(self.log, "installed", version=version, slot=target)
        return self._load_checked(target, version, compat.precision)

    def _load_checked(self, slot: str, version: str, precision: str | None
                      ) -> tuple[Engine, dict]:
        try:
            return self._load_engine(slot, precision)
        except ReleaseClientError as e:
            if e.kind == "health_check_failed":
                self.state.result(version, "failed", str(e))
                self.save()
            raise

    def _switch(self, eng: Engine, info: dict) -> bool:
        if not self.busy.try_acquire():
            self.pending_switch = {"engine": eng, "info": info}
            self.status_info["state"] = "waiting_busy"
            self.status_info["note"] = f"{info['version']} ready in slot {info['slot']}; " \
                                       "waiting for the busy lock (episode running)"
            return False
        try:
            self.state.trial = {"slot": info["slot"], "version": info["version"],
                                "previous_slot": self.slots.active(), "started": time.time(),
                                "restarts": 0}
            self.state.result(info["version"], "trial")
            self.save()
            crashpoint("before_switch")
            self.slots.switch(info["slot"])
            crashpoint("after_switch")
            self.holder.swap(eng, info)
        finally:
            self.busy.release()
        self.pending_switch = None
        self.status_info["note"] = ""
        event(self.log, "switched", version=info["version"], slot=info["slot"],
              health_window_s=self.cfg.health_window_s)
        return True

    # ------------------------------------------------------------------ the cycle
    def cycle(self) -> dict[str, Any]:
        with self._cycle_lock:
            self.status_info["last_error"] = None
            try:
                self._trial_step()
                if self.pending_switch is not None and not self.state.trial:
                    p = self.pending_switch
                    self._switch(p["engine"], p["info"])
                client = self._client()
                client.refresh()
                self.metadata_versions = client.versions()
                root = client.current_root()
                if root != self.trusted_root():
                    atomic_write_text(self.dir / "trusted_root.json", root.decode())
                if not self.state.trial and self.pending_switch is None:
                    version, why = self._desired(client)
                    self.status_info["desired"] = {"version": version, "why": why}
                    if version and version != self.holder.info.get("version"):
                        got = self._install(client, version)
                        if got is not None:
                            self._switch(*got)
            except Exception as e:
                kind = classify(e)
                msg = describe(e)
                skew = getattr(self.fetcher, "skew_s", None)
                if kind in ("metadata_expired", "assignment_expired") and skew and abs(skew) > 300:
                    msg += (f" (the robot's clock is {skew:+.0f} s off the server's: fix the "
                            "clock (NTP); the running engine stays)")
                    kind = "clock_skew"
                self._fail(kind, msg)
            finally:
                self.save()
                self._report()
            return self.status()

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        info = self.holder.info
        trial = self.state.trial
        active = self.slots.active()
        prev_slot = self.slots.other(active) if active else None
        if self.holder.engine is None:
            state = "no_engine"
        elif trial:
            state = "trial"
        elif self.pending_switch is not None:
            state = "waiting_busy"
        else:
            state = "serving"
        le = self.status_info.get("last_error")
        return {
            "robot": self.cfg.robot_id, "fleet": self.cfg.fleet, "channel": self.cfg.channel,
            "state": state,
            "active": {"version": info.get("version"), "slot": info.get("slot"),
                       "precision": info.get("precision"), "committed": bool(
                           info.get("version") and not trial
                           and info.get("version") == self.state.last_known_good),
                       "trial": trial},
            "previous": {"slot": prev_slot, "version": self.slots.version(prev_slot)},
            "last_known_good": self.state.last_known_good,
            "desired": self.status_info.get("desired"),
            "results": self.state.results,
            "last_error": le,
            "note": self.status_info.get("note", ""),
            "floor_seen": self.state.floor_seen,
            "metadata": self.metadata_versions,
            "clock": {"skew_s": getattr(self.fetcher, "skew_s", None)},
            "serving": {"requests": self.holder.served, "trial_failures": self.holder.failures},
            "spool": None if self.flywheel is None else vars(self.flywheel.stats),
            "at_unix": round(time.time(), 3),
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    def _report(self) -> None:
        st = self.status()
        self.state.report_seq += 1
        st["seq"] = self.state.report_seq
        atomic_write_text(self.dir / "status.json", json.dumps(st, indent=1, default=str))
        d = self._director()
        if d is None:
            return
        store, prefix = d
        try:
            raw = sign_document(json.loads(json.dumps(st, default=str)), REPORT, [self.signer])
            store.put(f"{prefix}/reports/{self.cfg.robot_id}.json", raw, "application/json")
        except Exception as e:  # reporting must never take the engine down
            event(self.log, "report_failed", logging.WARNING, error=str(e)[:300])

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        try:
            self.register()
        except Exception as e:
            self._fail(classify(e), str(e))
        self.recover()
        self.server = ActionServer(self.cfg.serve_host, self.cfg.serve_port, self.holder,
                                   self.status, self._poll_now)
        self.server.start()
        port = self.server.server_address[1]
        atomic_write_text(self.dir / "agent.port", str(port))
        event(self.log, "listening", host=self.cfg.serve_host, port=port)
        if self.cfg.spool_dir and self.cfg.inbox_url:
            bucket, prefix = split_s3(self.cfg.inbox_url)
            self.flywheel = Flywheel(self.cfg.spool_dir, S3Store(bucket, "", self.s3), prefix,
                                     self.cfg.robot_id, self.cfg.fleet, self.signer,
                                     self.cfg.spool_max_mb, self.log,
                                     lambda: self.holder.info.get("version"))
            self.flywheel.run(self.cfg.upload_interval_s)
        notify("READY=1")  # serving (the recovered engine, or none yet); systemd Type=notify
        notify(f"STATUS=serving on {self.cfg.serve_host}:{port}")
        ping = watchdog_period_s()
        due = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= due or self._wake.is_set():
                self._wake.clear()
                self.cycle()
                due = time.monotonic() + self.cfg.poll_interval_s
            notify("WATCHDOG=1")  # only a live main loop pings: a hung one gets restarted
            wait = max(0.0, due - time.monotonic())
            self._wake.wait(min(wait, ping) if ping else wait)
        notify("STOPPING=1")
        self.server.shutdown()
        if self.flywheel:
            self.flywheel.stop()

    def _poll_now(self) -> dict[str, Any]:
        return self.cycle()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


def _newer(a: str, b: str) -> bool:
    from packaging.version import Version

    return Version(a) > Version(b)


def _size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0
