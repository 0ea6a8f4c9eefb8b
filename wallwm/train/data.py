"""From a dataset build folder to `WorldActionBatch`es: items, collation, the Lightning data module.

Why it looks the way it does:

* One item per **action event** (event mode) or per **frame** (unified mode) of the episodes of
  one split; with `train.event_stride` = s the train split also has an item every s frames
  inside each event: the rest of the event from there (the closed loop replans mid-event with
  the same caption, which event starts alone never show the model); these items share their
  event's id, and the balanced sampler splits the event's probability over them
  (`sampling_groups`), so long events are not drawn more often. Splits are by episode
  (`splits.json` / `episodes.parquet`), never by frame, so no frame of a validation episode is
  ever trained on; `resolve_splits` asserts it.
* Items decode only the frames they need (`decode_at` on the episode's video segment, the same
  seek `LeRobotReader.decode_frames` does) and keep readers and the small per-episode arrays
  (state, action, timestamps, moving-camera poses) cached **per worker process**: the caches
  are dropped when the dataset is pickled into a worker, so no file handle is shared.
* Event boundaries, captions and labels come from `<dataset>/meta/annotations.jsonl`; the j-th
  action row (with end > start) of an episode is event `"<tier>/<name>/<episode>/<j>"`, the id
  the build's `clusters/events.parquet` uses, so cluster ids join by id.
* The caption drop is a pure function of (seed, epoch, event id) (`CaptionDropper`). The train
  sampler yields `(index, epoch)` pairs, so the epoch reaches every worker with the index
  itself (a persistent worker never holds a stale epoch).
* Order is reproducible: the cluster-balanced sampler draws from (seed, epoch) only; Lightning
  calls its `set_epoch` at every epoch start. Run the Trainer with
  `use_distributed_sampler=False`: the sampler shards by rank itself, and Lightning's own
  replacement would shard a second time (`train_dataloader` raises if it is left on with
  more than one rank).
* Packing (`collate_events(pack=True)`): `WallWM` keeps packed events apart only inside the
  action tower's self-attention (block-diagonal `segment_ids`, positions restarting per
  event); everything else is per **row**: obs, future, text, event type, state, cameras,
  abs_time and the video features the action tower reads. So a packed row carries the context
  of its first event, and the other events in it are trained against that context. This is
  exact only for events that share their context; with distinct events it is an
  approximation, which is why `pack` is off by default.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from wallwm.data.caption_drop import CaptionDropper
from wallwm.data.episode import EXTRINSICS_PREFIX, CameraSpec
from wallwm.data.lerobot import LeRobotReader
from wallwm.data.lerobot.reader import column_to_numpy
from wallwm.data.lerobot.video import decode_at
from wallwm.data.packing import PackedBatch
from wallwm.data.packing import pack as ffd_pack
from wallwm.data.sampling import ClusterBalancedSampler
from wallwm.data.tokenizer import SEP, encode_batch, load_tokenizer
from wallwm.model.batch import WorldActionBatch
from wallwm.model.config import WallWMConfig

log = logging.getLogger(__name__)

VAL_FALLBACK_FRACTION = 0.1
STATE_KEY, ACTION_KEY = "observation.state", "action"
_LEVEL_ORDER = {"task": 0, "subtask": 1, "action": 2, "segment": 3}
_LOWDIM_CACHE = 256  # episodes of small arrays kept per worker


# ---------------------------------------------------------------------- index of the build
def resolve_splits(build_dir: Path | str) -> pd.DataFrame:
    """episodes.parquet with a `split` column that is final: from splits.json when present;
    asserts no episode is in both; an empty val split is filled with a fixed 10% (at least
    one) of the train episodes, chosen by a hash of the episode key."""
    build = Path(build_dir)
    eps = pd.read_parquet(build / "episodes.parquet").copy()
    sp = build / "splits.json"
    if sp.exists():
        splits = json.loads(sp.read_text())
        train, val = set(splits.get("train", [])), set(splits.get("val", []))
        both = train & val
        if both:
            raise ValueError(f"{sp}: {len(both)} episode(s) in both train and val, e.g. "
                             f"{sorted(both)[:3]}")
        known = eps.episode_key.isin(train | val)
        eps.loc[known, "split"] = np.where(eps.episode_key[known].isin(val), "val", "train")
    if not (eps.split == "val").any():
        train_keys = sorted(eps.episode_key[eps.split == "train"])
        if len(train_keys) >= 2:
            n = max(1, round(VAL_FALLBACK_FRACTION * len(train_keys)))
            chosen = sorted(train_keys, key=lambda k: hashlib.sha256(k.encode()).hexdigest())[:n]
            eps.loc[eps.episode_key.isin(chosen), "split"] = "val"
            log.warning("%s: the val split is empty; using %d of %d train episodes (a fixed "
                        "10%% by hash of the episode key) as val: %s", build, n,
                        len(train_keys), chosen)
    dup = eps.groupby("episode_key").split.nunique()
    assert not (dup > 1).any(), f"episodes in two splits: {list(dup[dup > 1].index)[:3]}"
    return eps


@dataclass(frozen=True)
class Ann:
    """One annotation row of an episode: [start, end) frames, label, caption, level."""

    level: str
    label: str
    caption: str
    start: int
    end: int


@dataclass(frozen=True)
class Ref:
    """What one item reads: an event (event mode) or a frame t (unified mode) of an episode."""

    dataset: str  # "<tier>/<name>"
    episode: int
    length: int  # episode length (frames)
    fps: float
    task: str
    start: int  # event start, or t
    end: int  # event end (exclusive), or t + 1
    event_id: str = ""
    label: str = ""
    caption: str = ""
    offset: int = 0  # event mode: the observation frame is start + offset (a suffix item)


def read_annotations(path: Path) -> dict[int, list[Ann]]:
    """episode index -> its annotation rows in file order (the order event ids count in)."""
    out: dict[int, list[Ann]] = defaultdict(list)
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        out[int(r["episode_index"])].append(Ann(
            str(r.get("level", "action")), str(r.get("label", "")),
            str(r.get("caption") or r.get("label") or ""), int(r["start"]), int(r["end"])))
    return out


def action_events(anns: Sequence[Ann]) -> list[Ann]:
    """The action-level rows with end > start, in file order: event j of the episode."""
    return [a for a in anns if a.level == "action" and a.end > a.start]


def cluster_table(build_dir: Path | str) -> dict[str, int]:
    """event id -> joint cluster id (empty when the build has no clusters/events.parquet)."""
    p = Path(build_dir) / "clusters" / "events.parquet"
    if not p.exists():
        return {}
    t = pd.read_parquet(p, columns=["event_id", "joint_cluster"])
    return {str(k): int(v) for k, v in zip(t.event_id, t.joint_cluster, strict=True)
            if pd.notna(v) and int(v) >= 0}


# ---------------------------------------------------------------------- the dataset
class EventDataset(Dataset):
    """Items of one split of a build; see the module docstring.

    `__getitem__` takes an index or an `(index, epoch)` pair (what the train sampler yields);
    a bare index uses `self.epoch`. An item is a dict (tensors + strings), collated by
    `collate_events`:

        obs (V, 3, H, W) float [-1, 1]; future (V, F, 3, H, W); text str; cot str | None;
        event_type int; state (S,); actions (La, A); action_mask (La,) bool; event_end (La,);
        intrinsics (V, 3, 3); extrinsics (V, T, 4, 4) per frame (observation, then each
        future frame); calibrated (V,) bool; abs_time float;
        mode str; event_id str; caption_kept bool
    """

    def __init__(self, build_dir: Path | str, split: str = "train",
                 cfg: WallWMConfig | None = None, mode: str = "event",
                 caption_drop: CaptionDropper | None = None, epoch: int = 0,
                 vocabulary: Sequence[str] = (), tiers: Sequence[str] | None = None,
                 unified_stride: int = 1, episodes: pd.DataFrame | None = None,
                 event_stride: int = 0) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r}: use 'train' or 'val'")
        if mode not in ("event", "unified"):
            raise ValueError(f"mode={mode!r}: use 'event' or 'unified'")
        if int(event_stride) < 0:
            raise ValueError(f"event_stride={event_stride}: use 0 (event starts only) or a "
                             f"positive frame stride (train.event_stride)")
        self.build = Path(build_dir)
        self.split, self.mode, self.epoch = split, mode, int(epoch)
        self.cfg = cfg or WallWMConfig()
        self.caption_drop = caption_drop
        self.vocab = {str(w): i for i, w in enumerate(vocabulary)}
        eps = resolve_splits(self.build) if episodes is None else episodes
        if tiers is not None:
            eps = eps[eps.tier.isin(list(tiers))]
        eps = eps[eps.split == split]
        self.episode_keys: list[str] = list(eps.episode_key)
        self.refs: list[Ref] = []
        self.anns: dict[tuple[str, int], list[Ann]] = {}
        ann_cache: dict[str, dict[int, list[Ann]]] = {}
        for r in eps.sort_values(["dataset", "episode_index"]).itertuples(index=False):
            ds, ep = str(r.dataset), int(r.episode_index)
            if ds not in ann_cache:
                ann_cache[ds] = read_annotations(self.build / ds / "meta" / "annotations.jsonl")
            anns = ann_cache[ds].get(ep, [])
            self.anns[(ds, ep)] = anns
            base = dict(dataset=ds, episode=ep, length=int(r.length), fps=float(r.fps),
                        task=str(r.task))
            if mode == "event":
                for j, a in enumerate(action_events(anns)):
                    end = min(a.end, int(r.length))
                    if end <= a.start:
                        continue
                    offsets = range(0, end - a.start, int(event_stride)) if event_stride else (0,)
                    self.refs.extend(Ref(**base, start=a.start, end=end,
                                         event_id=f"{ds}/{ep}/{j}", label=a.label,
                                         caption=a.caption, offset=o) for o in offsets)
            else:
                for t in range(0, int(r.length), max(1, int(unified_stride))):
                    self.refs.append(Ref(**base, start=t, end=t + 1))
        self._readers: dict[str, LeRobotReader] = {}
        self._views: dict[str, list[CameraSpec]] = {}
        self._lowdim: OrderedDict[tuple[str, int], dict[str, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.refs)

    def __getstate__(self) -> dict[str, Any]:  # a worker opens its own readers
        s = dict(self.__dict__)
        s["_readers"], s["_views"], s["_lowdim"] = {}, {}, OrderedDict()
        return s

    # ------------------------------------------------------------------ cluster ids
    def sampling_groups(self) -> np.ndarray | None:
        """(N,) event id per item in event mode (the suffix items of one event share it, so
        the balanced sampler draws events, not items); None in unified mode, where every frame
        is its own draw (natural chunk sampling)."""
        if self.mode != "event":
            return None
        return np.array([r.event_id for r in self.refs], dtype=object)

    def cluster_ids(self, table: dict[str, int]) -> np.ndarray:
        """(N,) int64 joint cluster per item. Events missing from `table` get a cluster of
        their own; unified frames take the cluster of the action event covering them, and
        frames outside every event share one extra cluster."""
        nxt = max(table.values(), default=-1) + 1
        out = np.empty(len(self.refs), np.int64)
        uncovered = None
        for i, r in enumerate(self.refs):
            eid = r.event_id
            if self.mode == "unified":
                evs = action_events(self.anns.get((r.dataset, r.episode), []))
                j = next((k for k, a in enumerate(evs) if a.start <= r.start < a.end), None)
                eid = "" if j is None else f"{r.dataset}/{r.episode}/{j}"
                if j is None:
                    if uncovered is None:
                        uncovered, nxt = nxt, nxt + 1
                    out[i] = uncovered
                    continue
            if eid in table:
                out[i] = table[eid]
            else:
                out[i], nxt = nxt, nxt + 1
        return out

    # ------------------------------------------------------------------ readers and caches
    def reader(self, dataset: str) -> LeRobotReader:
        if dataset not in self._readers:
            self._readers[dataset] = LeRobotReader(self.build / dataset)
        return self._readers[dataset]

    def views(self, dataset: str) -> list[CameraSpec]:
        """The dataset's first cfg.views cameras in sorted key order."""
        if dataset not in self._views:
            cams = self.reader(dataset).cameras()
            keys = sorted(cams)
            if len(keys) < self.cfg.views:
                raise ValueError(
                    f"dataset {dataset}: {len(keys)} camera(s) {keys}; the model needs "
                    f"views={self.cfg.views} (model.presets.<preset>.views)")
            self._views[dataset] = [cams[k] for k in keys[: self.cfg.views]]
        return self._views[dataset]

    def lowdim(self, dataset: str, episode: int) -> dict[str, np.ndarray]:
        """timestamp (T,), state (T, S) | absent, action (T, A) | absent, and each moving
        camera's extrinsics (T, 16): the small arrays of one episode, LRU-cached."""
        key = (dataset, episode)
        hit = self._lowdim.get(key)
        if hit is not None:
            self._lowdim.move_to_end(key)
            return hit
        rd = self.reader(dataset)
        feats = rd.features
        cols = ["timestamp"] + [c for c in (STATE_KEY, ACTION_KEY) if c in feats]
        cols += [EXTRINSICS_PREFIX + c.name for c in self.views(dataset)
                 if c.moving and EXTRINSICS_PREFIX + c.name in feats]
        t = rd.read_rows(episode, cols)
        out = {c: column_to_numpy(t.column(c)) for c in cols}
        self._lowdim[key] = out
        if len(self._lowdim) > _LOWDIM_CACHE:
            self._lowdim.popitem(last=False)
        return out

    def frames(self, dataset: str, episode: int, idx: Sequence[int]) -> Tensor:
        """(V, N, 3, H, W) float [-1, 1] at frame indices `idx`, resized to cfg.image_size."""
        rd, arrays = self.reader(dataset), self.lowdim(dataset, episode)
        ts = arrays["timestamp"].astype(np.float64)
        out = []
        for cam in self.views(dataset):
            path, start, _ = rd.video_segment(cam.key, episode)
            img = decode_at(path, [start + float(ts[i]) for i in idx], rd.tolerance_s)
            out.append(_to_model_image(img, self.cfg.image_size))
        return torch.stack(out)

    def cameras(self, dataset: str, episode: int, frames: Sequence[int]
                ) -> tuple[Tensor, Tensor, Tensor]:
        """intrinsics (V, 3, 3) in model pixels, extrinsics (V, T, 4, 4) camera-to-world at
        each of `frames` (a moving camera's own pose per frame, a fixed one repeated),
        calibrated (V,); uncalibrated cameras get identities."""
        S, T = self.cfg.image_size, len(frames)
        arrays = self.lowdim(dataset, episode)
        ks, es, cal = [], [], []
        for cam in self.views(dataset):
            k, e = np.eye(3), np.tile(np.eye(4), (T, 1, 1))
            ok = cam.intrinsics is not None
            if ok:
                k = _scale_intrinsics(np.asarray(cam.intrinsics, np.float64), cam.width,
                                      cam.height, S)
            if cam.moving:
                feat = arrays.get(EXTRINSICS_PREFIX + cam.name)
                ok = ok and feat is not None
                if feat is not None:
                    e = np.stack([np.asarray(feat[f], np.float64).reshape(4, 4)
                                  for f in frames])
            elif cam.extrinsics is not None:
                e = np.tile(np.asarray(cam.extrinsics, np.float64), (T, 1, 1))
            else:
                ok = False
            ok = ok and bool(np.isfinite(k).all() and np.isfinite(e).all())
            if not ok:
                k, e = np.eye(3), np.tile(np.eye(4), (T, 1, 1))
            ks.append(k)
            es.append(e)
            cal.append(ok)
        return (torch.tensor(np.stack(ks), dtype=torch.float32),
                torch.tensor(np.stack(es), dtype=torch.float32), torch.tensor(cal))

    # ------------------------------------------------------------------ items
    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        idx, epoch = (key if isinstance(key, tuple) else (key, self.epoch))
        r = self.refs[int(idx)]
        return self._event(r, int(epoch)) if self.mode == "event" else self._unified(r)

    def _state_actions(self, r: Ref, lo: int, hi: int) -> tuple[Tensor, Tensor, bool]:
        """state at `lo` (S,), actions [lo, hi) (n, A), and whether the dataset has actions."""
        cfg, a = self.cfg, self.lowdim(r.dataset, r.episode)
        state = a.get(STATE_KEY)
        act = a.get(ACTION_KEY)
        for name, x, dim in ((STATE_KEY, state, cfg.state_dim), (ACTION_KEY, act, cfg.action_dim)):
            if x is not None and x.reshape(len(x), -1).shape[1] != dim:
                raise ValueError(f"dataset {r.dataset}: {name} has dim "
                                 f"{x.reshape(len(x), -1).shape[1]}; the model expects {dim}")
        s = torch.zeros(cfg.state_dim) if state is None else torch.as_tensor(
            np.asarray(state[lo], np.float32).reshape(-1))
        n = max(0, hi - lo)
        acts = torch.zeros(n, cfg.action_dim) if act is None else torch.as_tensor(
            np.asarray(act[lo:hi], np.float32).reshape(n, -1))
        return s, acts, act is not None

    def _event(self, r: Ref, epoch: int) -> dict[str, Any]:
        """The event from frame t = start + offset: observation and state at t, the actions of
        [t, end) (at most max_event_len), the boundary frame end - 1 and the end flag. A suffix
        item (offset > 0) is the question the receding-horizon loop asks mid-event: the same
        caption and boundary, the rest of the event. The caption drop is per event (its id and
        full length), so all of an event's items agree."""
        cfg = self.cfg
        t = r.start + r.offset
        L_ev = r.end - r.start
        La = min(r.end - t, cfg.max_event_len)
        f = self.frames(r.dataset, r.episode, [t, r.end - 1])  # (V, 2, 3, H, W)
        state, acts, has = self._state_actions(r, t, t + La)
        keep = self.caption_drop is None or self.caption_drop.keep(r.event_id, L_ev, epoch)
        etype = self.vocab.get(r.label, -1)
        if etype >= cfg.event_types:
            etype = -1
        end = torch.zeros(La)
        if La == r.end - t:  # a truncated event does not end inside its window
            end[-1] = 1.0
        k, e, cal = self.cameras(r.dataset, r.episode, [t, r.end - 1])
        return dict(
            obs=f[:, 0], future=f[:, 1:2], text=r.caption if keep else "", cot=None,
            # caption-free means vision-only: the event type would leak what the caption said
            event_type=etype if keep else -1,
            state=state, actions=acts, action_mask=torch.full((La,), has), event_end=end,
            intrinsics=k, extrinsics=e, calibrated=cal, abs_time=t / r.fps,
            mode="event", event_id=r.event_id, caption_kept=keep)

    def _unified(self, r: Ref) -> dict[str, Any]:
        cfg, t, T = self.cfg, r.start, r.length
        H, Fn = cfg.action_horizon, cfg.frames
        # cfg.frames future frames evenly up to t + H (the last one), clamped to the episode
        fut = [min(t + round(H * (k + 1) / Fn), T - 1) for k in range(Fn)]
        f = self.frames(r.dataset, r.episode, [t, *fut])  # (V, 1 + F, 3, H, W)
        state, acts, has = self._state_actions(r, t, min(t + H, T))
        n = acts.shape[0]
        actions = torch.zeros(H, cfg.action_dim)
        actions[:n] = acts
        mask = torch.zeros(H, dtype=torch.bool)
        mask[:n] = has
        k, e, cal = self.cameras(r.dataset, r.episode, [t, *fut])
        return dict(
            obs=f[:, 0], future=f[:, 1:], text=r.task,
            cot=cot_text(self.anns.get((r.dataset, r.episode), []), t, H),
            event_type=-1, state=state, actions=actions, action_mask=mask,
            event_end=torch.zeros(H), intrinsics=k, extrinsics=e, calibrated=cal,
            abs_time=t / r.fps, mode="unified", event_id=f"{r.dataset}/{r.episode}@{t}",
            caption_kept=True)


