"""Which INT8 weights of a model run on onnxruntime's U8S8 integer kernels, and whether any of their
pairs can saturate the int16 sums of x86 CPUs without VNNI (quantize/saturation.py).

Read from the model alone, the same on every host: a finding about the model, not about this CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from quantcli.graph import GraphIndex
from quantcli.quantize.rules import rule_for
from quantcli.quantize.saturation import KN, kernel_rows, pair_limit, same_sign_sums

LIMIT_8BIT = pair_limit(255)  # 8-bit activations reach code 255 (INT8 ones after the +128 shift)
_8BIT = (TensorProto.UINT8, TensorProto.INT8)


@dataclass
class LayerRisk:
    """One integer Conv/MatMul/Gemm on a U8S8 kernel: its INT8 weight and, when the weight was read,
    how many of its pairs exceed the limit (`pairs_over`) and its largest same-sign pair sum."""

    node: str
    op_type: str
    weight: str
    zero_point: str  # the weight's zero point initializer ("" when it has none)
    layout: str
    pairs: int | None = None
    pairs_over: int | None = None
    worst_pair: int | None = None

    @property
    def checked(self) -> bool:
        return self.pairs_over is not None


def u8s8_layers(
    graph: onnx.GraphProto, decode: Callable[[onnx.TensorProto], np.ndarray | None] | None = None
) -> list[LayerRisk]:
    """The graph's U8S8 integer layers, each weight checked when `decode` gives its values (None
    leaves it unchecked: inspect does not read external weight data unless asked)."""
    decode = decode or numpy_helper.to_array
    index = GraphIndex(graph)
    found: list[LayerRisk] = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        hit = _u8s8_weight(node, index)
        if hit is None:
            continue
        risk = LayerRisk(node.name, node.op_type, *hit)
        q = decode(index.initializers[risk.weight])
        if q is not None:
            pos, neg = same_sign_sums(kernel_rows(np.asarray(q), risk.layout))
            risk.pairs = int(pos.size)
            risk.pairs_over = int(np.count_nonzero((pos > LIMIT_8BIT) | (neg > LIMIT_8BIT)))
            risk.worst_pair = int(max(pos.max(initial=0), neg.max(initial=0)))
        found.append(risk)
    return found


def _dq_source(name: str, index: GraphIndex) -> onnx.NodeProto | None:
    p = index.producer.get(name)
    return p if p is not None and p.op_type == "DequantizeLinear" and p.domain in ("", "ai.onnx") else None


def _u8s8_weight(node: onnx.NodeProto, index: GraphIndex) -> tuple[str, str, str] | None:
    """(INT8 weight initializer, its zero point, pair layout) when onnxruntime runs the node on a
    U8S8 kernel."""
    if node.op_type == "MatMulInteger" and len(node.input) > 1:
        w = node.input[1]
        if index.elem_type(node.input[0]) in (TensorProto.UINT8, None) and _int8_init(w, index):
            return w, node.input[3] if len(node.input) > 3 else "", KN
        return None
    rule = rule_for(node)
    if rule is None or rule.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2:
        return None
    x_dq, w_dq = _dq_source(node.input[0], index), _dq_source(node.input[1], index)
    if x_dq is None or w_dq is None or not _eight_bit(x_dq, index):
        return None
    weight = w_dq.input[0]
    if not _int8_init(weight, index):
        return None
    if node.op_type == "Conv" and not _quantized_output(node, index):
        return None  # onnxruntime fuses DQ -> Conv [-> Relu/Clip] -> Q only: else a float Conv runs
    layout = rule.pair_layout(node, index.initializers[weight].dims)
    if layout is None:
        return None  # a depthwise Conv: widened to 16 bits before multiplying, never saturates
    return weight, w_dq.input[2] if len(w_dq.input) > 2 else "", layout


def _quantized_output(node: onnx.NodeProto, index: GraphIndex) -> bool:
    """Whether the node's output goes, through Relu/Clip only, into QuantizeLinear nodes only."""
    consumers = index.consumers.get(node.output[0], [])
    while len(consumers) == 1 and consumers[0].op_type in ("Relu", "Clip"):
        consumers = index.consumers.get(consumers[0].output[0], [])
    return bool(consumers) and all(c.op_type == "QuantizeLinear" for c in consumers)


def _eight_bit(dq: onnx.NodeProto, index: GraphIndex) -> bool:
    """Whether a DequantizeLinear reads 8-bit data: its zero point's type, else its input's (no
    zero point: uint8)."""
    if len(dq.input) > 2 and dq.input[2]:
        return index.elem_type(dq.input[2]) in _8BIT
    t = index.elem_type(dq.input[0])
    return t in _8BIT or t is None


def _int8_init(name: str, index: GraphIndex) -> bool:
    t = index.initializers.get(name)
    return t is not None and t.data_type == TensorProto.INT8 and len(t.dims) >= 2
