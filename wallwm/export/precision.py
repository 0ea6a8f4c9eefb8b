"""BF16 and FP8 graphs of a bundle, chosen and checked on real held-out events.

Accuracy is measured where it matters, on the actions of the whole K-step chunk (host loop,
ORT, the same inputs and noise as FP32), per action dimension (wallwm/export/accuracy.py).

FP8 activations (`export.fp8_activations`): "off" quantizes weights only; "on" adds activation
Q/DQ to every GEMM input of every graph; "auto" starts from weights only and adds activation
Q/DQ one graph role at a time (the action step, then the encoder), keeping a role only when the
worst action dimension stays at or above `export.fp8_min_cosine` ("where it keeps accuracy").
The video step, which `act` does not run, is judged on its velocity (global cosine). A sample
of every FP8 graph of the first mode is cross-checked against `onnx.reference` (the ONNX
specification's own evaluator): onnxruntime on CPU simulates FP8, and this shows the
simulation computes what the graph says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from wallwm.export.accuracy import Agreement, agreement, cosine
from wallwm.export.bf16 import to_bf16
from wallwm.export.data import Sample
from wallwm.export.errors import ExportError
from wallwm.export.fp8 import activation_names, calibrate, quantize_fp8
from wallwm.export.runtime import HostLoop, run_named, session
from wallwm.model.flow_matching import timesteps

ROLES = ("action_step", "encoder")  # the order "auto" tries activation Q/DQ in


@dataclass
class PrecisionResult:
    precision: str
    graphs: dict[str, onnx.ModelProto]
    agreement: dict[str, Agreement]  # per mode
    video_cosine: float | None = None
    decisions: dict[str, str] = field(default_factory=dict)  # graph -> w8 | w8a8 | bf16
    trials: list[dict[str, Any]] = field(default_factory=list)
    reference_check: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        return min(a.worst for a in self.agreement.values())

    @property
    def global_cosine(self) -> float:
        return min(a.global_cosine for a in self.agreement.values())

    def worst_where(self) -> tuple[str, int]:
        mode = min(self.agreement, key=lambda m: self.agreement[m].worst)
        return mode, self.agreement[mode].worst_dim


def chunk_actions(graphs: Mapping[str, onnx.ModelProto], mode: str, samples: Sequence[Sample],
                  steps: int, precision: str) -> list[np.ndarray]:
    loop = HostLoop.of(graphs[f"{mode}_encoder"], graphs[f"{mode}_action_step"],
                       timesteps(steps), precision, event=mode == "event")
    return [loop.run(s.feed, s.action_noise)["actions"] for s in samples]


def measure(ref: Mapping[str, Sequence[np.ndarray]], graphs: Mapping[str, onnx.ModelProto],
            held: Mapping[str, Sequence[Sample]], steps: int, precision: str
            ) -> dict[str, Agreement]:
    return {m: agreement(ref[m], chunk_actions(graphs, m, held[m], steps, precision),
                         [s.valid for s in held[m]]) for m in held}


def video_cosine(g32: onnx.ModelProto, g: onnx.ModelProto, feeds: Sequence[dict],
                 precision: str) -> float:
    a = [run_named(session(g32), f)["v"] for f in feeds]
    b = [run_named(session(g, precision), f)["v"] for f in feeds]
    return cosine(np.concatenate([x.ravel() for x in a]), np.concatenate([x.ravel() for x in b]))


# ----------------------------------------------------------------------------- feeds per graph
def graph_feeds(g32: Mapping[str, onnx.ModelProto], samples: Mapping[str, Sequence[Sample]],
                steps: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """What each graph sees when the FP32 bundle runs `samples`: the encoder its feeds, the
    action step every (x_t, t, cond) of the chunk, the video step (x_t, t, cond) along its own
    K-step trajectory. For calibration (train items) and the video cosine (held-out)."""
    out: dict[str, list[dict[str, np.ndarray]]] = {}
    sched = timesteps(steps)
    for mode, ss in samples.items():
        enc, step = session(g32[f"{mode}_encoder"]), session(g32[f"{mode}_action_step"])
        vid = session(g32["video_step"]) if "video_step" in g32 else None
        for s in ss:
            out.setdefault(f"{mode}_encoder", []).append(s.feed)
            cond = run_named(enc, s.feed)
            x, xv = s.action_noise, s.feed["video_noise"]
            B = x.shape[0]
            for t, dt in sched:
                tt = np.full(B, t, np.float32)
                f = {**cond, "x_t": x, "t": tt}
                out.setdefault(f"{mode}_action_step", []).append(f)
                x = x + np.float32(dt) * run_named(step, f)["v"]
                if vid is not None:
                    fv = {**cond, "x_t": xv, "t": tt}
                    out.setdefault("video_step", []).append(fv)
                    xv = xv + np.float32(dt) * run_named(vid, fv)["v"]
    return out


# ----------------------------------------------------------------------------- BF16
def make_bf16(g32: Mapping[str, onnx.ModelProto], held: Mapping[str, Sequence[Sample]],
              ref: Mapping[str, Sequence[np.ndarray]], steps: int, bound: float,
              video_feeds: Sequence[dict] = ()) -> PrecisionResult:
    graphs = {k: to_bf16(g)[0] for k, g in g32.items()}
    res = PrecisionResult("bf16", graphs, measure(ref, graphs, held, steps, "bf16"),
                          decisions=dict.fromkeys(graphs, "bf16"))
    if "video_step" in graphs and video_feeds:
        res.video_cosine = video_cosine(g32["video_step"], graphs["video_step"], video_feeds,
                                        "bf16")
    _require(res, bound, "bf16_worst_dim_cosine", "export.bf16_min_cosine")
    return res


# ----------------------------------------------------------------------------- FP8
def _fp8_graphs(g32: Mapping[str, onnx.ModelProto], amax: Mapping[str, dict[str, float]],
                roles: set[str]) -> tuple[dict[str, onnx.ModelProto], dict[str, str]]:
    graphs, decisions = {}, {}
    for name, g in g32.items():
        role = "video_step" if name == "video_step" else name.split("_", 1)[1]
        act = amax.get(name) if role in roles else None
        graphs[name], _ = quantize_fp8(g, act)
        decisions[name] = "w8a8" if act else "w8"
    return graphs, decisions


def make_fp8(g32: Mapping[str, onnx.ModelProto], held: Mapping[str, Sequence[Sample]],
             calib: Mapping[str, Sequence[Sample]], ref: Mapping[str, Sequence[np.ndarray]],
             steps: int, bound: float, activations: str = "auto",
             video_feeds: Sequence[dict] = ()) -> PrecisionResult:
    """FP8 graphs per `activations` (module docstring); raises ExportError when even the
    choice that keeps most accuracy misses `bound`."""
    feeds = graph_feeds(g32, calib, steps)
    amax = {name: calibrate(g, feeds[name], activation_names(g)) for name, g in g32.items()}
    trials: list[dict[str, Any]] = []

    def trial(roles: set[str]) -> PrecisionResult:
        graphs, dec = _fp8_graphs(g32, amax, roles)
        res = PrecisionResult("fp8", graphs, measure(ref, graphs, held, steps, "fp8"),
                              decisions=dec)
        trials.append({"activations": sorted(roles), "worst": res.worst,
                       "global": res.global_cosine})
        return res

    all_roles = {*ROLES, "video_step"}
    if activations == "on":
        best = trial(all_roles)
    else:
        best = trial(set())
        if activations == "auto" and best.worst >= bound:
            roles: set[str] = set()
            for role in ROLES:
                cand = trial(roles | {role})
                if cand.worst >= bound:
                    roles, best = roles | {role}, cand
    if "video_step" in g32 and video_feeds:
        best.video_cosine = video_cosine(g32["video_step"], best.graphs["video_step"],
                                         video_feeds, "fp8")
        if activations == "auto" and best.video_cosine >= bound:
            g, _ = quantize_fp8(g32["video_step"], amax["video_step"])
            cos = video_cosine(g32["video_step"], g, video_feeds, "fp8")
            if cos >= bound:
                best.graphs["video_step"], best.decisions["video_step"] = g, "w8a8"
                best.video_cosine = cos
    best.trials = trials
    _require(best, bound, "fp8_worst_dim_cosine", "export.fp8_min_cosine")
    return best


def reference_check(graphs: Mapping[str, onnx.ModelProto], feeds: Mapping[str, dict],
                    atol: float = 1e-4, rtol: float = 1e-4,
                    rel_l2: float = 1e-3) -> dict[str, float]:
    """Each graph's onnxruntime output (ORT_ENABLE_BASIC) against `onnx.reference` on one
    feed; ExportError on a mismatch. Returns graph -> max |difference|.

    Weight-only FP8 graphs agree elementwise (`atol + rtol|ref|`). With quantized activations
    (w8a8) the two runtimes' FP32 arithmetic differs in the last bits before a QuantizeLinear,
    which can round a value to the neighbouring E4M3 step (1/8 relative apart) and so move a few
    outputs by more than that: such a graph matches when the whole output agrees to `rel_l2`
    (‖ort − ref‖ / ‖ref‖) and no element is off by more than 2% of the output's largest value.
    A wrongly folded Q/DQ pattern (the failure this check exists for) is off everywhere and
    fails both.
    """
    from onnx.reference import ReferenceEvaluator

    out = {}
    for name, feed in feeds.items():
        g = graphs[name]
        sess = session(g, "fp8")
        got = run_named(sess, feed)
        ins = {i.name for i in sess.get_inputs()}
        ref = ReferenceEvaluator(g).run(None, {k: v for k, v in feed.items() if k in ins})
        worst = 0.0
        for o, r in zip(sess.get_outputs(), ref, strict=True):
            a, b = got[o.name], np.asarray(r)
            if a.dtype == bool:
                if not np.array_equal(a, b):
                    raise ExportError("boolean output differs from onnx.reference",
                                      graph=name, output=o.name, figure="fp8_reference_check")
                continue
            if not a.size:
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            err = np.abs(a64 - b64)
            worst = max(worst, float(err.max()))
            if not np.isfinite(err).all():
                raise ExportError("onnxruntime (ORT_ENABLE_BASIC) or onnx.reference gave a "
                                  "non-finite output", graph=name, output=o.name,
                                  figure="fp8_reference_check")
            if (err <= atol + rtol * np.abs(b64)).all():
                continue
            rel = float(np.linalg.norm(a64 - b64) / max(float(np.linalg.norm(b64)), 1e-12))
            scale = float(np.abs(b64).max())
            if rel > rel_l2 or float(err.max()) > 0.02 * scale:
                raise ExportError(f"onnxruntime (ORT_ENABLE_BASIC) and onnx.reference differ: "
                                  f"max |diff| {float(err.max()):.3g} (2% of max|ref| = "
                                  f"{0.02 * scale:.3g}), relative L2 {rel:.3g} > {rel_l2:g}",
                                  graph=name, output=o.name, figure="fp8_reference_check",
                                  value=rel, bound=rel_l2)
        out[name] = worst
    return out


def _require(res: PrecisionResult, bound: float, figure: str, key: str) -> None:
    if res.worst < bound or not np.isfinite(res.worst):
        mode, dim = res.worst_where()
        raise ExportError(f"{res.precision.upper()} actions agree with FP32 at cosine "
                          f"{res.worst:.4f} on their worst dimension < {key} {bound:g} "
                          f"(global {res.global_cosine:.4f}; trials {res.trials})",
                          graph=f"{mode}_encoder + {mode}_action_step",
                          output=f"actions[..., {dim}]", figure=figure, value=res.worst,
                          bound=bound)
    if res.video_cosine is not None and res.video_cosine < bound:
        raise ExportError(f"{res.precision.upper()} video velocity agrees with FP32 at cosine "
                          f"{res.video_cosine:.4f} < {key} {bound:g}", graph="video_step",
                          output="v", figure=figure.replace("worst_dim", "video"),
                          value=res.video_cosine, bound=bound)
