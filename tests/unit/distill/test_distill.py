"""Step distillation on a small real build (tests/unit/distill/world.py): the student starts as
the teacher, trains only its towers, beats the teacher cut naively to its step count on
held-out events, resumes from its last checkpoint, and refuses a teacher without statistics."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.unit.distill import world
from wallwm.distill.loop import data_module, load_pair, run_distill
from wallwm.distill.losses import Weights, distill_losses
from wallwm.distill.module import DistillModule
from wallwm.distill.quality import offline_quality, write_quality
from wallwm.distill.trajectory import segments
from wallwm.model.normalize import NormalizationMissing
from wallwm.model.wallwm import WallWM


def _val_loaders(p):
    dm = data_module(world.build(), p)
    dm.setup()
    parts = getattr(dm, "parts", {p.distill.modes[0]: dm})
    return {m: part.val_dataloader() for m, part in parts.items()}


def test_the_student_starts_as_the_naive_cut():
    p = world.params()
    m = DistillModule(p.model_dump(mode="json"), world.teacher().cfg.to_dict())
    m.init_from_teacher(world.teacher())
    b = next(iter(_val_loaders(p)["event"]))
    d = p.distill
    out = distill_losses(m.student, m.teacher, b, segments(d.student_steps, d.teacher_steps),
                         Weights.from_params(d), tuple(d.towers),
                         torch.Generator().manual_seed(0), baselines=True)
    for k in ("action_traj", "action_gt", "event_end", "video_traj"):
        assert float(out[k]) == pytest.approx(float(out[f"baseline/naive_{k}"]), rel=1e-5), k
    assert float(out["action_traj"]) > 0 and float(out["video_traj"]) > 0


def test_the_student_beats_the_naive_cut_on_held_out_events(tmp_path):
    p = world.params()
    result = json.loads((world.distilled() / "result.json").read_text())
    assert result["final_val"] < result["initial_val"], result
    teacher, student = load_pair(world.distilled() / "last.ckpt")
    q = offline_quality(teacher, student, _val_loaders(p), p.distill.teacher_steps,
                        p.distill.student_steps, batches=2, latency_repeats=1)
    for mode in p.distill.modes:
        assert q.error_vs_naive(mode) < 1.0, q.markdown()
        assert q.row(mode, "teacher")["steps"] == p.distill.teacher_steps
    m = q.metrics()
    assert m["distill.event.error_vs_naive"] == pytest.approx(q.error_vs_naive("event"))
    assert "distill.event.student.frame_psnr" in m and "distill.event.student.action_mse_d3" in m
    paths = write_quality(q, tmp_path)
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "| event | student | 2 |" in paths["md"].read_text()


def test_only_the_towers_train_and_the_teacher_stays_frozen():
    teacher, student = load_pair(world.distilled() / "last.ckpt")
    original = world.teacher().state_dict()
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, original[k], msg=f"teacher changed at {k}")
    s = student.state_dict()
    for prefix in ("text.", "reasoning.", "norm."):
        keys = [k for k in s if k.startswith(prefix)]
        assert keys and all(torch.equal(s[k], original[k]) for k in keys), prefix
    for prefix in ("video.", "action."):
        assert any(not torch.equal(s[k], original[k]) for k in s if k.startswith(prefix)), prefix


def test_a_run_resumes_from_its_last_checkpoint(tmp_path):
    d = tmp_path / "distill"
    shutil.copytree(world.distilled(), d)
    before = torch.load(d / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    p = world.params(f"distill.max_steps={before + 5}")
    r = run_distill(p, world.teacher(), world.build(), d, resume=True)
    assert r.resumed and r.initial_val is None
    assert r.steps == before + 5


def test_a_teacher_without_statistics_is_refused():
    raw = WallWM(world.teacher().cfg)  # never fitted to a build
    p = world.params()
    m = DistillModule(p.model_dump(mode="json"), raw.cfg.to_dict())
    with pytest.raises(NormalizationMissing, match="no normalization statistics"):
        m.init_from_teacher(raw)
