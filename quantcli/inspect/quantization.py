"""How a model is quantized: the Q/DQ and integer-op parameters it reads, per compute node and overall."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from quantcli.graph import COMPUTE_OPS, GraphIndex, attr, node_label
from quantcli.inspect.facts import ComputeNode, QParams, Quantization, Stats, TensorFacts
from quantcli.inspect.reading import _Values, dtype_name, tensor_bytes

Q_OPS = ("QuantizeLinear", "DequantizeLinear")
FLOAT_COMPUTE = (*COMPUTE_OPS, "FusedConv", "FusedGemm", "FusedMatMul")
# Integer compute ops: (activation, scale, zero point) and (weight, scale, zero point) input indices.
INTEGER_COMPUTE: dict[str, tuple[tuple[int, int | None, int | None], tuple[int, int | None, int | None]]] = {
    "QLinearConv": ((0, 1, 2), (3, 4, 5)),
    "QLinearConvTranspose": ((0, 1, 2), (3, 4, 5)),
    "QLinearMatMul": ((0, 1, 2), (3, 4, 5)),
    "QGemm": ((0, 1, 2), (3, 4, 5)),
    "ConvInteger": ((0, None, 2), (1, None, 3)),
    "MatMulInteger": ((0, None, 2), (1, None, 3)),
    "MatMulIntegerToFloat": ((0, 2, 4), (1, 3, 5)),
    "DynamicQuantizeMatMul": ((0, None, None), (1, 2, 3)),
    "MatMulNBits": ((0, None, None), (1, 2, None)),
}
# Where an op's output scale and zero point are (input indices), for ops with a quantized output.
OUTPUT_QPARAMS = {
    "QLinearConv": (6, 7),
    "QLinearConvTranspose": (6, 7),
    "QLinearMatMul": (6, 7),
    "QGemm": (7, 8),
}
# com.microsoft QLinear ops laid out as (x, x_scale, x_zp, y_scale, y_zp).
UNARY_QLINEAR = {
    "QLinearSoftmax",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearReduceMean",
}
OTHER_INTEGER_OPS = {"DynamicQuantizeLinear", "QAttention", "GatherBlockQuantized", "DynamicQuantizeLSTM"}
SHAPE_ONLY = ("Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")


@dataclass
class _QRef:
    """A (data, scale, zero point) triple some node reads: a Q/DQ, or an input of an integer op."""

    node: onnx.NodeProto
    data: str
    scale: str | None
    zero_point: str | None
    role: str  # weight, bias, constant (another quantized initializer), activation
    dtype: str  # the quantized type
    axis: int | None = None
    block_size: int | None = None


def _domain(node: onnx.NodeProto) -> str:
    return "" if node.domain == "ai.onnx" else node.domain


def _is_compute(node: onnx.NodeProto) -> bool:
    if node.op_type in INTEGER_COMPUTE:
        return True
    return node.op_type in FLOAT_COMPUTE and (_domain(node) == "" or node.op_type.startswith("Fused"))


def _input(node: onnx.NodeProto, i: int | None) -> str | None:
    return node.input[i] if i is not None and i < len(node.input) and node.input[i] else None


def _output(node: onnx.NodeProto) -> str:
    """The first output's name, "" when there is none (malformed graphs are inspected, not trusted)."""
    return node.output[0] if node.output else ""


def _qrefs(g: onnx.GraphProto, index: GraphIndex, values: _Values, types: dict[str, int]) -> list[_QRef]:
    """Every quantization parameter reference in the graph, with the role and type of its data."""

    def qtype(data: str | None, zp: str | None, default: str = "uint8") -> str:
        t = types.get(data) if data else None
        if t:
            return dtype_name(t)
        return dtype_name(values.tensors[zp].data_type) if zp in values else default

    refs = []
    for n in g.node:
        op = n.op_type
        triples: list[tuple[int | str, int | None, int | None]] = []
        if op == "DequantizeLinear":
            triples = [(0, 1, 2)]
        elif op == "QuantizeLinear":
            triples = [("out", 1, 2)]
        elif op == "MatMulNBits":  # weight-only: its input A is float, not quantized
            triples = [INTEGER_COMPUTE[op][1]]
        elif op in INTEGER_COMPUTE:
            triples = list(INTEGER_COMPUTE[op])
            if op in OUTPUT_QPARAMS:
                triples.append(("out", *OUTPUT_QPARAMS[op]))
        elif op in ("QLinearAdd", "QLinearMul"):
            triples = [(0, 1, 2), (3, 4, 5), ("out", 6, 7)]
        elif op == "QLinearConcat":
            triples = [("out", 0, 1)] + [(k, k + 1, k + 2) for k in range(2, len(n.input), 3)]
        elif op in UNARY_QLINEAR:
            triples = [(0, 1, 2), ("out", 3, 4)]
        for d, s, z in triples:
            data = (_output(n) or None) if d == "out" else _input(n, d)
            if data is None:
                continue
            scale, zp = _input(n, s), _input(n, z)
            if d == "out" and scale is None and zp is None:
                continue  # a float output (QGemm without y_scale)
            role = "activation"
            if data in values:
                weight_slot = op in INTEGER_COMPUTE and d == INTEGER_COMPUTE[op][1][0]
                if values.tensors[data].data_type == TensorProto.INT32:
                    role = "bias"
                elif weight_slot or (op == "DequantizeLinear" and _feeds_compute(_output(n), index)):
                    role = "weight"
                else:
                    role = "constant"
            if op == "MatMulNBits":
                dtype = f"int{attr(n, 'bits', 4)}"
            elif op == "QuantizeLinear" and attr(n, "output_dtype", 0):
                dtype = dtype_name(attr(n, "output_dtype"))
            else:
                dtype = qtype(data, zp)
            if scale is None and op in ("ConvInteger", "MatMulInteger") and role == "weight":
                scale = _dynamic_weight_scale(n, index, values)
            axis = attr(n, "axis", 1) if op in Q_OPS else None
            refs.append(_QRef(n, data, scale, zp, role, dtype, axis, attr(n, "block_size", 0) or None))
    return refs


