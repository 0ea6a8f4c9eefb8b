"""onnxruntime sessions of exported graphs and the Euler host loop at the encoder-input level.

The same loop the bundle's runner (wallwm/release/engine.py) runs after its preprocessing:
encoder once, `x <- x + dt * v` over the schedule. Export-time checks (parity, FP8/BF16
accuracy, calibration) work on normalized inputs and outputs, where the figures are defined;
the bundle's health check then runs the whole raw-input path through the real `Engine`.

FP8 graphs run at ORT_ENABLE_BASIC (the default level folds some FP8 Q/DQ patterns wrongly,
PITFALLS.md), the others at ORT_ENABLE_ALL, as the runner does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort


def session(model: onnx.ModelProto | bytes | str, precision: str = "fp32",
            threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
                                     if precision == "fp8"
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def run_named(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    want = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feed.items() if k in want}),
                    strict=True))


@dataclass
class HostLoop:
    """One mode at one precision: encoder + action step sessions and the schedule."""

    encoder: ort.InferenceSession
    step: ort.InferenceSession
    schedule: Sequence[tuple[float, float]]
    x_name: str = "x_t"
    velocity: str = "v"
    end_logits: str | None = "end_logits"

    @classmethod
    def of(cls, encoder: onnx.ModelProto | bytes | str, step: onnx.ModelProto | bytes | str,
           schedule: Sequence[tuple[float, float]], precision: str = "fp32", threads: int = 1,
           event: bool = True) -> HostLoop:
        return cls(session(encoder, precision, threads), session(step, precision, threads),
                   list(schedule), end_logits="end_logits" if event else None)

    def run(self, feed: dict[str, np.ndarray], noise: np.ndarray) -> dict[str, np.ndarray]:
        """-> actions (normalized), end_logits of the last step (event mode) and cond.*"""
        cond = run_named(self.encoder, feed)
        x = noise.astype(np.float32)
        B = x.shape[0]
        last: dict[str, np.ndarray] = {}
        for t, dt in self.schedule:
            last = run_named(self.step, {**cond, self.x_name: x,
                                         "t": np.full(B, t, np.float32)})
            x = x + np.float32(dt) * last[self.velocity]
        out = {"actions": x, **cond}
        if self.end_logits:
            out["end_logits"] = last[self.end_logits]
        return out
