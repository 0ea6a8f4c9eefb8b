"""Real build data for the export: held-out events (parity, accuracy, the health-check sample)
and training items (FP8 calibration), as encoder feeds with their noise.

Items are taken evenly over a split (not the first n: unified items are consecutive frames of
one episode), collated by the training collator, so the graphs see exactly what training and
evaluation feed the model. Feeds are normalized (state through the model's statistics), as
the bundle's runner feeds its encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wallwm.model.batch import WorldActionBatch
from wallwm.model.wallwm import WallWM


@dataclass
class Sample:
    """One batch of one mode: the batch (dataset units), its encoder feed (normalized), the
    explicit noise of both towers and the valid action steps."""

    mode: str
    batch: WorldActionBatch
    feed: dict[str, np.ndarray]
    action_noise: np.ndarray  # (B, La_deploy, A)
    valid: np.ndarray  # (B, La_deploy) bool: the event's true steps inside the window


def batches(build_dir: Path, model: WallWM, tokenizer: Path | str, vocabulary: list[str],
            mode: str, split: str, n_batches: int, batch_size: int) -> list[WorldActionBatch]:
    """`n_batches` collated batches of `split` (robot tiers), items spread evenly."""
    from wallwm.data.tokenizer import load_tokenizer
    from wallwm.train.data import EventDataset, collate_events
    from wallwm.train.stages import ROBOT_TIERS

    ds = EventDataset(build_dir, split, model.cfg, mode=mode, vocabulary=vocabulary,
                      tiers=ROBOT_TIERS)
    if len(ds) == 0 and split == "val":
        ds = EventDataset(build_dir, "train", model.cfg, mode=mode, vocabulary=vocabulary,
                          tiers=ROBOT_TIERS)
    if len(ds) == 0:
        raise ValueError(f"{build_dir}: no {mode} items in the {split} split of the robot "
                         "tiers: the export needs real events to check its graphs")
    want = min(len(ds), n_batches * batch_size)
    idx = np.unique(np.linspace(0, len(ds) - 1, want).round().astype(int))
    tok = load_tokenizer(tokenizer)
    items = [ds[int(i)] for i in idx]
    return [collate_events(items[i:i + batch_size], tok, model.cfg)
            for i in range(0, len(items), batch_size)]


def to_sample(model: WallWM, b: WorldActionBatch, seed: int) -> Sample:
    """The encoder feed of a batch with noise drawn from `seed` (video first, then actions)."""
    g = torch.Generator().manual_seed(seed)
    xv, xa = model.draw_noise(b, b.mode, g)
    et = b.event_type if b.event_type is not None else torch.full((b.batch_size,), -1)
    feed = {"obs": b.obs.numpy().astype(np.float32), "text_ids": b.text_ids.numpy(),
            "text_mask": b.text_mask.numpy().astype(bool),
            "state": model.norm.state(b.state).detach().numpy().astype(np.float32),
            "event_type": et.numpy().astype(np.int64),
            "abs_time": b.abs_time.numpy().astype(np.float32),
            "video_noise": xv.numpy().astype(np.float32)}
    La = xa.shape[1]
    valid = np.zeros((b.batch_size, La), bool)
    if b.action_mask is not None:
        n = min(La, b.action_mask.shape[1])
        valid[:, :n] = b.action_mask[:, :n].numpy()
    return Sample(b.mode, b, feed, xa.numpy().astype(np.float32), valid)


def samples(build_dir: Path, model: WallWM, tokenizer: Path | str, vocabulary: list[str],
            mode: str, split: str, n_batches: int, batch_size: int, seed: int) -> list[Sample]:
    return [to_sample(model, b, seed + 7919 * i) for i, b in enumerate(
        batches(build_dir, model, tokenizer, vocabulary, mode, split, n_batches, batch_size))]


def feature_names(build_dir: Path, key: str, dim: int) -> list[str]:
    """Per-dimension names of a feature from the first robot dataset of the build that has
    them (LeRobot `info.json` `names`), else `<key>.<i>`."""
    for info in sorted(Path(build_dir).glob("t*/*/meta/info.json")):
        feat = json.loads(info.read_text()).get("features", {}).get(key, {})
        names: Any = feat.get("names")
        if isinstance(names, dict):  # LeRobot v2 style {"motors": [...]}
            names = next(iter(names.values()), None)
        if isinstance(names, list) and len(names) == dim and all(isinstance(n, str)
                                                                  for n in names):
            return list(names)
    return [f"{key}.{i}" for i in range(dim)]


def to_uint8_images(obs: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B, V, 3, H, W) in [-1, 1] -> (B, V, H, W, 3) uint8: the raw frames a robot would send
    (exact for frames decoded at the model's size; the runner maps them back by x/127.5 - 1)."""
    x = np.asarray(obs, np.float32)
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 1, 3, 4, 2)
