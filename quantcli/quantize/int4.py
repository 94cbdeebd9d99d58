"""Weight-only INT4: MatMul/Gemm weights in 4-bit blocks, run by onnxruntime's com.microsoft MatMulNBits.

    MatMul(A, W[K, N])                 -> MatMulNBits(A, B_q, scales, [zero_points])
    Gemm(A, W[N, K], C, transB=1)      -> MatMulNBits(A, B_q, scales, [zero_points], bias=C)

Activations stay float by default; MatMulNBits dequantizes each block of 4-bit values along K and
multiplies in float32 (its `accuracy_level` attribute is left unset). With `int4_compute="int8"`
(`--int4-compute int8`) it gets accuracy_level 4: onnxruntime quantizes the activations to INT8 per
block at run time and multiplies in integers (see INT4_COMPUTE_NOTE for the measured trade). The block maths
and packing are in blockwise.py. The plan holds every block's scale and zero point (the MSE clipping
search is a planning decision), so a replayed plan writes the same bytes.

Embedding tables (a Gather on a constant table) are stored INT8 per row, as in weights-int8; Conv
and everything else stays float. A weight stays float, with the reason, when MatMulNBits cannot
take it or when it is too small to gain: fewer than MIN_FEATURES input or output features (a
10-class head), or blocks that would be larger than the float32 weight.

Defaults, measured on all-MiniLM-L6-v2 (benchmarks/int4.py, cosine of the embedding vs FP32 on its
100 eval samples; file size / FP32; MatMul weight bytes / FP32): blocks of 32 asymmetric 0.9767,
0.211, 0.160; 32 symmetric 0.9734, 0.210, 0.156; 128 asymmetric 0.9621, 0.199, 0.134; 128 symmetric
0.9621, 0.199, 0.133. Blocks of 32 keep clearly more accuracy for 1% of the file, and asymmetric
beats symmetric there: the defaults are 32, asymmetric (onnxruntime's MatMulNBitsQuantizer
defaults to 128, asymmetric: 0.9595 on the same samples).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantcli.errors import BadPlanError
from quantcli.graph import GraphIndex, NameAllocator, attr, copy_model, remove_unused_initializers
from quantcli.quantize.blockwise import BITS, block_qparams, n_blocks, pack_nibbles, packed_bytes, to_blocks
from quantcli.quantize.blockwise import quantize_blocks as quantize_weight_blocks
from quantcli.quantize.embedding import embedding_table, plan_embedding
from quantcli.quantize.params import QType
from quantcli.quantize.plan import FLOAT, INT4, NodePlan, QuantConfig, QuantPlan, TensorParams
from quantcli.quantize.rules import rule_for
from quantcli.quantize.weights import constant_weight_of

MS_DOMAIN = "com.microsoft"
OP_TYPES = ("MatMul", "Gemm")
MIN_FEATURES = 16


def k_axis(node: onnx.NodeProto, index: GraphIndex) -> int:
    """The axis of the weight initializer that runs along K (its op's rule, quantize/rules.py): 0
    for MatMul's [K, N], 1 for a Gemm with transB = 1 ([N, K])."""
    rule = rule_for(node)
    axis = rule.k_axis(node, index) if rule is not None else None
    return 0 if axis is None else axis


def _why_not(node: onnx.NodeProto, index: GraphIndex, config: QuantConfig) -> str | None:
    """Why this MatMul/Gemm cannot (or should not) get an INT4 weight; None when it can."""
    weight, why_not = constant_weight_of(node, index, "weights-int4")
    if weight is None:
        return why_not
    if index.rank(weight) != 2:
        return "weight is not 2-D (MatMulNBits takes a 2-D weight)"
    if index.elem_type(node.input[0]) not in (None, TensorProto.FLOAT):
        return "input is not float32"
    if node.input[0] in index.initializers:
        return "constant left operand"
    if node.op_type == "Gemm":
        if attr(node, "transA", 0):
            return "Gemm with transA = 1: MatMulNBits has no transposed input"
        if attr(node, "alpha", 1.0) != 1.0:
            return "Gemm with alpha != 1"
        if len(node.input) > 2 and node.input[2] and attr(node, "beta", 1.0) != 1.0:
            return "Gemm with beta != 1"
    dims = list(index.initializers[weight].dims)
    k = dims[k_axis(node, index)]
    n = dims[1 - k_axis(node, index)]
    if k < MIN_FEATURES or n < MIN_FEATURES:
        return f"weight is {k}x{n} (K x N): fewer than {MIN_FEATURES} features, too small to gain from INT4"
    if packed_bytes(k, n, config.block_size, config.weight_symmetric) >= 4 * k * n:
        return f"K = {k}: blocks of {config.block_size} would be larger than the float32 weight"
    return None


def weight_params(w_nk: np.ndarray, axis: int, config: QuantConfig) -> TensorParams:
    """INT4 block parameters of a weight given as [N, K]; `axis` is the initializer's K axis.
    Scales (and zero points, empty when symmetric) are listed in MatMulNBits' [N, n_blocks] order."""
    scale, zero_point = block_qparams(to_blocks(w_nk, config.block_size), config.weight_symmetric)
    return TensorParams(
        "weight",
        QType.UINT4,
        scale.ravel().tolist(),
        [] if zero_point is None else zero_point.ravel().astype(int).tolist(),
        axis,
    )


def plan_weights_int4(model: onnx.ModelProto, config: QuantConfig) -> QuantPlan:
    index = GraphIndex(model.graph)
    nodes: list[NodePlan] = []
    tensors: dict[str, TensorParams] = {}
    scheme = (
        f"MatMulNBits: INT4 weight in blocks of {config.block_size} along K, "
        f"{'symmetric' if config.weight_symmetric else 'asymmetric'}; float compute"
    )
    tables = {embedding_table(n, index) for n in model.graph.node} - {None}
    for node in model.graph.node:
        embedding = plan_embedding(node, index, tensors, config)
        if embedding is not None:
            nodes.append(embedding)
            continue
        if node.op_type not in OP_TYPES or node.domain not in ("", "ai.onnx"):
            reason = (
                "weights-int4 quantizes MatMul/Gemm weights only (use weights-int8 for Conv)"
                if node.op_type in ("Conv", "ConvTranspose")
                else "weight-only mode: activations stay float"
            )
            nodes.append(NodePlan(node.name, node.op_type, FLOAT, reason))
            continue
        why = _why_not(node, index, config)
        weight = node.input[1]
        axis = k_axis(node, index)
        if why is None and weight in tensors and tensors[weight].axis != axis:
            why = "weight shared with another node that reads it transposed"
        if why is None and weight in tables:
            why = "weight is also an embedding table (stored INT8 per row)"
        if why is not None:
            nodes.append(NodePlan(node.name, node.op_type, FLOAT, why))
            continue
        if weight not in tensors:
            w = index.array(weight)
            tensors[weight] = weight_params(w if axis == 1 else w.T, axis, config)
        nodes.append(NodePlan(node.name, node.op_type, INT4, scheme, quantized_inputs=[weight]))
    return QuantPlan("weights-int4", config, nodes, tensors, 0)


def _packed_weight(
    name: str, w: np.ndarray, params: TensorParams, block_size: int, names: NameAllocator
) -> tuple[list[onnx.TensorProto], int, int, bool]:
    """MatMulNBits' B, scales and zero-point initializers of one weight, from the plan's parameters."""
    if params.dtype is not QType.UINT4 or params.axis not in (0, 1) or w.ndim != 2:
        raise BadPlanError(f"plan gives '{name}' parameters that are not INT4 blocks of a 2-D weight")
    w_nk = w if params.axis == 1 else w.T
    n, k = w_nk.shape
    nb = n_blocks(k, block_size)
    if len(params.scale) != n * nb:
        raise BadPlanError(
            f"plan gives {len(params.scale)} scales for '{name}' of shape {list(w.shape)}; "
            f"blocks of {block_size} need {n * nb}"
        )
    if params.zero_point and len(params.zero_point) != n * nb:
        raise BadPlanError(f"plan gives {len(params.zero_point)} zero points for '{name}'; it needs {n * nb}")
    scale = np.asarray(params.scale, dtype=np.float32).reshape(n, nb)
    if not np.all(np.isfinite(scale)) or np.any(scale == 0):
        raise BadPlanError(f"plan gives '{name}' a scale that is zero or not finite")
    zero_point = None
    if params.zero_point:
        zp = np.asarray(params.zero_point, dtype=np.int64)
        if zp.min() < 0 or zp.max() > 15:
            raise BadPlanError(f"plan gives '{name}' zero points outside [0, 15]")
        zero_point = zp.astype(np.uint8).reshape(n, nb)
    q = quantize_weight_blocks(to_blocks(w_nk, block_size), scale, zero_point)
    inits = [
        numpy_helper.from_array(pack_nibbles(q), names.new(f"{name}_int4")),
        numpy_helper.from_array(scale, names.new(f"{name}_scale")),
    ]
    if zero_point is not None:
        inits.append(numpy_helper.from_array(pack_nibbles(zero_point), names.new(f"{name}_zero_point")))
    return inits, k, n, zero_point is not None


def rewrite_int4(model: onnx.ModelProto, plan: QuantPlan, *, in_place: bool = False) -> onnx.ModelProto:
    """The model with each INT4-planned MatMul/Gemm replaced by a MatMulNBits of the same name and
    output (Gemm's bias becomes its bias input, or an Add after it when not a constant [N] vector).
    Other nodes are left alone: the INT8 embedding tables are rewrite_qdq's."""
    out = model if in_place else copy_model(model)
    graph = out.graph
    index = GraphIndex(graph)
    names = NameAllocator(graph)
    present = {n.name for n in graph.node}
    for p in plan.nodes:
        if p.name not in present:
            raise BadPlanError(f"plan names node '{p.name}', which is not in the model")
    by_name = {p.name: p for p in plan.nodes}
    block_size = plan.config.block_size
    packed: dict[str, tuple[list[str], int, int]] = {}
    biases: dict[str, str] = {}
    new_inits: list[onnx.TensorProto] = []
    replaced: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        decision = by_name.get(node.name)
        if decision is None or decision.precision != INT4:
            nodes.append(node)
            continue
        weight = node.input[1] if len(node.input) > 1 else ""
        params = plan.tensors.get(weight)
        if node.op_type not in OP_TYPES or decision.quantized_inputs != [weight] or params is None:
            raise BadPlanError(
                f"plan gives node '{node.name}' INT4, which needs a MatMul/Gemm and its weight's parameters"
            )
        if weight not in index.initializers:
            raise BadPlanError(f"plan gives node '{node.name}' INT4, but its weight is not a constant")
        if params.axis != k_axis(node, index):
            raise BadPlanError(f"plan's blocks of '{weight}' run along axis {params.axis}, not along K")
        if weight not in packed:
            inits, k, n, has_zp = _packed_weight(weight, index.array(weight), params, block_size, names)
            new_inits += inits
            packed[weight] = ([t.name for t in inits] + ([] if has_zp else [""]), k, n)
        (b, scale, zp), k, n = packed[weight]
        inputs = [node.input[0], b, scale, zp]
        y = node.output[0]
        add = None
        c = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
        if c:
            bias = _bias_vector(c, n, index, names, new_inits, biases)
            if bias is not None:
                inputs += ["", bias]
            else:
                y = names.new(f"{node.output[0]}_matmul")
                add = helper.make_node("Add", [y, c], [node.output[0]], name=names.new(f"{node.name}_bias"))
        while inputs[-1] == "":
            inputs.pop()
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                inputs,
                [y],
                name=node.name,
                domain=MS_DOMAIN,
                K=k,
                N=n,
                bits=BITS,
                block_size=block_size,
                **({"accuracy_level": 4} if plan.config.int4_compute == "int8" else {}),
            )
        )
        if add is not None:
            nodes.append(add)
        replaced.add(weight)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph, replaced)
    graph.initializer.extend(new_inits)
    if replaced and not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out


