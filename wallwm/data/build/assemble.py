"""Turn loaded units into a build folder: validate in batches, write LeRobot v3.0 datasets (one
per tier and source), quarantine what fails, then write splits and the manifest.

Layout of a build::

    <build>/manifest.json            inputs, code, params hash, counts, validation, sha256 of files
    <build>/quarantine.jsonl         one line per rejected episode: check, rule, column, value
                                     (a build where every episode fails raises BuildFailedError
                                     after writing this and a manifest marked failed)
    <build>/episodes.parquet         every accepted episode: key, tier, dataset, index, split, ...
    <build>/splits.json              train / val episode keys (by episode, never by frame)
    <build>/<tier>/<dataset>/        a LeRobot v3.0 dataset
    <build>/gx/                      Great Expectations suites, results and Data Docs
    <build>/tokenizer.json           BPE tokenizer trained on the build's captions + instructions
    <build>/clusters/events.parquet  dual-clustering embeddings and cluster ids per action event
    <build>/figures/*.png            cluster-size histograms (episodes vs events, sampled)
    <build>/<tier>/<dataset>/meta/annotations.jsonl   Task/Subtask/Action/Segment events

Memory stays bounded: at most one validation batch of episodes is held at a time.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from wallwm.data.build.enrich import EventCollector, enrich
from wallwm.data.build.failed import BuildFailedError, reasons, write_failed_records
from wallwm.data.build.plan import BuildPlan, data_params_hash
from wallwm.data.build.units import UnitResult
from wallwm.data.lerobot import LeRobotWriter, features_from_episode
from wallwm.util.atomic import atomic_write_text, sha256_file

# (staging dir, episode table, frame table, run name) -> ({episode key: [failure dicts]}, summary)
Validator = Callable[[Path, pd.DataFrame, pd.DataFrame, str], tuple[dict[str, list[dict]], dict]]


@dataclass
class BuildResult:
    build_id: str
    path: Path
    manifest: dict[str, Any]
    episodes: pd.DataFrame
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False
    timing: dict[str, float] = field(default_factory=dict)  # serial driver work (not in manifest)


def split_of(source_id: str, val_fraction: float) -> str:
    """Stable train/val assignment by episode identity (grows without reshuffling)."""
    u = int(hashlib.sha256(source_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if u < val_fraction else "train"


class _Assembler:
    def __init__(self, plan: BuildPlan, staging: Path, validate: Validator):
        self.plan, self.staging, self.validate = plan, staging, validate
        self.writers: dict[tuple[str, str], LeRobotWriter] = {}
        self.accepted: list[dict[str, Any]] = []
        self.quarantine: list[dict[str, Any]] = []
        self.seen_ids: set[str] = set()
        self.seen_content: set[str] = set()
        self.summaries: list[dict] = []
        self.events = EventCollector()
        self.timing: dict[str, float] = {"validate_seconds": 0.0, "write_seconds": 0.0}
        names = Counter(p.partition(":")[0] for p in plan.specs)
        self.dataset_names = {
            i: (n if names[n] == 1 else f"{n}{i}")
            for i, n in enumerate(p.partition(":")[0] for p in plan.specs)
        }

    def reject(self, res: UnitResult, failure: dict[str, Any]) -> None:
        ident = {**res.identity, **{k: res.row[k] for k in ("source_id", "tier") if k in res.row}}
        self.quarantine.append({
            "episode_key": res.key, "source": res.spec, "unit_id": res.unit_id,
            "source_id": ident.get("source_id", ""), "tier": ident.get("tier", ""),
            **failure,
        })

    def flush(self, batch: list[UnitResult], n: int) -> None:
        if not batch:
            return
        rows = pd.DataFrame([r.row for r in batch])
        frames = pd.concat([r.frames for r in batch], ignore_index=True)
        t0 = time.perf_counter()
        failed, summary = self.validate(self.staging, rows, frames, f"batch-{n:04d}")
        self.timing["validate_seconds"] += time.perf_counter() - t0
        self.summaries.append(summary)
        for res in batch:
            if res.key in failed:
                for f in failed[res.key][:1]:
                    self.reject(res, {"check": "validation", **f})
                continue
            sid, sha = res.row["identity"], res.row["content_sha256"]
            if sid in self.seen_ids or sha in self.seen_content:
                col = "identity" if sid in self.seen_ids else "content_sha256"
                self.reject(res, {"check": "validation", "rule": f"episodes.unique:{col}",
                                  "expectation": "expect_column_values_to_be_unique",
                                  "column": col, "value": res.row[col],
                                  "why": "duplicate of an episode accepted earlier"})
                continue
            self.write(res)
            res.episode = None  # free the frames as soon as they are on disk

    def write(self, res: UnitResult) -> None:
        ep = res.episode
        assert ep is not None
        source_index = int(res.key.partition(":")[0])
        dataset = self.dataset_names[source_index]
        root = self.staging / ep.tier / dataset
        try:
            w = self.writers.get((ep.tier, dataset))
            if w is None:
                fps = round(ep.fps)
                feats = features_from_episode(ep, fps, self.plan.params)
                robot = ep.robot_type or str(ep.extra.get("robot_type", ep.source))
                w = LeRobotWriter.create(root, fps, feats, robot_type=robot, params=self.plan.params)
                self.writers[(ep.tier, dataset)] = w
            elif abs(w.info["fps"] - ep.fps) > 1e-6:
                raise ValueError(f"fps {ep.fps} differs from the dataset's {w.info['fps']}")
            t0 = time.perf_counter()
            index = w.add_episode(ep)
            self.timing["write_seconds"] += time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - the writer left its dataset as it was
            self.reject(res, {"check": "write", "path": str(root), "field": "",
                              "value": type(e).__name__, "message": str(e)})
            return
        self.events.add(f"{ep.tier}/{dataset}", index, ep, res.events, res.event_report)
        self.seen_ids.add(res.row["identity"])
        self.seen_content.add(res.row["content_sha256"])
        self.accepted.append({
            "episode_key": res.key, "tier": ep.tier, "dataset": f"{ep.tier}/{dataset}",
            "episode_index": index, "source": res.spec, "source_id": ep.source_id,
            "task": ep.task, "length": ep.length, "fps": float(ep.fps),
            "split": split_of(ep.source_id, self.plan.params.val_fraction),
        })


def assemble(
    plan: BuildPlan,
    results: Iterable[UnitResult],
    staging: Path,
    validate: Validator,
    batch_size: int = 32,
    progress: Callable[[UnitResult], None] | None = None,
) -> BuildResult:
    """Consume unit results (in plan order) and write the whole build into `staging`."""
    a = _Assembler(plan, staging, validate)
    # the sentence encoder for the build-level clustering loads while the workers simulate
    import threading

    from wallwm.data.cluster import TextEncoder

    warm = threading.Thread(target=TextEncoder, name="warm-text-encoder", daemon=True)
    warm.start()
    batch: list[UnitResult] = []
    n = 0
    for res in results:
        if progress:
            progress(res)
        if res.failure is not None:
            a.reject(res, res.failure)
            continue
        batch.append(res)
        if len(batch) >= batch_size:
            a.flush(batch, n)
            batch, n = [], n + 1
    a.flush(batch, n)
    for w in a.writers.values():
        w.finalize()
    if not a.accepted:
        message = (f"build {plan.build_id}: no episode passed validation "
                   f"({len(a.quarantine)} quarantined; most common: "
                   f"{reasons(a.quarantine).most_common(3)})")
        manifest = write_failed_records(staging, {
            **plan.describe(), "params_hash": data_params_hash(plan.params),
            "params": plan.params.model_dump(mode="json")}, a.quarantine, a.summaries, message)
        raise BuildFailedError(message, build_id=plan.build_id, records=staging,
                               manifest=manifest)
    episodes = pd.DataFrame(a.accepted)
    episodes.to_parquet(staging / "episodes.parquet", index=False)
    splits = {s: episodes.loc[episodes.split == s, "episode_key"].tolist() for s in ("train", "val")}
    atomic_write_text(staging / "splits.json", json.dumps(splits, indent=1))
    atomic_write_text(staging / "quarantine.jsonl",
                      "".join(json.dumps(q, default=str) + "\n" for q in a.quarantine))
    warm.join()
    t_enrich = time.perf_counter()
    events_report = enrich(staging, a.events, plan.params)
    a.timing["enrich_seconds"] = time.perf_counter() - t_enrich
    manifest = _manifest(plan, staging, episodes, a.quarantine, a.summaries, events_report)
    return BuildResult(plan.build_id, staging, manifest, episodes, a.quarantine, timing=a.timing)


def _manifest(plan: BuildPlan, root: Path, episodes: pd.DataFrame, quarantine: list[dict],
              summaries: list[dict], events: dict[str, Any]) -> dict[str, Any]:
    """Deterministic: the same inputs give the same bytes (so data.dvc's md5 reproduces)."""
    per_tier: dict[str, dict[str, int]] = defaultdict(lambda: {"episodes": 0, "frames": 0})
    for tier, g in episodes.groupby("tier"):
        per_tier[str(tier)] = {"episodes": len(g), "frames": int(g.length.sum())}
    files = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and not rel.startswith("gx/") and rel != "manifest.json":
            files[rel] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    manifest = {
        **plan.describe(),
        "format": "LeRobot v3.0 per tier/dataset",
        "params_hash": data_params_hash(plan.params),
        "params": plan.params.model_dump(mode="json"),
        "counts": {
            "episodes": len(episodes), "frames": int(episodes.length.sum()),
            "per_tier": dict(per_tier), "quarantined": len(quarantine),
            "quarantined_by_check": dict(reasons(quarantine)),
            "splits": episodes.split.value_counts().to_dict(),
        },
        "validation": {
            "batches": len(summaries),
            "success": all(s.get("success", True) for s in summaries),
            "suites": summaries,
            "data_docs": "gx/uncommitted/data_docs/local_site/index.html (build cache, MLflow)",
        },
        "steps": ["load", "time_sync" if plan.params.annotate.time_sync else "no_time_sync",
                  "annotate", "caption", "validate", "write", "tokenizer", "dual_cluster",
                  "balance", "packing_report"],
        "events": events,
        "files": files,
    }
    atomic_write_text(root / "manifest.json", json.dumps(manifest, indent=1, default=str))
    return manifest
