"""Dynamic INT8: MatMul/Gemm weights INT8 per output channel, activations quantized at run time.

Each planned MatMul/Gemm is rewritten to the pattern onnxruntime fuses into its integer kernels
(core/optimizer/matmul_integer_to_float.cc, dynamic_quantize_matmul_fusion.cc):

    DynamicQuantizeLinear(x) -> x_q, x_scale, x_zp
    MatMulInteger(x_q, W_q, x_zp, W_zp) -> Cast(to=float) -> Mul(., Mul(x_scale, W_scale)) [-> Add(., bias)]

which becomes MatMulIntegerToFloat (bias fused when it is a constant 1-D second input of the Add),
and DynamicQuantizeMatMul when x_q feeds a single MatMulInteger. Conv stays float by default:
ConvInteger is slow on onnxruntime's CPU provider (FIELD_NOTES.md); static mode is for CNNs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantcli.errors import BadPlanError
from quantcli.graph import GraphIndex, NameAllocator, attr, copy_model, remove_unused_initializers
from quantcli.quantize.embedding import REASON as EMBEDDING_REASON
from quantcli.quantize.embedding import embedding_table, gather_rows
from quantcli.quantize.params import QType, quantize_array
from quantcli.quantize.plan import FLOAT, INT8, ROWS, NodePlan, QuantConfig, QuantPlan, TensorParams
from quantcli.quantize.rules import rule_for
from quantcli.quantize.saturation import limit_pairs, quantize_weight
from quantcli.quantize.weights import constant_weight_of, weight_of

KERNEL = "DynamicQuantizeMatMul / MatMulIntegerToFloat (activations quantized at run time)"


# DynamicQuantizeLinear maps each input's [min, max] onto all of 0..255 at run time.
RUNTIME_ACTIVATION = TensorParams("activation", QType.UINT8, [1.0], [0], None, None)

DEFAULT_OP_TYPES = ("MatMul", "Gemm")
OP_TYPES = ("MatMul", "Gemm", "Conv")


def _why_not(node: onnx.NodeProto, index: GraphIndex, op_types: tuple[str, ...]) -> str | None:
    if node.op_type == "Conv" and "Conv" not in op_types:
        return "dynamic mode keeps Conv in float: ConvInteger is slow on onnxruntime's CPU provider; use --mode static"
    if node.op_type not in op_types:
        return f"dynamic mode quantizes {'/'.join(op_types)} only"
    if node.op_type == "Conv":
        weight, why_not = weight_of(node, index)
        return why_not or (None if weight else "no weight")
    weight, why_not = constant_weight_of(node, index, "dynamic mode")
    if weight is None:
        return why_not
    if index.rank(weight) != 2:
        return "weight is not 2-D"
    if node.op_type == "Gemm":
        why = rule_for(node).check(node, index)
        if why:
            return why
    elif index.elem_type(node.input[0]) not in (None, TensorProto.FLOAT):
        return "input is not float32"
    return None


def _bias_add_of(node: onnx.NodeProto, index: GraphIndex) -> onnx.NodeProto | None:
    """The Add that adds a constant 1-D bias to this MatMul's output, if it is its only consumer."""
    out = node.output[0]
    add = index.only_reader(out)
    if add is None or add.op_type != "Add":
        return None
    other = [i for i in add.input if i != out]
    if len(other) != 1 or other[0] not in index.initializers:
        return None
    dims = list(index.initializers[other[0]].dims)
    return add if dims and all(d == 1 for d in dims[:-1]) and dims[-1] > 1 else None


def plan_dynamic(model: onnx.ModelProto, config: QuantConfig) -> QuantPlan:
    index = GraphIndex(model.graph)
    nodes: dict[str, NodePlan] = {}
    tensors: dict[str, TensorParams] = {}
    fused_adds: dict[str, str] = {}
    for node in model.graph.node:
        if node.name in fused_adds:
            continue
        table = embedding_table(node, index)
        if table is not None:
            tensors.setdefault(table, TensorParams.for_weight(index.array(table), 0, config))
            nodes[node.name] = NodePlan(
                node.name, node.op_type, INT8, EMBEDDING_REASON, quantized_inputs=[table], form=ROWS
            )
            continue
        why = _why_not(node, index, config.dynamic_op_types)
        if why is not None:
            nodes[node.name] = NodePlan(node.name, node.op_type, FLOAT, why)
            continue
        weight = node.input[1]
        if weight not in tensors:
            axis = rule_for(node).weight_axis(node, index) if config.per_channel else None
            tensors[weight] = TensorParams.for_weight(index.array(weight), axis, config)
            if config.saturation_safe and node.op_type != "Conv":  # ConvInteger never saturates
                w = index.array(weight)
                limit_pairs(tensors[weight], w, rule_for(node).pair_layout(node, w.shape), RUNTIME_ACTIVATION)
        nodes[node.name] = NodePlan(node.name, node.op_type, INT8, KERNEL, quantized_inputs=[weight])
        add = _bias_add_of(node, index) if node.op_type == "MatMul" else None
        if add is not None:
            fused_adds[add.name] = node.name
            nodes[add.name] = NodePlan(
                add.name, "Add", FLOAT, f"bias of {node.name}: onnxruntime fuses it into MatMulIntegerToFloat"
            )
    ordered = [nodes[n.name] for n in model.graph.node]
    return QuantPlan("dynamic", config, ordered, tensors, 0)


