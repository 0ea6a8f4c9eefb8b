"""`wallwm eval --run RUN_ID | --model URI`: evaluate a trained model (flows/evaluate.py).

`eval_cmd` is a Typer command function; flows/cli.py registers it with
`app.command("eval")(eval_cmd)`. `python -m flows.cli_eval ...` runs it alone.

Exit codes: 0 evaluated (or an evaluation with the same settings reused); 2 bad input (the
options, the parameters, an unknown run, a run without a model, the build not found);
3 the stack is not running; 4 the model does not fit the environment (cameras, frame size,
vectors, rate, embodiment: the message names each mismatch); 1 anything else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from wallwm.config import ConfigError, load_params

console = Console()
err = Console(stderr=True)
EXIT_INPUT, EXIT_STACK, EXIT_MISMATCH = 2, 3, 4


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def print_success_table(rows: list[list[str]]) -> None:
    """Header + rows as wallwm/eval/report.py's `table` makes them, as a terminal table."""
    t = Table(title="closed-loop success rate [95% Wilson interval]")
    for h in rows[0]:
        t.add_column(h, no_wrap=True)
    for r in rows[1:]:
        t.add_row(*r)
    console.print(t)


def eval_cmd(
    run: Annotated[str | None, typer.Option("--run", help="training run id: its model "
                                            "(tag wallwm.model_uri) is evaluated")] = None,
    model: Annotated[str | None, typer.Option("--model", help="model URI (models:/m-..., "
                                              "runs:/<id>/model or a folder)")] = None,
    episodes: Annotated[int | None, typer.Option(
        "--episodes", help="closed-loop episodes per task and condition (default "
        "eval.episodes; 0: offline only)")] = None,
    build: Annotated[Path | None, typer.Option(
        help="build folder the model was trained on (default: found by its build id)")] = None,
    params: Annotated[list[Path] | None, typer.Option(
        "--params", help="Extra YAML merged over params.yaml (repeatable).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override one key, e.g. --set eval.workers=1.")] = None,
    fresh: Annotated[bool, typer.Option(
        help="evaluate again even if this model has an evaluation with these settings")] = False,
) -> None:
    """Evaluate a model offline (held-out episodes) and in Meta-World's closed loop; prints the
    MLflow evaluation run and the success table."""
    if bool(run) == bool(model):
        raise _fail("give exactly one of --run RUN_ID or --model URI", EXIT_INPUT)
    if episodes is not None and episodes < 0:
        raise _fail(f"--episodes {episodes}: use 0 (offline only) or a positive count",
                    EXIT_INPUT)
    try:
        load_params(extra_files=params or [], sets=set_ or [])
    except ConfigError as e:
        raise _fail(str(e), EXIT_INPUT) from None
    from components.stack import require_stack

    require_stack()  # exit 3 with the hint when a service is missing or stale
    from components.tracking.evaluation import EvaluationInputError, model_of_run

    try:  # an unknown run, or one without a model, fails before Prefect and torch load
        uri = model or model_of_run(str(run))
    except EvaluationInputError as e:
        raise _fail(str(e), EXIT_INPUT) from None
    from flows.evaluate import evaluate
    from wallwm.eval.offline import BuildNotFoundError
    from wallwm.eval.spec import PolicyMismatchError

    try:
        out = evaluate(run_id=run, model_uri=uri, build_dir=str(build) if build else None,
                       closed_loop_episodes=episodes, params_files=[str(x) for x in params or []],
                       sets=set_ or [], fresh=fresh)
    except PolicyMismatchError as e:
        raise _fail(str(e), EXIT_MISMATCH) from None
    except (EvaluationInputError, BuildNotFoundError) as e:
        raise _fail(str(e), EXIT_INPUT) from None
    console.print(f"evaluation run: {out['url']}" + (" (reused)" if out["reused"] else ""),
                  highlight=False, soft_wrap=True)
    for k, v in out["headline"].items():
        console.print(f"  {k} = {v:.4f}", highlight=False)
    if out["success_table"]:
        print_success_table(out["success_table"])
    if out["out_dir"]:
        console.print(f"report: {Path(out['out_dir']) / 'report.html'}", highlight=False,
                      soft_wrap=True)


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(eval_cmd)
    app()


if __name__ == "__main__":
    main()
