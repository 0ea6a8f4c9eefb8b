"""Release naming and reuse for the retrain (the release itself is flows/release.py)."""

from __future__ import annotations

from typing import Any


def release_version(reg: dict[str, Any]) -> str:
    """The release's version: candidates version + bundle digest (unique per bundle, ordered
    by the version number the director compares)."""
    return f"{int(reg['version'])}.0.0+{reg['bundle_sha256'][:12]}"


def release_result(version: str, res: dict[str, Any]) -> dict[str, Any]:
    """The retrain's view of a release flow result; `reused` when nothing was new: the bundle
    was already published as this version and every robot already runs it."""
    robots = res.get("robots", [])
    fresh = any(x.get("new", True) for x in res.get("published", []))
    reused = not fresh and res["status"] == "complete" and bool(robots) and all(
        r.get("running") == version for r in robots)
    return {"version": version, "status": res["status"], "reason": res.get("reason", ""),
            "seconds": res.get("seconds"), "robots": robots, "rollout": res.get("rollout"),
            "reused": reused}
