"""Training: data module, Lightning module, curriculum stages, optimizers.

Exports resolve lazily so `import wallwm.train` stays cheap and never drags in the siblings
(each module is imported only when its name is used)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "EventDataset": "wallwm.train.data",
    "WallWMDataModule": "wallwm.train.data",
    "collate_events": "wallwm.train.data",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wallwm.train' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
