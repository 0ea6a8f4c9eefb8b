"""Configuration errors that name the key path, the bad value and what is allowed."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class ConfigError(ValueError):
    """A parameter file or override is invalid; the message is meant for the user."""


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def format_validation_error(err: ValidationError, source: str) -> str:
    """Render pydantic's errors as `source: key.path = value: what is allowed` lines."""
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = _path(e["loc"])
        value = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `wallwm config show` lists every key)"
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {loc or '<root>'} = {shown}: {msg}")
    return "\n".join(lines)
