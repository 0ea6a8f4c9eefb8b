"""The export bundle `wallwm-bundle/1` (FORMAT.md): manifest model, path rules, write and verify.

A bundle is trusted only after `verify_bundle`: every file's size and sha256 match the
manifest, the folder holds nothing the manifest does not list, and no path can escape the
folder (no `..`, no absolute path, no symlink). The publisher runs it before signing; the robot
agent runs it on every slot before it loads an engine and again after each restart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wallwm.util.atomic import atomic_write_text

FORMAT = "wallwm-bundle/1"
MANIFEST = "manifest.json"
NORMALIZATION = "normalization.json"
TOKENIZER = "tokenizer.json"
PRECISIONS = ("fp32", "bf16", "fp8")
MODES = ("event", "unified")
ENCODER_INPUTS = ("obs", "text_ids", "text_mask", "state", "event_type", "abs_time", "video_noise")
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_SEGMENT, MAX_PATH = 255, 1024


class BundleError(ValueError):
    """A bundle that must not be used; the message names the file, the field and the value."""

    def __init__(self, message: str, *, path: str = "", field: str = "", value: Any = None):
        super().__init__(message)
        self.path, self.field, self.value = path, field, value


def check_relpath(path: str, where: str = "path") -> str:
    """Return `path` if it is a safe bundle-relative POSIX path, else raise BundleError."""
    if not isinstance(path, str) or not path:
        raise BundleError(f"{where}: empty or non-string path {path!r}", field=where, value=path)
    if len(path) > MAX_PATH:
        raise BundleError(f"{where}: path longer than {MAX_PATH} characters", field=where,
                          value=path[:80] + "...")
    if path.startswith("/") or "\\" in path or "\x00" in path:
        raise BundleError(f"{where}: {path!r} is absolute or holds a backslash/NUL; bundle paths "
                          "are relative POSIX paths", field=where, value=path)
    for seg in path.split("/"):
        if seg in ("", ".", ".."):
            raise BundleError(f"{where}: {path!r} has an empty, '.' or '..' segment (path "
                              "traversal is refused)", field=where, value=path)
        if len(seg) > MAX_SEGMENT or not _SEGMENT.match(seg):
            raise BundleError(f"{where}: segment {seg!r} of {path!r} is not allowed (use "
                              "[A-Za-z0-9_][A-Za-z0-9._+-]*, no leading dot)", field=where,
                              value=path)
    return path


def safe_join(root: Path, rel: str, where: str = "path") -> Path:
    """`root / rel` after `check_relpath`, also refusing symlinked parents inside `root`."""
    check_relpath(rel, where)
    out = root.joinpath(*rel.split("/"))
    cur = root
    for seg in rel.split("/")[:-1]:
        cur = cur / seg
        if cur.is_symlink():
            raise BundleError(f"{where}: {cur} is a symlink; refusing to write through it",
                              path=str(cur), field=where, value=rel)
    return out


# ----------------------------------------------------------------------------- the manifest model
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Model):
    sha256: str
    size: int = Field(ge=0)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _SHA256.match(v):
            raise ValueError("must be 64 lower-case hex characters")
        return v


class Camera(_Model):
    name: str = Field(min_length=1)
    height: int = Field(gt=0)
    width: int = Field(gt=0)


class Control(_Model):
    fps: float = Field(gt=0)
    render_every: int = Field(1, gt=0)


class TextSpec(_Model):
    max_len: int = Field(ge=2)


class Runtime(_Model):
    name: Literal["onnxruntime"]
    min_version: str
    opset: int = Field(ge=1)

    @field_validator("min_version")
    @classmethod
    def _dotted(cls, v: str) -> str:
        parse_version(v)
        return v


Dim = int | str


class TensorSpec(_Model):
    name: str
    dtype: Literal["float32", "float16", "int64", "int32", "bool", "uint8"]
    shape: list[Dim]


class NoiseSpec(_Model):
    name: str = Field(min_length=1)
    shape: list[Dim]


class ModeSpec(_Model):
    encoder: dict[str, str]
    action_step: dict[str, str]
    video_step: dict[str, str] | None = None
    inputs: list[TensorSpec]
    action_noise: NoiseSpec
    steps: int = Field(gt=0)
    schedule: list[tuple[float, float]]
    outputs: dict[str, str]

    @model_validator(mode="after")
    def _consistent(self) -> ModeSpec:
        if len(self.schedule) != self.steps:
            raise ValueError(f"schedule has {len(self.schedule)} entries but steps = {self.steps}")
        names = [i.name for i in self.inputs]
        bad = sorted(set(names) - set(ENCODER_INPUTS))
        if bad:
            raise ValueError(f"inputs {bad} unknown; allowed: {', '.join(ENCODER_INPUTS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"inputs name a tensor twice: {names}")
        if "velocity" not in self.outputs:
            raise ValueError("outputs must name the 'velocity' output of the action step")
        if len(self.action_noise.shape) != 3:
            raise ValueError(f"action_noise.shape {self.action_noise.shape} is not [B, La, A]")
        return self


class Tolerance(_Model):
    atol: float = Field(ge=0)
    rtol: float = Field(0.0, ge=0)


class ReferenceSpec(_Model):
    file: str
    precision: dict[str, Tolerance]


class TensorRTEntry(_Model):
    gpu_arch: str = Field(pattern=r"^sm_[0-9]+[a-z]?$")
    trt_version: str
    precision: str
    files: list[str]


class Manifest(_Model):
    format: Literal["wallwm-bundle/1"]
    created: dt.datetime
    files: dict[str, FileEntry]
    embodiment: str = Field(min_length=1)
    cameras: list[Camera] = Field(min_length=1)
    action_dim: int = Field(gt=0)
    state_dim: int = Field(gt=0)
    control: Control
    text: TextSpec
    runtime: Runtime
    precisions: list[str] = Field(min_length=1)
    default_precision: str
    modes: dict[str, ModeSpec] = Field(min_length=1)
    reference: dict[str, ReferenceSpec] = {}
    lineage: dict[str, str] = {}
    tensorrt: list[TensorRTEntry] = []

    @model_validator(mode="after")
    def _references(self) -> Manifest:
        for p in self.files:
            check_relpath(p, f"files[{p!r}]")
        if MANIFEST in self.files:
            raise ValueError("files must not list manifest.json itself")
        bad = sorted(set(self.precisions) - set(PRECISIONS))
        if bad:
            raise ValueError(f"precisions {bad} unknown; allowed: {', '.join(PRECISIONS)}")
        if self.default_precision not in self.precisions:
            raise ValueError(f"default_precision {self.default_precision!r} is not in "
                             f"precisions {self.precisions}")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"cameras repeat a name: {names}")

        def need(path: str, where: str) -> None:
            check_relpath(path, where)
            if path not in self.files:
                raise ValueError(f"{where} = {path!r} is not listed in files")

        for fixed in (NORMALIZATION, TOKENIZER):
            need(fixed, fixed)
        for m, spec in self.modes.items():
            if m not in MODES:
                raise ValueError(f"modes.{m}: unknown mode; allowed: {', '.join(MODES)}")
            for role in ("encoder", "action_step", "video_step"):
                graphs = getattr(spec, role)
                if graphs is None:
                    continue
                missing = sorted(set(self.precisions) - set(graphs))
                if missing:
                    raise ValueError(f"modes.{m}.{role} has no graph for precision(s) {missing}")
                for prec, path in graphs.items():
                    if prec not in PRECISIONS:
                        raise ValueError(f"modes.{m}.{role}: unknown precision {prec!r}")
                    need(path, f"modes.{m}.{role}.{prec}")
            if spec.action_noise.shape[2] != self.action_dim:
                raise ValueError(f"modes.{m}.action_noise.shape[2] = {spec.action_noise.shape[2]}"
                                 f" but action_dim = {self.action_dim}")
            if m == "event" and "end_logits" not in spec.outputs:
                raise ValueError("modes.event.outputs must name 'end_logits'")
        for m, ref in self.reference.items():
            if m not in self.modes:
                raise ValueError(f"reference.{m}: no such mode in modes")
            need(ref.file, f"reference.{m}.file")
        for i, trt in enumerate(self.tensorrt):
            if trt.precision not in self.precisions:
                raise ValueError(f"tensorrt[{i}].precision {trt.precision!r} is not in precisions")
            for f in trt.files:
                need(f, f"tensorrt[{i}].files")
        return self

    def graph_paths(self) -> list[str]:
        out = []
        for spec in self.modes.values():
            for role in (spec.encoder, spec.action_step, spec.video_step or {}):
                out.extend(role.values())
        return sorted(set(out))

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files.values())


def parse_version(text: str) -> tuple[int, ...]:
    """'1.20' -> (1, 20); a runtime version like '1.32.0+cpu' keeps its numeric prefix."""
    m = re.match(r"^(\d+(?:\.\d+)*)", str(text))
    if not m:
        raise ValueError(f"version {text!r} does not start with dotted numbers (e.g. 1.20)")
    return tuple(int(x) for x in m.group(1).split("."))


def _pydantic_message(e: ValidationError, source: str) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "<top level>"
        value = err.get("input")
        shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
        parts.append(f"field {loc} = {shown[:80]}: {err['msg']}")
    return (f"{source}: not a valid {FORMAT} manifest: " + "; ".join(parts) +
            " (see wallwm/release/FORMAT.md; re-export the bundle)")


def parse_manifest(raw: bytes | str, source: str = MANIFEST) -> Manifest:
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise BundleError(f"{source}: not JSON ({e})", path=source) from e
    if not isinstance(data, dict):
        raise BundleError(f"{source}: top level is {type(data).__name__}, expected an object",
                          path=source)
    if data.get("format") != FORMAT:
        raise BundleError(f"{source}: field format = {data.get('format')!r}; this reader knows "
                          f"{FORMAT!r} only", path=source, field="format", value=data.get("format"))
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0] if e.errors() else {}
        raise BundleError(_pydantic_message(e, source), path=source,
                          field=".".join(str(x) for x in first.get("loc", ())),
                          value=first.get("input")) from None
    except BundleError as e:
        raise BundleError(f"{source}: {e}", path=source, field=e.field, value=e.value) from None


def load_manifest(bundle_dir: Path | str) -> Manifest:
    path = Path(bundle_dir) / MANIFEST
    if path.is_symlink():
        raise BundleError(f"{path}: manifest.json is a symlink", path=str(path))
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BundleError(f"{path}: cannot read the manifest ({e.strerror})", path=str(path)) from e
    return parse_manifest(raw, str(path))


# ----------------------------------------------------------------------------- files on disk
def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def scan_files(bundle_dir: Path | str) -> dict[str, Path]:
    """Every regular file under the folder (relative path -> path); symlinks and special files
    anywhere are an error, and so is a path that breaks the path rules."""
    root = Path(bundle_dir)
    if root.is_symlink() or not root.is_dir():
        raise BundleError(f"{root}: not a bundle folder (missing or a symlink)", path=str(root))
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in list(dirnames) + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"{p}: symlink inside the bundle (-> {os.readlink(p)}); bundles "
                                  "hold regular files only", path=str(p), field="files", value=rel)
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise BundleError(f"{p}: not a regular file", path=str(p), field="files", value=rel)
            check_relpath(rel, f"file {rel!r}")
            out[rel] = p
    return out


def file_entries(bundle_dir: Path | str) -> dict[str, FileEntry]:
    """sha256 + size of every file but the manifest (what `files` must hold)."""
    return {
        rel: FileEntry(sha256=sha256_of(p), size=p.stat().st_size)
        for rel, p in sorted(scan_files(bundle_dir).items())
        if rel != MANIFEST
    }


def write_manifest(bundle_dir: Path | str, fields: dict[str, Any]) -> Manifest:
    """Fill `files` from the folder, validate, and write manifest.json atomically.

    `fields` holds every other manifest key (FORMAT.md); `format` and `created` default."""
    root = Path(bundle_dir)
    data = {"format": FORMAT,
            "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace(
                "+00:00", "Z"),
            **fields}
    data["files"] = {k: v.model_dump() for k, v in file_entries(root).items()}
    manifest = parse_manifest(json.dumps(data), str(root / MANIFEST))
    atomic_write_text(root / MANIFEST, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return manifest


def verify_bundle(bundle_dir: Path | str, check_hashes: bool = True) -> Manifest:
    """Raise BundleError unless the folder is exactly what its manifest says."""
    root = Path(bundle_dir)
    manifest = load_manifest(root)
    found = scan_files(root)
    extra = sorted(set(found) - set(manifest.files) - {MANIFEST})
    if extra:
        raise BundleError(f"{root}: file(s) {extra[:5]} are not listed in manifest.json files "
                          "(stray files are refused)", path=str(root / extra[0]), field="files",
                          value=extra[0])
    for rel, entry in manifest.files.items():
        p = found.get(rel)
        if p is None:
            raise BundleError(f"{root / rel}: listed in manifest.json files but missing",
                              path=str(root / rel), field=f"files.{rel}", value=None)
        size = p.stat().st_size
        if size != entry.size:
            raise BundleError(f"{p}: size {size} != manifest size {entry.size} (truncated or "
                              "replaced file)", path=str(p), field=f"files.{rel}.size", value=size)
        if check_hashes:
            digest = sha256_of(p)
            if digest != entry.sha256:
                raise BundleError(f"{p}: sha256 {digest[:16]}... != manifest {entry.sha256[:16]}"
                                  "... (tampered or corrupted file)", path=str(p),
                                  field=f"files.{rel}.sha256", value=digest)
    return manifest


def read_normalization(bundle_dir: Path | str, manifest: Manifest) -> dict[str, Any]:
    """normalization.json, with lengths checked against the manifest and every std > 0."""
    path = Path(bundle_dir) / NORMALIZATION
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: unreadable ({e})", path=str(path)) from e
    for key, dim in (("action", manifest.action_dim), ("state", manifest.state_dim)):
        block = data.get(key)
        if not isinstance(block, dict):
            raise BundleError(f"{path}: field {key} missing", path=str(path), field=key)
        for stat_name in ("mean", "std"):
            v = block.get(stat_name)
            if not isinstance(v, list) or len(v) != dim:
                raise BundleError(f"{path}: field {key}.{stat_name} = {v!r} is not a list of "
                                  f"{dim} numbers ({key}_dim in manifest.json)", path=str(path),
                                  field=f"{key}.{stat_name}", value=v)
        import math

        bad = [s for s in block["std"] if not (isinstance(s, int | float) and math.isfinite(s)
                                              and s > 0)]
        if bad:
            raise BundleError(f"{path}: field {key}.std holds {bad[:3]}; every std must be finite "
                              "and > 0 (floor constant dimensions when exporting)",
                              path=str(path), field=f"{key}.std", value=bad[0])
    return data
