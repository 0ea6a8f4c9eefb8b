"""Build-level event products, made once every episode is written:

* `meta/annotations.jsonl` per dataset (Task -> Subtask -> Action -> Segment, every row with
  `source_id`, `episode_index`, frame range, label, caption, signal, origin);
* `tokenizer.json`: a BPE tokenizer trained on the build's captions and instructions;
* `clusters/events.parquet`: per action event the vision-language and action embeddings, the two
  cluster ids and the joint cluster id (the sampler balances on it);
* `figures/*.png` and a `report` for the manifest: annotation score against ground truth, the
  balance of episodes vs events and of the sampled stream with and without balancing, and
  the padding of packed vs one-event-per-row batches.

It keeps only thumbnails-sized boundary frames and short paths per event, so memory grows with
the number of events, not with the videos.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wallwm.config.schema import DataParams
from wallwm.data.annotate import score_many, to_rows
from wallwm.data.balance import cluster_size_histogram_png, effective_clusters, normalized_entropy
from wallwm.data.cluster import EventSample, TextEncoder, cluster, dual_cluster, frame_features
from wallwm.data.episode import Episode, Event
from wallwm.data.packing import pack, padding_fraction, unpacked_padding_fraction
from wallwm.data.sampling import ClusterBalancedSampler
from wallwm.data.tokenizer import save_tokenizer, train_tokenizer
from wallwm.util.atomic import atomic_write_text

PACK_TOKENS_PER_FRAME = 8  # tokens an action-stream event spends per frame, for the packing report
PACK_CAPACITY = 256


@dataclass
class EventCollector:
    """What the assembler hands over per accepted episode (small: no videos)."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # dataset -> rows
    samples: list[EventSample] = field(default_factory=list)
    sample_dataset: list[str] = field(default_factory=list)
    episode_texts: list[str] = field(default_factory=list)
    episode_frames: list[np.ndarray] = field(default_factory=list)  # (2, h, w, 3) first/last
    texts: list[str] = field(default_factory=list)
    scored: list[tuple[list[Event], list[Event]]] = field(default_factory=list)
    time_sync: list[dict] = field(default_factory=list)

    def add(self, dataset: str, index: int, ep: Episode, events: list[Event],
            report: dict[str, Any]) -> None:
        self.rows.setdefault(dataset, []).extend(to_rows(ep.source_id, index, events))
        frames = _frames(ep)
        state = ep.features.get("observation.state")
        self.episode_texts.append(ep.task)
        self.episode_frames.append(np.stack([frames[0], frames[-1]]))
        self.texts.append(ep.task)
        self.texts.extend(e.caption for e in events if e.caption)
        for j, e in enumerate(x for x in events if x.level == "action" and x.end > x.start):
            if state is not None and len(state) == ep.length:
                path, grip = state[e.start : e.end, :3], state[e.start : e.end, 3]
            else:  # video tiers: no trajectory; they share one "no motion" action cluster
                path, grip = np.zeros((2, 3), np.float32), np.zeros(2, np.float32)
            self.samples.append(EventSample(
                event_id=f"{dataset}/{index}/{j}", caption=e.caption or e.label,
                start_frame=frames[e.start], end_frame=frames[e.end - 1],
                ee_path=np.asarray(path, np.float32), gripper=np.asarray(grip, np.float32),
                label=e.label))
            self.sample_dataset.append(dataset)
        truth = [e for e in ep.ground_truth if e.level == "action"]
        if truth:
            self.scored.append(([e for e in events if e.level == "action"], truth))
        if "time_sync" in report:
            self.time_sync.append({"source_id": ep.source_id, **(report["time_sync"] or {})})


def _frames(ep: Episode, size: int = 32) -> np.ndarray:
    """The first camera's frames, downsampled to at most `size` px (boundary thumbnails)."""
    key = sorted(ep.videos)[0]
    src = ep.videos[key]
    frames = src if isinstance(src, np.ndarray) else np.stack(list(ep.frames_of(key)))
    step = max(1, int(np.ceil(max(frames.shape[1:3]) / size)))
    return np.ascontiguousarray(frames[:, ::step, ::step])


def _balance(counts: np.ndarray) -> dict[str, float]:
    return {"normalized_entropy": round(normalized_entropy(counts), 4),
            "effective_clusters": round(effective_clusters(counts), 3), "clusters": int(len(counts))}


