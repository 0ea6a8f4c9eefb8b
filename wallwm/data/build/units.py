"""One work unit: load an episode from its source and probe it. Runs on a Ray worker.

Every failure becomes data (a quarantine record naming the file, field and value), never an
exception, so one bad file cannot stop a build of thousands.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from wallwm.config.schema import DataParams
from wallwm.data.build.events import annotate_episode
from wallwm.data.episode import Episode, Event
from wallwm.data.sources import SourceError, make_source
from wallwm.data.tiers import probe


@dataclass
class UnitResult:
    key: str
    spec: str
    unit_id: str
    episode: Episode | None = None
    row: dict[str, Any] = field(default_factory=dict)
    frames: pd.DataFrame | None = None
    failure: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)  # annotation, every level
    event_report: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    identity: dict[str, str] = field(default_factory=dict)  # source_id, tier (before loading)


_SOURCES: dict[tuple[str, str], Any] = {}  # per worker process: reuse source objects


def load_unit(args: tuple[str, str, str, str]) -> UnitResult:
    """(spec, data params json, unit id, key) -> UnitResult. Never raises for bad input."""
    import time

    spec, params_json, unit_id, key = args
    t0 = time.perf_counter()
    res = UnitResult(key, spec, unit_id)
    try:
        src = _SOURCES.get((spec, params_json))
        if src is None:
            src = _SOURCES[(spec, params_json)] = make_source(
                spec, DataParams.model_validate_json(params_json)
            )
        params = DataParams.model_validate_json(params_json)
        res.identity = src.unit_identity(unit_id)
        ep = src.load(unit_id)
        ep, res.events, res.event_report = annotate_episode(ep, params)
        res.row, res.frames = probe(ep, key, source=spec)
        res.episode = ep
    except SourceError as e:
        res.failure = {
            "check": e.check,
            "path": e.path,
            "field": e.field,
            "value": _jsonable(e.value),
            "message": str(e),
        }
    except Exception as e:  # noqa: BLE001 - quarantined with its traceback, see module docstring
        res.failure = {
            "check": "unexpected_error",
            "path": "",
            "field": "",
            "value": type(e).__name__,
            "message": f"{e}",
            "traceback": traceback.format_exc(limit=6),
        }
    res.seconds = time.perf_counter() - t0
    return res


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, str | int | float | bool):
        return v
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.ravel()[:8].tolist()
    except ImportError:
        pass
    return repr(v)[:200]
