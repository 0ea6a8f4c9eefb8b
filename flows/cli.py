"""`wallwm`: the command line of the platform (one sub-command per stage, plus the local stack).

Every command takes `--params FILE` (merged over params.yaml) and `--set key.path=value`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from wallwm.config import ConfigError, Params, load_params

app = typer.Typer(
    help="WALL-WM platform: data builds, training, export and release of the event-level "
    "world-action model. Start with `wallwm stack up`, then `wallwm retrain`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Show and check the resolved configuration.", no_args_is_help=True)
stack_app = typer.Typer(
    help="The local service stack: MLflow, S3, Prefect, Ray.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(stack_app, name="stack")
data_app = typer.Typer(help="Versioned dataset builds (LeRobot v3.0, GX-validated, DVC-pinned).",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
model_app = typer.Typer(help="The WALL-WM dual-stream model.", no_args_is_help=True)
app.add_typer(model_app, name="model")

console = Console()
err = Console(stderr=True)

ParamsOpt = Annotated[
    list[Path] | None,
    typer.Option("--params", help="Extra YAML merged over params.yaml (repeatable)."),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override one key, e.g. --set train.max_steps=50.")
]


def resolve(params: list[Path] | None, sets: list[str] | None) -> Params:
    """Load the configuration or exit 2 with the loader's message."""
    try:
        return load_params(extra_files=params or [], sets=sets or [])
    except ConfigError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@config_app.command("show")
def config_show(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="yaml or json")] = "yaml",
) -> None:
    """Print the resolved configuration (params.yaml + --params + --set), validated."""
    p = resolve(params, set_)
    data = p.model_dump(mode="json")
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        err.print(f"[bold red]error:[/] --format {fmt!r}: allowed are yaml, json")
        raise typer.Exit(2)


def _print_stack(state) -> None:
    table = Table(title=f"wallwm stack ({state.home})")
    for col in ("service", "url", "state", "pid", "note"):
        table.add_column(col)
    for s in state.services.values():
        if s.external:
            mark = (
                "[green]external, reachable[/]" if s.healthy else "[yellow]external, unreachable[/]"
            )
        elif s.healthy:
            mark = "[green]healthy[/]"
        elif s.running:
            mark = "[yellow]running, not answering[/]"
        else:
            mark = "[red]stopped[/]"
        table.add_row(s.name, s.url or "-", mark, str(s.pid or "-"), s.note)
    console.print(table)