def _counts(labels: np.ndarray, k: int | None = None) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=k or 0)


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _shared_counts(a: np.ndarray, b: np.ndarray, k_range: tuple[int, int],
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the rows of `a` and `b` together; each set's counts over the same clusters."""
    x = np.concatenate([a, b], 0).astype(np.float32)
    hi = max(2, min(k_range[1], len(x) - 1))
    labels, k, _ = cluster(x, k=None, k_range=(min(k_range[0], hi), hi), seed=seed)
    return _counts(labels[: len(a)], k), _counts(labels[len(a):], k)


def enrich(root: Path, c: EventCollector, p: DataParams) -> dict[str, Any]:
    """Write the event products into the build at `root`; return the manifest's `events` report."""
    report: dict[str, Any] = {}
    for dataset, rows in c.rows.items():
        path = root / dataset / "meta" / "annotations.jsonl"
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    levels = Counter(r["level"] for rows in c.rows.values() for r in rows)
    report["annotations"] = {"events_per_level": dict(levels),
                             "human_events": sum(r.get("origin") == "human"
                                                 for rows in c.rows.values() for r in rows)}
    if c.scored:
        s = score_many(c.scored, tolerance=p.annotate.tolerance_frames)
        report["annotations"]["score_vs_ground_truth"] = {
            "tolerance_frames": p.annotate.tolerance_frames, "episodes": s["episodes"],
            "boundary_f1": round(s["boundary_f1"], 4),
            "boundary_precision": round(s["boundary_precision"], 4),
            "boundary_recall": round(s["boundary_recall"], 4),
            "label_accuracy": round(s["label_accuracy"], 4),
            "per_label": s["per_label"],
        }
    if c.time_sync:
        report["time_sync"] = c.time_sync

    tok = train_tokenizer(c.texts, vocab_size=p.tokenizer_vocab)
    save_tokenizer(tok, root / "tokenizer.json")
    report["tokenizer"] = {"vocab_size": tok.get_vocab_size(), "texts": len(c.texts)}

    if len(c.samples) >= 2:
        report["clusters"] = _clusters(root, c, p)
        report["packing"] = _packing(c)
    return report


def _clusters(root: Path, c: EventCollector, p: DataParams) -> dict[str, Any]:
    cp = p.clusters
    k_hi = max(2, min(cp.k_range[1], len(c.samples) - 1))
    k_range = (min(cp.k_range[0], k_hi), k_hi)
    encoder = TextEncoder()
    df = dual_cluster(c.samples, k_vl=cp.k_vl, k_action=cp.k_action, k_range=k_range,
                      seed=cp.seed, encoder=encoder)
    info = df.attrs.get("clustering", {})
    df.insert(1, "dataset", c.sample_dataset)
    df.insert(2, "caption", [s.caption for s in c.samples])
    (root / "clusters").mkdir(exist_ok=True)
    df.to_parquet(root / "clusters" / "events.parquet", index=False)

    # The paper's claim on our data: events are more balanced units than whole episodes. Both
    # unit kinds are clustered in ONE shared space (same k), so their distributions over the same
    # clusters are comparable (normalized entropy over the same K).
    ep_text = encoder.encode(c.episode_texts)
    ev_text = encoder.encode([s.caption for s in c.samples])
    shared_lang = _shared_counts(ep_text, ev_text, k_range, cp.seed)
    ep_frames = np.concatenate([frame_features(np.stack([f[0] for f in c.episode_frames])),
                                frame_features(np.stack([f[1] for f in c.episode_frames]))], 1)
    ev_frames = np.concatenate([frame_features(np.stack([s.start_frame for s in c.samples])),
                                frame_features(np.stack([s.end_frame for s in c.samples]))], 1)
    shared_vl = _shared_counts(np.concatenate([ep_text, 0.5 * _l2(ep_frames)], 1),
                               np.concatenate([ev_text, 0.5 * _l2(ev_frames)], 1), k_range,
                               cp.seed)
    ep_lang, ev_lang = shared_lang
    ep_vl, ev_vl = shared_vl
    joint = df["joint_cluster"].to_numpy()
    n = len(joint)
    natural = ClusterBalancedSampler(joint, temperature=1.0, num_samples=20 * n, seed=cp.seed)
    balanced = ClusterBalancedSampler(joint, temperature=cp.sample_temperature,
                                      num_samples=20 * n, seed=cp.seed)
    k_joint = int(joint.max()) + 1
    nat_counts = np.bincount(joint[np.fromiter(natural, int)], minlength=k_joint)
    bal_counts = np.bincount(joint[np.fromiter(balanced, int)], minlength=k_joint)
    figs = root / "figures"
    figs.mkdir(exist_ok=True)
    cluster_size_histogram_png(nat_counts, bal_counts, figs / "joint_clusters_sampled.png",
                               f"joint clusters: natural vs balanced (τ={cp.sample_temperature})")
    cluster_size_histogram_png(ep_lang, ev_lang, figs / "language_episodes_vs_events.png",
                               "language clusters: episodes (before) vs events (after) as units")
    cluster_size_histogram_png(ep_vl, ev_vl, figs / "vision_language_episodes_vs_events.png",
                               "vision-language clusters: episodes vs events as units")
    return {
        "text_encoder": encoder.name,
        "k_vl": info.get("vl", {}).get("k") if isinstance(info.get("vl"), dict) else None,
        "k_action": info.get("action", {}).get("k") if isinstance(info.get("action"), dict)
        else None,
        "k_joint": k_joint,
        "events": n,
        "balance": {
            "episodes_language": _balance(ep_lang),
            "events_language": _balance(ev_lang),
            "episodes_joint_vl": _balance(ep_vl),
            "events_joint_vl": _balance(ev_vl),
            "events_joint": _balance(_counts(joint)),
            "sampled_natural": _balance(nat_counts),
            "sampled_balanced": _balance(bal_counts),
        },
    }


def _packing(c: EventCollector) -> dict[str, Any]:
    lengths = [int((len(s.ee_path)) * PACK_TOKENS_PER_FRAME) for s in c.samples]
    lengths = [min(x, PACK_CAPACITY) for x in lengths if x > 0]
    bins = pack(lengths, PACK_CAPACITY)
    return {
        "tokens_per_frame": PACK_TOKENS_PER_FRAME, "capacity": PACK_CAPACITY,
        "events": len(lengths), "rows_packed": len(bins),
        "padding_packed": round(padding_fraction(bins, lengths, PACK_CAPACITY), 4),
        "padding_one_per_row": round(unpacked_padding_fraction(lengths, batch_size=16), 4),
    }


