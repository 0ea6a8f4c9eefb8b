"""The evaluation report: tables, plots, report.md, a self-contained report.html, metrics.json.

Pure files in one folder (the flow logs the folder to MLflow). Tables: rows = policies,
columns = task x condition, each cell the success rate with its 95% Wilson interval (then task
progress, then steps to success). Plots (matplotlib, Agg): success bars with interval whiskers
and task progress bars, one panel per condition. report.html inlines its images as base64 PNG
and its CSS and runs no script: MLflow 3.17's artifact view loads an HTML artifact into a
sandboxed iframe from a `blob:` URL, where links relative to the artifact do not resolve.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wallwm.eval.episode import EpisodeResult
from wallwm.eval.metrics import ALL, lookup, summarize
from wallwm.util.atomic import atomic_write_bytes, atomic_write_text

SHORT = {"pick-place-v3": "pick-place", "push-v3": "push", "drawer-open-v3": "drawer-open",
         "button-press-topdown-v3": "button-press", ALL: "all"}


def _axes(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    pols = list(dict.fromkeys(r["policy"] for r in rows))
    tasks = [t for t in dict.fromkeys(r["task"] for r in rows) if t != ALL] + [ALL]
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    return pols, tasks, conds


def _fmt(r: dict[str, Any] | None, what: str) -> str:
    if r is None:
        return "-"
    if what == "success":
        return f"{r['success']:.2f} [{r['success_lo']:.2f}, {r['success_hi']:.2f}]"
    if what == "progress":
        return f"{r['progress']:.2f} [{r['progress_lo']:.2f}, {r['progress_hi']:.2f}]"
    m = r["steps_to_success_median"]
    return "-" if m is None else f"{m:g}"


def table(rows: Sequence[dict[str, Any]], what: str = "success") -> list[list[str]]:
    """Header + one row per policy; columns "<task> / <condition>"."""
    pols, tasks, conds = _axes(rows)
    head = ["policy"] + [f"{SHORT.get(t, t)} / {c}" for c in conds for t in tasks]
    body = [[p] + [_fmt(lookup(rows, p, t, c), what) for c in conds for t in tasks]
            for p in pols]
    return [head, *body]


def markdown_table(t: list[list[str]]) -> str:
    lines = ["| " + " | ".join(t[0]) + " |", "|" + "---|" * len(t[0])]
    lines += ["| " + " | ".join(r) + " |" for r in t[1:]]
    return "\n".join(lines)


def html_table(t: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in t[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bar_plot(rows: Sequence[dict[str, Any]], what: str) -> bytes:
    """PNG bytes: one panel per condition, tasks on x, one bar per policy, interval whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pols, tasks, conds = _axes(rows)
    fig, axes = plt.subplots(1, len(conds), figsize=(4.2 * len(conds), 3.8), sharey=True,
                             squeeze=False)
    width = 0.8 / max(1, len(pols))
    x = np.arange(len(tasks))
    for ax, c in zip(axes[0], conds, strict=True):
        for j, p in enumerate(pols):
            cells = [lookup(rows, p, t, c) for t in tasks]
            val = np.array([np.nan if r is None else r[what] for r in cells])
            lo = np.array([np.nan if r is None else r[what] - r[f"{what}_lo"] for r in cells])
            hi = np.array([np.nan if r is None else r[f"{what}_hi"] - r[what] for r in cells])
            ax.bar(x + (j - (len(pols) - 1) / 2) * width, val, width, yerr=[lo, hi],
                   capsize=3, label=p)
        ax.set_xticks(x, [SHORT.get(t, t) for t in tasks], rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(c)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel({"success": "success rate (95% Wilson)",
                           "progress": "task progress (95% CI)"}[what])
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(pols)), fontsize=9,
               frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


CSS = ("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
       "table{border-collapse:collapse;font-size:12px;margin:0.6em 0 1.4em}"
       "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;white-space:nowrap}"
       "th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:0 3px}")


def write_report(out_dir: Path | str, results: Sequence[EpisodeResult], *, title: str,
                 meta: dict[str, Any] | None = None, videos: Sequence[str] = ()
                 ) -> dict[str, Path]:
    """Write metrics.json, success.png, progress.png, report.md and report.html into
    `out_dir`; returns their paths. `meta` (model, params, seeds...) goes into both reports
    and metrics.json; `videos` are the file names of rollout videos beside them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not results:
        raise ValueError(f"write_report {out}: no episode results")
    rows = summarize(results)
    meta = dict(meta or {})
    metrics = {"title": title, "meta": meta, "cells": rows,
               "episodes": [r.summary() for r in results], "videos": list(videos)}
    paths = {"metrics": out / "metrics.json", "success_png": out / "success.png",
             "progress_png": out / "progress.png", "md": out / "report.md",
             "html": out / "report.html"}
    atomic_write_text(paths["metrics"], json.dumps(metrics, indent=1, default=jsonable))
    pngs = {"success": bar_plot(rows, "success"), "progress": bar_plot(rows, "progress")}
    atomic_write_bytes(paths["success_png"], pngs["success"])
    atomic_write_bytes(paths["progress_png"], pngs["progress"])
    tables = {w: table(rows, w) for w in ("success", "progress", "steps")}
    captions = {"success": "Success rate (Meta-World's success flag at any step), 95% Wilson "
                           "interval",
                "progress": "Task progress (share of ground-truth events completed, judged "
                            "from the simulator's state), 95% interval of the mean",
                "steps": "Median control steps to first success (successful episodes)"}
    n_eps = len(results)
    meta_lines = [f"- {k}: `{v}`" for k, v in meta.items()]
    md = [f"# {title}", "", f"{n_eps} episodes.", "", *meta_lines, ""]
    for w, t in tables.items():
        md += [f"## {captions[w]}", "", markdown_table(t), ""]
    md += ["![success](success.png)", "", "![progress](progress.png)", ""]
    if videos:
        md += ["## Rollout videos", ""] + [f"- [{v}]({v})" for v in videos] + [""]
    atomic_write_text(paths["md"], "\n".join(md))
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{n_eps} episodes.</p>"]
    if meta:
        body.append("<ul>" + "".join(f"<li>{html.escape(str(k))}: <code>"
                                     f"{html.escape(str(v))}</code></li>"
                                     for k, v in meta.items()) + "</ul>")
    for w, t in tables.items():
        body += [f"<h2>{html.escape(captions[w])}</h2>", html_table(t)]
    for w, png in pngs.items():
        b64 = base64.b64encode(png).decode("ascii")
        body.append(f'<h2>{w}</h2><img alt="{w}" src="data:image/png;base64,{b64}">')
    write_html(paths["html"], title, body, videos)
    return paths


def write_html(path: Path, title: str, body: list[str], videos: Sequence[str] = (),
               css: str = "") -> None:
    """The self-contained report page (inline images, no script: MLflow's artifact view
    renders it), with the list of rollout videos stored beside it."""
    if videos:
        body = [*body, "<h2>Rollout videos (artifacts beside this report)</h2><ul>"
                + "".join(f"<li>{html.escape(v)}</li>" for v in videos) + "</ul>"]
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           f"</title><style>{CSS}{css}</style></head><body>{''.join(body)}</body></html>")
    atomic_write_text(path, doc)


def jsonable(o: Any) -> Any:
    """`json.dumps(default=...)` for numpy values and paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
