"""Offline evaluation on a build's held-out episodes, and the one evaluation report.

What it measures are the validation figures of training (wallwm/train/validation.py, reused
as they are): `sample_metrics` (what `predict` samples against the truth: action MSE per
dimension beside the predict-the-mean baseline, gripper accuracy, event-end timing,
boundary-frame PSNR / SSIM beside copy-the-observation) and `deploy_losses` (the action
flow-matching loss and end-of-event BCE in the deployment condition), on the val split of the
build the model was trained on, for event and unified mode, broken down:

* per **tier** (`t0_web` ... `t3_robot_real`: video-only tiers get frame figures only);
* per **joint cluster** of the build's dual clustering (`clusters/events.parquet`), sorted by
  the cluster's size in the train split, so the long tail sits at the bottom of the table and
  on the right of the plots. A unified-mode item (one frame) belongs to the cluster of the
  action event that covers it, or to `none`.

Items are batched within their (tier, cluster) group, so every group's sums are exact and the
per-tier, per-cluster and overall figures are sums of the same numbers (`validation.merge`,
`validation.finish`). Each batch's noise comes from a seed derived from its group's name, so a
figure does not change when another group is added. Unified items are taken every
`unified_stride` frames (the flow uses `eval.execute_frames`: the closed loop asks for a new
chunk that often).

`write_evaluation_report` joins this with a closed-loop run (wallwm/eval/closed_loop.py) into
one report.md, one self-contained report.html (images inlined, no script: MLflow's artifact
view shows it in a sandboxed iframe) and one metrics.json.
"""

from __future__ import annotations

import base64
import html
import io
import json
import zlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from wallwm.util.atomic import atomic_write_bytes, atomic_write_text

MODES = ("event", "unified")
NO_CLUSTER = -1  # unified frames outside every action event; builds without clusters


class BuildNotFoundError(FileNotFoundError):
    """The build a model was trained on is not on this machine."""


# ---------------------------------------------------------------------- the build
def locate_build(build_id: str, candidates: Sequence[Path | str]) -> Path:
    """The first folder of `candidates` whose manifest.json has `build_id` (a build folder under
    `<home>/builds/<id>`, or the published `data/` while it holds that build).

    Raises BuildNotFoundError naming every place looked at and what each holds."""
    seen: list[str] = []
    for c in candidates:
        folder = Path(c)
        man = folder / "manifest.json"
        if not man.exists():
            seen.append(f"{folder} (no manifest.json)")
            continue
        try:
            got = json.loads(man.read_text()).get("build_id")
        except (OSError, json.JSONDecodeError) as e:
            seen.append(f"{man} (unreadable: {e})")
            continue
        if got == build_id:
            return folder.resolve()
        seen.append(f"{folder} (holds build {got})")
    raise BuildNotFoundError(
        f"build {build_id}, which the model was trained on, is not here: looked at "
        + "; ".join(seen) + ". Rebuild it with the same sources and data params "
        "(`wallwm data build`; the same inputs give the same build id), or pass its folder "
        "(--build / build_dir)")


def _val_source(build: Path, eps: pd.DataFrame) -> str:
    """Where the val split came from: splits.json, or resolve_splits' fixed fallback."""
    sp = build / "splits.json"
    named = set(json.loads(sp.read_text()).get("val", [])) if sp.exists() else set()
    val = set(eps.episode_key[eps.split == "val"])
    if val and val <= named:
        return "splits.json"
    return "fallback: 10% of the train episodes by hash of the key (the build has no val split)"


@dataclass(frozen=True)
class ClusterInfo:
    """A joint cluster of the build: its events in the build and in the train split, and the
    event labels it holds (most frequent first)."""

    cluster: int
    events_build: int
    events_train: int
    labels: tuple[tuple[str, int], ...]

    @property
    def label_text(self) -> str:
        return ", ".join(f"{lab} x{n}" for lab, n in self.labels[:3]) or "-"


