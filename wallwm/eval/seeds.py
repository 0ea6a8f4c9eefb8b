"""Evaluation episodes that no dataset build can contain, and the proof that they do not.

A sim build (wallwm/data/sources/sim/source.py) with base seed s plays unit i of a task from
episode seed `episode_seed(s, task, i)`, the first 4 bytes of a sha256: always in [0, 2**32);
its layout is one of the 50 of `MT1(task, seed=s).train_tasks`. The evaluation therefore:

* seeds its episodes at or above 2**32 (`EVAL_SEED_BASE`): outside the build's seed range by
  construction, whatever base seed a build used;
* draws its layouts from `MT1(task, seed=layout_seed)` with a `layout_seed` that is not the
  base seed of any build it is told about, and checks that none of its layout vectors
  (object and goal positions, Meta-World's `rand_vec`) equals one of those builds' layouts.

`assert_disjoint` runs both checks and raises with the offending unit; the runner calls it
before any episode.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from wallwm.data.sources.sim.source import LAYOUTS

EVAL_SEED_BASE = 2**32  # every build episode seed is < 2**32 (4 bytes of a digest)
BUILD_SEED_LIMIT = 2**32


class SeedOverlapError(ValueError):
    """An evaluation episode that a build could have trained on."""


@dataclass(frozen=True)
class EvalUnit:
    """One evaluation episode: the same (task, index) is the same layout and seed under every
    condition and policy, so conditions and policies compare on paired episodes."""

    task: str
    index: int
    layout: int  # index into MT1(task, seed=layout_seed).train_tasks
    seed: int  # >= EVAL_SEED_BASE
    layout_seed: int

    @property
    def unit_id(self) -> str:
        return f"{self.task}/eval{self.index:05d}"


def eval_seed(base: int, task: str, i: int) -> int:
    """Episode seed of eval unit i: EVAL_SEED_BASE + a 4-byte digest, so never a build seed."""
    digest = hashlib.sha256(f"eval/{base}/{task}/{i}".encode()).digest()
    return EVAL_SEED_BASE + int.from_bytes(digest[:4], "little")


def make_units(tasks: Sequence[str], episodes: int, base_seed: int, layout_seed: int
               ) -> list[EvalUnit]:
    """`episodes` units per task; unit i takes layout i mod 50, so 50 episodes cover every
    eval layout once."""
    return [EvalUnit(t, i, i % LAYOUTS, eval_seed(base_seed, t, i), int(layout_seed))
            for t in tasks for i in range(episodes)]


def layout_vectors(task: str, mt1_seed: int) -> np.ndarray:
    """(50, D) Meta-World `rand_vec` of every layout of MT1(task, seed=mt1_seed) (read-only;
    cached: an MT1 costs about a second)."""
    return _layout_vectors(task, int(mt1_seed))


@lru_cache(maxsize=32)
def _layout_vectors(task: str, mt1_seed: int) -> np.ndarray:
    from wallwm.data.sources.sim.env import sim_modules

    metaworld, _ = sim_modules()
    mt1 = metaworld.MT1(task, seed=int(mt1_seed))
    out = np.stack([np.asarray(pickle.loads(t.data)["rand_vec"], np.float64)
                    for t in mt1.train_tasks])
    out.setflags(write=False)
    return out


def assert_disjoint(units: Iterable[EvalUnit], build_seeds: Iterable[int],
                    check_layouts: bool = True) -> None:
    """Raise SeedOverlapError unless every unit is outside every build with these base seeds:
    its episode seed outside [0, 2**32), its layout seed not a build seed and (with
    `check_layouts`) its layout vector not one of those builds' layouts."""
    units, seeds = list(units), sorted({int(s) for s in build_seeds})
    for u in units:
        if u.seed < BUILD_SEED_LIMIT:
            raise SeedOverlapError(f"eval unit {u.unit_id}: episode seed {u.seed} is inside the "
                                   f"build seed range [0, 2**32); use eval_seed()")
        if u.layout_seed in seeds:
            raise SeedOverlapError(
                f"eval unit {u.unit_id}: eval.layout_seed={u.layout_seed} is the sim seed of a "
                f"build (build seeds {seeds}); its layouts are training layouts. Choose another "
                f"eval.layout_seed")
    if not check_layouts:
        return
    for task in sorted({u.task for u in units}):
        used = {u.layout for u in units if u.task == task}
        mine = {u.layout_seed for u in units if u.task == task}
        for ls in mine:
            ev = layout_vectors(task, ls)
            for s in seeds:
                built = layout_vectors(task, s)
                for j in sorted(used):
                    hit = np.all(np.isclose(built, ev[j], rtol=0.0, atol=1e-9), axis=1)
                    if hit.any():
                        raise SeedOverlapError(
                            f"eval unit {task} layout {j} (MT1 seed {ls}) equals layout "
                            f"{int(np.argmax(hit))} of the build with sim seed {s}")


def sim_build_seeds(specs: Iterable[str], default_seed: int) -> list[int]:
    """The base seeds of the sim sources among `specs` (their `seed=` option, else
    data.sim.seed): the seeds whose layouts a build trained on."""
    from wallwm.data.sources.base import parse_source_spec

    out = set()
    for text in specs:
        spec = parse_source_spec(text)
        if spec.name != "sim":
            continue
        raw = spec.get("seed")
        try:
            out.add(int(default_seed if raw is None else raw))
        except ValueError:
            raise ValueError(f"source spec {text!r}: seed={raw!r} is not an integer") from None
    return sorted(out)


def manifest_build_seeds(manifest: dict) -> list[int]:
    """The sim base seeds of a build from its manifest.json (`sources[].spec` and
    `params.sim.seed`)."""
    try:
        specs = [s["spec"] for s in manifest["sources"]]
        default = int(manifest["params"]["sim"]["seed"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"build manifest: no sources[].spec / params.sim.seed ({e}); is this a "
                         f"manifest.json of a dataset build?") from None
    return sim_build_seeds(specs, default)
