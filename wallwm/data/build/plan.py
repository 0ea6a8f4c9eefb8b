"""The build plan: which units of which sources, and the content address of the result.

The build id hashes the sources' fingerprints (their inputs), the data parameters and the source
code of the data package, so an unchanged input and unchanged parameters map to the build that
already exists, and any change makes a new one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from wallwm.config.schema import DataParams
from wallwm.data.sources import Source, make_source, parse_source_spec

DATA_CODE = Path(__file__).resolve().parents[1]  # wallwm/data


def code_version() -> str:
    """sha256 of the data package's source files (what a build's content depends on)."""
    h = hashlib.sha256()
    for f in sorted(DATA_CODE.rglob("*.py")):
        h.update(str(f.relative_to(DATA_CODE)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Unit:
    source_index: int
    spec: str
    unit_id: str

    @property
    def key(self) -> str:
        """Unique within a build: `<source index>:<unit id>`."""
        return f"{self.source_index}:{self.unit_id}"


@dataclass
class BuildPlan:
    specs: list[str]
    fingerprints: list[str]
    units: list[Unit]
    params: DataParams
    code: str
    build_id: str

    def source(self, index: int) -> Source:
        return make_source(self.specs[index], self.params)

    def describe(self) -> dict:
        return {
            "build_id": self.build_id,
            "sources": [
                {"spec": s, "fingerprint": f}
                for s, f in zip(self.specs, self.fingerprints, strict=True)
            ],
            "code_version": self.code,
            "units": len(self.units),
        }


def data_params_hash(params: DataParams) -> str:
    # what does not change the content (where it goes, how many workers, DVC) is left out
    d = params.model_dump(mode="json", exclude={"output_dir", "workers", "dvc_remote", "push"})
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def make_plan(specs: list[str], params: DataParams) -> BuildPlan:
    """Resolve the sources, list their units and compute the build id. Fails fast on bad specs."""
    if not specs:
        raise ValueError("no sources given; e.g. --sources sim:episodes=20 (see data.sources)")
    norm = [str(parse_source_spec(s)) for s in specs]
    sources = [make_source(s, params) for s in norm]
    fps = [s.fingerprint() for s in sources]
    units = [Unit(i, norm[i], u) for i, s in enumerate(sources) for u in s.unit_ids()]
    code = code_version()
    h = hashlib.sha256()
    extra: list[str] = []
    human = params.annotate.human_file
    if human:  # hand edits are an input: a changed edit file is a new build
        hp = Path(human)
        if not hp.is_file():
            raise ValueError(f"data.annotate.human_file = {human!r}: no such file")
        extra.append("human:" + hashlib.sha256(hp.read_bytes()).hexdigest())
    for part in (*norm, *fps, *extra, data_params_hash(params), code):
        h.update(part.encode())
        h.update(b"\0")
    return BuildPlan(norm, fps, units, params, code, h.hexdigest()[:20])
