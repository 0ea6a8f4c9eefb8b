"""Put a finished build where DVC tracks it (`data/`), swapping folders so readers never see a mix.

Files are hard links into the content-addressed build cache (no copy), falling back to copies
across file systems. An interrupted publish leaves the previous `data/` or none (never half),
and the build cache still holds every build, so the next run restores it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def published_build_id(output: Path) -> str | None:
    m = output / "manifest.json"
    if not m.exists():
        return None
    try:
        return json.loads(m.read_text()).get("build_id")
    except (OSError, ValueError):
        return None


def publish(build_dir: Path, output: Path) -> bool:
    """Make `output` hold exactly `build_dir`; returns False when it already did."""
    want = json.loads((build_dir / "manifest.json").read_text())["build_id"]
    if published_build_id(output) == want:
        return False
    tmp = output.with_name(f".{output.name}.publish.tmp")
    old = output.with_name(f".{output.name}.publish.old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    # GX's results and Data Docs carry run times: they stay in the build cache and MLflow, so
    # that `data/` (and data.dvc's md5) is the same for the same inputs on any machine.
    shutil.copytree(build_dir, tmp, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("gx"))
    if output.exists():
        os.replace(output, old)
    os.replace(tmp, output)
    shutil.rmtree(old, ignore_errors=True)
    return True
