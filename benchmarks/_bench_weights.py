"""Bytes of the MatMul/Gemm weights in a model file, as written (before onnxruntime optimizes it).

A weight is an initializer that reaches a weight input of a MatMul-like or Gemm-like node, directly or
through nodes that only change how a constant is stored: DequantizeLinear (its data, scale and zero
point all count), Cast, Transpose, Reshape, Squeeze, Unsqueeze, Identity. So a float32 MatMul weight,
a float16 one, a DequantizeLinear(int8/int4 weight, scale, zero point) -> MatMul, and MatMulNBits'
packed B, scales and zero_points all count; an activation input (one that comes from the graph's
inputs) does not, nor does a bias (Gemm's C, MatMulNBits' bias).
Bytes are computed from each initializer's shape and element type (4-bit types: half a byte an
element, rounded up), so the file's raw or external data need not be loaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import onnx
from onnx import TensorProto

# op type -> the inputs that hold the weight of a MatMul/Gemm (their data, scales and zero points)
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "MatMul": (0, 1),
    "FusedMatMul": (0, 1),
    "Gemm": (0, 1),
    "MatMulNBits": (1, 2, 3),
    "MatMulInteger": (1, 3),
    "DynamicQuantizeMatMul": (1, 2, 3),
    "MatMulIntegerToFloat": (1, 3, 5),
    "QLinearMatMul": (3, 4, 5),
    "QGemm": (3, 4, 5),
}
# op type -> the inputs that carry the constant through (DequantizeLinear: data, scale, zero point)
PASS_THROUGH: dict[str, tuple[int, ...]] = {
    "DequantizeLinear": (0, 1, 2),
    "Cast": (0,),
    "Transpose": (0,),
    "Reshape": (0,),
    "Squeeze": (0,),
    "Unsqueeze": (0,),
    "Identity": (0,),
}
FOUR_BIT = frozenset({TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT4E2M1})


def tensor_bytes(tensor: TensorProto) -> int:
    elements = math.prod(tensor.dims)
    if tensor.data_type in FOUR_BIT:
        return (elements + 1) // 2
    return elements * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def matmul_weight_bytes(path: Path) -> int:
    """Bytes of the initializers that hold MatMul/Gemm weights (main graph; each initializer once)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:  # Constant nodes hold initializers too
        value = next((a.t for a in node.attribute if a.name == "value" and a.type == a.TENSOR), None)
        if node.op_type == "Constant" and value is not None:
            initializers[node.output[0]] = value

    def constants(name: str) -> set[str] | None:
        """The initializers a constant tensor is made of, or None when it depends on an activation."""
        if name in initializers:
            return {name}
        node = producers.get(name)
        if node is None or node.op_type not in PASS_THROUGH:
            return None
        data = constants(node.input[0])
        if data is None:
            return None
        rest = [
            node.input[i] for i in PASS_THROUGH[node.op_type][1:] if i < len(node.input) and node.input[i]
        ]
        return data | {n for n in rest if n in initializers}

    weights: set[str] = set()
    for node in graph.node:
        for i in WEIGHT_INPUTS.get(node.op_type, ()):
            if i < len(node.input) and node.input[i]:
                weights |= constants(node.input[i]) or set()
    return sum(tensor_bytes(initializers[n]) for n in weights)
