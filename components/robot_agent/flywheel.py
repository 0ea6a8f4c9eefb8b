"""The data flywheel on the robot: episodes recorded during interventions, corrections and
recoveries go from a bounded local spool to the fleet inbox on S3.

The controller writes each recording as a LeRobot v3.0 dataset folder (flags.teleop,
flags.correction, flags.recovery among its features) under `<spool>/incoming/`, then renames
it into `<spool>/ready/` (so the agent never sees half a dataset). The agent, per folder:

1. checks it is LeRobot v3.0 with the flag features (others stay, with a logged reason);
2. hashes it (sha256 over every file's path and sha256): the entry's id, so the same
   recording uploaded twice, by a retry or another robot, lands once;
3. skips it when `inbox/<fleet>/<hash>/_entry.json` exists (dedup), else uploads every file
   (resumable: whole objects already there are skipped, multipart uploads continue from the
   parts S3 has), then writes `_entry.json` last, signed by the robot's key: the commit marker
   the `fleet_inbox` data source reads;
4. deletes the local folder.

The spool is bounded (`spool_max_mb`): when full, the oldest recordings not yet uploaded
are dropped first, each with a logged reason and a counter in the status.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.robot_agent.logs import event
from components.storage.release_store import S3Store, upload_resumable
from wallwm.release.bundle import check_relpath, sha256_of
from wallwm.release.signing import INBOX_ENTRY, sign_document

FLAG_KEYS = ("flags.teleop", "flags.correction", "flags.recovery")
ENTRY = "_entry.json"


@dataclass
class SpoolStats:
    uploaded: int = 0
    deduplicated: int = 0
    dropped: int = 0
    rejected: int = 0
    pending: int = 0
    bytes_pending: int = 0
    last_error: str = ""


def dataset_files(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise ValueError(f"{p}: symlink in a recording")
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            check_relpath(rel, f"{root.name} file")
            out[rel] = p
    return out


def check_recording(root: Path) -> dict[str, Any]:
    """info.json of a LeRobot v3.0 recording with the intervention flags, or ValueError."""
    info_path = root / "meta" / "info.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{info_path}: not a LeRobot dataset ({e})") from e
    if info.get("codebase_version") != "v3.0":
        raise ValueError(f"{info_path}: codebase_version {info.get('codebase_version')!r}, "
                         "the inbox takes v3.0")
    missing = [k for k in FLAG_KEYS if k not in info.get("features", {})]
    if missing:
        raise ValueError(f"{info_path}: features lack {missing} (intervention flags)")
    return info


def content_hash(files: dict[str, Path]) -> tuple[str, dict[str, dict[str, Any]]]:
    entries = {rel: {"sha256": sha256_of(p), "size": p.stat().st_size}
               for rel, p in files.items()}
    h = hashlib.sha256()
    for rel in sorted(entries):
        h.update(f"{rel}\0{entries[rel]['sha256']}\n".encode())
    return h.hexdigest(), entries


class Flywheel:
    def __init__(self, spool: Path, store: S3Store, inbox_prefix: str, robot: str, fleet: str,
                 signer, max_mb: float, log: logging.Logger, engine_version=lambda: None):
        self.spool, self.store, self.prefix = spool, store, inbox_prefix.strip("/")
        self.robot, self.fleet, self.signer = robot, fleet, signer
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.log, self.engine_version = log, engine_version
        self.stats = SpoolStats()
        for d in ("incoming", "ready", "rejected", ".uploads"):
            (spool / d).mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()

    # ------------------------------------------------------------------ spool bound
    def _ready(self) -> list[Path]:
        return sorted((p for p in (self.spool / "ready").iterdir() if p.is_dir()),
                      key=lambda p: (p.stat().st_mtime, p.name))

    @staticmethod
    def _size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())

    def enforce_bound(self) -> None:
        ready = self._ready()
        sizes = {p: self._size(p) for p in ready}
        total = sum(sizes.values())
        for p in ready:
            if total <= self.max_bytes:
                break
            total -= sizes[p]
            shutil.rmtree(p, ignore_errors=True)
            self.stats.dropped += 1
            event(self.log, "spool_full_dropped", logging.WARNING, recording=p.name,
                  bytes=sizes[p], limit_bytes=self.max_bytes)
        self.stats.pending = len(self._ready())
        self.stats.bytes_pending = total

    # ------------------------------------------------------------------ upload
    def upload_one(self, root: Path) -> str:
        """Upload one recording; returns 'uploaded', 'deduplicated' or 'rejected'."""
        try:
            info = check_recording(root)
            files = dataset_files(root)
        except ValueError as e:
            dest = self.spool / "rejected" / root.name
            shutil.rmtree(dest, ignore_errors=True)
            root.rename(dest)
            self.stats.rejected += 1
            event(self.log, "recording_rejected", logging.WARNING, recording=root.name,
                  reason=str(e))
            return "rejected"
        digest, entries = content_hash(files)
        base = f"{self.prefix}/{digest}"
        if self.store.exists(f"{base}/{ENTRY}"):
            shutil.rmtree(root, ignore_errors=True)
            self.stats.deduplicated += 1
            event(self.log, "recording_deduplicated", recording=root.name, hash=digest)
            return "deduplicated"
        sent = 0
        for rel, p in files.items():
            st = upload_resumable(self.store, f"{base}/{rel}", p, entries[rel]["sha256"],
                                  self.spool / ".uploads" / f"{digest}-{entries[rel]['sha256']}")
            sent += st.bytes_sent
        body = {"type": "inbox-entry", "robot": self.robot, "fleet": self.fleet,
                "hash": digest, "files": entries, "codebase_version": info["codebase_version"],
                "episodes": int(info.get("total_episodes", 0)), "fps": info.get("fps"),
                "flags": [k for k in FLAG_KEYS if k in info.get("features", {})],
                "engine_version": self.engine_version(),
                "recorded_at": round(root.stat().st_mtime, 3), "uploaded_at": round(time.time(), 3)}
        self.store.put(f"{base}/{ENTRY}", sign_document(body, INBOX_ENTRY, [self.signer]),
                       "application/json")
        shutil.rmtree(root, ignore_errors=True)
        self.stats.uploaded += 1
        event(self.log, "recording_uploaded", recording=root.name, hash=digest, bytes=sent,
              files=len(files))
        return "uploaded"

    def step(self) -> None:
        self.enforce_bound()
        for root in self._ready():
            if self._stop.is_set():
                return
            try:
                self.upload_one(root)
                self.stats.last_error = ""
            except Exception as e:  # S3 down: keep the recording, retry next round
                self.stats.last_error = f"{type(e).__name__}: {e}"[:300]
                event(self.log, "upload_failed", logging.WARNING, recording=root.name,
                      error=self.stats.last_error)
                return
        self.stats.pending = len(self._ready())

    def run(self, interval_s: float) -> threading.Thread:
        def loop() -> None:
            while not self._stop.is_set():
                self.step()
                self._stop.wait(interval_s)

        t = threading.Thread(target=loop, name="flywheel", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()
