"""WALL-WM, the world-action model (pure PyTorch; see docs/model_card.md).

Public names load lazily, so importing one mechanism module (`wallwm.model.frustum`, ...) does
not build the whole model's import graph.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "WallWMConfig": "config",
    "LossWeights": "config",
    "WorldActionBatch": "batch",
    "ModelInputError": "batch",
    "check_batch": "batch",
    "WallWM": "wallwm",
    "build": "wallwm",
    "load_pretrained_video": "wallwm",
    "save_video": "wallwm",
    "param_groups_for_muon": "wallwm",
    "pair_layers": "coupling",
    "summarize": "summary",
    "print_summary": "summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"wallwm.model.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'wallwm.model' has no attribute {name!r}")