def _dynamic_weight_scale(node: onnx.NodeProto, index: GraphIndex, values: _Values) -> str | None:
    """The weight scale of a dynamic MatMulInteger/ConvInteger: integer op -> Cast -> Mul(., Mul(x_scale, w_scale))."""
    for cast in index.consumers.get(_output(node), []):
        if cast.op_type != "Cast":
            continue
        for mul in index.consumers.get(_output(cast), []):
            other = [i for i in mul.input if i != _output(cast)] if mul.op_type == "Mul" else []
            producer = index.producer.get(other[0]) if other else None
            if producer is not None and producer.op_type == "Mul":
                consts = [i for i in producer.input if i in values]
                if len(consts) == 1:
                    return consts[0]
    return None


def _feeds_compute(name: str, index: GraphIndex) -> bool:
    """Whether a tensor reaches a compute node's input directly or through shape-only ops."""
    frontier = [name]
    for _ in range(4):
        users = [u for t in frontier for u in index.consumers.get(t, [])]
        if any(_is_compute(u) for u in users):
            return True
        frontier = [_output(u) for u in users if u.op_type in SHAPE_ONLY and u.output]
    return False


def _dq_behind(name: str, index: GraphIndex) -> onnx.NodeProto | None:
    """The DequantizeLinear that produces `name`, looking through up to 3 shape-only ops."""
    for _ in range(4):
        p = index.producer.get(name)
        if p is None:
            return None
        if p.op_type == "DequantizeLinear":
            return p
        if p.op_type not in SHAPE_ONLY or not p.input:
            return None
        name = p.input[0]
    return None


def _params(ref: _QRef | None, values: _Values) -> QParams | None:
    if ref is None:
        return None
    p = QParams(tensor=ref.data, dtype=ref.dtype, axis=ref.axis, block_size=ref.block_size)
    scale, zp = values.get(ref.scale), values.get(ref.zero_point)
    n = values.numel(ref.scale) if ref.scale else values.numel(ref.zero_point or "")
    if ref.block_size or ref.node.op_type == "MatMulNBits":
        p.granularity = "block"
    elif n is not None:
        p.granularity = "per-tensor" if n == 1 else "per-channel"
    if p.granularity != "per-channel":
        p.axis = None
    if scale is not None and scale.size:
        p.scale_min, p.scale_max, p.scales = float(scale.min()), float(scale.max()), int(scale.size)
    if zp is not None and zp.size and np.isfinite(z := zp.astype(np.float64)).all():
        p.zero_point_min, p.zero_point_max = int(z.min()), int(z.max())
    return p


def _precision(dtype: str) -> str:
    if dtype == "float16":
        return "fp16"
    if dtype == "bfloat16":
        return "bf16"
    if dtype.startswith("float8"):
        return "fp8"
    return "float" if dtype.startswith("float") else dtype