def cot_text(anns: Sequence[Ann], t: int, horizon: int) -> str:
    """The chain-of-thought text of the chunk [t, t + horizon): the captions of the subtask and
    action rows that overlap it, in time order (a subtask before its actions), `<sep>`-joined."""
    cover = sorted((a for a in anns
                    if a.level in ("subtask", "action") and a.start < t + horizon and a.end > t),
                   key=lambda a: (a.start, _LEVEL_ORDER[a.level]))
    return SEP.join(a.caption for a in cover)


def _to_model_image(img: np.ndarray, size: int) -> Tensor:
    """uint8 (N, h, w, 3) -> float (N, 3, size, size) in [-1, 1] (bilinear, antialiased)."""
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    return (x / 127.5 - 1.0).clamp(-1, 1)


def _scale_intrinsics(k: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """K of a (height, width) image -> K of its resize to (size, size) (pixel centers kept)."""
    sx, sy = size / width, size / height
    k = k.copy()
    k[0, 0], k[0, 1], k[0, 2] = k[0, 0] * sx, k[0, 1] * sx, (k[0, 2] + 0.5) * sx - 0.5
    k[1, 1], k[1, 2] = k[1, 1] * sy, (k[1, 2] + 0.5) * sy - 0.5
    return k


# ---------------------------------------------------------------------- collation
def collate_events(items: Sequence[dict[str, Any]], tokenizer: Any, cfg: WallWMConfig,
                   pack: bool = False, pack_capacity: int | None = None) -> WorldActionBatch:
    """Items -> one `WorldActionBatch`.

    Unpacked: actions padded to the batch's longest (`action_mask` False on padding).
    `pack=True` (event mode): whole events first-fit-decreasing into rows of `pack_capacity`
    steps (default: the longest event, at least cfg.max_event_len), with `segment_ids` /
    `position_ids`; each row takes obs, future, text, state, cameras and time from its first
    event, the only form `WallWM` supports (see the module docstring)."""
    if not items:
        raise ValueError("collate_events: no items")
    modes = {it["mode"] for it in items}
    if len(modes) != 1:
        raise ValueError(f"collate_events: mixed modes {sorted(modes)}")
    mode = modes.pop()
    if pack and mode != "event":
        raise ValueError("collate_events: pack=True is for event mode only (unified chunks "
                         "all have action_horizon steps)")
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
    lengths = [int(it["actions"].shape[0]) for it in items]
    seg = pos = None
    if pack:
        cap = int(pack_capacity or max(cfg.max_event_len, max(lengths)))
        bins = ffd_pack(lengths, cap)
        rows = [items[b[0]] for b in bins]

        def lay(key: str, pad: float | bool) -> Tensor:
            return PackedBatch.build([it[key] for it in items], bins, cap, pad).tokens

        pb = PackedBatch.build([torch.arange(n) for n in lengths], bins, cap, -1)
        seg, pos = pb.segment_ids, pb.position_ids
        actions, mask, end = lay("actions", 0.0), lay("action_mask", False), lay("event_end", 0.0)
        mask = mask & (seg >= 0)
    else:
        rows = list(items)
        La = max(lengths)
        B = len(items)
        actions = torch.zeros(B, La, cfg.action_dim)
        mask = torch.zeros(B, La, dtype=torch.bool)
        end = torch.zeros(B, La)
        for i, it in enumerate(items):
            n = lengths[i]
            actions[i, :n], mask[i, :n], end[i, :n] = it["actions"], it["action_mask"], \
                it["event_end"]
    ids, tmask = encode_batch(tok, [it["text"] for it in rows], cfg.max_text_len)
    cot_ids = cot_mask = None
    if mode == "unified":
        c_ids, c_mask = encode_batch(tok, [it["cot"] or "" for it in rows], cfg.max_text_len)
        cot_ids, cot_mask = torch.from_numpy(c_ids), torch.from_numpy(c_mask)

    def stack(key: str) -> Tensor:
        return torch.stack([it[key] for it in rows])

    return WorldActionBatch(
        obs=stack("obs"), future=stack("future"),
        text_ids=torch.from_numpy(ids), text_mask=torch.from_numpy(tmask),
        state=stack("state"), intrinsics=stack("intrinsics"), extrinsics=stack("extrinsics"),
        calibrated=stack("calibrated"),
        abs_time=torch.tensor([float(it["abs_time"]) for it in rows], dtype=torch.float32),
        mode=mode, event_type=torch.tensor([int(it["event_type"]) for it in rows]),
        actions=actions, action_mask=mask, event_end=end, cot_ids=cot_ids, cot_mask=cot_mask,
        segment_ids=seg, position_ids=pos)


class EventCollator:
    """A picklable `collate_fn`: loads the build's tokenizer once per process."""

    def __init__(self, tokenizer_path: Path | str, cfg: WallWMConfig, pack: bool = False,
                 pack_capacity: int | None = None) -> None:
        self.path, self.cfg, self.pack, self.cap = str(tokenizer_path), cfg, pack, pack_capacity
        self._tok: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tok": None}

    def __call__(self, items: Sequence[dict[str, Any]]) -> WorldActionBatch:
        if self._tok is None:
            self._tok = load_tokenizer(self.path)
        return collate_events(items, self._tok, self.cfg, self.pack, self.cap)


# ---------------------------------------------------------------------- sampling
class EpochClusterSampler(ClusterBalancedSampler):
    """`ClusterBalancedSampler` that yields `(index, epoch)`: the caption drop in the workers
    sees the epoch that drew the index. Lightning calls `set_epoch` at each epoch start."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        share = self.global_draw()[self.rank :: self.num_replicas]
        return iter([(int(i), self.epoch) for i in share])


# ---------------------------------------------------------------------- Lightning
class WallWMDataModule(L.LightningDataModule):
    """Train/val loaders of a build for one mode.

    Train: cluster-balanced (`params.train.balance_temperature`, seed `params.project.seed`),
    with caption drop (`params.data.caption_drop`), `params.train.val_every` batches per epoch
    per rank (a checkpoint per epoch, so a resumed run sees the same order). Val: the val split
    in order, no drop, no balancing, event starts only (`train.event_stride` strides the train
    split alone, so validation figures stay comparable across strides). Needs
    `Trainer(use_distributed_sampler=False)`.
    """

    def __init__(self, build_dir: Path | str, params: Any, mode: str = "event",
                 tiers: Sequence[str] | None = None, num_workers: int = 0,
                 unified_stride: int = 1, pack: bool = False,
                 batches_per_epoch: int | None = None) -> None:
        super().__init__()
        self.build_dir, self.params, self.mode = Path(build_dir), params, mode
        self.tiers = None if tiers is None else tuple(tiers)
        self.num_workers, self.unified_stride, self.pack = num_workers, unified_stride, pack
        self.batch_size = int(params.train.batch_size)
        self.batches_per_epoch = int(batches_per_epoch or params.train.val_every)
        self.cfg = WallWMConfig.from_params(params)
        self.train_set: EventDataset | None = None
        self.val_set: EventDataset | None = None
        self.train_sampler: EpochClusterSampler | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        d = self.params.data
        cd = d.caption_drop
        eps = resolve_splits(self.build_dir)
        common = dict(cfg=self.cfg, mode=self.mode, vocabulary=d.annotate.vocabulary,
                      tiers=self.tiers, unified_stride=self.unified_stride, episodes=eps)
        self.train_set = EventDataset(
            self.build_dir, "train", caption_drop=CaptionDropper(
                cd.seed, cd.lo, cd.hi, cd.short_frames, cd.long_frames),
            event_stride=int(self.params.train.event_stride), **common)
        self.val_set = EventDataset(self.build_dir, "val", caption_drop=None, **common)
        if len(self.train_set) == 0:
            raise ValueError(f"{self.build_dir}: no {self.mode} items in the train split"
                             + (f" of tiers {list(self.tiers)}" if self.tiers else ""))
        if len(self.val_set) == 0:
            log.warning("%s: no val items; validating on the train split (no drop)",
                        self.build_dir)
            self.val_set = EventDataset(self.build_dir, "train", caption_drop=None, **common)
        overlap = set(self.train_set.episode_keys) & set(self.val_set.episode_keys)
        assert self.val_set.split == "train" or not overlap, f"split overlap: {overlap}"
        self.cluster_ids = self.train_set.cluster_ids(cluster_table(self.build_dir))
        self.sampling_groups = self.train_set.sampling_groups()

    def _collator(self) -> EventCollator:
        return EventCollator(self.build_dir / "tokenizer.json", self.cfg, pack=self.pack,
                             pack_capacity=int(self.params.train.pack_length) if self.pack
                             else None)

    def _world(self) -> tuple[int, int]:
        tr = getattr(self, "trainer", None)
        if tr is None:
            return 1, 0
        world, rank = int(tr.world_size), int(tr.global_rank)
        conn = getattr(tr, "_accelerator_connector", None)
        if world > 1 and getattr(conn, "use_distributed_sampler", False):
            raise RuntimeError("WallWMDataModule shards by rank itself: build the Trainer "
                               "with use_distributed_sampler=False")
        return world, rank

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.train_set is not None
        world, rank = self._world()
        self.train_sampler = EpochClusterSampler(
            self.cluster_ids, float(self.params.train.balance_temperature),
            num_samples=self.batches_per_epoch * self.batch_size * world,
            seed=int(self.params.project.seed), num_replicas=world, rank=rank,
            group_ids=self.sampling_groups)
        tr = getattr(self, "trainer", None)
        if tr is not None:
            self.train_sampler.set_epoch(int(tr.current_epoch))
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=self.train_sampler,
                          collate_fn=self._collator(), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def set_epoch(self, epoch: int) -> None:
        """For loops without Lightning (Lightning calls the sampler's set_epoch itself)."""
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        assert self.val_set is not None
        world, rank = self._world()
        idx = list(range(rank, len(self.val_set), world))  # each rank a disjoint share
        return DataLoader(torch.utils.data.Subset(self.val_set, idx), batch_size=self.batch_size,
                          shuffle=False, collate_fn=self._collator(),
                          num_workers=self.num_workers)


class MixedDataModule(L.LightningDataModule):
    """Both modes on one set of weights: every train step yields {"event": batch, "unified":
    batch} (Lightning's `CombinedLoader`, the shorter loader cycling), validation runs both
    val loaders (dataloader 0 event, 1 unified)."""

    def __init__(self, build_dir: Path | str, params: Any, tiers: Sequence[str] | None = None,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.parts = {m: WallWMDataModule(build_dir, params, mode=m, tiers=tiers,
                                          num_workers=num_workers)
                      for m in ("event", "unified")}
        self.build_dir, self.params = Path(build_dir), params

    def _share_trainer(self) -> None:
        for part in self.parts.values():
            part.trainer = getattr(self, "trainer", None)

    def setup(self, stage: str | None = None) -> None:
        self._share_trainer()
        for part in self.parts.values():
            part.setup(stage)

    def train_dataloader(self) -> Any:
        from lightning.pytorch.utilities import CombinedLoader

        self._share_trainer()
        return CombinedLoader({m: p.train_dataloader() for m, p in self.parts.items()},
                              mode="max_size_cycle")

    def val_dataloader(self) -> list[DataLoader]:
        self._share_trainer()
        return [self.parts["event"].val_dataloader(), self.parts["unified"].val_dataloader()]


def data_module(build_dir: Path | str, params: Any, mode: str,
                tiers: Sequence[str] | None = None) -> L.LightningDataModule:
    """The data module of a stage's mode ("event", "unified" or "mixed")."""
    if mode == "mixed":
        return MixedDataModule(build_dir, params, tiers=tiers)
    return WallWMDataModule(build_dir, params, mode=mode, tiers=tiers)


__all__ = ["EpochClusterSampler", "EventCollator", "EventDataset", "MixedDataModule",
           "WallWMDataModule", "collate_events", "cot_text", "data_module", "resolve_splits"]
