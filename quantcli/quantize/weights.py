"""Weight-only INT8: weights stored INT8 per output channel and dequantized at run time.

Activations stay float, so no calibration is needed; the file shrinks to about a quarter. The
rewrite is the QDQ rewriter's initializer path (INT8 initializer -> DequantizeLinear -> op).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from quantcli.graph import GraphIndex
from quantcli.quantize.embedding import plan_embedding
from quantcli.quantize.nonfinite import reason as nonfinite_reason
from quantcli.quantize.plan import FLOAT, INT8, NodePlan, QuantConfig, QuantPlan, TensorParams
from quantcli.quantize.rules import rule_for

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def weight_of(node: onnx.NodeProto, index: GraphIndex) -> tuple[str | None, str]:
    """The float32 constant weight of a weight-bearing node, or (None, why there is none)."""
    rule = rule_for(node)
    if node.op_type not in WEIGHT_OPS or rule is None or rule.weight_input is None:
        return None, f"{node.op_type} has no weight"
    if len(node.input) <= rule.weight_input:
        return None, "no weight input"
    name = node.input[rule.weight_input]
    if name not in index.initializers:
        return None, index.why_not_constant(name)
    if index.initializers[name].data_type != TensorProto.FLOAT:
        return None, "weight is not float32"
    values = index.array(name)
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        return None, nonfinite_reason(name, (bad, int(values.size)))
    return name, ""


def constant_weight_of(node: onnx.NodeProto, index: GraphIndex, mode: str) -> tuple[str | None, str]:
    """weight_of for the modes that quantize constant weights only: why there is none says so
    (NaN/inf weights say what they hold)."""
    from quantcli.quantize.nonfinite import KEPT

    weight, why_not = weight_of(node, index)
    if weight is None and not why_not.startswith(KEPT):
        why_not = f"{why_not} ({mode} quantizes constant weights)"
    return weight, why_not


def plan_weights_int8(model: onnx.ModelProto, config: QuantConfig) -> QuantPlan:
    index = GraphIndex(model.graph)
    nodes: list[NodePlan] = []
    tensors: dict[str, TensorParams] = {}
    for node in model.graph.node:
        embedding = plan_embedding(node, index, tensors, config)
        if embedding is not None:
            nodes.append(embedding)
            continue
        weight, why_not = weight_of(node, index)
        if weight is None:
            reason = "weight-only mode: activations stay float" if node.op_type not in WEIGHT_OPS else why_not
            nodes.append(NodePlan(node.name, node.op_type, FLOAT, reason))
            continue
        if weight not in tensors:
            axis = rule_for(node).weight_axis(node, index) if config.per_channel else None
            tensors[weight] = TensorParams.for_weight(index.array(weight), axis, config)
        nodes.append(
            NodePlan(
                node.name,
                node.op_type,
                INT8,
                "weight stored INT8 and dequantized at run time; activations float",
                quantized_inputs=[weight],
            )
        )
    return QuantPlan("weights-int8", config, nodes, tensors, 0)
