"""The logged WALL-WM model as MLflow "models from code": MLflow copies this file into the
model and runs it at load, so the model needs neither this checkout nor Lightning: its weights,
config, tokenizer and contract are artifacts, `wallwm/` ships as code_paths, and the
requirements are pinned from the lock.

Input: a dict of arrays, one observation batch in dataset units (the tensor signature):
obs (B, V, 3, H, W) float32 in [-1, 1], text_ids (B, Lt) int64 and text_mask (B, Lt) bool of
any length up to the model's max_text_len, state (B, S), intrinsics (B, V, 3, 3), extrinsics
(B, V, 4, 4), calibrated (B, V) bool, abs_time (B,), event_type (B,) int64 (-1 = none).
Params: mode ("event" | "unified"), steps (denoising steps, 0 = the model's), seed.
Output: actions (B, La, A) in dataset units, action_mask (B, La) bool, end_prob (B, La).
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np

INPUTS = ("obs", "text_ids", "text_mask", "state", "intrinsics", "extrinsics", "calibrated",
          "abs_time", "event_type")


class WallWMPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from safetensors.torch import load_file

        from wallwm.model.config import LossWeights, WallWMConfig
        from wallwm.model.wallwm import WallWM

        art = context.artifacts
        raw = json.loads(open(art["config"]).read())
        raw["loss"] = LossWeights(**raw["loss"])
        raw["depth_range"] = tuple(raw["depth_range"])
        self.model = WallWM(WallWMConfig(**raw)).eval()
        self.model.load_state_dict(load_file(art["weights"]))
        self.model.norm.require()  # a model without statistics must not act

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - no hints: MLflow
        # would validate them as a list of records; the tensor signature is the contract
        import torch

        from wallwm.model.batch import WorldActionBatch

        p = params or {}
        mode = str(p.get("mode", "event"))
        missing = [k for k in INPUTS if k not in model_input]
        if missing:
            raise ValueError(f"WALL-WM model input: missing {missing}; expected {list(INPUTS)}")
        kw = {k: torch.as_tensor(np.asarray(model_input[k])) for k in INPUTS}
        for k in ("text_mask", "calibrated"):
            kw[k] = kw[k].bool()
        b = WorldActionBatch(mode=mode, **kw)
        g = torch.Generator().manual_seed(int(p.get("seed", 0)))
        out = self.model.predict(b, mode=mode, steps=int(p.get("steps", 0)) or None,
                                 return_video=False, generator=g)
        return {"actions": out["actions"].numpy(), "action_mask": out["action_mask"].numpy(),
                "end_prob": out["end_prob"].numpy()}


mlflow.models.set_model(WallWMPyfunc())
