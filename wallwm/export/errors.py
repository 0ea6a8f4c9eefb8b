"""The one error type of the export: it names the graph, the output and the figure that failed.

Why one type with fields: the flow, the CLI and the tests all need to say *which* graph missed
*which* bound on *which* output; a message alone would have to be parsed back.
"""

from __future__ import annotations


class ExportError(ValueError):
    """An export that must not be shipped. Nothing is left in the output folder when raised.

    graph: the graph file or role ("event_encoder", "unified_action_step", ...); output: the
    graph output or sample quantity; figure: the measured quantity (e.g. "onnx_parity_max_abs");
    value / bound: what was measured and the limit it broke (when there is one)."""

    def __init__(self, message: str, *, graph: str = "", output: str = "", figure: str = "",
                 value: float | None = None, bound: float | None = None):
        where = ", ".join(f"{k} {v}" for k, v in (("graph", graph), ("output", output),
                                                   ("figure", figure)) if v)
        super().__init__(f"{message} [{where}]" if where else message)
        self.message, self.graph, self.output, self.figure = message, graph, output, figure
        self.value, self.bound = value, bound
