"""BF16 graphs: BF16 weights, BF16-rounded GEMM inputs, FP32 accumulation and I/O.

Every GEMM/embedding weight (wallwm/export/weights.py) is stored as a BFLOAT16 initializer and
cast to FP32 where it is read (half the bytes); every GEMM's activation input is rounded
through BFLOAT16 (`Cast` there and back). That is what BF16 tensor cores compute (BF16 inputs,
FP32 accumulation) and it runs on onnxruntime's CPU provider, which has `Cast` for BFLOAT16
but no BF16 GEMM kernels. Inputs and outputs stay FP32, so the bundle's tensor specs and the
runner do not change with the precision.
"""

from __future__ import annotations

import ml_dtypes
import onnx
from onnx import TensorProto, helper, numpy_helper

from wallwm.export.weights import (
    by_initializer,
    drop_initializers,
    initializer_array,
    replace_input,
    weight_uses,
)


def to_bf16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A BF16 copy of the FP32 `model`; returns (model, counts)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    uses = by_initializer(weight_uses(m))
    head: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    for init, group in uses.items():
        w = initializer_array(m, init)
        bn, fn = f"{init}.bf16", f"{init}.f32"
        inits.append(numpy_helper.from_array(w.astype(ml_dtypes.bfloat16), bn))
        head.append(helper.make_node("Cast", [bn], [fn], name=f"{init}.Cast", to=TensorProto.FLOAT))
        for u in group:
            replace_input(m, u.node, init, fn)
    drop_initializers(m, set(uses))
    before: dict[int, list[onnx.NodeProto]] = {}
    done: dict[str, str] = {}
    for u in weight_uses(model):
        a = u.activation
        if a is None:
            continue
        if a not in done:
            b, f = f"{a}.bf16", f"{a}.bf16_f32"
            before.setdefault(u.consumer, []).extend([
                helper.make_node("Cast", [a], [b], name=f"{a}.CastBF16", to=TensorProto.BFLOAT16),
                helper.make_node("Cast", [b], [f], name=f"{a}.CastF32", to=TensorProto.FLOAT)])
            done[a] = f
        m.graph.node[u.consumer].input[0] = done[a]
    nodes = list(head)
    for i, n in enumerate(m.graph.node):
        nodes.extend(before.get(i, []))
        nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(inits)
    m.graph.name = f"{model.graph.name}_bf16"
    return m, {"weights": len(uses), "activations": len(done)}