def cluster_infos(build: Path, eps: pd.DataFrame) -> dict[int, ClusterInfo]:
    """cluster id -> ClusterInfo from clusters/events.parquet (empty without it). An event id
    is `<tier>/<name>/<episode>/<j>`; its episode's split decides whether it is a train
    event."""
    p = build / "clusters" / "events.parquet"
    if not p.exists():
        return {}
    t = pd.read_parquet(p, columns=["event_id", "label", "joint_cluster"])
    split = {(str(d), int(e)): str(s) for d, e, s in
             zip(eps.dataset, eps.episode_index, eps.split, strict=True)}
    rows: dict[int, list[tuple[str, bool]]] = defaultdict(list)
    for eid, lab, c in zip(t.event_id, t.label, t.joint_cluster, strict=True):
        if pd.isna(c) or int(c) < 0:
            continue
        ds, ep, _ = str(eid).rsplit("/", 2)
        rows[int(c)].append((str(lab), split.get((ds, int(ep))) == "train"))
    return {c: ClusterInfo(c, len(r), sum(tr for _, tr in r),
                           tuple(Counter(lab for lab, _ in r).most_common()))
            for c, r in rows.items()}


# ---------------------------------------------------------------------- the figures
@dataclass
class ModeResult:
    """Offline figures of one mode: overall, per tier, per cluster (largest first)."""

    mode: str
    items: int
    overall: dict[str, float]
    tiers: list[dict[str, Any]]
    clusters: list[dict[str, Any]]


@dataclass
class OfflineResult:
    build_id: str
    build_dir: str
    val_episodes: list[str]
    val_source: str
    settings: dict[str, Any]
    modes: dict[str, ModeResult] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "modes"},
                "modes": {m: asdict(r) for m, r in self.modes.items()}}

    def figure(self, mode: str, key: str) -> float | None:
        r = self.modes.get(mode)
        return None if r is None else r.overall.get(key)


def _finish(sums: Mapping[str, float]) -> dict[str, float]:
    from wallwm.train.validation import finish

    out = finish(dict(sums))
    n = sums.get("deploy_n_steps", 0.0)
    if n > 0:
        for k in ("action_fm", "event_end", "baseline/action_fm_mean_var",
                  "baseline/action_fm_zero_v"):
            if f"deploy_sum/{k}" in sums:
                name = "deploy_" + k.replace("baseline/", "baseline_")
                out[name] = sums[f"deploy_sum/{k}"] / n
    return out


def _tier(dataset: str) -> str:
    return dataset.split("/", 1)[0]


def _cluster_of(ds: Any, i: int, table: Mapping[str, int]) -> int:
    """The joint cluster of item i: its event's (event mode) or that of the action event that
    covers its frame (unified mode); NO_CLUSTER when none."""
    from wallwm.train.data import action_events

    r = ds.refs[i]
    eid = r.event_id
    if ds.mode == "unified":
        evs = action_events(ds.anns.get((r.dataset, r.episode), []))
        j = next((k for k, a in enumerate(evs) if a.start <= r.start < a.end), None)
        eid = None if j is None else f"{r.dataset}/{r.episode}/{j}"
    return int(table.get(eid, NO_CLUSTER)) if eid else NO_CLUSTER


def _seed(base: int, *parts: object) -> int:
    return int(base) + zlib.crc32("/".join(map(str, parts)).encode()) % 1_000_000_007


