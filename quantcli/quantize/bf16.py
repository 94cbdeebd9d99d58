"""BF16 mode: weights stored as bfloat16, computed in float32.

onnxruntime's CPU provider has no bfloat16 arithmetic and, unlike float16, no automatic Cast
fallback, so a model computing in bfloat16 does not load there (FIELD_NOTES.md; onnxruntime
#26311). On CPU, bf16 is therefore storage: every float32 initializer larger than a few values
becomes bfloat16 (float32's exponent range: nothing overflows, unlike float16) and one
Cast(to=float32) feeds it to its consumers under its original name. Half the file, float32 compute,
~3 significant digits per weight. Rounding is to nearest, ties to even.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from quantcli.errors import BadPlanError
from quantcli.graph import GraphIndex, NameAllocator, copy_model
from quantcli.quantize.plan import FLOAT, NodePlan

SMALL_CONSTANT = 8  # at most this many values: not worth a Cast
_STORED = "computes in float32 (onnxruntime's CPU provider has no bfloat16 arithmetic); its weights are stored as bfloat16 and Cast to float32 before use"
_FLOAT16 = (
    "runs unchanged in float16 (bf16 mode stores float32 weights as bfloat16, and this node reads none)"
)
_PLAIN = "computes in float32 (bf16 mode changes how weights are stored, not how they are computed)"


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    return np.where(nan, ((u >> 16) | 0x0040).astype(np.uint16), rounded)


def plan_bf16(model: onnx.ModelProto) -> list[NodePlan]:
    index = GraphIndex(model.graph)
    stored = {
        name
        for name, t in index.initializers.items()
        if t.data_type == TensorProto.FLOAT and int(np.prod(t.dims)) > SMALL_CONSTANT and index.storable(name)
    }
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output)
    }
    types.update((t.name, t.data_type) for t in model.graph.initializer)
    plans = []
    for node in model.graph.node:
        reads = [i for i in node.input if i in stored]
        values = [types.get(t) for t in (*node.input, *node.output) if t]
        plain = _FLOAT16 if TensorProto.FLOAT16 in values and TensorProto.FLOAT not in values else _PLAIN
        kept = [why for i in dict.fromkeys(node.input) if (why := index.why_kept(i))]
        reason = "; ".join([_STORED if reads else plain, *kept])
        plans.append(NodePlan(node.name, node.op_type, FLOAT, reason, quantized_inputs=reads))
    return plans


def rewrite_bf16(model: onnx.ModelProto, nodes: list[NodePlan], *, in_place: bool = False) -> onnx.ModelProto:
    """Store the initializers the plan lists as bfloat16, each behind one Cast to float32."""
    out = model if in_place else copy_model(model)
    graph = out.graph
    index = GraphIndex(graph)
    known = {n.name for n in graph.node}
    wanted: list[str] = []
    for plan in nodes:
        if plan.name not in known:
            raise BadPlanError(f"plan names node '{plan.name}', which is not in the model")
        for name in plan.quantized_inputs:
            t = index.initializers.get(name)
            if t is None or t.data_type != TensorProto.FLOAT or not index.storable(name):
                why = (
                    "it is not a float32 initializer"
                    if t is None or t.data_type != TensorProto.FLOAT
                    else "it is also a graph output"
                )
                raise BadPlanError(f"plan stores '{name}' of node '{plan.name}' as bfloat16, but {why}")
            if name not in wanted:
                wanted.append(name)
    names = NameAllocator(graph)
    casts, replaced = [], {}
    for name in wanted:
        bits = to_bfloat16_bits(index.array(name))
        stored = names.new(f"{name}_bf16")
        replaced[name] = helper.make_tensor(
            stored, TensorProto.BFLOAT16, bits.shape, bits.tobytes(), raw=True
        )
        casts.append(
            helper.make_node("Cast", [stored], [name], name=names.new(f"{name}_Cast"), to=TensorProto.FLOAT)
        )
    kept = [replaced.get(t.name, t) for t in graph.initializer]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + body)
    return out
