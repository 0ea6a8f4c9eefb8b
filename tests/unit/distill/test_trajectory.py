"""The segment targets: the teacher's N-step trajectory cut at the student's K steps, and the
student's one-step update; exact where N is a multiple of K."""

from __future__ import annotations

import pytest
import torch

from wallwm.distill.trajectory import segments, student_step, teacher_states
from wallwm.model.flow_matching import timesteps


def _velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A nonlinear field, so Euler step counts give different endpoints."""
    return torch.sin(3 * x) + t[:, None] * x


def _euler(x: torch.Tensor, steps: int) -> list[torch.Tensor]:
    out = [x]
    for t, dt in timesteps(steps):
        x = x + dt * _velocity(x, torch.full(x.shape[:1], t))
        out.append(x)
    return out


@pytest.mark.parametrize("k,n", [(1, 8), (2, 8), (4, 8), (2, 10)])
def test_segment_ends_are_the_teachers_n_step_trajectory(k, n):
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    states = teacher_states(_velocity, x, segments(k, n))
    full = _euler(x, n)
    assert len(states) == k + 1
    for j, s in enumerate(states):
        torch.testing.assert_close(s, full[j * n // k])


def test_uneven_segments_use_rounded_substeps():
    segs = segments(3, 10)
    assert [s.substeps for s in segs] == [3, 3, 3]
    assert sum(s.dt for s in segs) == pytest.approx(-1.0)
    assert [s.t for s in segs] == pytest.approx([1.0, 2 / 3, 1 / 3])


def test_a_student_equal_to_the_teacher_is_the_naive_cut():
    """One student step over a segment is the teacher's 1-step Euler: the naive cut."""
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    segs = segments(2, 8)
    chain = x
    for s in segs:
        chain = student_step(_velocity, chain, s)
    torch.testing.assert_close(chain, _euler(x, 2)[-1])
    assert not torch.allclose(chain, _euler(x, 8)[-1], atol=1e-3)  # and N steps differ


def test_bad_step_counts_are_refused():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        segments(0, 10)
