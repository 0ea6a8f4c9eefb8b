"""A/B engine slots and the agent's persistent state, written so a kill at any point is safe.

```
<state_dir>/slots/a/, slots/b/     two bundle folders, exactly as verified
<state_dir>/slots/a.json, b.json   what each holds: version, manifest sha256 (none = empty)
<state_dir>/active -> slots/a      the engine that serves (a symlink, switched by rename)
<state_dir>/staging/<version>/     a download in progress (resumes after a restart)
<state_dir>/agent.json             trial, results per version, floor, counters
```

A slot is filled only from a complete, verified staging folder (rename), and the `active`
symlink changes by `rename(2)` of a new link over the old one followed by an fsync of the
folder, so after a crash it points at the old slot or the new one. The trial intent is saved
before the switch; on restart the link is the truth and the state is reconciled with it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wallwm.release.bundle import Manifest, verify_bundle
from wallwm.release.client import manifest_digest
from wallwm.util.atomic import atomic_write_text

SLOTS = ("a", "b")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class AgentState:
    trial: dict[str, Any] | None = None  # {slot, version, previous_slot, started, restarts}
    last_known_good: str | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> outcome
    floor_seen: str | None = None
    assignment_counter: int = 0
    report_seq: int = 0

    @classmethod
    def load(cls, path: Path) -> AgentState:
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=1, sort_keys=True))
        fsync_dir(path.parent)

    def result(self, version: str, status: str, reason: str = "") -> None:
        self.results[version] = {"status": status, "reason": reason[:500],
                                 "at": round(time.time(), 3)}
        if len(self.results) > 50:  # keep the newest few; old versions are history
            for v in sorted(self.results, key=lambda k: self.results[k]["at"])[:-50]:
                del self.results[v]


class Slots:
    def __init__(self, state_dir: Path):
        self.root = state_dir
        self.slots = state_dir / "slots"
        self.link = state_dir / "active"
        self.staging = state_dir / "staging"
        for d in (self.slots, self.staging):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.slots.glob(".trash-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def path(self, slot: str) -> Path:
        return self.slots / slot

    def active(self) -> str | None:
        """The slot the link names (None when there is none or it names something else)."""
        if not self.link.is_symlink():
            return None
        target = os.readlink(self.link)
        name = Path(target).name
        return name if name in SLOTS and Path(target).parent.name == "slots" else None

    def other(self, slot: str | None) -> str:
        return "b" if slot == "a" else "a"

    def meta_path(self, slot: str) -> Path:
        return self.slots / f"{slot}.json"

    def meta(self, slot: str) -> dict[str, Any] | None:
        p = self.meta_path(slot)
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def version(self, slot: str | None) -> str | None:
        m = self.meta(slot) if slot else None
        return m.get("version") if m else None

    def verify(self, slot: str) -> Manifest:
        """Raise unless the slot's files match its manifest and <slot>.json names that one."""
        d = self.path(slot)
        m = self.meta(slot)
        if m is None:
            raise FileNotFoundError(f"{self.meta_path(slot)}: slot {slot} holds no engine")
        manifest = verify_bundle(d)
        if manifest_digest(d) != m.get("manifest_sha256"):
            raise ValueError(f"{d}: manifest.json differs from the one installed "
                             f"({m.get('manifest_sha256', '')[:12]}...)")
        return manifest

    def install(self, staging: Path, slot: str, version: str) -> None:
        """Move a verified staging folder into `slot`. The slot is marked empty first, so a
        crash in between leaves an empty slot (refilled later), never a half-replaced one."""
        dest = self.path(slot)
        meta = {"version": version, "manifest_sha256": manifest_digest(staging),
                "installed_at": round(time.time(), 3)}
        if self.meta_path(slot).exists():
            self.meta_path(slot).unlink()
            fsync_dir(self.slots)
        if dest.exists():
            trash = self.slots / f".trash-{slot}-{time.time_ns()}"
            os.replace(dest, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(staging, dest)
        fsync_dir(self.slots)
        atomic_write_text(self.meta_path(slot), json.dumps(meta))
        fsync_dir(self.slots)

    def switch(self, slot: str) -> None:
        """Point `active` at `slot`: new link under a temp name, rename over, fsync."""
        tmp = self.root / f".active.{os.getpid()}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(f"slots/{slot}", tmp)
        os.replace(tmp, self.link)
        fsync_dir(self.root)
