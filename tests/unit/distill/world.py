"""A small real world for the distillation and export tests, made once per test session.

A 4-episode sim build, a micro teacher trained on it for a few dozen steps (video, then
action stage), its distilled student, and the student's exported bundle. The build, teacher
and student are cached on disk in the run's shared folder (`tests.conftest.shared_dir`: one
per run, found by every pytest-xdist worker) under one file lock, so the unit tests of
wallwm/distill, wallwm/export, the trainers' tests and the integration tests share one build
and one teacher instead of making their own; the student's export too (the slow part: torch.export
per graph), which tests read and copy but never change.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from functools import cache
from pathlib import Path

import torch
from filelock import FileLock

from tests.conftest import ROOT, shared_dir

MICRO = ("{width: 32, depth: 1, heads: 2, action_width: 32, action_depth: 1, action_heads: 2, "
         "image_size: 32, patch: 8, views: 2, frames: 2, action_dim: 4, state_dim: 4, "
         "action_horizon: 8, max_event_len: 48, vocab_size: 4096, text_depth: 1, vlm_depth: 1, "
         "relay_depth: 1, cot_latents: 2}")
SETS = [f"model.presets.micro={MICRO}", "model.preset=micro", "train.batch_size=8",
        "train.val_sample_batches=0", "distill.teacher_steps=8", "distill.student_steps=2",
        "distill.max_steps=30", "distill.val_every=15", "distill.lr=0.001",
        "distill.warmup_steps=3", "distill.val_batches=1", "distill.quality_batches=2",
        "export.accuracy_batches=2", "export.calibration_batches=2", "export.latency_repeats=3"]
TEACHER_STEPS = {"video": 30, "action": 40}


def home() -> Path:
    d = shared_dir() / "test-world"
    d.mkdir(parents=True, exist_ok=True)
    return d


@cache
def lock() -> FileLock:
    """The one lock of this process on the shared world (reentrant: `teacher_checkpoint` holds
    it while it calls `build`); another worker waits until the piece it needs is complete."""
    return FileLock(str(home() / ".lock"))


def params(*extra: str):
    from wallwm.config import load_params

    return load_params(ROOT / "params.yaml", sets=[*SETS, *extra])


@cache
def build() -> Path:
    out = home() / "build"
    with lock():
        if not (out / "manifest.json").exists():
            from tests.unit.build.test_bad_inputs import _build

            shutil.rmtree(out, ignore_errors=True)
            _build("sim:episodes=4", out)
    return out


@cache
def teacher_checkpoint() -> Path:
    from wallwm.train.loop import run_stage

    prev = None
    with lock():
        for stage, steps in TEACHER_STEPS.items():
            d = home() / "teacher" / stage
            done = d / "DONE"
            if not done.exists():
                p = params(f"train.max_steps={steps}", f"train.val_every={steps}")
                torch.manual_seed(0)
                res = run_stage(p, stage, build(), d, init_from=prev, resume=False)
                done.write_text(res.best_checkpoint or res.last_checkpoint or "")
            prev = Path(done.read_text())
    assert prev is not None
    return prev


@cache
def teacher():
    from wallwm.train.module import WallWMModule

    return WallWMModule.load_from_checkpoint(str(teacher_checkpoint()),
                                             map_location="cpu").model.eval()


@cache
def distilled() -> Path:
    """The distillation's folder (best.ckpt, last.ckpt, result.json)."""
    from wallwm.distill.loop import run_distill

    d = home() / "distill"
    with lock():
        if not (d / "result.json").exists():
            torch.manual_seed(0)
            r = run_distill(params(), teacher(), build(), d, resume=False)
            (d / "result.json").write_text(json.dumps(r.__dict__))
    return d


@cache
def student():
    from wallwm.distill.loop import load_student

    return load_student(distilled() / "last.ckpt")


def contract() -> dict:
    from wallwm.eval.spec import ModelContract

    p = params()
    return ModelContract.from_dataset(build() / "t3_robot_real" / "sim", 2,
                                      p.data.annotate.vocabulary).to_json()


def fp32() -> Path:
    """The shared export's FP32 graphs (`<name>.onnx`), for tests that export again from them."""
    exported()
    return home() / "export" / "fp32"


@cache
def exported():
    """(bundle folder, ExportResult) of the student, both modes, every precision, the video
    step; its FP32 graphs are kept in `fp32()` for tests that reuse them. Made once per run
    (temp folder, then rename: a worker killed mid-export leaves nothing another one trusts)."""
    from wallwm.export.pipeline import export_bundle

    d = home() / "export"
    with lock():
        if not (d / "result.pkl").exists():
            tmp = home() / f".export-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            res = export_bundle(student(), build() / "tokenizer.json", contract(), build(),
                                params(), tmp / "bundle", {"data_build": "test-build",
                                                           "git": "test"},
                                keep_fp32=tmp / "fp32")
            res.bundle_dir = d / "bundle"
            (tmp / "result.pkl").write_bytes(pickle.dumps(res))
            shutil.rmtree(d, ignore_errors=True)
            tmp.rename(d)
    res = pickle.loads((d / "result.pkl").read_bytes())
    return d / "bundle", res