@stack_app.command("up")
def stack_up(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Start the services that are not running (or given by env vars) and wait for health."""
    from components.stack import StackError, up

    p = resolve(params, set_)
    try:
        with console.status("starting the local stack (MLflow, S3, Prefect, Ray)...") as spin:
            state = up(p.services, on_wait=lambda m: _waiting(spin, m), registry=p.registry)
    except StackError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    _print_stack(state)
    console.print(f"addresses written to {Path(state.home) / 'stack.env'}")


def _waiting(spin, message: str) -> None:
    """Say why `up`/`down` sits still: another one holds the stack's lock."""
    err.print(f"[yellow]{message}[/]", highlight=False, soft_wrap=True)
    if spin is not None:
        spin.update("waiting for the other `wallwm stack` command...")


@stack_app.command("status")
def stack_status(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Each service with its URL, whether it runs and whether it answers."""
    from components.stack import status

    p = resolve(params, set_)
    state = status(params=p.services)
    _print_stack(state)
    if state.busy:
        console.print(f"[yellow]in progress:[/] {state.busy} holds the stack's lock; run "
                      f"`wallwm stack status` again when it is done", highlight=False)
    ours = [s for s in state.services.values() if not s.external and s.url]
    if ours and not all(s.healthy for s in ours):
        raise typer.Exit(3)


@stack_app.command("down")
def stack_down() -> None:
    """Stop every process `stack up` started, and nothing else. Data stays under the home."""
    from components.stack import StackError, down

    try:
        n = down(on_wait=lambda m: _waiting(None, m))
    except StackError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"stopped {n} process(es); data kept")


@data_app.command("build")
def data_build(
    sources: Annotated[
        list[str] | None,
        typer.Option("--sources", help="Source spec(s), e.g. sim:episodes=20 or "
                     "lerobot:path=/data/ds,tier=t2_robot_public (default: data.sources)."),
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    repo: Annotated[
        Path | None, typer.Option(help="DVC repository that receives data.dvc (default: this project).")
    ] = None,
) -> None:
    """Build (or reuse) the dataset, update data.dvc, push, and log the lineage to MLflow."""
    p = resolve(params, set_)
    _require_stack()
    from flows.build_dataset import build_dataset
    from wallwm.data.build import BuildFailedError

    specs = [s for item in sources or [] for s in _split_specs(item)] or p.data.sources
    try:
        out = build_dataset([str(x) for x in params or []], set_ or [], specs,
                            str(repo) if repo else None)
    except BuildFailedError as e:  # every episode failed: the records are kept, say where
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    c = out["counts"]
    console.print(
        f"build [bold]{out['build_id']}[/] ({'reused' if out['reused'] else 'new'}): "
        f"{c['episodes']} episodes, {c['frames']} frames, {c['quarantined']} quarantined\n"
        f"  folder: {out['build_dir']}\n  data.dvc md5: {out['dvc_md5']}"
        + (f" (pushed to {out['pushed_to']})" if out["pushed_to"] else "")
    )


def _require_stack() -> None:
    """Exit 3 with the hint unless every service answers (before Prefect or MLflow load)."""
    from components.stack import require_stack

    require_stack()


def _split_specs(item: str) -> list[str]:
    """`--sources "sim:episodes=2 lerobot:path=x"` also works (space-separated)."""
    return [s for s in item.split() if s]


@model_app.command("summary")
def model_summary(
    preset: Annotated[str | None, typer.Option(help="tiny, base or large (default: model.preset)")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Parameter counts per stream (video, action, reasoning, text), built on the meta device."""
    from wallwm.model.summary import print_summary, summarize

    p = resolve(params, (set_ or []) + ([f"model.preset={preset}"] if preset else []))
    if as_json:
        sys.stdout.write(json.dumps(summarize(p), indent=2) + "\n")
    else:
        print_summary(p, console=console)


@app.command("train")
def train_cmd(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    build: Annotated[Path | None, typer.Option(help="build folder (default: the published data/)")]
    = None,
    run_name: Annotated[str | None, typer.Option(help="name the run; the same name resumes it")]
    = None,
    fresh: Annotated[bool, typer.Option(help="ignore earlier checkpoints of this run name")]
    = False,
) -> None:
    """Train the curriculum (train.stages) on a build; train.workers > 1 runs on Ray Train."""
    resolve(params, set_)
    _require_stack()
    from flows.train import ResumeMismatch, train

    try:
        out = train([str(x) for x in params or []], set_ or [], str(build) if build else None,
                    run_name, resume=not fresh)
    except ResumeMismatch as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if out.get("reused"):
        console.print(f"run {out['run_name']} is complete: nothing to train (model "
                      f"{out.get('model_uri')}); use --run-name NEW or --fresh to train again")
    for name, st in out["stages"].items():
        console.print(f"{name}: validation loss {st.get('initial_val')} -> "
                      f"{st.get('final_val')} ({st.get('steps')} steps), best {st.get('best')}")
    console.print(f"run {out['run_name']} (MLflow {out['mlflow_run_id']}), model "
                  f"{out.get('model_uri', '-')}")


@app.command("retrain")
def retrain(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """The end-to-end retrain flow (what `make run` runs), against the running stack."""
    resolve(params, set_)  # fail fast on a bad configuration
    _require_stack()
    from flows.retrain import main

    raise typer.Exit(main(params=[str(x) for x in params or []], sets=set_ or []))


def _register_subcommands() -> None:
    """Sub-apps of the later stages, each in its own file (flows/cli_<stage>.py)."""
    from flows.cli_distill import distill_cmd, export_cmd
    from flows.cli_eval import eval_cmd
    from flows.cli_registry import approve_cmd, promote_cmd, registry_app, reject_cmd
    from flows.cli_release import release_app
    from flows.cli_schedule import schedule_app

    app.command("eval")(eval_cmd)
    app.command("distill")(distill_cmd)
    app.command("export")(export_cmd)
    app.add_typer(release_app, name="release")
    app.command("approve")(approve_cmd)
    app.command("reject")(reject_cmd)
    app.command("promote")(promote_cmd)
    app.add_typer(registry_app, name="registry")
    app.add_typer(schedule_app, name="schedule")


_register_subcommands()

if __name__ == "__main__":
    app()
