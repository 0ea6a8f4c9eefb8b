"""Parameter counts per stream, from a model built on the `meta` device (no memory, any size).

`wallwm model summary --preset tiny|base|large` prints `print_summary`.
"""

from __future__ import annotations

from typing import Any

import torch

from wallwm.model.config import WallWMConfig

STREAMS = ("video", "action", "reasoning", "text")


def _config(params: Any, preset: str | None) -> WallWMConfig:
    if isinstance(params, WallWMConfig):
        return params
    return WallWMConfig.from_params(params, preset)


def summarize(params: Any, preset: str | None = None) -> dict[str, Any]:
    """{preset, video, action, reasoning, text, total, trainable, frozen} parameter counts.

    `params`: a `Params` tree, its `ModelParams`, or a `WallWMConfig`. video = the video tower
    (without its text encoder, counted as text); reasoning includes its frozen text decoder
    (`frozen` says how much of the total that is)."""
    from wallwm.model.wallwm import WallWM

    cfg = _config(params, preset)
    with torch.device("meta"):
        model = WallWM(cfg)
    parts = {"video": model.video, "action": model.action, "reasoning": model.reasoning,
             "text": model.text}
    out: dict[str, Any] = {"preset": preset or getattr(getattr(params, "model", params),
                                                         "preset", "custom")}
    for k, m in parts.items():
        out[k] = sum(p.numel() for p in m.parameters())
    out["total"] = sum(p.numel() for p in model.parameters())
    out["frozen"] = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    out["trainable"] = out["total"] - out["frozen"]
    return out


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def print_summary(params: Any, preset: str | None = None, console: Any = None) -> dict[str, Any]:
    """A rich table of `summarize`; returns the dict."""
    from rich.console import Console
    from rich.table import Table

    s = summarize(params, preset)
    table = Table(title=f"WALL-WM parameters, preset {s['preset']}")
    table.add_column("stream")
    table.add_column("parameters", justify="right")
    table.add_column("share", justify="right")
    for k in (*STREAMS, "total", "trainable", "frozen"):
        table.add_row(k, f"{s[k]:,} ({_human(s[k])})", f"{100 * s[k] / s['total']:.1f}%")
    (console or Console()).print(table)
    return s
