"""Normalization statistics of a build: per-dimension mean and std of actions and proprio state
over the train split's robot episodes (never a validation frame), for `model.norm`.

Why not LeRobot's `meta/stats.json`: it covers every episode of a dataset, the val split
included, and a build may hold several datasets; the model needs one set over exactly the
frames it trains on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wallwm.data.lerobot import LeRobotReader
from wallwm.data.lerobot.reader import column_to_numpy
from wallwm.train.data import ACTION_KEY, STATE_KEY, resolve_splits


def train_split_stats(build_dir: Path | str, action_dim: int, state_dim: int
                      ) -> dict[str, list[float]]:
    """{action_mean, action_std, state_mean, state_std, frames} of the train split.

    Raises ValueError naming the build when no train episode has actions, or when a dataset's
    action/state width differs from the model's."""
    build = Path(build_dir)
    eps = resolve_splits(build)
    eps = eps[eps.split == "train"]
    sums = {k: [] for k in (ACTION_KEY, STATE_KEY)}
    readers: dict[str, LeRobotReader] = {}
    for r in eps.itertuples(index=False):
        ds = str(r.dataset)
        rd = readers.setdefault(ds, LeRobotReader(build / ds))
        cols = [c for c in (ACTION_KEY, STATE_KEY) if c in rd.features]
        if ACTION_KEY not in cols:
            continue  # video-only tiers have nothing to normalize
        t = rd.read_rows(int(r.episode_index), cols)
        for c in cols:
            x = np.asarray(column_to_numpy(t.column(c)), np.float64)
            sums[c].append(x.reshape(len(x), -1))
    if not sums[ACTION_KEY]:
        raise ValueError(f"{build}: no train episode has `{ACTION_KEY}`; the action tower cannot "
                         "be normalized (add a robot tier source to the build)")
    out: dict[str, list[float]] = {}
    for key, name, dim in ((ACTION_KEY, "action", action_dim), (STATE_KEY, "state", state_dim)):
        if not sums[key]:
            out[f"{name}_mean"], out[f"{name}_std"] = [0.0] * dim, [1.0] * dim
            continue
        x = np.concatenate(sums[key])
        if x.shape[1] != dim:
            raise ValueError(f"{build}: `{key}` has {x.shape[1]} dims; the model preset has "
                             f"{name}_dim={dim} (model.presets.<preset>.{name}_dim)")
        out[f"{name}_mean"] = x.mean(0).tolist()
        out[f"{name}_std"] = x.std(0).tolist()
    out["frames"] = [float(sum(len(x) for x in sums[ACTION_KEY]))]
    return out
