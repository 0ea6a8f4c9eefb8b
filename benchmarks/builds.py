"""Dataset builds for the benchmarks, without the stack (no MLflow, no DVC): the same plan,
workers and GX validation as `wallwm data build`.

`cached_build` keeps content-addressed builds under a root and reuses one whose manifest exists
(a build id is the sha256 of its inputs, params and data code); `fresh_build` always builds
(for timing the build itself) and returns the build result with its per-phase timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plan_and_args(sources: list[str], data: Any) -> tuple[Any, list[tuple]]:
    from wallwm.data.build import make_plan

    plan = make_plan(list(sources), data)
    pj = plan.params.model_dump_json()
    return plan, [(u.spec, pj, u.unit_id, u.key) for u in plan.units]


def fresh_build(sources: list[str], data: Any, out: Path, workers: int | None = None) -> Any:
    """Build `sources` into `out` now on `workers` Ray tasks (default `data.workers`; 0 = in
    this process); returns the `assemble` result (path, manifest, timing)."""
    from components.compute.parallel import ordered_map
    from flows.build_dataset import gx_validator
    from wallwm.data.build import assemble, load_unit

    plan, args = _plan_and_args(sources, data)
    n = int(data.workers if workers is None else workers)  # 0: in this process; n: Ray tasks
    return assemble(plan, ordered_map(load_unit, args, n), out, gx_validator)


def cached_build(sources: list[str], data: Any, root: Path) -> Path:
    """The build of `sources` under `root/builds/<build id>` (reused when already there)."""
    from wallwm.util.atomic import atomic_dir

    plan, _ = _plan_and_args(sources, data)
    final = root / "builds" / plan.build_id
    if (final / "manifest.json").exists():
        return final
    with atomic_dir(final) as staging:
        fresh_build(sources, data, staging)
    return final
