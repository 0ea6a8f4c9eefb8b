"""`wallwm distill` and `wallwm export`: Typer commands over flows/distill_export.py.

Registered by flows/cli.py (`app.command("distill")(distill_cmd)`,
`app.command("export")(export_cmd)`). Both take `--params` and `--set` like the rest of
`wallwm`, need the stack (exit 3 with the hint otherwise), and exit 2 on bad input (an unknown
run, a model without statistics, an export that misses a bound: the message names the graph,
the output and the figure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from flows.cli_options import ParamsOpt, SetOpt, params_or_exit
from wallwm.config import Params

console = Console()
err = Console(stderr=True)

BuildOpt = Annotated[Path | None, typer.Option("--build", help="Build folder (default: the one "
                                               "the model's lineage names, found locally).")]


def _params(params: list[Path] | None, sets: list[str] | None) -> Params:
    p = params_or_exit(params, sets)
    from components.stack import require_stack

    require_stack()  # exit 3 with the hint when a service is missing or stale
    return p


def _fail(e: Exception) -> typer.Exit:
    err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _bad_input() -> tuple[type[Exception], ...]:
    from flows.distill_export import DistillInputError
    from wallwm.eval.offline import BuildNotFoundError
    from wallwm.export.errors import ExportError
    from wallwm.model.normalize import NormalizationMissing

    return DistillInputError, BuildNotFoundError, ExportError, NormalizationMissing


def distill_cmd(
    params: ParamsOpt = None, set_: SetOpt = None,
    model: Annotated[str | None, typer.Option("--model", help="Teacher model URI "
                                              "(models:/m-...).")] = None,
    run: Annotated[str | None, typer.Option("--run", help="Training run id whose model is the "
                                            "teacher (default: the newest).")] = None,
    build: BuildOpt = None,
    run_name: Annotated[str | None, typer.Option(help="Name the run; the same name resumes "
                                                 "it.")] = None,
    fresh: Annotated[bool, typer.Option(help="Ignore an earlier run of this name.")] = False,
) -> None:
    """Distil a trained model into a few-step student (distill.*), tracked in MLflow."""
    _params(params, set_)
    from flows.distill_export import distill

    try:
        out = distill([str(x) for x in params or []], set_ or [], model, run,
                      str(build) if build else None, run_name, resume=not fresh)
    except _bad_input() as e:
        raise _fail(e) from None
    if out.get("reused"):
        console.print(f"distillation {out['run_name']} is complete; use --run-name NEW or "
                      "--fresh to distil again")
    else:
        console.print(out["quality"], highlight=False)
    console.print(f"run {out['run_name']} (MLflow {out['mlflow_run_id']}), student "
                  f"{out['student_uri']}")


def export_cmd(
    params: ParamsOpt = None, set_: SetOpt = None,
    model: Annotated[str | None, typer.Option("--model", help="Student model URI.")] = None,
    run: Annotated[str | None, typer.Option("--run", help="Distillation run id whose student "
                                            "is exported (default: the newest).")] = None,
    build: BuildOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the bundle here too "
                                             "(default: under the stack's home).")] = None,
    runtime_episodes: Annotated[int | None, typer.Option(
        help="Runtime-parity episodes per task and condition (default export.runtime_"
             "episodes; 0: none).")] = None,
) -> None:
    """Export the student into the deployable bundle (ONNX FP32/BF16/FP8, TensorRT where
    possible), logged as `bundle/` of an export run, then the runtime-parity evaluation."""
    _params(params, set_)
    from flows.distill_export import export

    try:
        res = export([str(x) for x in params or []], set_ or [], model, run,
                     str(build) if build else None, str(out) if out else None,
                     runtime_episodes)
    except _bad_input() as e:
        raise _fail(e) from None
    m = res["metrics"]
    for k in ("export.onnx_parity_max_abs", "export.fp8_worst_dim_cosine",
              "export.bf16_worst_dim_cosine", "export.fp8_bytes_ratio", "export.latency_ms"):
        if k in m:
            console.print(f"{k:<32} {m[k]:.6g}")
    trt = res.get("tensorrt") or {}
    if not trt.get("built"):
        console.print(f"TensorRT: not built ({trt.get('reason', '-')})", highlight=False)
    console.print(f"bundle {res['bundle_dir']}\n  MLflow export run {res['export_run_id']}: "
                  f"{res['bundle_uri']}")
    if res.get("runtime"):
        console.print(res["runtime"]["success_table"], highlight=False)
