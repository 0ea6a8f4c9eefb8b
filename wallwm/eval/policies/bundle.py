"""`BundlePolicy`: an export bundle acting in the closed loop through the robot's own runner.

Runtime parity: the evaluator plays the PyTorch student (`ModelPolicy`), the ONNX FP32 bundle
and the ONNX FP8 bundle on the same episodes, so the gates compare what robots will run. The
bundle is run by `wallwm.release.engine.Engine` (numpy + onnxruntime, the code the robot agent
serves), never by PyTorch.

Everything but the inference is `ModelPolicy`'s (this class subclasses it): the event planner,
receding horizon, mode switches, hold-after-plan, and the noise. The noise is drawn from the
same per-episode `torch.Generator` in the same order as `WallWM.draw_noise` (video, then
actions) and given to the runner explicitly, so with equal weights the PyTorch and the ONNX
policy start every chunk from identical noise and differ only by the runtime.

Frames: the runner takes uint8 frames of the bundle's size. When the environment renders at
that size (the sim does: both 64), the frame goes in unchanged and the runner's x / 127.5 - 1
is exactly `ModelPolicy`'s preprocessing; otherwise it is resized as `ModelPolicy` resizes and
rounded back to uint8 (what a robot's camera pipeline would send).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from wallwm.eval.observe import FrameObs
from wallwm.eval.policies.model import ModelPolicy, to_model_image
from wallwm.eval.policies.planner import event_type_id
from wallwm.eval.spec import EnvSpec, ModelContract, PolicyMismatchError, check_fit


def check_bundle_fit(manifest: Any, contract: ModelContract, env: EnvSpec) -> None:
    """The bundle's cameras (names, order) and vectors are its contract's; the contract fits
    the environment (`check_fit`). Raises PolicyMismatchError naming every mismatch."""
    check_fit(contract, env)
    problems = []
    names = [c.name for c in manifest.cameras]
    if names != list(contract.cameras):
        problems.append(f"cameras: the bundle takes {names}, its contract {list(contract.cameras)}")
    for what, have, want in (("action_dim", manifest.action_dim, contract.action_dim),
                             ("state_dim", manifest.state_dim, contract.state_dim)):
        if have != want:
            problems.append(f"{what}: the bundle has {have}, its contract {want}")
    if problems:
        raise PolicyMismatchError("the bundle does not fit its contract: " + "; ".join(problems))


class BundlePolicy(ModelPolicy):
    """`ModelPolicy` with the model replaced by a bundle at one precision (see module doc)."""

    def __init__(self, engine: Any, contract: ModelContract, env: EnvSpec, *,
                 precision: str | None = None, event_types: int = 16, mode: str = "event",
                 execute_frames: int = 4, event_max_frames: int = 24,
                 after_plan: str = "hold", name: str = "bundle"):
        m = engine.manifest
        check_bundle_fit(m, contract, env)
        prec = precision or engine.precision
        if prec not in m.precisions:
            raise ValueError(f"BundlePolicy: precision {prec!r} is not in the bundle "
                             f"{engine.root} (has {m.precisions})")
        missing = [md for md in ("event", "unified") if md not in m.modes
                   and (md == mode or (md == "unified" and after_plan == "unified"))]
        if missing:
            raise ValueError(f"BundlePolicy: the bundle {engine.root} has no {missing} mode "
                             f"(has {list(m.modes)}); export it (export.modes)")
        if execute_frames < 1:
            raise ValueError(f"BundlePolicy: execute_frames={execute_frames} must be >= 1 "
                             f"(eval.execute_frames)")
        self.engine, self.precision = engine, prec
        self.size = int(m.cameras[0].height)
        # what ModelPolicy.act reads from a model config
        self.cfg = SimpleNamespace(action_dim=m.action_dim, event_types=int(event_types),
                                   max_text_len=m.text.max_len, image_size=self.size)
        self.model, self.contract, self.env = None, contract, env
        self.tok = engine.tokenizer
        self.name, self.initial_mode, self.after_plan = name, mode, after_plan
        self.k, self.event_max_frames = int(execute_frames), int(event_max_frames)
        self.steps = None
        self.device = torch.device("cpu")
        self._predict_kw: dict[str, Any] = {}
        self.mode = mode
        self.planner = None
        self.generator = None
        self._last_grip = 0.0
        self._instruction = ""

    def batch(self, frame: FrameObs, mode: str, text: str, label: str | None
              ) -> dict[str, Any]:  # type: ignore[override]
        """The runner's raw inputs for one frame (batch 1)."""
        images = {}
        for cam in self.contract.cameras:
            img = frame.images[cam]
            if img.shape[:2] != (self.size, self.size):
                x = to_model_image(img[None], self.size)[0].numpy()  # (3, S, S) in [-1, 1]
                img = np.clip(np.rint((x.transpose(1, 2, 0) + 1) * 127.5), 0, 255)
            images[cam] = np.asarray(img, np.uint8)[None]
        et = event_type_id(label, self.contract.vocabulary, self.cfg.event_types) if (
            mode == "event" and label is not None) else -1
        return {"images": images, "state": np.asarray(frame.state, np.float32)[None],
                "text": [text], "event_type": np.array([et], np.int64),
                "abs_time": np.array([float(frame.time_s)], np.float32)}

    def _noise(self, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """(video, action) noise in `WallWM.draw_noise`'s order from the episode generator."""
        spec = self.engine.manifest.modes[mode]
        vshape = next(i.shape for i in spec.inputs if i.name == "video_noise")
        xv = torch.randn(*[1 if d == "B" else int(d) for d in vshape], generator=self.generator)
        xa = torch.randn(*[1 if d == "B" else int(d) for d in spec.action_noise.shape],
                         generator=self.generator)
        return xv.numpy(), xa.numpy()

    def _predict(self, b: dict[str, Any], mode: str) -> dict[str, Any]:  # type: ignore[override]
        xv, xa = self._noise(mode)
        out = self.engine.act(b["images"], b["state"], text=b["text"],
                              event_type=b["event_type"], abs_time=b["abs_time"], mode=mode,
                              precision=self.precision, action_noise=xa, video_noise=xv)
        end = out["end_prob"] if out["end_prob"] is not None else np.zeros(
            out["actions"].shape[:2], np.float32)
        return {"actions": out["actions"], "action_mask": out["valid"], "end_prob": end}


@dataclass
class BundlePolicyFactory:
    """Builds a `BundlePolicy` inside a worker: the bundle folder (verified when the runner
    loads it), the precision, the contract, the env spec and the eval settings."""

    bundle_dir: str
    contract: ModelContract
    env: EnvSpec
    precision: str = "fp32"
    event_types: int = 16
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = "bundle"
    threads: int = 1

    @classmethod
    def from_bundle(cls, bundle_dir: Path | str, contract: ModelContract, env: EnvSpec, *,
                    precision: str = "fp32", event_types: int = 16, name: str | None = None,
                    threads: int = 1, **settings: Any) -> BundlePolicyFactory:
        """Refuses in the driver, before any worker starts: a bundle that does not verify,
        lacks the precision, or does not fit the contract and the environment."""
        from wallwm.release.engine import Engine

        eng = Engine(bundle_dir, precision=precision, threads=threads)
        check_bundle_fit(eng.manifest, contract, env)
        return cls(str(bundle_dir), contract, env, precision, int(event_types), dict(settings),
                   name or f"onnx_{precision}", int(threads))

    def __call__(self) -> BundlePolicy:
        from wallwm.release.engine import Engine

        eng = Engine(self.bundle_dir, precision=self.precision, threads=self.threads)
        return BundlePolicy(eng, self.contract, self.env, precision=self.precision,
                            event_types=self.event_types, name=self.name, **self.settings)


def runtime_factories(student: Any, tokenizer: Any, bundle_dir: Path | str,
                      contract: ModelContract, env: EnvSpec, ev: Any, *, steps: int,
                      precisions: tuple[str, ...] = ("fp32", "fp8")) -> dict[str, Any]:
    """The runtime-parity policies: `student_torch` (ModelPolicy, `steps` steps) and
    `onnx_<precision>` per precision the bundle has, with the same eval.* settings."""
    from wallwm.eval.policies.model import ModelPolicyFactory
    from wallwm.release.bundle import load_manifest

    kw = dict(mode=ev.mode, execute_frames=int(ev.execute_frames),
              event_max_frames=int(ev.event_max_frames), after_plan=ev.after_plan)
    out: dict[str, Any] = {"student_torch": ModelPolicyFactory.from_model(
        student, tokenizer, contract, env, name="student_torch", steps=steps, **kw)}
    have = load_manifest(bundle_dir).precisions
    for prec in precisions:
        if prec in have:
            out[f"onnx_{prec}"] = BundlePolicyFactory.from_bundle(
                bundle_dir, contract, env, precision=prec,
                event_types=int(student.cfg.event_types), **kw)
    return out