@torch.no_grad()
def evaluate_mode(model: Any, build: Path, tokenizer: Any, vocabulary: Sequence[str], mode: str,
                  eps: pd.DataFrame, clusters: Mapping[int, ClusterInfo], *,
                  batch_size: int = 8, steps: int | None = None, unified_stride: int = 4,
                  seed: int = 0) -> ModeResult:
    """The figures of `mode` on the val split (`eps` from resolve_splits)."""
    from wallwm.train.data import EventDataset, cluster_table, collate_events
    from wallwm.train.validation import deploy_losses, merge, sample_metrics

    ds = EventDataset(build, "val", model.cfg, mode=mode, vocabulary=vocabulary,
                      unified_stride=unified_stride, episodes=eps)
    table = cluster_table(build)
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, r in enumerate(ds.refs):
        groups[(_tier(r.dataset), _cluster_of(ds, i, table))].append(i)
    device = next(model.parameters()).device
    sums: dict[tuple[str, int], dict[str, float]] = {}
    for key in sorted(groups):
        idx, acc = groups[key], defaultdict(float)
        for k in range(0, len(idx), batch_size):
            b = collate_events([ds[i] for i in idx[k : k + batch_size]], tokenizer,
                               model.cfg).to(device)
            s = _seed(seed, mode, *key, k)
            merge(acc, sample_metrics(model, b, s, steps))
            acc["items"] += b.batch_size
            n_valid = float(b.action_mask.sum()) if b.action_mask is not None else 0.0
            if n_valid > 0:
                for name, v in deploy_losses(model, b, s).items():
                    acc[f"deploy_sum/{name}"] += float(v) * n_valid
                acc["deploy_n_steps"] += n_valid
        sums[key] = dict(acc)

    def pool(keys: Sequence[tuple[str, int]]) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for key in keys:
            merge(out, sums[key])
        return dict(out)

    def row(keys: Sequence[tuple[str, int]]) -> dict[str, Any]:
        p = pool(keys)
        return {"items": int(p.get("items", 0)), "action_steps": int(p.get("n_steps", 0)),
                **_finish(p)}

    tiers = [{"tier": t, **row([k for k in sums if k[0] == t])}
             for t in sorted({k[0] for k in sums})]
    ids = set(clusters) | {k[1] for k in sums}
    crow = []
    for c in ids:
        info = clusters.get(c)
        keys = [k for k in sums if k[1] == c]
        crow.append({
            "cluster": "none" if c == NO_CLUSTER else int(c),
            "events_build": info.events_build if info else 0,
            "events_train": info.events_train if info else 0,
            "labels": info.label_text if info else "(frames outside every event)"
            if c == NO_CLUSTER else "-",
            **(row(keys) if keys else {"items": 0, "action_steps": 0})})
    crow.sort(key=lambda r: (-r["events_train"], -r["events_build"], r["cluster"] == "none",
                             str(r["cluster"])))
    total = sum(r["events_train"] for r in crow) or 1
    for r in crow:
        r["train_share"] = r["events_train"] / total
    return ModeResult(mode, len(ds), row(list(sums)), tiers, crow)


def offline_evaluation(model: Any, build_dir: Path | str, vocabulary: Sequence[str], *,
                       modes: Sequence[str] = MODES, batch_size: int = 8,
                       steps: int | None = None, unified_stride: int = 4, seed: int = 0,
                       tokenizer: Any = None) -> OfflineResult:
    """Every offline figure of `model` on the val split of `build_dir` (see the module
    docstring). `tokenizer`: the build's tokenizer.json unless given (the model's own)."""
    from wallwm.data.tokenizer import load_tokenizer
    from wallwm.train.data import resolve_splits

    build = Path(build_dir)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"offline_evaluation: modes {list(modes)}; use some of {MODES}")
    if unified_stride < 1 or batch_size < 1:
        raise ValueError(f"offline_evaluation: unified_stride={unified_stride} and "
                         f"batch_size={batch_size} must be >= 1")
    model.norm.require()  # figures in dataset units need the statistics
    manifest = json.loads((build / "manifest.json").read_text())
    eps = resolve_splits(build)
    val = sorted(eps.episode_key[eps.split == "val"])
    if not val:
        raise ValueError(f"{build}: no val episodes (and fewer than 2 train episodes to hold "
                         f"one out); offline evaluation needs held-out episodes: build with "
                         f"more episodes or data.val_fraction > 0")
    tok = tokenizer if tokenizer is not None else build / "tokenizer.json"
    tok = load_tokenizer(tok) if isinstance(tok, str | Path) else tok
    clusters = cluster_infos(build, eps)
    res = OfflineResult(str(manifest["build_id"]), str(build), val, _val_source(build, eps),
                        {"modes": list(modes), "batch_size": batch_size, "steps": steps,
                         "unified_stride": unified_stride, "seed": seed})
    was = model.training
    model.eval()
    try:
        for m in modes:
            res.modes[m] = evaluate_mode(model, build, tok, vocabulary, m, eps, clusters,
                                         batch_size=batch_size, steps=steps,
                                         unified_stride=unified_stride, seed=seed)
    finally:
        model.train(was)
    return res