def rewrite_dynamic(model: onnx.ModelProto, plan: QuantPlan, *, in_place: bool = False) -> onnx.ModelProto:
    """The model with each INT8-planned MatMul/Gemm in the dynamic integer pattern."""
    out = model if in_place else copy_model(model)
    graph = out.graph
    index = GraphIndex(graph)
    names = NameAllocator(graph)
    by_name = {n.name: n for n in plan.nodes}
    missing = sorted(set(by_name) - {n.name for n in graph.node})
    if missing:
        raise BadPlanError(f"plan names node '{missing[0]}', which is not in the model")
    dynamic_inputs: dict[str, tuple[str, str, str]] = {}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    quantized_weights: set[str] = set()
    tables: dict[str, tuple[str, str]] = {}
    for node in graph.node:
        decision = by_name.get(node.name)
        if decision is not None and decision.precision == INT8 and decision.form == ROWS:
            table = node.input[0]
            params = plan.tensors.get(table)
            if params is None or table not in index.initializers:
                raise BadPlanError(
                    f"plan quantizes node '{node.name}' but gives no parameters for table '{table}'"
                )
            if table not in tables:
                scale, zp = params.arrays()
                q = quantize_array(index.array(table), scale, zp, QType.INT8, params.axis, symmetric=True)
                tables[table] = (names.new(f"{table}_quantized"), names.new(f"{table}_scale"))
                new_inits += [
                    numpy_helper.from_array(q, tables[table][0]),
                    numpy_helper.from_array(scale, tables[table][1]),
                ]
                quantized_weights.add(table)
            replacement, inits = gather_rows(node, *tables[table], names)
            new_nodes += replacement
            new_inits += inits
            continue
        if decision is None or decision.precision != INT8 or node.op_type not in OP_TYPES:
            _bias_second(node, index, by_name)
            new_nodes.append(node)
            continue
        x, weight = node.input[0], node.input[1]
        params = plan.tensors.get(weight)
        if params is None or weight not in index.initializers:
            raise BadPlanError(
                f"plan quantizes node '{node.name}' but gives no parameters for weight '{weight}'"
                if params is None
                else f"plan quantizes node '{node.name}', but its {index.why_not_constant(weight)}"
            )
        if x not in dynamic_inputs:
            q, s, z = names.new(f"{x}_quantized"), names.new(f"{x}_scale"), names.new(f"{x}_zero_point")
            new_nodes.append(
                helper.make_node(
                    "DynamicQuantizeLinear", [x], [q, s, z], name=names.new(f"{x}_DynamicQuantizeLinear")
                )
            )
            dynamic_inputs[x] = (q, s, z)
        x_q, x_scale, x_zp = dynamic_inputs[x]
        quantized_weights.add(weight)
        if node.op_type == "Conv":
            new_nodes += _conv_integer(
                node, index.array(weight), params, (x_q, x_scale, x_zp), names, new_inits
            )
            continue
        w_q, w_scale, w_zp = _weight_initializers(index.array(weight), params, weight, node, names, new_inits)
        y = node.output[0]
        has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
        mm_out = names.new(f"{y}_int32")
        cast_out = names.new(f"{y}_int32_float")
        scale_out = names.new(f"{y}_scale")
        mul_out = names.new(f"{y}_unbiased") if has_bias else y
        new_nodes += [
            helper.make_node(
                "MatMulInteger",
                [x_q, w_q, x_zp, w_zp],
                [mm_out],
                name=names.new(f"{node.name}_MatMulInteger"),
            ),
            helper.make_node(
                "Cast", [mm_out], [cast_out], name=names.new(f"{node.name}_Cast"), to=TensorProto.FLOAT
            ),
            helper.make_node("Mul", [x_scale, w_scale], [scale_out], name=names.new(f"{node.name}_scale")),
            helper.make_node("Mul", [cast_out, scale_out], [mul_out], name=names.new(f"{node.name}_Mul")),
        ]
        if has_bias:
            new_nodes.append(
                helper.make_node("Add", [mul_out, node.input[2]], [y], name=names.new(f"{node.name}_bias"))
            )
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    # A float weight that something still uses (another node, a subgraph, a graph output) stays.
    remove_unused_initializers(graph, quantized_weights)
    return out


