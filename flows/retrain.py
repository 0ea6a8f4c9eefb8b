"""The end-to-end retrain: the one flow `make run` runs.

Stages are chained here as they land: stack health -> dataset build -> training (then
distillation -> export -> registry -> release, as their issues land). Each stage is its own flow file; this one only
wires them and prints where to look. `python -m flows.retrain [--set k=v ...]` runs it too.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from prefect import flow, get_run_logger
from rich.console import Console

from components.stack import load_stack_env
from flows.build_dataset import build_dataset
from flows.health import stack_health
from flows.train import train


@flow(name="retrain", log_prints=True)
def retrain(params_files: list[str] | None = None, sets: list[str] | None = None) -> dict[str, Any]:
    """Check the services, then run every stage in order."""
    log = get_run_logger()
    out: dict[str, Any] = {}
    out["health"] = stack_health(params_files, sets)
    log.info("stack healthy: MLflow run %s", out["health"]["mlflow"]["run_id"])
    out["data"] = build_dataset(params_files, sets)
    c = out["data"]["counts"]
    log.info("data: build %s (%s), %d episodes, %d quarantined, data.dvc %s",
             out["data"]["build_id"], "reused" if out["data"]["reused"] else "new",
             c["episodes"], c["quarantined"], out["data"]["dvc_md5"])
    out["train"] = train(params_files, sets, out["data"]["build_dir"])
    for name, st in out["train"]["stages"].items():
        log.info("train %s: validation loss %.4f -> %.4f", name, st["initial_val"] or float("nan"),
                 st["final_val"] or float("nan"))
    return out


def _prefect_ui() -> str:
    api = os.environ.get("PREFECT_API_URL", "")
    return api[: -len("/api")] if api.endswith("/api") else (api or "(ephemeral Prefect server)")


def main(params: list[str] | None = None, sets: list[str] | None = None) -> int:
    load_stack_env()
    console = Console()
    result = retrain(params or [], sets or [])
    run_id = result["health"]["mlflow"]["run_id"]
    mlflow_ui = os.environ.get("MLFLOW_TRACKING_URI", "")
    console.print("\n[bold green]retrain finished[/]")
    data = result["data"]
    console.print(f"  MLflow UI:  {mlflow_ui}  (health run {run_id}, data-build run "
                  f"{data['mlflow_run_id']})")
    console.print(f"  dataset:    {data['build_dir']} ({data['counts']['episodes']} episodes, "
                  f"data.dvc {data['dvc_md5']})")
    tr = result["train"]
    for name, st in tr["stages"].items():
        console.print(f"  train {name:<10} validation loss {st['initial_val']:.4f} -> "
                      f"{st['final_val']:.4f} ({st['steps']} steps)")
    console.print(f"  model:      {tr.get('model_uri', '-')} (training run {tr['mlflow_run_id']})")
    console.print(f"  Prefect UI: {_prefect_ui()}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", action="append", default=[])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    sys.exit(main(a.params, a.sets))
