"""ONNX FP32 against PyTorch on the same inputs and the same explicit noise.

Per graph, every output on a held-out batch: the encoder from the real feed, the action step
and the video step from the PyTorch condition at t = 1 (so a step graph is judged alone), and
the whole K-step chunk (ONNX encoder + ONNX steps in the host loop against `model.sample`).
`onnx_parity_max_abs` is the largest |difference| of all of them; a miss beyond
`export.parity_atol` is an ExportError naming the graph and the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from wallwm.export.data import Sample
from wallwm.export.errors import ExportError
from wallwm.export.graphs import COND, ENCODER_INPUTS, EncoderGraph, cond_names
from wallwm.export.runtime import HostLoop, run_named, session
from wallwm.model.flow_matching import timesteps
from wallwm.model.wallwm import Cond, WallWM


@dataclass
class Parity:
    by_output: dict[str, float] = field(default_factory=dict)  # "<graph>/<output>" -> max abs

    @property
    def max_abs(self) -> float:
        return max(self.by_output.values()) if self.by_output else float("nan")

    @property
    def worst(self) -> str:
        return max(self.by_output, key=self.by_output.__getitem__)

    def add(self, graph: str, output: str, a: np.ndarray, b: np.ndarray) -> None:
        if a.shape != b.shape:
            raise ExportError(f"shape {a.shape} from onnxruntime, {b.shape} from PyTorch",
                              graph=graph, output=output, figure="onnx_parity_max_abs")
        d = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
        key = f"{graph}/{output}"
        self.by_output[key] = max(d, self.by_output.get(key, 0.0))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@torch.no_grad()
def torch_cond(model: WallWM, mode: str, feed: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    enc = EncoderGraph(model, mode).eval()
    outs = enc(*(torch.from_numpy(feed[n]) for n in ENCODER_INPUTS))
    return dict(zip(cond_names(model, mode), outs, strict=True))


@torch.no_grad()
def check_parity(model: WallWM, graphs: dict[str, onnx.ModelProto], sample: Sample,
                 steps: int, parity: Parity | None = None) -> Parity:
    """Compare the FP32 graphs of `sample.mode` (keys `<mode>_encoder`, `<mode>_action_step`,
    `video_step`) with PyTorch; adds to `parity`."""
    par = parity or Parity()
    mode = sample.mode
    model = model.eval()
    cond = torch_cond(model, mode, sample.feed)
    enc_name = f"{mode}_encoder"
    got = run_named(session(graphs[enc_name]), sample.feed)
    for name, ref in cond.items():
        if ref.dtype != torch.bool:
            par.add(enc_name, name, got[name], _np(ref))
        elif not np.array_equal(got[name], _np(ref)):
            raise ExportError("boolean output differs", graph=enc_name, output=name,
                              figure="onnx_parity_max_abs")
    c = Cond.from_tensors(mode, {k[len(COND):]: v for k, v in cond.items()})
    xa = torch.from_numpy(sample.action_noise)
    t1 = torch.ones(xa.shape[0])
    v, end = model.action_velocity(xa, t1, c)
    step_name = f"{mode}_action_step"
    feed = {**{k: _np(v_) for k, v_ in cond.items()}, "x_t": sample.action_noise,
            "t": np.ones(xa.shape[0], np.float32)}
    out = run_named(session(graphs[step_name]), feed)
    par.add(step_name, "v", out["v"], _np(v))
    if mode == "event":
        par.add(step_name, "end_logits", out["end_logits"], _np(end))
    if "video_step" in graphs:
        xv = torch.from_numpy(sample.feed["video_noise"])
        vv = model.video_velocity(xv, t1, c)
        got_v = run_named(session(graphs["video_step"]),
                          {**feed, "x_t": sample.feed["video_noise"]})
        par.add("video_step", f"v ({mode})", got_v["v"], _np(vv))
    ref = model.sample(c, xa, steps)
    loop = HostLoop.of(graphs[enc_name], graphs[step_name], timesteps(steps),
                       event=mode == "event")
    res = loop.run(sample.feed, sample.action_noise)
    par.add(f"{mode}_chunk", "actions", res["actions"], _np(ref["actions"]))
    if mode == "event":
        par.add(f"{mode}_chunk", "end_logits", res["end_logits"], _np(ref["end_logits"]))
    return par


def require_parity(par: Parity, atol: float) -> None:
    if par.max_abs > atol or not np.isfinite(par.max_abs):
        graph, _, output = par.worst.partition("/")
        raise ExportError(f"ONNX FP32 differs from PyTorch by {par.max_abs:.3g} > "
                          f"export.parity_atol {atol:g} on the same inputs and noise",
                          graph=graph, output=output, figure="onnx_parity_max_abs",
                          value=par.max_abs, bound=atol)