def _weight_initializers(
    w: np.ndarray, params: TensorParams, weight: str, node: onnx.NodeProto, names: NameAllocator, inits: list
) -> tuple[str, str, str]:
    """INT8 weight [K, N] (Gemm transB weights transposed), its scale and zero point per column."""
    scale, zp = params.arrays()
    q = quantize_weight(w, params)
    if node.op_type == "Gemm" and attr(node, "transB", 0):
        q = np.ascontiguousarray(q.T)
    names_ = (
        names.new(f"{weight}_quantized"),
        names.new(f"{weight}_scale"),
        names.new(f"{weight}_zero_point"),
    )
    inits += [
        numpy_helper.from_array(q, names_[0]),
        numpy_helper.from_array(scale, names_[1]),
        numpy_helper.from_array(zp, names_[2]),
    ]
    return names_


def _conv_integer(
    node: onnx.NodeProto,
    w: np.ndarray,
    params: TensorParams,
    x: tuple[str, str, str],
    names: NameAllocator,
    inits: list,
) -> list[onnx.NodeProto]:
    """ConvInteger with a per-tensor zero point (onnxruntime's only form) and per-channel scales
    applied to its float output: y = Cast(ConvInteger(x_q, W_q)) * (x_scale * W_scale) + bias."""
    x_q, x_scale, x_zp = x
    y, base = node.output[0], node.name
    scale, zp = params.arrays()
    q = quantize_array(w, scale, zp, QType.INT8, params.axis, symmetric=True)
    bshape = [1, -1] + [1] * (w.ndim - 2)  # broadcast per output channel over N, C, spatial
    w_q, w_zp, w_scale = (
        names.new(f"{node.input[1]}_quantized"),
        names.new(f"{node.input[1]}_zero_point"),
        names.new(f"{node.input[1]}_scale"),
    )
    inits += [
        numpy_helper.from_array(q, w_q),
        numpy_helper.from_array(np.zeros((), np.int8), w_zp),
        numpy_helper.from_array(np.asarray(scale, np.float32).reshape(bshape if scale.ndim else []), w_scale),
    ]
    conv_out, cast_out, scale_out = (
        names.new(f"{y}_int32"),
        names.new(f"{y}_int32_float"),
        names.new(f"{y}_scale"),
    )
    has_bias = len(node.input) > 2 and node.input[2]
    mul_out = names.new(f"{y}_unbiased") if has_bias else y
    conv = helper.make_node(
        "ConvInteger", [x_q, w_q, x_zp, w_zp], [conv_out], name=names.new(f"{base}_ConvInteger")
    )
    conv.attribute.extend(node.attribute)
    nodes = [
        conv,
        helper.make_node(
            "Cast", [conv_out], [cast_out], name=names.new(f"{base}_Cast"), to=TensorProto.FLOAT
        ),
        helper.make_node("Mul", [x_scale, w_scale], [scale_out], name=names.new(f"{base}_scale")),
        helper.make_node("Mul", [cast_out, scale_out], [mul_out], name=names.new(f"{base}_Mul")),
    ]
    if has_bias:
        bias = names.new(f"{node.input[2]}_reshaped")
        shape = names.new(f"{node.input[2]}_shape")
        inits.append(numpy_helper.from_array(np.asarray(bshape, np.int64), shape))
        nodes.append(
            helper.make_node("Reshape", [node.input[2], shape], [bias], name=names.new(f"{base}_bias_shape"))
        )
        nodes.append(helper.make_node("Add", [mul_out, bias], [y], name=names.new(f"{base}_bias")))
    return nodes


def _bias_second(node: onnx.NodeProto, index: GraphIndex, plan: dict[str, NodePlan]) -> None:
    """Put a constant bias second in an Add that follows an INT8 MatMul: onnxruntime's fusion
    looks for it there (Add is commutative, so the result is unchanged)."""
    if node.op_type != "Add" or len(node.input) != 2 or node.input[0] not in index.initializers:
        return
    producer = index.producer.get(node.input[1])
    if producer is not None and producer.op_type == "MatMul" and plan.get(producer.name, None) is not None:
        if plan[producer.name].precision == INT8:
            node.input[0], node.input[1] = node.input[1], node.input[0]
