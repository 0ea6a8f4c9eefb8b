"""`ModelPolicy`: a WALL-WM model acting in the closed loop.

Per call of `act`: the live frame becomes a one-row `WorldActionBatch` built the way
wallwm/train/data.py builds a training item (views in the model's camera order, frames resized
to the model's size in [-1, 1], intrinsics rescaled to it, extrinsics of this frame, raw
state, the caption tokenized with the build's tokenizer, the event-type id of the label,
abs_time = the frame's time); `model.predict` samples a chunk in dataset units; the first
`execute_frames` frames are returned (receding horizon).

Modes, switchable between chunks (`set_mode`): `event` conditions on the planner's next-event
caption (wallwm/eval/policies/planner.py) and advances it when the predicted end-of-event
(`action_mask` / `end_prob`) falls inside the executed frames; `unified` conditions on the
instruction alone and takes the fixed-length chunk. Once the planner's last event ended,
`after_plan` decides: `hold` (no motion, the last grip command) or `unified`.

Replanning inside an event shows the model a mid-event frame with the same caption, asking for
the rest of the event: `train.event_stride` > 0 trains exactly that question (with event starts
alone it is out of distribution: README "Evaluation" has the measured difference).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wallwm.data.tokenizer import encode_batch, load_tokenizer
from wallwm.eval.observe import FrameObs
from wallwm.eval.policies.base import Chunk, EpisodeInfo
from wallwm.eval.policies.planner import EventPlanner, event_type_id
from wallwm.eval.spec import EnvSpec, ModelContract, check_fit
from wallwm.model.batch import WorldActionBatch

MODES = ("event", "unified")


def to_model_image(img: np.ndarray, size: int) -> Tensor:
    """uint8 (N, h, w, 3) -> float (N, 3, size, size) in [-1, 1], bilinear with antialias: the
    resize wallwm/train/data.py applies to decoded training frames."""
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    return (x / 127.5 - 1.0).clamp(-1, 1)


def scale_intrinsics(k: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """K of a (height, width) image -> K of its resize to (size, size), pixel centres kept
    (as wallwm/train/data.py rescales the cameras of a training item)."""
    sx, sy = size / width, size / height
    k = np.array(k, np.float64)
    k[0, 0], k[0, 1], k[0, 2] = k[0, 0] * sx, k[0, 1] * sx, (k[0, 2] + 0.5) * sx - 0.5
    k[1, 1], k[1, 2] = k[1, 1] * sy, (k[1, 2] + 0.5) * sy - 0.5
    return k


class ModelPolicy:
    def __init__(self, model: Any, tokenizer: Any, contract: ModelContract, env: EnvSpec, *,
                 mode: str = "event", execute_frames: int = 4, event_max_frames: int = 24,
                 steps: int | None = None, after_plan: str = "hold", name: str = "model"):
        check_fit(contract, env, model.cfg)
        if mode not in MODES:
            raise ValueError(f"ModelPolicy: mode={mode!r}; use one of {MODES} (eval.mode)")
        if after_plan not in ("hold", "unified"):
            raise ValueError(f"ModelPolicy: after_plan={after_plan!r}; use 'hold' or 'unified' "
                             f"(eval.after_plan)")
        if execute_frames < 1:
            raise ValueError(f"ModelPolicy: execute_frames={execute_frames} must be >= 1 "
                             f"(eval.execute_frames)")
        self.model, self.cfg, self.contract, self.env = model, model.cfg, contract, env
        self.tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
        self.name, self.initial_mode, self.after_plan = name, mode, after_plan
        self.k, self.event_max_frames = int(execute_frames), int(event_max_frames)
        self.steps = steps
        self.device = next(model.parameters()).device
        params = inspect.signature(model.predict).parameters
        self._predict_kw = {"return_video": False} if "return_video" in params else {}
        self.mode = mode
        self.planner: EventPlanner | None = None
        self.generator: torch.Generator | None = None
        self._last_grip = 0.0
        self._instruction = ""

    # ------------------------------------------------------------------ episode
    def reset(self, task: str, instruction: str, episode: EpisodeInfo) -> None:
        self.mode = self.initial_mode
        self._instruction = instruction
        self.planner = EventPlanner(task, instruction, self.event_max_frames)
        self.generator = torch.Generator().manual_seed(int(episode.seed))
        self._last_grip = 0.0

    def set_mode(self, mode: str) -> None:
        """Switch modes; takes effect at the next chunk (one set of weights serves both)."""
        if mode not in MODES:
            raise ValueError(f"ModelPolicy.set_mode: {mode!r}; use one of {MODES}")
        self.mode = mode

    # ------------------------------------------------------------------ the batch
    def batch(self, frame: FrameObs, mode: str, text: str, label: str | None
              ) -> WorldActionBatch:
        cfg, S = self.cfg, self.cfg.image_size
        views, ks, es = [], [], []
        for cam in self.contract.cameras:
            img = frame.images[cam]
            h, w = img.shape[:2]
            views.append(to_model_image(img[None], S)[0])
            ks.append(scale_intrinsics(frame.intrinsics[cam], w, h, S))
            es.append(frame.extrinsics[cam])
        ids, mask = encode_batch(self.tok, [text], cfg.max_text_len)
        et = event_type_id(label, self.contract.vocabulary, cfg.event_types) if (
            mode == "event" and label is not None) else -1
        V = len(views)
        b = WorldActionBatch(
            obs=torch.stack(views)[None],  # (1, V, 3, S, S)
            text_ids=torch.from_numpy(ids), text_mask=torch.from_numpy(mask),
            state=torch.as_tensor(np.asarray(frame.state, np.float32))[None],  # (1, S_dim)
            intrinsics=torch.tensor(np.stack(ks), dtype=torch.float32)[None],  # (1, V, 3, 3)
            extrinsics=torch.tensor(np.stack(es), dtype=torch.float32)[None],  # (1, V, 4, 4)
            calibrated=torch.ones(1, V, dtype=torch.bool),
            abs_time=torch.tensor([float(frame.time_s)], dtype=torch.float32),
            mode=mode, event_type=torch.tensor([et], dtype=torch.long))
        return b.to(self.device)

    def _predict(self, b: WorldActionBatch, mode: str) -> dict[str, Any]:
        out = self.model.predict(b, mode=mode, steps=self.steps, generator=self.generator,
                                 **self._predict_kw)
        return {k: v.detach().float().cpu().numpy() if isinstance(v, Tensor) else v
                for k, v in out.items()}

    # ------------------------------------------------------------------ acting
    def act(self, frame: FrameObs) -> Chunk:
        if self.planner is None:
            raise RuntimeError("ModelPolicy.act before reset")
        p = self.planner
        if self.mode == "event" and p.exhausted:
            if self.after_plan == "unified":
                self.mode = "unified"
            else:
                hold = np.zeros((self.k, self.cfg.action_dim))
                hold[:, -1] = self._last_grip
                return Chunk(hold, caption="(plan done: hold)", mode="hold")
        if self.mode == "event":
            label, caption = p.label, p.caption
            assert label is not None and caption is not None
            out = self._predict(self.batch(frame, "event", caption, label), "event")
            acts, valid = out["actions"][0], int(out["action_mask"][0].sum())
            end = out["end_prob"][0] > 0.5
            first_end = int(np.argmax(end)) if bool(end.any()) else None
            n = max(1, min(self.k, valid, p.frames_left))
            ended = first_end is not None and first_end < n
            p.executed(n, ended)
            chunk = Chunk(acts[:n], caption=caption, mode="event",
                          info={"label": label, "valid": valid, "end_at": first_end,
                                "ended": ended})
        else:
            out = self._predict(self.batch(frame, "unified", self._instruction, None),
                                "unified")
            acts = out["actions"][0]
            chunk = Chunk(acts[: min(self.k, len(acts))], caption=self._instruction,
                          mode="unified")
        self._last_grip = float(chunk.actions[-1, -1])
        return chunk


@dataclass
class ModelPolicyFactory:
    """Builds a `ModelPolicy` inside a worker from picklable parts: the model's config and
    weights (CPU tensors), the tokenizer's JSON, the contract, the env spec and settings."""

    cfg: Any
    state_dict: dict[str, Tensor]
    tokenizer_json: str
    contract: ModelContract
    env: EnvSpec
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = "model"

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, contract: ModelContract, env: EnvSpec,
                   name: str = "model", **settings: Any) -> ModelPolicyFactory:
        check_fit(contract, env, model.cfg)  # refuse in the driver, before any worker starts
        tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
        sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(model.cfg, sd, tok.to_str(), contract, env, dict(settings), name)

    def __call__(self) -> ModelPolicy:
        from tokenizers import Tokenizer

        from wallwm.model.wallwm import WallWM

        model = WallWM(self.cfg)
        model.load_state_dict(self.state_dict)
        model.eval()
        return ModelPolicy(model, Tokenizer.from_str(self.tokenizer_json), self.contract,
                           self.env, name=self.name, **self.settings)
