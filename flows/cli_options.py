"""What every `wallwm` sub-command shares: the --params/--set options and loading them, where
a configuration error is one red line and exit code 2 (never a traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from wallwm.config import ConfigError, Params, load_params

err = Console(stderr=True)
EXIT_INPUT = 2

ParamsOpt = Annotated[list[Path] | None, typer.Option(
    "--params", help="Extra YAML merged over params.yaml (repeatable).")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override one key, e.g. --set train.max_steps=50.")]


def params_or_exit(params: list[Path] | None, sets: list[str] | None) -> Params:
    """The resolved configuration; exit 2 naming the file, key and value when it is invalid."""
    try:
        return load_params(extra_files=params or [], sets=sets or [])
    except ConfigError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INPUT) from None
