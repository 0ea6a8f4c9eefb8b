"""Versioned dataset builds: plan (content address), load units, validate, write, manifest.

Pure logic; the services it needs (a parallel map, a validator) are passed in by the flow, so
this package runs the same serially in a test and on a Ray cluster from `flows/build_dataset.py`.
"""

from wallwm.data.build.assemble import BuildResult, assemble
from wallwm.data.build.failed import BuildFailedError, failed_dir, keep_failed
from wallwm.data.build.plan import BuildPlan, make_plan
from wallwm.data.build.units import UnitResult, load_unit

__all__ = [
    "BuildFailedError",
    "BuildPlan",
    "BuildResult",
    "UnitResult",
    "assemble",
    "failed_dir",
    "keep_failed",
    "load_unit",
    "make_plan",
]
