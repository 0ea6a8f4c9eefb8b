"""The teacher's trajectory cut into the student's segments, and one Euler step along it.

The student takes K Euler steps on the schedule `timesteps(K)`: segment j runs from
t_j = 1 - j/K to t_{j+1} with dt_j = -1/K. The teacher covers the same segment with
m_j = max(1, round(N/K)) of its own Euler steps, so for N divisible by K its states at the
segment ends are exactly its N-step trajectory (N = 10, K = 2: after 5 and 10 steps). The
student's target at the end of segment j is the teacher's state there, started from the
teacher's state at t_j (TRACT's transitive closure, one segment per student step):

    X_0 = noise,   X_{j+1} = teacher Euler m_j substeps from X_j over [t_j, t_{j+1}]
    student:       X_j + dt_j * v_student(X_j, t_j)  ~  X_{j+1}

Pure functions over a velocity callable, so both towers and both modes share them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from wallwm.model.flow_matching import timesteps

Velocity = Callable[[Tensor, Tensor], Tensor]  # (x_t, t (B,)) -> v


@dataclass(frozen=True)
class Segment:
    t: float  # where the student's step starts
    dt: float  # its (negative) step
    substeps: int  # the teacher's Euler steps over the same span


def segments(student_steps: int, teacher_steps: int) -> list[Segment]:
    """The student's schedule with the teacher's substeps per segment.

    >>> [(s.t, s.dt, s.substeps) for s in segments(2, 10)]
    [(1.0, -0.5, 5), (0.5, -0.5, 5)]
    """
    if student_steps < 1 or teacher_steps < 1:
        raise ValueError(f"segments: steps must be >= 1 (student {student_steps}, teacher "
                         f"{teacher_steps})")
    return [Segment(t, dt, max(1, round(teacher_steps * -dt)))
            for t, dt in timesteps(student_steps)]


def full_t(x: Tensor, t: float) -> Tensor:
    return torch.full(x.shape[:1], t, dtype=x.dtype, device=x.device)


@torch.no_grad()
def teacher_states(velocity: Velocity, noise: Tensor, segs: list[Segment]) -> list[Tensor]:
    """[X_0 = noise, X_1, ..., X_K]: the teacher's states at the segment ends."""
    x, out = noise, [noise]
    for s in segs:
        h = s.dt / s.substeps
        for i in range(s.substeps):
            x = x + h * velocity(x, full_t(x, s.t + i * h))
        out.append(x)
    return out


def student_step(velocity: Velocity, x: Tensor, seg: Segment) -> Tensor:
    """One student Euler step over the whole segment."""
    return x + seg.dt * velocity(x, full_t(x, seg.t))