def _bias_vector(
    c: str,
    n: int,
    index: GraphIndex,
    names: NameAllocator,
    new_inits: list[onnx.TensorProto],
    biases: dict[str, str],
) -> str | None:
    """A float32 [N] initializer holding Gemm's C, for MatMulNBits' bias input; None when C is not
    a constant of N values (it is then added after the MatMulNBits)."""
    t = index.initializers.get(c)
    if t is None or t.data_type != TensorProto.FLOAT or int(np.prod(t.dims)) != n or n == 1:
        return None
    dims = list(t.dims)
    if dims == [n]:
        return c
    if any(d != 1 for d in dims[:-1]) or dims[-1] != n:
        return None
    if c not in biases:
        biases[c] = names.new(f"{c}_vector")
        new_inits.append(numpy_helper.from_array(index.array(c).reshape(n), biases[c]))
    return biases[c]


def _drop_unused(graph: onnx.GraphProto, weights: set[str]) -> None:
    """Remove the float weights the MatMulNBits replaced, unless something else still uses them
    (another node, a subgraph, a graph output)."""
    remove_unused_initializers(graph, weights)


def matmul_weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the MatMul/Gemm weights as stored: a constant input B of MatMul/Gemm, or the
    packed values, scales and zero points of a MatMulNBits (each initializer counted once)."""
    index = GraphIndex(model.graph)
    counted: set[str] = set()
    for node in model.graph.node:
        if node.op_type in OP_TYPES and node.domain in ("", "ai.onnx"):
            slots = [1]
        elif node.op_type == "MatMulNBits" and node.domain == MS_DOMAIN:
            slots = [1, 2, 3]
        else:
            continue
        counted.update(
            node.input[i] for i in slots if i < len(node.input) and node.input[i] in index.initializers
        )
    return sum(_stored_bytes(index.initializers[name]) for name in counted)


def _stored_bytes(t: onnx.TensorProto) -> int:
    count = int(np.prod(t.dims)) if t.dims else 1
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
