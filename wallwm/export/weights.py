"""Where the weights of an exported graph are used, for the FP8 and BF16 rewrites.

A weight use is a constant matrix feeding a GEMM or a table lookup: `MatMul` input 1 (K, N),
`Gemm` input 1 ((N, K) with transB, else (K, N)), `Gather` input 0 (an embedding table, rows
are the channels). Its *channel axis* is the output-channel axis of that matrix, the axis a
per-channel scale runs along. Everything else (biases, norms, position tables, RoPE angles)
stays FP32: it is small and sensitive.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

MIN_WEIGHT = 256  # smaller constants are not worth a rewrite (and are often not weights)


@dataclass(frozen=True)
class WeightUse:
    init: str  # initializer name
    axis: int  # the channel axis of the 2-D weight
    activation: str | None  # the GEMM's other input (None for Gather: its input is ids)
    node: int  # index of the node that reads the initializer
    gemm: int | None = None  # index of the GEMM when that is not `node` (Transpose between)

    @property
    def consumer(self) -> int:
        """The GEMM/Gather node whose input 0 is the activation."""
        return self.node if self.gemm is None else self.gemm


def _attr(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def weight_uses(model: onnx.ModelProto) -> list[WeightUse]:
    """Every GEMM/Gather that reads a float 2-D initializer of at least MIN_WEIGHT values."""
    inits = {i.name: i for i in model.graph.initializer}

    def big_float(name: str) -> bool:
        t = inits.get(name)
        return (t is not None and t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2
                and int(np.prod(t.dims)) >= MIN_WEIGHT)

    # W^T computed by a Transpose node (the exporter leaves some nn.Linear weights that way):
    # the use is the Transpose's input, whose output channels are its axis 0
    transposed = {n.output[0]: (i, n.input[0]) for i, n in enumerate(model.graph.node)
                  if n.op_type == "Transpose" and big_float(n.input[0])
                  and list(next((a.ints for a in n.attribute if a.name == "perm"), [1, 0]))
                  == [1, 0]}
    out = []
    for i, n in enumerate(model.graph.node):
        if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in transposed:
            j, init = transposed[n.input[1]]
            out.append(WeightUse(init, 0, n.input[0], j, gemm=i))
        elif n.op_type == "MatMul" and len(n.input) == 2 and big_float(n.input[1]):
            out.append(WeightUse(n.input[1], 1, n.input[0], i))
        elif n.op_type == "Gemm" and big_float(n.input[1]) and not _attr(n, "transA"):
            out.append(WeightUse(n.input[1], 0 if _attr(n, "transB") else 1, n.input[0], i))
        elif n.op_type == "Gather" and big_float(n.input[0]) and _attr(n, "axis") == 0:
            out.append(WeightUse(n.input[0], 0, None, i))
    return out


def by_initializer(uses: list[WeightUse]) -> dict[str, list[WeightUse]]:
    """Uses grouped per initializer; a weight read along two different axes is left alone."""
    groups: dict[str, list[WeightUse]] = defaultdict(list)
    for u in uses:
        groups[u.init].append(u)
    return {k: v for k, v in groups.items() if len({u.axis for u in v}) == 1}


def initializer_array(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def replace_input(model: onnx.ModelProto, node_index: int, old: str, new: str) -> None:
    node = model.graph.node[node_index]
    for k, name in enumerate(node.input):
        if name == old:
            node.input[k] = new


def drop_initializers(model: onnx.ModelProto, names: set[str]) -> None:
    keep = [t for t in model.graph.initializer if t.name not in names]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def graph_bytes(model: onnx.ModelProto) -> int:
    return len(model.SerializeToString())


def strip_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop what the runtime never reads: the exporter's per-node metadata (stack traces with
    local paths, FX names: about a megabyte for the tiny encoder), doc strings and the
    intermediate value_info; and keep one copy of initializers with identical contents (the
    constant folder repeats RoPE tables per block). In place; returns `model`."""
    for n in model.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""
    model.graph.doc_string = ""
    del model.graph.value_info[:]
    io = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    for t in model.graph.initializer:
        if t.name in io or not t.raw_data:
            continue
        key = (t.data_type, tuple(t.dims), t.raw_data)
        if key in first:
            rename[t.name] = first[key]
        else:
            first[key] = t.name
    if rename:
        for n in model.graph.node:
            for k, name in enumerate(n.input):
                if name in rename:
                    n.input[k] = rename[name]
        drop_initializers(model, set(rename))
    return model
