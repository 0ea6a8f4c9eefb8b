"""What a retrain tells its user: a Prefect markdown artifact and the console summary, with
clickable MLflow run URLs, the Prefect flow-run URL, the gates, the rollout, and which stages
were reused."""

from __future__ import annotations

import os
from typing import Any

import mlflow


def run_link(run_id: str | None) -> str:
    """The MLflow UI URL of a run (empty when unknown)."""
    if not run_id:
        return ""
    try:
        run = mlflow.get_run(run_id)
    except Exception:  # noqa: BLE001 - a link is a courtesy
        return ""
    base = mlflow.get_tracking_uri().rstrip("/")
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def flow_run_link(prefect_ui: str, flow_run_id: str | None) -> str:
    """The Prefect UI page of a flow run."""
    return (f"{prefect_ui.rstrip('/')}/runs/flow-run/{flow_run_id}"
            if flow_run_id and prefect_ui else "")


def _prefect_ui() -> str:
    api = os.environ.get("PREFECT_API_URL", "")
    return api[: -len("/api")] if api.endswith("/api") else api


LEARNED_MARGIN = 0.01  # a loss within 1% of the trivial predictor's is read as not learned


def stage_line(name: str, st: dict[str, Any]) -> str:
    """A training stage's validation loss, first and last, beside the trivial predictor's on
    the same draws (a loss that falls but stays above it has learned nothing useful yet)."""
    from wallwm.model.config import LossWeights
    from wallwm.train.stages import stage

    iv, fv = st.get("initial_val"), st.get("final_val")
    text = (f"validation loss {'resumed' if iv is None else f'{iv:.4f}'} -> "
            f"{'-' if fv is None else f'{fv:.4f}'} ({st.get('steps', '?')} steps")
    try:
        base = stage(name, LossWeights()).baseline
    except ValueError:
        base = None
    b = (st.get("metrics") or {}).get(base[0]) if base else None
    if base and b is not None and fv is not None and b > 0:
        gap = (b - fv) / b  # share of the trivial predictor's loss the model removed
        verdict = (f"{gap:.1%} below it" if gap >= LEARNED_MARGIN else
                   f"{gap:+.1%}: nothing learned beyond it yet")
        text += f"; {base[1]} {b:.4f}, {verdict}"
    return text + ")"


def _rows(out: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(stage, status, seconds, link or detail) per stage of the report."""
    rows = []
    for name, st in out["report"].stages.items():
        status = "reused" if st["reused"] else st["status"]
        link = run_link(st.get("run_id")) or ""
        detail = {k: v for k, v in st.items() if k not in ("seconds", "reused", "status",
                                                          "run_id")}
        rows.append((name, status, f"{st['seconds']:.1f}", link or str(detail)[:160]))
    return rows


def markdown_summary(out: dict[str, Any]) -> str:
    end = out.get("end", {})
    lines = [f"# Retrain: {end.get('state', '?')}", "", end.get("message", ""), ""]
    link = flow_run_link(_prefect_ui(), out.get("flow_run_id"))
    if link:
        lines += [f"Prefect flow run: {link}", ""]
    data = out.get("data")
    if data:
        lines += [f"Data build `{data['build_id']}` ({data['counts']['episodes']} episodes, "
                  f"data.dvc md5 `{data.get('dvc_md5')}`)", ""]
    stages = (out.get("train") or {}).get("stages") or {}
    if stages:
        lines += ["Training (validation loss, first and last):", ""]
        lines += [f"- `{name}`: {stage_line(name, st)}" for name, st in stages.items()]
        lines.append("")
    lines += ["| stage | status | seconds | MLflow run / detail |", "|---|---|---|---|"]
    for name, status, sec, link in _rows(out):
        cell = f"[run]({link})" if link.startswith("http") else link.replace("|", "/")
        lines.append(f"| {name} | {status} | {sec} | {cell} |")
    reg = out.get("register")
    if reg:
        lines += ["", f"## Gates of {reg['model']} v{reg['version']}: "
                      f"{'passed' if reg['passed'] else 'FAILED'}", ""]
        for g, tag in sorted((reg.get("gates") or {}).items()):
            lines.append(f"- `{g}`: {tag}")
    rel = out.get("release")
    if rel:
        lines += ["", f"## Rollout of {rel['version']}: {rel['status']} "
                      f"({rel.get('seconds')} s)", "", rel.get("reason", ""), "",
                  "| robot | runs | state |", "|---|---|---|"]
        for r in rel.get("robots", []):
            lines.append(f"| {r.get('robot')} | {r.get('running')} | {r.get('state')} |")
    reused = out["report"].reused
    lines += ["", f"Reused stages: {', '.join(reused) if reused else 'none'}"]
    return "\n".join(lines) + "\n"


def console_summary(console, out: dict[str, Any], seconds: float, prefect_ui: str) -> None:
    """The final lines of `wallwm retrain` / `make run`."""
    from rich.markup import escape
    from rich.table import Table

    end = out.get("end", {})
    colour = "green" if end.get("state") == "Completed" else "yellow"
    console.print(f"\n[bold {colour}]retrain: {end.get('state')}[/] - {end.get('message')} "
                  f"({seconds:.0f} s)", highlight=False, soft_wrap=True)
    t = Table(show_header=True, header_style="bold")
    for col in ("stage", "status", "s", "MLflow run / detail"):
        t.add_column(col, overflow="fold")
    rows = _rows(out)
    for name, status, secs, cell in rows:  # a URL folded over two lines is not clickable:
        if cell.startswith("http"):  # a short hyperlink here, the whole URL on its own below
            cell = f"[link={cell}]run {cell.rsplit('/', 1)[-1][:8]}[/link]"
        else:
            cell = escape(cell)
        t.add_row(name, status, secs, cell)
    console.print(t)
    links = [(name, cell) for name, _, _, cell in rows if cell.startswith("http")]
    if links:
        console.print("MLflow runs:")
        for name, url in links:
            console.print(f"  {name:<15} {url}", soft_wrap=True, highlight=False)
    reused = out["report"].reused
    console.print(f"reused stages: {', '.join(reused) if reused else 'none (all ran)'}")
    tr = out.get("train", {})
    for name, st in (tr.get("stages") or {}).items():
        console.print(f"  train {name:<10} {stage_line(name, st)}", highlight=False,
                      soft_wrap=True)
    if tr.get("model_uri"):
        console.print(f"  model:      {tr['model_uri']} (training run {tr['mlflow_run_id']})")
    console.print(f"  MLflow UI:  {mlflow.get_tracking_uri()}")
    link = flow_run_link(prefect_ui or _prefect_ui(), out.get("flow_run_id"))
    console.print(f"  Prefect UI: {prefect_ui}" + (f"  (this run: {link})" if link else ""))
