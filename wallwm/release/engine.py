"""The torch-free runner of a bundle: onnxruntime sessions per graph and the Euler host loop.

The same code runs in the health check (the bundle's reference sample) and in the robot
agent's action server, so what passed the check is what serves. Semantics: FORMAT.md,
"Runner semantics". numpy + onnxruntime + `tokenizers` only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from wallwm.release.bundle import (
    TOKENIZER,
    BundleError,
    Manifest,
    ModeSpec,
    load_manifest,
    parse_version,
    read_normalization,
    safe_join,
    verify_bundle,
)

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64,
              "int32": np.int32, "bool": np.bool_, "uint8": np.uint8}
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)",
              "int32": "tensor(int32)", "bool": "tensor(bool)", "uint8": "tensor(uint8)"}


class EngineError(RuntimeError):
    """The engine cannot load or run; the message says which graph, input or value."""


@dataclass
class _Graphs:
    encoder: ort.InferenceSession
    step: ort.InferenceSession
    video_step: ort.InferenceSession | None
    cond_names: list[str]  # encoder outputs the step graph reads


@dataclass
class HealthReport:
    ok: bool
    precision: str
    modes: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "precision": self.precision, "modes": self.modes,
                "seconds": round(self.seconds, 4), "error": self.error}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def valid_mask(end_prob: np.ndarray) -> np.ndarray:
    """True up to and including the first step with end_prob > 0.5 (all steps when none)."""
    over = end_prob > 0.5
    first = np.where(over.any(axis=1), over.argmax(axis=1), end_prob.shape[1] - 1)
    return np.arange(end_prob.shape[1])[None, :] <= first[:, None]


class Engine:
    """One bundle loaded for inference.

    `verify=True` checks every file against the manifest before any graph is parsed.
    `precision` defaults to the manifest's `default_precision`; `providers` to CPU.
    """

    def __init__(self, bundle_dir: Path | str, precision: str | None = None,
                 providers: list[str] | None = None, verify: bool = True,
                 threads: int = 1):
        self.root = Path(bundle_dir)
        self.manifest: Manifest = verify_bundle(self.root) if verify else load_manifest(self.root)
        m = self.manifest
        self.precision = precision or m.default_precision
        if self.precision not in m.precisions:
            raise EngineError(f"{self.root}: precision {self.precision!r} not in the bundle "
                              f"(has {m.precisions})")
        have = parse_version(ort.__version__)
        if have < parse_version(m.runtime.min_version):
            raise EngineError(f"{self.root}: runtime.min_version = {m.runtime.min_version} but "
                              f"onnxruntime is {ort.__version__}; upgrade onnxruntime")
        available = ort.get_available_providers()
        self.providers = [p for p in (providers or ["CPUExecutionProvider"]) if p in available]
        if not self.providers:
            raise EngineError(f"none of the providers {providers} is available ({available})")
        self.threads = threads
        norm = read_normalization(self.root, m)
        self._a_mean = np.asarray(norm["action"]["mean"], np.float32)
        self._a_std = np.asarray(norm["action"]["std"], np.float32)
        self._s_mean = np.asarray(norm["state"]["mean"], np.float32)
        self._s_std = np.asarray(norm["state"]["std"], np.float32)
        self._tokenizer = None
        self._graphs: dict[tuple[str, str], _Graphs] = {}
        for mode in m.modes:
            self._load(mode, self.precision)

    # ------------------------------------------------------------------ loading
    def _session(self, rel: str, precision: str) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # warnings of graph clean-up would flood the agent's log
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
                                         if precision == "fp8"
                                         else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        path = safe_join(self.root, rel)
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise EngineError(f"{path}: onnxruntime cannot load the graph ({e})") from e

    def _load(self, mode: str, precision: str) -> _Graphs:
        key = (mode, precision)
        if key in self._graphs:
            return self._graphs[key]
        spec = self.manifest.modes[mode]
        enc = self._session(spec.encoder[precision], precision)
        step = self._session(spec.action_step[precision], precision)
        video = (self._session(spec.video_step[precision], precision)
                 if spec.video_step else None)
        where = f"{self.root / spec.encoder[precision]}"
        got = {i.name: i.type for i in enc.get_inputs()}
        want = {i.name: _ORT_TYPES[i.dtype] for i in spec.inputs}
        if got != want:
            raise EngineError(f"{where}: encoder inputs {got} differ from manifest modes.{mode}."
                              f"inputs {want}")
        enc_out = [o.name for o in enc.get_outputs()]
        step_in = [i.name for i in step.get_inputs()]
        x_name = spec.action_noise.name
        cond = [n for n in step_in if n not in (x_name, "t")]
        if x_name not in step_in or "t" not in step_in:
            raise EngineError(f"{self.root / spec.action_step[precision]}: step inputs {step_in} "
                              f"lack {x_name!r} or 't'")
        unknown = [n for n in cond if n not in enc_out]
        if unknown:
            raise EngineError(f"{self.root / spec.action_step[precision]}: step inputs {unknown} "
                              f"are not encoder outputs {enc_out}")
        outs = [o.name for o in step.get_outputs()]
        for role, name in spec.outputs.items():
            if name not in outs:
                raise EngineError(f"{self.root / spec.action_step[precision]}: outputs.{role} = "
                                  f"{name!r} is not among the step outputs {outs}")
        g = _Graphs(enc, step, video, cond)
        self._graphs[key] = g
        return g

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from wallwm.data.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(safe_join(self.root, TOKENIZER))
        return self._tokenizer

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _shape(spec_shape: list, batch: int, what: str) -> tuple[int, ...]:
        out = []
        for d in spec_shape:
            if d == "B":
                out.append(batch)
            elif isinstance(d, int):
                out.append(d)
            else:
                raise EngineError(f"{what}: free dim {d!r} in its shape; pass {what} explicitly")
        return tuple(out)

    @staticmethod
    def _check(name: str, arr: np.ndarray, spec_shape: list, batch: int) -> None:
        if arr.ndim != len(spec_shape):
            raise EngineError(f"input {name}: shape {arr.shape}, manifest says {spec_shape}")
        for got, want in zip(arr.shape, spec_shape, strict=True):
            if (want == "B" and got != batch) or (isinstance(want, int) and got != want):
                raise EngineError(f"input {name}: shape {arr.shape}, manifest says {spec_shape} "
                                  f"(batch {batch})")

    def _obs(self, images: dict[str, np.ndarray]) -> tuple[np.ndarray, int]:
        cams = self.manifest.cameras
        missing = [c.name for c in cams if c.name not in images]
        if missing:
            raise EngineError(f"images lack camera(s) {missing}; the bundle wants "
                              f"{[c.name for c in cams]} in that order")
        views, batch = [], None
        for c in cams:
            img = np.asarray(images[c.name])
            if img.dtype != np.uint8 or img.ndim != 4 or img.shape[1:] != (c.height, c.width, 3):
                raise EngineError(f"images[{c.name!r}]: {img.dtype} {img.shape}, expected uint8 "
                                  f"(B, {c.height}, {c.width}, 3)")
            batch = img.shape[0] if batch is None else batch
            if img.shape[0] != batch:
                raise EngineError(f"images[{c.name!r}]: batch {img.shape[0]} != {batch}")
            views.append(img)
        obs = np.stack(views, axis=1).transpose(0, 1, 4, 2, 3).astype(np.float32)
        return obs / np.float32(127.5) - np.float32(1.0), int(batch or 0)

    def encode_text(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        from wallwm.data.tokenizer import encode_batch

        return encode_batch(self.tokenizer, list(texts), self.manifest.text.max_len)

    # ------------------------------------------------------------------ inference
    def act(self, images: dict[str, np.ndarray], state: np.ndarray,
            text: list[str] | None = None, text_ids: np.ndarray | None = None,
            text_mask: np.ndarray | None = None, event_type: np.ndarray | None = None,
            abs_time: np.ndarray | None = None, mode: str = "event",
            precision: str | None = None, action_noise: np.ndarray | None = None,
            video_noise: np.ndarray | None = None, seed: int | None = None) -> dict[str, Any]:
        """Actions (B, La, A) in dataset units for raw observations (FORMAT.md, steps 1-4)."""
        if mode not in self.manifest.modes:
            raise EngineError(f"mode {mode!r} not in the bundle (has {list(self.manifest.modes)})")
        spec: ModeSpec = self.manifest.modes[mode]
        g = self._load(mode, precision or self.precision)
        obs, batch = self._obs(images)
        state = np.asarray(state, np.float32)
        if state.shape != (batch, self.manifest.state_dim):
            raise EngineError(f"state: shape {state.shape}, expected ({batch}, "
                              f"{self.manifest.state_dim})")
        feeds: dict[str, np.ndarray] = {"obs": obs, "state": (state - self._s_mean) / self._s_std}
        names = {i.name for i in spec.inputs}
        if "text_ids" in names or "text_mask" in names:
            if text_ids is None:
                if text is None:
                    raise EngineError("this mode reads text: pass text= or text_ids=/text_mask=")
                if len(text) != batch:
                    raise EngineError(f"text: {len(text)} strings for batch {batch}")
                text_ids, text_mask = self.encode_text(text)
            feeds["text_ids"] = np.asarray(text_ids, np.int64)
            feeds["text_mask"] = (np.asarray(text_mask, bool) if text_mask is not None
                                  else feeds["text_ids"] != 0)
        feeds["event_type"] = (np.full(batch, -1, np.int64) if event_type is None
                               else np.asarray(event_type, np.int64).reshape(batch))
        feeds["abs_time"] = (np.zeros(batch, np.float32) if abs_time is None
                             else np.asarray(abs_time, np.float32).reshape(batch))
        rng = np.random.default_rng(seed) if (action_noise is None or video_noise is None) else None
        if action_noise is None:
            assert rng is not None
            action_noise = rng.standard_normal(
                self._shape(spec.action_noise.shape, batch, "action_noise")).astype(np.float32)
        inputs = {i.name: i for i in spec.inputs}
        if "video_noise" in inputs:
            if video_noise is None:
                assert rng is not None
                video_noise = rng.standard_normal(
                    self._shape(inputs["video_noise"].shape, batch, "video_noise")
                ).astype(np.float32)
            feeds["video_noise"] = np.asarray(video_noise, np.float32)
        feed = {}
        for name, ispec in inputs.items():
            arr = np.asarray(feeds[name]).astype(_NP_DTYPES[ispec.dtype], copy=False)
            self._check(name, arr, ispec.shape, batch)
            feed[name] = arr
        enc_names = [o.name for o in g.encoder.get_outputs()]
        cond = dict(zip(enc_names, g.encoder.run(None, feed), strict=True))
        x = np.asarray(action_noise, np.float32)
        self._check(spec.action_noise.name, x, spec.action_noise.shape, batch)
        step_outs = [o.name for o in g.step.get_outputs()]
        last: dict[str, np.ndarray] = {}
        for t, dt_ in spec.schedule:
            step_feed = {spec.action_noise.name: x, "t": np.full(batch, t, np.float32),
                         **{n: cond[n] for n in g.cond_names}}
            last = dict(zip(step_outs, g.step.run(None, step_feed), strict=True))
            x = x + np.float32(dt_) * last[spec.outputs["velocity"]].astype(np.float32)
        actions = x * self._a_std + self._a_mean
        out: dict[str, Any] = {"actions": actions, "end_prob": None,
                               "valid": np.ones(actions.shape[:2], bool)}
        if "end_logits" in spec.outputs:
            logits = np.asarray(last[spec.outputs["end_logits"]], np.float32)
            if logits.ndim == 3 and logits.shape[-1] == 1:
                logits = logits[..., 0]
            end_prob = _sigmoid(logits)
            out["end_prob"], out["valid"] = end_prob, valid_mask(end_prob)
        return out

    # ------------------------------------------------------------------ health
    def health_check(self, precision: str | None = None) -> HealthReport:
        """Run every reference sample; compare with its tolerance (FORMAT.md, step 6)."""
        prec = precision or self.precision
        report = HealthReport(ok=True, precision=prec)
        t0 = time.perf_counter()
        try:
            if not self.manifest.reference:
                raise EngineError(f"{self.root}: the manifest has no reference sample to check")
            for mode, ref in self.manifest.reference.items():
                report.modes[mode] = self._check_reference(mode, ref, prec)
                report.ok = report.ok and report.modes[mode]["ok"]
        except (EngineError, BundleError, KeyError, ValueError) as e:
            report.ok, report.error = False, str(e)
        report.seconds = time.perf_counter() - t0
        if not report.ok and not report.error:
            bad = [m for m, r in report.modes.items() if not r["ok"]]
            report.error = "; ".join(f"{m}: {report.modes[m]['why']}" for m in bad)
        return report

    def _check_reference(self, mode: str, ref, prec: str) -> dict[str, Any]:
        tol = ref.precision.get(prec)
        if tol is None:
            return {"ok": False, "why": f"reference.{mode} has no tolerance for precision {prec}"}
        path = safe_join(self.root, ref.file)
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        images = {c.name: data[f"in.images.{c.name}"] for c in self.manifest.cameras}
        got = self.act(images, data["in.state"], text_ids=data.get("in.text_ids"),
                       text_mask=data.get("in.text_mask"), event_type=data.get("in.event_type"),
                       abs_time=data.get("in.abs_time"), mode=mode, precision=prec,
                       action_noise=data["in.action_noise"], video_noise=data.get("in.video_noise"))
        result: dict[str, Any] = {"ok": True, "atol": tol.atol, "rtol": tol.rtol}
        pairs = [("actions", got["actions"], data["out.actions"])]
        if got["end_prob"] is not None and "out.end_prob" in data:
            pairs.append(("end_prob", got["end_prob"], data["out.end_prob"]))
        for name, have, want in pairs:
            if have.shape != want.shape:
                result.update(ok=False, why=f"{name} shape {have.shape} != reference {want.shape}")
                return result
            if not np.all(np.isfinite(have)):
                result.update(ok=False, why=f"{name} holds non-finite values")
                return result
            err = np.abs(have.astype(np.float64) - want)
            excess = float(np.max(err - (tol.atol + tol.rtol * np.abs(want))))
            result[f"max_abs_err_{name}"] = float(err.max())
            if excess > 0 or math.isnan(excess):
                result.update(ok=False, why=f"{name} off by {float(err.max()):.3g} > atol "
                              f"{tol.atol:g} + rtol {tol.rtol:g}")
        return result
