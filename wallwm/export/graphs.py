"""The exported graphs, GR00T's deployment split: the condition encoder once per observation,
one velocity step per tower looped on the host for any step count, the noise an explicit input.

    <mode>_encoder      obs, text_ids, text_mask, state (normalized), event_type, abs_time,
                        video_noise  ->  cond.* (the `Cond` tensors: text context, the coupled
                        video features of the anchor pass per action block, the action prefix
                        with the Staircase CoT latents in unified mode)
    <mode>_action_step  x_t, t, cond.prefix, cond.mode_id, cond.abs_time, cond.action_ctx.i
                        ->  v (and end_logits in event mode)
    <mode>_video_step   x_t, t, cond.obs, cond.ctx, cond.ctx_mask, cond.mode_id  ->  v

Encoder outputs carry the prefix `cond.` so that no output shares a name with an input (ONNX
graphs are in SSA form) and a step graph's inputs say where they come from; the runner feeds
them by name (wallwm/release/FORMAT.md, "Runner semantics").

Why wrapper modules: `encode` checks the batch with data-dependent Python and normalizes state;
the graph gets the checked path `_condition(..., state_normalized=True)` (the host normalizes,
as the bundle format says) and a batch whose `batch_size` stays symbolic (the model's
`int(obs.shape[0])` would freeze the batch dimension at the example's size under
`torch.export`). Export uses the `torch.export`-based exporter (`dynamo=True`): the TorchScript
tracer bakes the example batch into `repeat_interleave`/`reshape` sizes (measured: a graph
traced at batch 2 failed at batch 3).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from wallwm.export.errors import ExportError
from wallwm.export.weights import strip_metadata
from wallwm.model.batch import WorldActionBatch
from wallwm.model.wallwm import Cond, WallWM

ENCODER_INPUTS = ("obs", "text_ids", "text_mask", "state", "event_type", "abs_time",
                  "video_noise")
COND = "cond."
X, T = "x_t", "t"
VELOCITY, END_LOGITS = "v", "end_logits"
EXAMPLE_BATCH, EXAMPLE_TEXT = 3, 7  # sizes no static dimension of the tiny preset shares
MAX_BATCH = 1024


class _SymBatch(WorldActionBatch):
    """A batch whose `batch_size` is the (symbolic) size itself, not an `int` of it."""

    @property
    def batch_size(self):  # type: ignore[override]
        return self.obs.shape[0]


def cond_names(model: WallWM, mode: str) -> list[str]:
    """Encoder output names in graph order: the `Cond.tensors()` keys under `cond.`."""
    names = ["obs", "ctx", "ctx_mask", "mode_id", "abs_time", "prefix"]
    names += [f"action_ctx.{i}" for i in range(model.cfg.action_depth)]
    if mode == "unified":
        names.append("cot")
    return [COND + n for n in names]


class EncoderGraph(nn.Module):
    """(obs, text_ids, text_mask, state normalized, event_type, abs_time, video_noise) -> the
    condition tensors, in `cond_names` order."""

    def __init__(self, model: WallWM, mode: str):
        super().__init__()
        self.m, self.mode = model, mode
        self.names = [n[len(COND):] for n in cond_names(model, mode)]

    def forward(self, obs: Tensor, text_ids: Tensor, text_mask: Tensor, state: Tensor,
                event_type: Tensor, abs_time: Tensor, video_noise: Tensor) -> tuple[Tensor, ...]:
        b = _SymBatch(obs=obs, text_ids=text_ids, text_mask=text_mask, state=state,
                      intrinsics=None, extrinsics=None, calibrated=None,  # type: ignore[arg-type]
                      abs_time=abs_time, mode=self.mode, event_type=event_type)
        cond = self.m._condition(b, self.mode, bias_on=False, video_noise=video_noise,
                                 state_normalized=True)
        t = cond.tensors()
        missing = [n for n in self.names if n not in t]
        if missing:  # a Cond without a tensor the graph promises (e.g. CoT in unified mode)
            raise ExportError(f"the {self.mode} condition has no {missing}", graph="encoder")
        return tuple(t[n] for n in self.names)


class ActionStepGraph(nn.Module):
    """One action denoising step: (x_t, t, prefix, mode_id, abs_time, *action_ctx) -> v
    (+ end_logits in event mode)."""

    def __init__(self, model: WallWM, mode: str):
        super().__init__()
        self.m, self.mode = model, mode

    def forward(self, x_t: Tensor, t: Tensor, prefix: Tensor, mode_id: Tensor, abs_time: Tensor,
                *action_ctx: Tensor) -> tuple[Tensor, ...]:
        cond = Cond(self.mode, obs=x_t, ctx=prefix, ctx_mask=prefix, mode_id=mode_id,
                    abs_time=abs_time, prefix=prefix, action_ctx=list(action_ctx))
        v, end = self.m.action_velocity(x_t, t, cond)
        return (v, end) if self.mode == "event" else (v,)


class VideoStepGraph(nn.Module):
    """One video denoising step: (x_t, t, obs, ctx, ctx_mask, mode_id) -> v."""

    def __init__(self, model: WallWM, mode: str):
        super().__init__()
        self.m, self.mode = model, mode

    def forward(self, x_t: Tensor, t: Tensor, obs: Tensor, ctx: Tensor, ctx_mask: Tensor,
                mode_id: Tensor) -> Tensor:
        cond = Cond(self.mode, obs=obs, ctx=ctx, ctx_mask=ctx_mask, mode_id=mode_id,
                    abs_time=t, prefix=ctx, action_ctx=[])
        return self.m.video_velocity(x_t, t, cond)


@dataclass
class GraphSpec:
    """What one exported graph is: its role, module, example inputs and the names and dynamic
    axes of its inputs and outputs."""

    role: str  # encoder | action_step | video_step
    mode: str
    module: nn.Module
    args: tuple[Tensor, ...]
    inputs: list[str]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]  # input name -> {axis: dim name}

    @property
    def name(self) -> str:
        """`<mode>_encoder`, `<mode>_action_step`, or `video_step` (one for both modes)."""
        return "video_step" if self.role == "video_step" else f"{self.mode}_{self.role}"


def example_inputs(model: WallWM, mode: str, batch: int = EXAMPLE_BATCH,
                   text_len: int = EXAMPLE_TEXT, seed: int = 0) -> dict[str, Tensor]:
    """Well-formed encoder inputs (normalized state) for tracing and tests."""
    cfg, g = model.cfg, torch.Generator().manual_seed(seed)
    b = WorldActionBatch.synthetic(cfg, batch, mode, g, with_targets=False)
    Lt = min(text_len, cfg.max_text_len)
    ids = torch.randint(5, cfg.vocab_size, (batch, Lt), generator=g)
    mask = torch.ones(batch, Lt, dtype=torch.bool)
    mask[0, Lt // 2:] = False  # one padded row: padding must not change the others
    xv, _ = model.draw_noise(b, mode, g)
    return {"obs": b.obs, "text_ids": ids, "text_mask": mask, "state": b.state,
            "event_type": b.event_type if mode == "event" else torch.full((batch,), -1),
            "abs_time": b.abs_time, "video_noise": xv}


def graph_specs(model: WallWM, modes: tuple[str, ...] | list[str] = ("event", "unified"),
                with_video: bool = True) -> list[GraphSpec]:
    """Encoder and action step per mode, and one video step shared by the modes (its future
    frame count F is a dynamic axis, traced at the largest mode's F), with example inputs
    computed from the model itself."""
    model = model.eval()
    specs, conds = [], {}
    B = EXAMPLE_BATCH
    t = torch.full((B,), 0.7)
    for mode in modes:
        enc = EncoderGraph(model, mode)
        ex = example_inputs(model, mode)
        with torch.no_grad():
            cond = dict(zip(cond_names(model, mode), enc(*ex.values()), strict=True))
        conds[mode] = (cond, ex)
        specs.append(GraphSpec(
            "encoder", mode, enc, tuple(ex.values()), list(ENCODER_INPUTS),
            cond_names(model, mode),
            {n: ({0: "B", 1: "Lt"} if n.startswith("text_") else {0: "B"})
             for n in ENCODER_INPUTS}))
        La = model.action_len(mode)
        xa = torch.randn(B, La, model.cfg.action_dim, generator=torch.Generator().manual_seed(1))
        ctx_names = [f"{COND}action_ctx.{i}" for i in range(model.cfg.action_depth)]
        step_in = [X, T, f"{COND}prefix", f"{COND}mode_id", f"{COND}abs_time", *ctx_names]
        specs.append(GraphSpec(
            "action_step", mode, ActionStepGraph(model, mode),
            (xa, t, *(cond[n] for n in step_in[2:])), step_in,
            [VELOCITY, END_LOGITS] if mode == "event" else [VELOCITY],
            {n: {0: "B"} for n in step_in}))
    if with_video and modes:
        mode = max(modes, key=model.future_frames)  # trace where F is largest (F > 1: dynamic)
        cond, ex = conds[mode]
        vid_in = [X, T, f"{COND}obs", f"{COND}ctx", f"{COND}ctx_mask", f"{COND}mode_id"]
        xv = torch.randn(ex["video_noise"].shape, generator=torch.Generator().manual_seed(2))
        x_axes = {0: "B", 2: "F"} if model.future_frames(mode) > 1 else {0: "B"}
        specs.append(GraphSpec(
            "video_step", mode, VideoStepGraph(model, mode),
            (xv, t, *(cond[n] for n in vid_in[2:])), vid_in, [VELOCITY],
            {**{n: {0: "B"} for n in vid_in}, X: x_axes, f"{COND}ctx": {0: "B", 1: "Lc"},
             f"{COND}ctx_mask": {0: "B", 1: "Lc"}}))
    return specs


def _dims(spec: GraphSpec, max_text: int, max_frames: int) -> tuple:
    dims = {"B": torch.export.Dim("B", min=1, max=MAX_BATCH),
            "Lt": torch.export.Dim("Lt", min=2, max=max_text),
            "Lc": torch.export.Dim("Lc", min=3, max=max_text + 1),
            "F": torch.export.Dim("F", min=1, max=max_frames)}
    flat = [{ax: dims[d] for ax, d in spec.dynamic.get(n, {}).items()} for n in spec.inputs]
    if spec.role == "action_step":  # `*action_ctx` binds as one tuple in the signature
        return (*flat[:5], tuple(flat[5:]))
    return tuple(flat)


def export_graph(spec: GraphSpec, path: Path | str, opset: int, max_text: int,
                 max_frames: int = 1) -> Path:
    """torch -> ONNX at `opset` with the spec's names and dynamic axes; returns `path`.

    Raises ExportError naming the graph when the exporter fails or an axis meant to be dynamic
    came out fixed (the example's size baked in)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(spec.module, spec.args, str(path), input_names=spec.inputs,
                              output_names=spec.outputs, opset_version=opset,
                              dynamic_shapes=_dims(spec, max_text, max_frames),
                              dynamo=True,
                              external_data=False, verbose=False, report=False)
    except ExportError:
        raise
    except Exception as e:  # the exporter raises many types; name the graph
        raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {str(e)[:600]}",
                          graph=spec.name, figure="export") from e
    finally:
        for lg, lv in zip(quiet, levels, strict=True):
            lg.setLevel(lv)
    m = onnx.load(str(path), load_external_data=False)
    got = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
           for i in m.graph.input}
    for name, axes in spec.dynamic.items():
        for ax in axes:
            if name in got and not isinstance(got[name][ax], str):
                raise ExportError(f"input {name} axis {ax} was exported as the fixed size "
                                  f"{got[name][ax]} instead of a dynamic dimension",
                                  graph=spec.name, output=name, figure="dynamic_shapes")
    missing = [n for n in spec.inputs if n not in got]
    if missing:
        raise ExportError(f"inputs {missing} were dropped by the exporter (unused by the "
                          "graph); the runner feeds them by name", graph=spec.name,
                          figure="inputs")
    m.graph.name = spec.name
    onnx.save(strip_metadata(m), str(path))
    return path
