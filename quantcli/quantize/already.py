"""What an input model already is: quantized (QDQ, QOperator, integer weights) or in half precision.

Converting such a model again makes no sense in most modes: a second rounding stacked on the first
(and a file that grows: dynamic mode on a QDQ model made it 1.81x larger), or a float16 model that
--mode fp16 has nothing to do for. `refusal` says, for a mode, why it cannot be done (exit 3);
`half_compute_nodes` lets the report count the nodes that were half precision before conversion
instead of calling them float32.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from quantcli.graph import COMPUTE_OPS, GraphIndex
from quantcli.text import count

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Integer and quantized-weight ops of the ai.onnx and com.microsoft domains (QOperator format).
QOPERATOR_OPS = frozenset(
    {
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "MatMulNBits",
        "MatMulBnb4",
        "QGemm",
        "QAttention",
        "QOrderedMatMul",
        "GatherBlockQuantized",
    }
)
INTEGER_TYPES = (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4)
HALF_TYPES = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}
MIN_WEIGHT_ELEMENTS = 16  # smaller initializers are constants (shapes, scales, zero points), not weights


@dataclass(frozen=True)
class InputKind:
    """quantized: how the model is quantized ("" when it is not); weights: its weight initializers
    (>= 16 values) counted by element type name."""

    quantized: str
    weights: Counter

    @property
    def half(self) -> str:
        """ "float16"/"bfloat16" when every float weight is in that type, else ""."""
        floats = {t: n for t, n in self.weights.items() if t in ("float32", "float64", *HALF_TYPES.values())}
        kinds = set(floats)
        return kinds.pop() if len(kinds) == 1 and kinds <= set(HALF_TYPES.values()) else ""


def input_kind(model: onnx.ModelProto) -> InputKind:
    ops = Counter(n.op_type for n in model.graph.node)
    qdq = sum(ops[o] for o in QDQ_OPS)
    qop = {o: n for o, n in ops.items() if o in QOPERATOR_OPS or o.startswith("QLinear")}
    weights = Counter(
        _type_name(t.data_type) for t in model.graph.initializer if _elements(t) >= MIN_WEIGHT_ELEMENTS
    )
    found = []
    if qdq:
        found.append(f"QDQ: {qdq} QuantizeLinear/DequantizeLinear")
    if qop:
        found.append("QOperator: " + ", ".join(f"{n} {o}" for o, n in sorted(qop.items())))
    integer = _integer_weights(model)
    if integer and not found:
        found.append(count(integer, "integer weight initializer"))
    return InputKind("; ".join(found), weights)


def refusal(kind: InputKind, mode: str) -> str | None:
    """Why converting a model of this kind in `mode` makes no sense, or None when it does.

    The integer modes compute a half-precision model in float32 (preprocess/float32.py): not refused."""
    if kind.quantized:
        return (
            f"is already quantized ({kind.quantized}): converting it again with --mode {mode} would stack a "
            "second rounding on the first (and grow the file); convert the float model it was made from"
        )
    half = kind.half
    if not half:
        return None
    count = kind.weights[half]
    if mode in ("fp16", "bf16"):
        return f"is already {half} (all {count} float weights): --mode {mode} has nothing to convert" + (
            " (bfloat16 would only lose precision, in the same size)"
            if mode == "bf16" and half == "float16"
            else ""
        )
    return None


def half_compute_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Compute nodes (Conv, ConvTranspose, Gemm, MatMul) that read a float16/bfloat16 tensor, with
    that type: what they run in before any conversion."""
    index = GraphIndex(model.graph)
    found: dict[str, str] = {}
    for n in model.graph.node:
        if n.op_type not in COMPUTE_OPS:
            continue
        half = next(
            (HALF_TYPES[t] for i in n.input[:2] if i and (t := index.elem_type(i)) in HALF_TYPES), None
        )
        if half:
            found[n.name] = half
    return found


def _integer_weights(model: onnx.ModelProto) -> int:
    """Integer initializers (>= 16 values) that a Cast turns into float: weights stored quantized
    and dequantized by hand (Cast -> Mul), not integer constants such as indices or masks."""
    to_float = {
        i
        for n in model.graph.node
        if n.op_type == "Cast"
        for a in n.attribute
        if a.name == "to"
        and a.i in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
        for i in n.input
    }
    return sum(
        t.data_type in INTEGER_TYPES and _elements(t) >= MIN_WEIGHT_ELEMENTS and t.name in to_float
        for t in model.graph.initializer
    )


def _type_name(data_type: int) -> str:
    names = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64", **HALF_TYPES}
    return names.get(data_type) or TensorProto.DataType.Name(data_type).lower()


def half_type(elem_type: int | None) -> str | None:
    return HALF_TYPES.get(elem_type)


def _elements(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n