def _compute_node(
    n: onnx.NodeProto,
    index: GraphIndex,
    values: _Values,
    types: dict[str, int],
    refs: dict[int, list[_QRef]],
) -> ComputeNode:
    mine = refs.get(id(n), [])
    c = ComputeNode(node_label(n), n.op_type, _domain(n), "float", "float")
    if n.op_type in INTEGER_COMPUTE:
        (a_idx, _, _), (w_idx, _, _) = INTEGER_COMPUTE[n.op_type]
        weight = next((r for r in mine if r.data == _input(n, w_idx)), None)
        act = next((r for r in mine if r.data == _input(n, a_idx)), None)
        out = next((r for r in mine if n.output and r.data == _output(n)), None)
        producer = index.producer.get(_input(n, a_idx) or "")
        dynamic = n.op_type == "DynamicQuantizeMatMul" or (
            producer is not None and producer.op_type == "DynamicQuantizeLinear"
        )
        c.scheme = "weight-only" if n.op_type == "MatMulNBits" else "dynamic" if dynamic else "QOperator"
        c.precision = _precision(weight.dtype if weight else dtype_name(types.get(_input(n, w_idx) or "", 0)))
        if weight is not None and weight.role == "activation":  # A x B of two activations
            weight = None
        c.weight, c.input, c.output = _params(weight, values), _params(act, values), _params(out, values)
        return c
    dq = [_dq_behind(i, index) if i else None for i in n.input[:2]]
    dq_refs = [refs[id(d)][0] if d is not None and refs.get(id(d)) else None for d in dq]
    act_refs = [r for r in dq_refs if r is not None and r.role == "activation"]
    weight_ref = (
        dq_refs[1]
        if len(dq_refs) > 1 and dq_refs[1] is not None and dq_refs[1].role != "activation"
        else None
    )
    if act_refs:
        c.scheme = "QDQ"
        c.precision = _precision((weight_ref or act_refs[0]).dtype)
        consumers = index.consumers.get(_output(n), [])
        while len(consumers) == 1 and consumers[0].op_type in ("Relu", "Clip"):
            consumers = index.consumers.get(_output(consumers[0]), [])
        q = next(
            (refs[id(u)][0] for u in consumers if u.op_type == "QuantizeLinear" and refs.get(id(u))), None
        )
        c.output = _params(q, values)
    elif weight_ref is not None:
        c.scheme, c.precision = "weight-only", _precision(weight_ref.dtype)
    else:
        dtypes = {dtype_name(types[i]) for i in n.input[:2] if i in types}
        for half in ("float16", "bfloat16"):
            if half in dtypes:
                c.precision = _precision(half)
                c.scheme = c.precision
        cast = index.producer.get(n.input[1]) if len(n.input) > 1 else None
        if cast is not None and cast.op_type == "Cast" and _input(cast, 0) in values:
            # float compute on a weight stored in another type (fp16 mode: float16 storage)
            c.weight = QParams(cast.input[0], dtype_name(values.tensors[cast.input[0]].data_type))
            return c
    c.weight = _params(weight_ref, values)
    c.input = _params(act_refs[0] if act_refs else None, values)
    return c


def _quantization(
    g: onnx.GraphProto, compute: list[ComputeNode], refs: list[_QRef], values: _Values
) -> Quantization:
    ops = Counter(
        n.op_type
        for n in g.node
        if n.op_type in Q_OPS
        or n.op_type in INTEGER_COMPUTE
        or n.op_type in OTHER_INTEGER_OPS
        or n.op_type.startswith("QLinear")
    )
    schemes = {c.scheme for c in compute if c.quantized}
    if len(schemes) == 1:
        fmt = schemes.pop()
    elif schemes:
        fmt = "mixed"
    elif any(op.startswith("QLinear") or op == "QGemm" for op in ops):
        fmt = "QOperator"
    elif ops["DynamicQuantizeLinear"]:
        fmt = "dynamic"
    elif any(r.role == "activation" for r in refs):
        fmt = "QDQ"
    elif any(r.role == "weight" for r in refs):
        fmt = "weight-only"
    elif any(t.data_type == TensorProto.FLOAT16 for t in g.initializer):
        fmt = "fp16"
    elif any(t.data_type == TensorProto.BFLOAT16 for t in g.initializer):
        fmt = "bf16"
    else:
        fmt = "none"
    weights: dict[str, str | None] = {}
    for c in compute:
        if c.weight is not None:
            weights[c.weight.tensor] = c.weight.granularity
    scales: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    zps: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for r in refs:
        for name, bucket in ((r.scale, scales), (r.zero_point, zps)):
            a = values.get(name)
            if a is not None:
                bucket[r.role][name] = a
    act_dtypes = sorted({r.dtype for r in refs if r.role == "activation"})
    return Quantization(
        format=fmt,
        op_counts=dict(sorted(ops.items())),
        compute=compute,
        weight_granularity=dict(Counter(v for v in weights.values() if v)),
        activation_dtypes=act_dtypes,
        scales={k: Stats.of(list(v.values()), decades=True) for k, v in sorted(scales.items())},
        zero_points={k: Stats.of(list(v.values()), decades=False) for k, v in sorted(zps.items())},
    )


def _tensor_rows(g: onnx.GraphProto, index: GraphIndex, refs: list[_QRef]) -> list[TensorFacts]:
    roles: dict[str, str] = {}
    for r in refs:
        if r.role in ("weight", "bias") and r.data in index.initializers:
            roles.setdefault(r.data, f"quantized {r.role}")
        if r.scale:
            roles.setdefault(r.scale, "scale")
        if r.zero_point:
            roles.setdefault(r.zero_point, "zero point")
    rows = []
    for t in g.initializer:
        location = next((e.value for e in t.external_data if e.key == "location"), None)
        role = roles.get(t.name)
        if role is None:
            users = index.consumers.get(t.name, [])
            role = "unused" if not users and t.name not in index.graph_outputs else "constant"
            if (
                users
                and any(_is_compute(u) for u in users)
                and dtype_name(t.data_type).startswith(("float", "bfloat"))
            ):
                role = "float weight"
        rows.append(
            TensorFacts(t.name, dtype_name(t.data_type), list(t.dims), tensor_bytes(t), location, role)
        )
    return rows