# ---------------------------------------------------------------------- tables
COLUMNS = (  # (key, header, format)
    ("items", "items", "d"), ("action_mse", "action MSE (norm.)", ".4f"),
    ("mean_baseline_mse", "mean baseline", ".4f"),
    ("action_mse_vs_mean_baseline", "ratio", ".3f"), ("gripper_acc", "gripper acc", ".3f"),
    ("end_abs_err_frames", "end err (frames)", ".2f"), ("frame_psnr", "PSNR dB", ".2f"),
    ("copy_obs_psnr", "copy-obs PSNR", ".2f"), ("psnr_gain_db", "gain dB", "+.2f"),
    ("psnr_gain_db_1step", "1-step gain dB", "+.2f"),
    ("frame_ssim", "SSIM", ".3f"), ("copy_obs_ssim", "copy-obs SSIM", ".3f"),
    ("deploy_action_fm", "deploy FM loss", ".4f"),
    ("deploy_baseline_action_fm_mean_var", "FM mean/var baseline", ".4f"),
)


def _cell(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return format(int(v), fmt) if fmt == "d" else format(float(v), fmt)


def offline_tables(res: OfflineResult) -> list[tuple[str, list[list[str]]]]:
    """(caption, header + rows) of every offline table: per mode the overall figures with the
    per-dimension MSE, per tier, per cluster (largest train share first)."""
    out: list[tuple[str, list[list[str]]]] = []
    for mode, r in res.modes.items():
        o = r.overall
        dims = sorted(int(k.removeprefix("action_mse_d")) for k in o
                      if k.startswith("action_mse_d"))
        if dims:
            out.append((f"{mode} mode: action MSE per dimension (dataset units), model vs the "
                        f"predict-the-mean baseline",
                        [["", *[f"d{d}" for d in dims]],
                         ["model", *[_cell(o.get(f"action_mse_d{d}"), ".5f") for d in dims]],
                         ["mean baseline",
                          *[_cell(o.get(f"mean_baseline_mse_d{d}"), ".5f") for d in dims]]]))
        head = [h for _, h, _ in COLUMNS]
        out.append((f"{mode} mode: per tier ({r.items} val items)",
                    [["tier", *head]] + [[t["tier"], *[_cell(t.get(k), f) for k, _, f in
                                                        COLUMNS]] for t in r.tiers]
                    + [["all", *[_cell(o.get(k) if k != "items" else r.items, f)
                                 for k, _, f in COLUMNS]]]))
        out.append((f"{mode} mode: per joint cluster, largest first (long tail at the bottom; "
                    f"size = events in the train split)",
                    [["cluster", "train events", "share", "labels", *head]]
                    + [[str(c["cluster"]), str(c["events_train"]), f"{c['train_share']:.3f}",
                        c["labels"], *[_cell(c.get(k), f) for k, _, f in COLUMNS]]
                       for c in r.clusters]))
    return out


# ---------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    return buf.getvalue()


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def cluster_plot(r: ModeResult) -> bytes:
    """PNG: per cluster with val items, largest train share first: action MSE beside the
    mean baseline, the PSNR gain over copy-the-observation, and the cluster's size."""
    plt = _plt()
    rows = [c for c in r.clusters if c["items"] > 0]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(3, 1, figsize=(max(6.0, 0.55 * len(rows) + 2), 8.2), sharex=True)
    ax[0].bar(x - 0.2, [_nan(c.get("action_mse")) for c in rows], 0.4, label="model")
    ax[0].bar(x + 0.2, [_nan(c.get("mean_baseline_mse")) for c in rows], 0.4,
              label="predict the mean")
    ax[0].set_ylabel("action MSE (normalized)")
    ax[0].legend(fontsize=8, frameon=False)
    ax[1].bar(x, [_nan(c.get("psnr_gain_db")) for c in rows], 0.6, color="tab:green")
    ax[1].axhline(0, color="k", lw=0.8)
    ax[1].set_ylabel("PSNR gain over\ncopy-obs (dB)")
    sizes = [c["events_train"] for c in rows]
    ax[2].bar(x, sizes, 0.6, color="tab:gray")
    for xi, n in zip(x, sizes, strict=True):
        ax[2].annotate(str(n), (xi, n), ha="center", va="bottom", fontsize=7)
    ax[2].set_ylabel("train events\n(cluster size)")
    ax[2].set_xticks(x, [f"{c['cluster']}: {c['labels']}"[:28] for c in rows], rotation=40,
                     ha="right", fontsize=7)
    for a in ax:
        a.grid(axis="y", alpha=0.3)
    ax[0].set_title(f"{r.mode} mode, val split: per joint cluster (long tail to the right)")
    fig.tight_layout()
    return _png(fig)


def tier_plot(res: OfflineResult) -> bytes:
    """PNG: per tier and mode, action MSE relative to the mean baseline (< 1: better than the
    mean) and the PSNR gain over copy-the-observation."""
    plt = _plt()
    tiers = sorted({t["tier"] for r in res.modes.values() for t in r.tiers})
    modes = list(res.modes)
    x = np.arange(len(tiers))
    w = 0.8 / max(1, len(modes))
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    for j, m in enumerate(modes):
        by = {t["tier"]: t for t in res.modes[m].tiers}
        off = (j - (len(modes) - 1) / 2) * w
        ax[0].bar(x + off, [_nan(by.get(t, {}).get("action_mse_vs_mean_baseline"))
                            for t in tiers], w, label=m)
        ax[1].bar(x + off, [_nan(by.get(t, {}).get("psnr_gain_db")) for t in tiers], w, label=m)
    ax[0].axhline(1.0, color="k", lw=0.8, ls="--")
    ax[0].set_ylabel("action MSE / mean baseline")
    ax[1].axhline(0.0, color="k", lw=0.8)
    ax[1].set_ylabel("PSNR gain over copy-obs (dB)")
    for a in ax:
        a.set_xticks(x, tiers, rotation=20, ha="right", fontsize=8)
        a.grid(axis="y", alpha=0.3)
        a.legend(fontsize=8, frameon=False)
    fig.suptitle("offline figures per tier (val split)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def write_offline_plots(res: OfflineResult, out_dir: Path | str) -> dict[str, Path]:
    """offline_tiers.png and offline_<mode>_clusters.png into `out_dir`."""
    out = Path(out_dir)
    paths = {"offline_tiers": out / "offline_tiers.png"}
    atomic_write_bytes(paths["offline_tiers"], tier_plot(res))
    for m, r in res.modes.items():
        if any(c["items"] for c in r.clusters):
            p = out / f"offline_{m}_clusters.png"
            atomic_write_bytes(p, cluster_plot(r))
            paths[f"offline_{m}_clusters"] = p
    return paths


# ---------------------------------------------------------------------- the report
def write_evaluation_report(out_dir: Path | str, *, title: str, meta: Mapping[str, Any],
                            headline: Mapping[str, float], offline: OfflineResult | None,
                            closed: Sequence[Any] | None = None,
                            closed_meta: Mapping[str, Any] | None = None,
                            images: Sequence[tuple[str, str]] = (),
                            videos: Sequence[str] = ()) -> dict[str, Path]:
    """report.md, report.html and metrics.json in `out_dir`.

    `headline`: the run's gate figures (name -> value); `closed`: the closed-loop
    EpisodeResults (tables as wallwm/eval/report.py makes them); `images`: (caption, path
    relative to out_dir) of PNGs already there (inlined into the HTML); `videos`: relative
    paths of rollout videos beside it."""
    from wallwm.eval.metrics import summarize
    from wallwm.eval.report import html_table, jsonable, markdown_table, table, write_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if offline is None and not closed:
        raise ValueError(f"write_evaluation_report {out}: neither offline nor closed-loop "
                         f"results")
    rows = summarize(closed) if closed else []
    sections: list[tuple[str, list[list[str]]]] = []
    if headline:
        sections.append(("Headline figures (the registry's gates read these)",
                         [["metric", "value"]] + [[k, f"{v:.4f}"] for k, v in headline.items()]))
    if rows:
        sections += [
            ("Closed loop: success rate (Meta-World's success flag at any step), 95% Wilson "
             "interval", table(rows, "success")),
            ("Closed loop: task progress (share of ground-truth events completed), 95% "
             "interval of the mean", table(rows, "progress")),
            ("Closed loop: median control steps to first success", table(rows, "steps"))]
    if offline is not None:
        sections += [(f"Offline: {cap}", t) for cap, t in offline_tables(offline)]
    metrics = {"title": title, "meta": dict(meta), "headline": dict(headline),
               "offline": offline.to_json() if offline is not None else None,
               "closed_loop": None if not closed else {
                   "meta": dict(closed_meta or {}), "cells": rows,
                   "episodes": [r.summary() for r in closed]},
               "images": [p for _, p in images], "videos": list(videos)}
    paths = {"metrics": out / "metrics.json", "md": out / "report.md",
             "html": out / "report.html"}
    atomic_write_text(paths["metrics"], json.dumps(metrics, indent=1, default=jsonable))
    intro = []
    if offline is not None:
        intro.append(f"Offline: build {offline.build_id}, {len(offline.val_episodes)} val "
                     f"episode(s) ({offline.val_source}).")
    if closed:
        intro.append(f"Closed loop: {len(closed)} episodes on layouts and seeds no build "
                     f"holds.")
    md = [f"# {title}", "", *intro, "", *[f"- {k}: `{v}`" for k, v in meta.items()], ""]
    for cap, t in sections:
        md += [f"## {cap}", "", markdown_table(t), ""]
    md += [f"![{cap}]({p})\n" for cap, p in images]
    if videos:
        md += ["## Rollout videos", ""] + [f"- [{v}]({v})" for v in videos] + [""]
    atomic_write_text(paths["md"], "\n".join(md))
    body = [f"<h1>{html.escape(title)}</h1>"] + [f"<p>{html.escape(s)}</p>" for s in intro]
    if meta:
        body.append("<ul>" + "".join(f"<li>{html.escape(str(k))}: <code>{html.escape(str(v))}"
                                     f"</code></li>" for k, v in meta.items()) + "</ul>")
    for cap, t in sections:
        body += [f"<h2>{html.escape(cap)}</h2>", html_table(t)]
    for cap, p in images:
        b64 = base64.b64encode((out / p).read_bytes()).decode("ascii")
        body.append(f'<h2>{html.escape(cap)}</h2><img alt="{html.escape(cap)}" '
                    f'src="data:image/png;base64,{b64}">')
    write_html(paths["html"], title, body, videos, css="h1{overflow-wrap:anywhere}")
    return paths


