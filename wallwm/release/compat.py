"""Engine compatibility: what a release needs (TUF `custom` fields) against what a robot has.

The publisher writes `release_custom(manifest, version)` into the manifest target's custom
fields; the agent checks it with `check_compat` *before* it downloads anything, so an
incompatible release costs a robot one metadata read and leaves a clear reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wallwm.release.bundle import Manifest, parse_version

CUSTOM_KEY = "wallwm"


def release_custom(manifest: Manifest, version: str, manifest_sha256: str) -> dict[str, Any]:
    """The compatibility record of one release (the manifest target's `custom.wallwm`)."""
    return {
        "kind": "bundle-manifest",
        "version": version,
        "format": manifest.format,
        "manifest_sha256": manifest_sha256,
        "embodiment": manifest.embodiment,
        "cameras": [c.model_dump() for c in manifest.cameras],
        "action_dim": manifest.action_dim,
        "state_dim": manifest.state_dim,
        "runtime": manifest.runtime.model_dump(),
        "precisions": list(manifest.precisions),
        "default_precision": manifest.default_precision,
        "modes": sorted(manifest.modes),
        "tensorrt": [{"gpu_arch": t.gpu_arch, "trt_version": t.trt_version,
                      "precision": t.precision} for t in manifest.tensorrt],
        "lineage": dict(manifest.lineage),
        "bundle_size": manifest.total_size,
        "files": len(manifest.files) + 1,
    }


def file_custom(manifest: Manifest, version: str, path: str) -> dict[str, Any]:
    """Per-file custom fields: the precision of a graph, GPU arch + TRT version of an engine."""
    out: dict[str, Any] = {"kind": "bundle-file", "version": version}
    for spec in manifest.modes.values():
        for role in (spec.encoder, spec.action_step, spec.video_step or {}):
            for prec, p in role.items():
                if p == path:
                    out["precision"] = prec
    for t in manifest.tensorrt:
        if path in t.files:
            out.update(precision=t.precision, gpu_arch=t.gpu_arch, trt_version=t.trt_version)
    return out


@dataclass(frozen=True)
class RobotProfile:
    """What a robot offers: embodiment, cameras, runtime, precisions it may run, GPU."""

    embodiment: str
    cameras: dict[str, tuple[int, int]]  # name -> (height, width)
    runtime_version: str  # onnxruntime.__version__
    precisions: tuple[str, ...] = ("fp32",)  # in order of preference
    gpu_arch: str | None = None  # e.g. sm_90; None = no TensorRT
    trt_version: str | None = None
    action_dim: int | None = None
    state_dim: int | None = None


@dataclass
class CompatResult:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    precision: str | None = None
    tensorrt: dict[str, Any] | None = None  # the matching engine entry, if any

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _same_major_minor(a: str, b: str) -> bool:
    try:
        return parse_version(a)[:2] == parse_version(b)[:2]
    except ValueError:
        return False


def check_compat(custom: dict[str, Any], robot: RobotProfile) -> CompatResult:
    """Whether `robot` can run the release described by `custom` (and at which precision)."""
    res = CompatResult(ok=True)
    if custom.get("kind") != "bundle-manifest":
        return CompatResult(False, [f"custom.kind = {custom.get('kind')!r}, not a release"])
    if custom.get("embodiment") != robot.embodiment:
        res.reasons.append(f"embodiment {custom.get('embodiment')!r} != robot's "
                           f"{robot.embodiment!r}")
    for cam in custom.get("cameras", []):
        have = robot.cameras.get(cam["name"])
        if have is None:
            res.reasons.append(f"camera {cam['name']!r} missing on the robot "
                               f"(has {sorted(robot.cameras)})")
        elif have != (cam["height"], cam["width"]):
            res.reasons.append(f"camera {cam['name']!r} is {have[0]}x{have[1]}, release wants "
                               f"{cam['height']}x{cam['width']}")
    for key in ("action_dim", "state_dim"):
        mine = getattr(robot, key)
        if mine is not None and custom.get(key) != mine:
            res.reasons.append(f"{key} {custom.get(key)} != robot's {mine}")
    rt = custom.get("runtime", {})
    if rt.get("name") != "onnxruntime":
        res.reasons.append(f"runtime {rt.get('name')!r} unsupported (onnxruntime only)")
    else:
        try:
            if parse_version(robot.runtime_version) < parse_version(rt.get("min_version", "0")):
                res.reasons.append(f"onnxruntime {robot.runtime_version} < release's "
                                   f"min_version {rt.get('min_version')}")
        except ValueError as e:
            res.reasons.append(str(e))
    offered = custom.get("precisions", [])
    usable = [p for p in robot.precisions if p in offered]
    if not usable:
        res.reasons.append(f"no common precision: release {offered}, robot {list(robot.precisions)}")
    else:
        res.precision = usable[0]
    if robot.gpu_arch and res.precision:
        for t in custom.get("tensorrt", []):
            if (t["gpu_arch"] == robot.gpu_arch and t["precision"] == res.precision
                    and robot.trt_version and _same_major_minor(t["trt_version"],
                                                                robot.trt_version)):
                res.tensorrt = t
                break
    res.ok = not res.reasons
    return res
