"""DESIGN.md's layers: wallwm/ imports no components/ or flows/; components/ imports no flows/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"wallwm": {"components", "flows"}, "components": {"flows"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_upward_imports(layer):
    bad = []
    for f in sorted((ROOT / layer).rglob("*.py")):
        hit = _imports(f) & FORBIDDEN[layer]
        if hit:
            bad.append(f"{f.relative_to(ROOT)} imports {sorted(hit)}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_checker_sees_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom flows.cli import app\nfrom . import x\n")
    assert _imports(f) == {"os", "flows"}
