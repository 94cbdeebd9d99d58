"""A Flatten between integer convolutions and an INT8 Gemm reads channels-last (NHWC) order.

onnxruntime's CPU provider runs QLinearConv channels-last (its NhwcTransformer, at the default
ORT_ENABLE_ALL level) and carries that layout through the integer ops after it (QLinearAdd, MaxPool
on UINT8 ...) up to the first op that depends on the layout, where it inserts a Transpose back to
NCHW: before a Flatten -> Gemm head, that is a Transpose plus a Flatten run on every inference. When
the Flatten reads NHWC order instead (a Transpose(0, 2, 3, 1) written before it, the Gemm weight's
input dimension permuted from C, H, W order to H, W, C order: the same function), onnxruntime
cancels the two Transposes. Measured on digits_cnn (onnxruntime 1.32, one thread, interleaved medians
in shuffled order, 3 repeats): latency / FP32 0.655 -> 0.642 at batch 1, 0.446 -> 0.436 at batch 32;
outputs bit-identical. (At ORT_ENABLE_EXTENDED, with no NHWC layout, the written Transpose runs: one
small Transpose on UINT8 data.)

The rule reads only the model and the plan's precisions, so a replayed plan gives the same graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantcli.graph import GraphIndex, NameAllocator, attr
from quantcli.quantize.plan import INT8

# INT8 ops onnxruntime runs channels-last once their input is: checked one by one, Conv -> op ->
# Flatten -> Gemm, in its optimized graph (the Transposes cancel; outputs bit-identical).
_NHWC_SOURCES = frozenset({"Conv"})
_NHWC_CARRIERS = frozenset(
    {"Relu", "Clip", "MaxPool", "Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool"}
)

REASON = (
    "Flatten on quantized data, in NHWC order (a Transpose before it, the Gemm weight permuted to "
    "match): onnxruntime runs the convolutions before it channels-last and no longer transposes back"
)


def nhwc_flattens(model: onnx.ModelProto, index: GraphIndex, precision: dict[str, str]) -> dict[str, tuple]:
    """Flatten node name -> (C, H, W, Gemm node) for each Flatten the rule applies to."""
    found: dict[str, tuple] = {}
    memo: dict[str, bool] = {}
    for node in model.graph.node:
        if node.op_type != "Flatten" or node.domain not in ("", "ai.onnx"):
            continue
        if precision.get(node.name) != INT8 or attr(node, "axis", 1) != 1:
            continue
        chw = _static_chw(index, node.input[0])
        if chw is None or not _channels_last(node.input[0], index, precision, memo):
            continue
        gemm = index.only_reader(node.output[0])
        if gemm is None or gemm.op_type != "Gemm" or precision.get(gemm.name) != INT8:
            continue
        if gemm.input[0] != node.output[0]:
            continue
        weight = gemm.input[1]
        # The weight is permuted in place: nothing else may use it (a subgraph, a graph output).
        if weight not in index.initializers or index.only_reader(weight) is not gemm:
            continue
        if index.rank(weight) != 2:
            continue
        found[node.name] = (*chw, gemm)
    return found


def _static_chw(index: GraphIndex, name: str) -> tuple[int, int, int] | None:
    dims = index.dims(name)
    if dims is None or len(dims) != 4 or any(d is None for d in dims[1:]):
        return None
    return dims[1], dims[2], dims[3]


def _channels_last(name: str, index: GraphIndex, precision: dict[str, str], memo: dict[str, bool]) -> bool:
    """True when every path into `name` comes from INT8 Convs through INT8 ops that keep NHWC."""
    if name in memo:
        return memo[name]
    memo[name] = False  # cycles cannot occur in a valid graph; this guards the recursion anyway
    producer = index.producer.get(name)
    ok = False
    if producer is not None and producer.domain in ("", "ai.onnx") and precision.get(producer.name) == INT8:
        if producer.op_type in _NHWC_SOURCES:
            ok = True
        elif producer.op_type in _NHWC_CARRIERS:
            data = producer.input[:1] if producer.op_type == "Clip" else producer.input
            inputs = [i for i in data if i and i not in index.initializers]
            ok = bool(inputs) and all(_channels_last(i, index, precision, memo) for i in inputs)
    memo[name] = ok
    return ok


def permute_gemm_weight(
    values: np.ndarray, chw: tuple[int, int, int], trans_b: bool, inverse: bool = False
) -> np.ndarray:
    """The Gemm weight's input dimension from C, H, W order to H, W, C order (back with `inverse`)."""
    c, h, w = chw
    if trans_b:  # [N, C*H*W]
        if inverse:
            return values.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(values.shape)
        return values.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(values.shape)
    if inverse:  # [C*H*W, N]
        return values.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(values.shape)
    return values.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(values.shape)


def apply_nhwc_flattens(model: onnx.ModelProto, flattens: dict[str, tuple], names: NameAllocator) -> None:
    """Write a Transpose(0, 2, 3, 1) before each Flatten and permute its Gemm's weight to match."""
    if not flattens:
        return
    inits = {t.name: t for t in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.name in flattens:
            c, h, w, gemm = flattens[node.name]
            weight = inits[gemm.input[1]]
            values = numpy_helper.to_array(weight)
            permuted = permute_gemm_weight(values, (c, h, w), bool(attr(gemm, "transB", 0)))
            weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(permuted), weight.name))
            nhwc = names.new(f"{node.input[0]}_nhwc")
            nodes.append(
                helper.make_node(
                    "Transpose",
                    [node.input[0]],
                    [nhwc],
                    name=names.new(f"{node.name}_nhwc"),
                    perm=[0, 2, 3, 1],
                )
            )
            node.input[0] = nhwc
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
