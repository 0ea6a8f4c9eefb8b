"""Write the deployable bundle (`wallwm-bundle/1`, wallwm/release/FORMAT.md) into a folder.

Layout: graphs/<precision>/<mode>_{encoder,action_step,video_step}.onnx, normalization.json,
tokenizer.json, reference/<mode>.npz, engines/<gpu_arch>/<precision>/*.plan (when built),
manifest.json (sha256 + size of every file, tensor names/shapes/dtypes, steps and schedule,
precisions, runtime and version, embodiment, cameras and image size, lineage).

The health-check sample is computed by the real runner (`wallwm.release.engine.Engine`) on
the FP32 graphs from raw inputs (uint8 frames, raw state, tokens, explicit noise), so what the
robot checks is exactly what this code ran; each other precision gets the tolerance
max(export.health_atol[p], export.health_margin x its deviation from FP32 on that sample).
The folder is then verified and every precision's health check must pass before the caller
renames it into place.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from wallwm.export.data import Sample, feature_names, to_uint8_images
from wallwm.export.errors import ExportError
from wallwm.export.graphs import ENCODER_INPUTS, END_LOGITS, VELOCITY, X
from wallwm.model.flow_matching import timesteps
from wallwm.model.wallwm import WallWM
from wallwm.release import bundle as rb
from wallwm.util.atomic import atomic_write_text


def graph_path(precision: str, name: str) -> str:
    """Bundle path of a graph: `video_step` is written once per mode (<mode>_video_step)."""
    return f"graphs/{precision}/{name}.onnx"


def runtime_version() -> str:
    """The onnxruntime the bundle was checked on (major.minor): its floor on the robot."""
    return ".".join(ort.__version__.split("+")[0].split(".")[:2])


def input_specs(model: WallWM, mode: str) -> list[dict[str, Any]]:
    cfg = model.cfg
    S, V = cfg.image_size, cfg.views
    F = model.future_frames(mode)
    shapes = {"obs": ("float32", ["B", V, 3, S, S]), "text_ids": ("int64", ["B", "Lt"]),
              "text_mask": ("bool", ["B", "Lt"]), "state": ("float32", ["B", cfg.state_dim]),
              "event_type": ("int64", ["B"]), "abs_time": ("float32", ["B"]),
              "video_noise": ("float32", ["B", V, F, 3, S, S])}
    return [{"name": n, "dtype": shapes[n][0], "shape": shapes[n][1]} for n in ENCODER_INPUTS]


def mode_spec(model: WallWM, mode: str, precisions: list[str], steps: int, video: bool
              ) -> dict[str, Any]:
    return {
        "encoder": {p: graph_path(p, f"{mode}_encoder") for p in precisions},
        "action_step": {p: graph_path(p, f"{mode}_action_step") for p in precisions},
        "video_step": ({p: graph_path(p, f"{mode}_video_step") for p in precisions}
                       if video else None),
        "inputs": input_specs(model, mode),
        "action_noise": {"name": X, "shape": ["B", model.action_len(mode),
                                              model.cfg.action_dim]},
        "steps": steps, "schedule": [list(s) for s in timesteps(steps)],
        "outputs": ({"velocity": VELOCITY, "end_logits": END_LOGITS} if mode == "event"
                    else {"velocity": VELOCITY}),
    }


def reference_inputs(sample: Sample, rows: int, cameras: list[str]) -> dict[str, np.ndarray]:
    """The raw inputs of the health-check sample (FORMAT.md step 6 keys)."""
    b, n = sample.batch, min(rows, sample.batch.batch_size)
    frames = to_uint8_images(b.obs[:n].numpy())  # (n, V, H, W, 3)
    out = {f"in.images.{c}": np.ascontiguousarray(frames[:, v]) for v, c in enumerate(cameras)}
    out.update({
        "in.state": b.state[:n].numpy().astype(np.float32),
        "in.text_ids": sample.feed["text_ids"][:n].astype(np.int64),
        "in.text_mask": sample.feed["text_mask"][:n].astype(bool),
        "in.event_type": sample.feed["event_type"][:n].astype(np.int64),
        "in.abs_time": sample.feed["abs_time"][:n].astype(np.float32),
        "in.video_noise": sample.feed["video_noise"][:n].astype(np.float32),
        "in.action_noise": sample.action_noise[:n].astype(np.float32)})
    return out


def act_reference(engine: Any, arrays: Mapping[str, np.ndarray], cameras: list[str],
                  mode: str, precision: str) -> dict[str, Any]:
    """`Engine.act` on health-check arrays (the runner's full raw-input path)."""
    return engine.act({c: arrays[f"in.images.{c}"] for c in cameras}, arrays["in.state"],
                      text_ids=arrays["in.text_ids"], text_mask=arrays["in.text_mask"],
                      event_type=arrays["in.event_type"], abs_time=arrays["in.abs_time"],
                      mode=mode, precision=precision, action_noise=arrays["in.action_noise"],
                      video_noise=arrays["in.video_noise"])


def write_bundle(root: Path, graphs: Mapping[str, Mapping[str, onnx.ModelProto]],
                 model: WallWM, tokenizer: Path, contract: Mapping[str, Any], p: Any,
                 lineage: Mapping[str, str], references: Mapping[str, Sample],
                 build_dir: Path | None = None, tensorrt: list[dict[str, Any]] | None = None,
                 extra_files: Mapping[str, Path] | None = None) -> dict[str, Any]:
    """Fill `root` (an empty folder) with the bundle; returns {"manifest", "health",
    "reference_deviation"}. `graphs`: precision -> graph name -> model; `build_dir`: where
    the action/state names come from; `extra_files`: bundle path -> local file (engines)."""
    from wallwm.release.engine import Engine

    ex = p.export
    precisions = [pr for pr in ex.precisions if pr in graphs]
    modes = [m for m in ex.modes if f"{m}_encoder" in graphs["fp32"]]
    video = "video_step" in graphs["fp32"]
    for prec in precisions:
        for name, g in graphs[prec].items():
            targets = [f"{m}_video_step" for m in modes] if name == "video_step" else [name]
            for t in targets:
                dst = rb.safe_join(root, graph_path(prec, t))
                dst.parent.mkdir(parents=True, exist_ok=True)
                onnx.save(g, str(dst))
    for rel, src in (extra_files or {}).items():
        dst = rb.safe_join(root, rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    cfg = model.cfg
    norm = model.norm.stats()
    atomic_write_text(root / rb.NORMALIZATION, json.dumps({
        "action": {"mean": norm["action_mean"], "std": norm["action_std"]},
        "state": {"mean": norm["state_mean"], "std": norm["state_std"]},
        "action_names": feature_names(build_dir, "action", cfg.action_dim) if build_dir
        else [f"action.{i}" for i in range(cfg.action_dim)],
        "state_names": feature_names(build_dir, "observation.state", cfg.state_dim)
        if build_dir else [f"observation.state.{i}" for i in range(cfg.state_dim)]},
        indent=2))
    shutil.copyfile(tokenizer, root / rb.TOKENIZER)
    cameras = list(contract["cameras"])
    fields: dict[str, Any] = {
        "embodiment": ex.embodiment,
        "cameras": [{"name": c, "height": cfg.image_size, "width": cfg.image_size}
                    for c in cameras],
        "action_dim": cfg.action_dim, "state_dim": cfg.state_dim,
        "control": {"fps": float(contract["fps"]), "render_every": int(p.data.sim.render_every)},
        "text": {"max_len": cfg.max_text_len},
        "runtime": {"name": "onnxruntime", "min_version": runtime_version(), "opset": ex.opset},
        "precisions": precisions, "default_precision": ex.default_precision,
        "modes": {m: mode_spec(model, m, precisions, p.distill.student_steps, video)
                  for m in modes},
        "lineage": {k: str(v) for k, v in lineage.items() if v},
        "tensorrt": tensorrt or [],
    }
    rb.write_manifest(root, fields)
    engine = Engine(root, precision="fp32", verify=False, threads=int(ex.threads))
    reference: dict[str, Any] = {}
    deviation: dict[str, dict[str, float]] = {}
    (root / "reference").mkdir(exist_ok=True)
    for mode in modes:
        arrays = reference_inputs(references[mode], int(ex.reference_batch), cameras)
        want = act_reference(engine, arrays, cameras, mode, "fp32")
        arrays["out.actions"] = want["actions"].astype(np.float32)
        if want["end_prob"] is not None:
            arrays["out.end_prob"] = want["end_prob"].astype(np.float32)
        tol = {"fp32": {"atol": float(ex.health_atol["fp32"])}}
        deviation[mode] = {"fp32": 0.0}
        for prec in precisions:
            if prec == "fp32":
                continue
            got = act_reference(engine, arrays, cameras, mode, prec)
            dev = float(np.abs(got["actions"] - arrays["out.actions"]).max())
            if want["end_prob"] is not None:
                dev = max(dev, float(np.abs(got["end_prob"] - arrays["out.end_prob"]).max()))
            deviation[mode][prec] = dev
            tol[prec] = {"atol": max(float(ex.health_atol[prec]), float(ex.health_margin) * dev)}
        np.savez(root / "reference" / f"{mode}.npz", **arrays)
        reference[mode] = {"file": f"reference/{mode}.npz", "precision": tol}
    manifest = rb.write_manifest(root, {**fields, "reference": reference})
    rb.verify_bundle(root)
    health = {}
    for prec in precisions:
        rep = Engine(root, precision=prec, threads=int(ex.threads)).health_check(prec)
        health[prec] = rep.to_json()
        if not rep.ok:
            raise ExportError(f"the written bundle fails its own health check: {rep.error}",
                              graph=f"graphs/{prec}", output="reference",
                              figure="health_check")
    return {"manifest": manifest, "health": health, "reference_deviation": deviation}
