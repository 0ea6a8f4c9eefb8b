"""The distillation objective of one batch: trajectory segments of both towers plus the paper's
action-preserving term.

    action_traj  mean_j |X_j + dt_j v_S(X_j, t_j) - X_{j+1}|^2     teacher action trajectory
    video_traj   the same for the video tower (boundary / future frames)
    action_gt    |sample_S(noise, K) - a|^2 on valid steps             the paper's term: the
                 student's own K-step chain against the true actions (normalized units)
    event_end    BCE of the chain's last end-of-event logits on the true ends (event mode)

Teacher and student read the deployment condition (`encode`, the inference mask setting,
video features of the one anchor pass) from the same noise draws, each with its own weights:
the student's video tower moves, so its anchor features move, and its action tower learns to
act on them. `baselines=True` adds (not trained) the same figures for the teacher cut
naively to K steps on the same draws: the student starts there (it is the teacher's copy), and
must end below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wallwm.distill.trajectory import Segment, full_t, student_step, teacher_states
from wallwm.model.batch import WorldActionBatch
from wallwm.model.flow_matching import weighted_mse
from wallwm.model.wallwm import Cond, WallWM


@dataclass(frozen=True)
class Weights:
    trajectory: float = 1.0
    video: float = 1.0
    action: float = 1.0
    end: float = 0.1

    @classmethod
    def from_params(cls, d) -> Weights:
        return cls(d.trajectory_weight, d.video_weight, d.action_weight, d.end_weight)


def draw(b: WorldActionBatch, model: WallWM, generator: torch.Generator | None
         ) -> tuple[Tensor, Tensor]:
    """(video noise, action noise) for a batch; the action noise has the batch's own length
    (causal in event mode, so a longer deployment window computes the same prefix)."""
    assert b.actions is not None
    xv, _ = model.draw_noise(b, b.mode, generator)
    xa = torch.randn(b.actions.shape, generator=generator).to(b.obs.device)
    return xv, xa


def _valid(b: WorldActionBatch) -> Tensor:
    assert b.action_mask is not None
    valid = b.action_mask.bool()
    if b.segment_ids is not None:
        valid = valid & (b.segment_ids >= 0)
    return valid


def _action_terms(model: WallWM, cond: Cond, X: list[Tensor], segs: list[Segment],
                  b: WorldActionBatch, weights: Weights, grad: bool) -> dict[str, Tensor]:
    """Segment error against the teacher states X, the K-step chain against the truth and the
    end BCE, for `model` under `cond` (the student with grad, or the naive teacher)."""
    assert b.actions is not None
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        seg_err, x, end = [], None, None
        for j, s in enumerate(segs):
            v, e = model.action_velocity(X[j], full_t(X[j], s.t), cond)
            seg_err.append(weighted_mse(X[j] + s.dt * v, X[j + 1]))
            if j == 0:
                x, end = X[0] + s.dt * v, e  # the chain's first step starts at the noise too
            else:
                assert x is not None
                v2, end = model.action_velocity(x, full_t(x, s.t), cond)
                x = x + s.dt * v2
        assert x is not None and end is not None
        valid = _valid(b)
        out = {"action_traj": torch.stack(seg_err).mean(),
               "action_gt": weighted_mse(x, model.norm.action(b.actions), valid),
               "event_end": x.new_zeros(())}
        if b.mode == "event" and b.event_end is not None and weights.end > 0:
            bce = F.binary_cross_entropy_with_logits(end, b.event_end.float(), reduction="none")
            out["event_end"] = (bce * valid).sum() / valid.sum().clamp_min(1)
    return out


def distill_losses(student: WallWM, teacher: WallWM, b: WorldActionBatch,
                   segs: list[Segment], weights: Weights, towers: tuple[str, ...],
                   generator: torch.Generator | None = None, baselines: bool = False
                   ) -> dict[str, Tensor]:
    """The weighted objective `loss` and its terms (see the module docstring)."""
    if b.actions is None or b.action_mask is None:
        raise ValueError("distill_losses: the batch has no actions (distill on robot tiers)")
    mode = b.mode
    xv, xa = draw(b, student, generator)
    obs_only = b.replace(future=None)
    with torch.no_grad():
        tc = teacher.encode(obs_only, mode, video_noise=xv)
    sc = student.encode(obs_only, mode, video_noise=xv)
    zero = xa.new_zeros(())
    out: dict[str, Tensor] = {"action_traj": zero, "action_gt": zero, "event_end": zero,
                              "video_traj": zero}
    if "action" in towers:
        X = teacher_states(lambda x, t: teacher.action_velocity(x, t, tc)[0], xa, segs)
        out.update(_action_terms(student, sc, X, segs, b, weights, grad=True))
        if baselines:
            naive = _action_terms(teacher, tc, X, segs, b, weights, grad=False)
            out.update({f"baseline/naive_{k}": v.detach() for k, v in naive.items()})
    if "video" in towers:
        XV = teacher_states(lambda x, t: teacher.video_velocity(x, t, tc), xv, segs)
        errs = [weighted_mse(student_step(lambda x, t: student.video_velocity(x, t, sc),
                                          XV[j], s), XV[j + 1]) for j, s in enumerate(segs)]
        out["video_traj"] = torch.stack(errs).mean()
        if baselines:
            with torch.no_grad():
                naive = [weighted_mse(student_step(
                    lambda x, t: teacher.video_velocity(x, t, tc), XV[j], s), XV[j + 1])
                    for j, s in enumerate(segs)]
            out["baseline/naive_video_traj"] = torch.stack(naive).mean()
    out["loss"] = (weights.trajectory * out["action_traj"] + weights.action * out["action_gt"]
                   + weights.end * out["event_end"] + weights.video * out["video_traj"])
    return out
