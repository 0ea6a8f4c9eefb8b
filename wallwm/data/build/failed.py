"""A build in which every episode failed: its records are kept, and it is not retried.

Such a build has no dataset to publish, but the user still needs to read why each episode was
rejected. The assembler writes ``quarantine.jsonl`` and a ``manifest.json`` marked
``"status": "failed"`` into its staging folder and raises :class:`BuildFailedError`; the flow
copies those records (and the GX results and Data Docs) to
``<builds>/failed/<build id>/`` with :func:`keep_failed` (the staging folder itself is removed,
so a failed build never looks like a build) and logs them to MLflow. The same inputs fail the
same way every time, so the flow's retry condition lets this error through unretried.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from wallwm.util.atomic import atomic_dir, atomic_write_text, sha256_file

FAILED_DIR = "failed"  # <builds>/failed/<build id>/: beside the builds, never one of them
RECORDS = ("manifest.json", "quarantine.jsonl")


class BuildFailedError(RuntimeError):
    """Deterministic: no episode passed. ``records`` is the folder holding quarantine.jsonl and
    manifest.json (the staging folder inside the assembler, the kept copy after the flow)."""

    def __init__(self, message: str, *, build_id: str, records: Path | None,
                 manifest: dict[str, Any]):
        super().__init__(message)
        self.build_id, self.records, self.manifest = build_id, records, manifest

    def __reduce__(self):  # picklable with its fields (Prefect may move it between processes)
        return _rebuild, (str(self), self.build_id, self.records, self.manifest)


def _rebuild(message: str, build_id: str, records: Path | None,
             manifest: dict[str, Any]) -> BuildFailedError:
    return BuildFailedError(message, build_id=build_id, records=records, manifest=manifest)


def failed_dir(builds_root: Path, build_id: str) -> Path:
    return Path(builds_root) / FAILED_DIR / build_id


def reasons(quarantine: list[dict[str, Any]]) -> Counter:
    """Rejections counted by rule (validation) or check (load, write)."""
    return Counter(q.get("rule") or q["check"] for q in quarantine)


def write_failed_records(root: Path, described: dict[str, Any], quarantine: list[dict[str, Any]],
                         summaries: list[dict], message: str) -> dict[str, Any]:
    """quarantine.jsonl and a manifest marked failed into ``root``; returns the manifest."""
    atomic_write_text(root / "quarantine.jsonl",
                      "".join(json.dumps(q, default=str) + "\n" for q in quarantine))
    q = root / "quarantine.jsonl"
    manifest = {
        **described,
        "status": "failed",
        "reason": message,
        "counts": {"episodes": 0, "frames": 0, "quarantined": len(quarantine),
                   "quarantined_by_check": dict(reasons(quarantine))},
        "validation": {"batches": len(summaries),
                       "success": all(s.get("success", True) for s in summaries),
                       "suites": summaries},
        "files": {"quarantine.jsonl": {"sha256": sha256_file(q), "bytes": q.stat().st_size}},
    }
    atomic_write_text(root / "manifest.json", json.dumps(manifest, indent=1, default=str))
    return manifest


def keep_failed(staging: Path, dest: Path) -> Path:
    """Copy a failed build's records (and its GX results / Data Docs) from ``staging`` to
    ``dest``, replacing an earlier copy atomically. Returns ``dest``."""
    with atomic_dir(dest) as tmp:
        for name in RECORDS:
            shutil.copy2(staging / name, tmp / name)
        if (staging / "gx").is_dir():
            shutil.copytree(staging / "gx", tmp / "gx")
    return dest
