"""Rewrite a float model into QDQ form from a QuantPlan; it decides nothing.

Activations: producer -> T -> QuantizeLinear -> T_quantized -> DequantizeLinear -> T_dequantized
-> the consumers (a graph output keeps its name on the DequantizeLinear output), except
(`consumer_reads`): Shape/Size read T_quantized (same shape, no DequantizeLinear to run for them), and
nodes the plan keeps in float read T itself when T's producer is float too (or T is a graph input):
exact values, and no DequantizeLinear that onnxruntime would run for them alone.
Initializers (weights, INT32 biases, constants): stored quantized as T_quantized and dequantized
by a DequantizeLinear whose output keeps the original name T, so consumers are unchanged (reads
inside subgraphs included). An initializer that is also a graph output stays as it is, for the
output; its readers read the DequantizeLinear output, T_dequantized.

16-bit tensors (A16W8): ONNX QuantizeLinear/DequantizeLinear take int16/uint16 only from opset 21;
below it they are written in onnxruntime's `com.microsoft` domain, whose Q/DQ accept 16 bits at any
opset. The model's own opset is left as it is: upgrading it would rewrite every other op through
onnx's version converter for the sake of the Q/DQ alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantcli import __version__
from quantcli.errors import BadPlanError
from quantcli.graph import (
    SHAPE_READERS,
    GraphIndex,
    NameAllocator,
    attr,
    copy_model,
    rename_reads,
    rename_subgraph_reads,
)
from quantcli.preprocess.opset import default_opset
from quantcli.quantize.embedding import gather_rows
from quantcli.quantize.integer_io import io_tensors, record_io_quantization
from quantcli.quantize.layout import apply_nhwc_flattens, nhwc_flattens
from quantcli.quantize.params import quantize_array
from quantcli.quantize.plan import FLOAT, INT8, NHWC, ROWS, NodePlan, QuantPlan, TensorParams
from quantcli.quantize.saturation import quantize_weight

MS_DOMAIN = "com.microsoft"


def quantized_tensor_names(model: onnx.ModelProto, plan: QuantPlan) -> list[str]:
    """Tensors the plan's INT8 nodes need quantized, in graph order; validates the plan."""
    names = {n.name for n in model.graph.node}
    for node in plan.nodes:
        if node.name not in names:
            raise BadPlanError(f"plan names node '{node.name}', which is not in the model")
    wanted: list[str] = []
    seen: set[str] = set()
    for node in plan.nodes:
        if node.precision != INT8:
            continue
        for t in (*node.quantized_inputs, *node.quantized_outputs):
            if t not in plan.tensors:
                raise BadPlanError(
                    f"plan quantizes tensor '{t}' of node '{node.name}' but gives no parameters for it"
                )
            if t not in seen:
                seen.add(t)
                wanted.append(t)
    return wanted


def _nhwc_flattens(model: onnx.ModelProto, plan: QuantPlan, precision: dict[str, str]) -> dict[str, tuple]:
    """The Flatten nodes the plan writes in NHWC order, with the geometry the rewrite needs. A
    Flatten whose input is no longer channels-last INT8 (a node before it edited to float) is
    written plain, as it must be; a plan of schema version 1, which does not say, gets the form
    where the rule holds (as it did then)."""
    found = nhwc_flattens(model, GraphIndex(model.graph), precision)
    if not plan.forms_stated:
        return found
    return {n.name: found[n.name] for n in plan.nodes if n.form == NHWC and n.name in found}


def rewrite_qdq(model: onnx.ModelProto, plan: QuantPlan, *, in_place: bool = False) -> onnx.ModelProto:
    """The model with Q/DQ inserted as the plan says; a copy unless `in_place` (saves one copy of
    the weights on a big model)."""
    out = model if in_place else copy_model(model)
    graph = out.graph
    names = NameAllocator(graph)
    wanted = quantized_tensor_names(out, plan)
    integer_inputs, integer_outputs = io_tensors(graph) if plan.config.integer_io else ([], [])
    for t in (*integer_inputs, *integer_outputs):
        if t not in plan.tensors:
            raise BadPlanError(f"plan has --integer-io but gives no parameters for graph input/output '{t}'")
        if t not in wanted:
            wanted.append(t)
    by_name = {n.name: n for n in plan.nodes}
    precision = {n.name: n.precision for n in plan.nodes}
    apply_nhwc_flattens(out, _nhwc_flattens(out, plan, precision), names)
    index = GraphIndex(graph)
    gathers = {n.name for n in plan.nodes if n.form == ROWS}
    tables: dict[str, tuple[str, str]] = {}  # table -> (quantized table, per-row scale)

    head: list[onnx.NodeProto] = []  # DQ of initializers, Q/DQ of graph inputs
    after: dict[str, list[onnx.NodeProto]] = {}  # producer node name -> Q/DQ that follow it
    rewire: dict[str, tuple[str, str]] = {}  # T -> (T_quantized, T_dequantized)
    new_inits: list[onnx.TensorProto] = []
    drop_inits: set[str] = set()  # replaced by a DequantizeLinear output of the same name
    dequantized_inits: dict[str, str] = {}  # initializer that is a graph output -> its readers' name

    shared_qparams: dict[tuple, tuple[str, str]] = {}
    contrib = default_opset(out) < 21  # 16-bit Q/DQ need com.microsoft below opset 21
    domains: set[str] = set()
    for t in wanted:
        params = plan.tensors[t]
        scale, zp = params.arrays()
        domain = MS_DOMAIN if contrib and params.dtype.bits == 16 else ""
        domains.add(domain)
        # Tensors with equal parameters (a Reshape's input and output) share one scale/zero point.
        key = (params.dtype, params.axis, scale.tobytes(), zp.tobytes())
        if key not in shared_qparams:
            scale_name = names.new(f"{t}_scale")
            zp_name = names.new(f"{t}_zero_point")
            new_inits.append(numpy_helper.from_array(scale, scale_name))
            new_inits.append(numpy_helper.from_array(zp, zp_name))
            shared_qparams[key] = (scale_name, zp_name)
        scale_name, zp_name = shared_qparams[key]
        attrs = {"axis": params.axis} if params.axis is not None else {}
        if domain:
            attrs["domain"] = domain
        if t in index.initializers:
            values = index.array(t)
            _check_shape(t, values.shape, params)
            if params.correction is not None:
                values = _corrected(t, values, params.correction)
            if params.role == "weight":
                q = quantize_weight(values, params)  # pairs fitted to the plan's limit, if any
            else:
                symmetric = params.role == "bias"
                q = quantize_array(values, scale, zp, params.dtype, params.axis, symmetric=symmetric)
            q_name = names.new(f"{t}_quantized")
            new_inits.append(numpy_helper.from_array(q, q_name))
            tables[t] = (q_name, scale_name)
            dq_out = t
            if t in index.graph_outputs:
                # The graph output keeps the float values; the readers get the dequantized ones.
                dq_out = dequantized_inits[t] = names.new(f"{t}_dequantized")
            else:
                drop_inits.add(t)
            if all(c.name in gathers for c in index.consumers[t]):
                continue  # only row lookups read it: no DequantizeLinear of the whole table
            head.append(
                helper.make_node(
                    "DequantizeLinear",
                    [q_name, scale_name, zp_name],
                    [dq_out],
                    name=names.new(f"{t}_DequantizeLinear"),
                    **attrs,
                )
            )
            continue
        q_name = names.new(f"{t}_quantized")
        # A graph input that is also a graph output passes through unchanged: the output keeps
        # the input's exact value and name, and only its readers inside the graph are rewired.
        passes_through = t in index.graph_inputs
        if t in integer_outputs and not passes_through:
            # The QuantizeLinear writes the graph output itself; consumers inside the graph (if
            # any) read it dequantized.
            source, q_name, dq_out = names.new(f"{t}_prequant"), t, None
            if index.consumers.get(t):
                dq_out = names.new(f"{t}_dequantized")
                rewire[t] = (q_name, dq_out)
            index.producer[t].output[list(index.producer[t].output).index(t)] = source
        elif t in index.graph_outputs and not passes_through:
            source, dq_out = names.new(f"{t}_prequant"), t
            producer = index.producer.get(t)
            if producer is not None:
                producer.output[list(producer.output).index(t)] = source
        else:
            source, dq_out = t, names.new(f"{t}_dequantized")
            if t in integer_inputs:
                q_name = t  # the caller feeds the quantized tensor: no QuantizeLinear
            rewire[t] = (q_name, dq_out)
        pair = []
        if t not in integer_inputs:
            pair.append(
                helper.make_node(
                    "QuantizeLinear",
                    [source, scale_name, zp_name],
                    [q_name],
                    name=names.new(f"{t}_QuantizeLinear"),
                    **attrs,
                )
            )
        if dq_out is not None:
            pair.append(
                helper.make_node(
                    "DequantizeLinear",
                    [q_name, scale_name, zp_name],
                    [dq_out],
                    name=names.new(f"{t}_DequantizeLinear"),
                    **attrs,
                )
            )
        producer = index.producer.get(t)
        if producer is None:
            head.extend(pair)
        else:
            after.setdefault(producer.name, []).extend(pair)

    # Subgraphs read an activation as it was: the float tensor T, except where T itself becomes
    # integer (--integer-io inputs and outputs): there they read its DequantizeLinear output.
    integer_reads = {
        t: rewire[t][1] for t in (*integer_inputs, *integer_outputs) if t in rewire and rewire[t][1]
    }
    nodes: list[onnx.NodeProto] = list(head)
    for node in graph.node:
        if node.name not in gathers:
            rename_reads(node, dequantized_inits)  # node inputs and reads inside its subgraphs
        if integer_reads:
            rename_subgraph_reads(node, lambda t: integer_reads.get(t, t))
        for i, name in enumerate(node.input):
            if name in rewire:
                node.input[i] = consumer_reads(
                    node, name, *rewire[name], index, by_name, exact=name not in integer_inputs
                )
        if node.name in gathers:
            replacement, inits = gather_rows(node, *tables[node.input[0]], names)
            nodes.extend(replacement)
            new_inits.extend(inits)
        else:
            nodes.append(node)
        nodes.extend(after.get(node.name, []))
    del graph.node[:]
    graph.node.extend(nodes)

    kept = [t for t in graph.initializer if t.name not in drop_inits]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # A table read only by row lookups needs its per-row scale, not the zero point made with it.
    read = {i for n in nodes for i in n.input}
    graph.initializer.extend(t for t in new_inits if t.name in read)
    # Value infos of retyped or renamed tensors would contradict the new graph.
    stale = [v for v in graph.value_info if v.name in drop_inits]
    for v in stale:
        graph.value_info.remove(v)
    if plan.config.integer_io:
        _retype_io(out, {t: plan.tensors[t] for t in (*integer_inputs, *integer_outputs)})
    keep_float_in_onnxruntime(out, {n.name for n in plan.nodes if n.precision == FLOAT}, names)
    if MS_DOMAIN in domains and not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    out.producer_name = "quantcli"
    out.producer_version = __version__
    return out


def keep_float_in_onnxruntime(model: onnx.ModelProto, float_nodes: set[str], names: NameAllocator) -> None:
    """Float Conv/ConvTranspose/Gemm that onnxruntime would quantize at load read their input
    through a DequantizeLinear of their own, with the scale repeated per channel.

    onnxruntime's WeightBiasQuantization gives a float Conv/ConvTranspose/Gemm INT8 per-tensor
    weights when its input comes from a per-tensor DequantizeLinear and its output runs into a
    QuantizeLinear (verify.requantized_by_onnxruntime): a node the plan keeps in float (a
    --fallback or excluded node between INT8 neighbours) would then run as QLinearConv with coarser
    weights than the INT8 node it replaced (measured: a Conv with a weight outlier, max error 117.5
    with the shared DequantizeLinear, 0 with its own). The same values per channel are the same
    numbers, and the transformer matches per-tensor scales only.
    """
    from quantcli.verify import requantized_by_onnxruntime

    found = set(requantized_by_onnxruntime(model, float_nodes))
    if not found:
        return
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name in found:
            dq = producers[node.input[0]]
            channels = _input_channels(node, inits)
            if channels is not None and len(dq.input) == 3 and all(i in inits for i in dq.input[1:]):
                scale = numpy_helper.to_array(inits[dq.input[1]]).reshape(-1)[0]
                zp = numpy_helper.to_array(inits[dq.input[2]]).reshape(-1)[0]
                scale_name = names.new(f"{node.name}_input_scale")
                zp_name = names.new(f"{node.name}_input_zero_point")
                read = names.new(f"{node.input[0]}_float_read")
                graph.initializer.extend(
                    [
                        numpy_helper.from_array(np.full(channels[1], scale, dtype=scale.dtype), scale_name),
                        numpy_helper.from_array(np.full(channels[1], zp, dtype=zp.dtype), zp_name),
                    ]
                )
                extra = {"domain": dq.domain} if dq.domain else {}
                nodes.append(
                    helper.make_node(
                        "DequantizeLinear",
                        [dq.input[0], scale_name, zp_name],
                        [read],
                        name=names.new(f"{node.name}_input_DequantizeLinear"),
                        axis=channels[0],
                        **extra,
                    )
                )
                node.input[0] = read
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _input_channels(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[int, int] | None:
    """(axis, size) of the input-channel axis of a Conv/ConvTranspose/Gemm's input, from its weight."""
    weight = inits.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or len(weight.dims) < 2:
        return None
    dims = list(weight.dims)
    if node.op_type == "Conv":
        return 1, dims[1] * attr(node, "group", 1)
    if node.op_type == "ConvTranspose":
        return 1, dims[0]
    if node.op_type == "Gemm":
        return (0 if attr(node, "transA", 0) else 1), (dims[1] if attr(node, "transB", 0) else dims[0])
    return None


def _retype_io(model: onnx.ModelProto, params: dict[str, TensorParams]) -> None:
    """Integer I/O: inputs and outputs take their quantized type, recorded in the metadata."""
    graph = model.graph
    for v in (*graph.input, *graph.output):
        if v.name in params:
            v.type.tensor_type.elem_type = params[v.name].dtype.onnx
    stale = [v for v in graph.value_info if v.name in params]
    for v in stale:
        graph.value_info.remove(v)
    record_io_quantization(model, params)


def consumer_reads(
    node: onnx.NodeProto,
    t: str,
    quantized: str,
    dequantized: str,
    index: GraphIndex,
    plan_nodes: dict[str, NodePlan],
    *,
    exact: bool = True,
) -> str:
    """Which of T, T_quantized, T_dequantized a consumer of the quantized activation T reads.

    - Shape/Size read T_quantized: same shape, and onnxruntime would otherwise run a whole
      DequantizeLinear for them alone (all-MiniLM-L6-v2: 12 of its 30, one per Shape per layer,
      which also kept its common-subexpression pass from merging the Shapes).
    - A node the plan keeps in float reads T itself when T's producer is float too (or T is a
      graph input): it gets the exact value instead of the quantized one, and no DequantizeLinear
      runs for it (all-MiniLM-L6-v2: the residual Adds after each LayerNormalization, 12). Not
      when the producer is INT8: a float reader of T would stop onnxruntime fusing the producer's
      output QuantizeLinear (a node is fused only when its outputs feed QuantizeLinear alone).
      Not when T is not float at all (`exact=False`: an integer graph input under --integer-io).
    """
    if node.op_type in SHAPE_READERS and node.domain in ("", "ai.onnx"):
        return quantized
    reader = plan_nodes.get(node.name)
    if reader is not None and reader.precision == INT8:
        return dequantized
    producer = index.producer.get(t)
    if exact and (producer is None or getattr(plan_nodes.get(producer.name), "precision", None) != INT8):
        return t
    return dequantized


def _corrected(name: str, values: np.ndarray, correction: list[float]) -> np.ndarray:
    """A bias minus its planned correction (quantize/bias_correction.py)."""
    shift = np.asarray(correction, dtype=np.float64)
    if shift.size != values.size:
        raise BadPlanError(f"plan: '{name}' has {shift.size} correction values for {values.size} biases")
    return (values.astype(np.float64) - shift.reshape(values.shape)).astype(values.dtype)


def _check_shape(name: str, shape: tuple[int, ...], params: TensorParams) -> None:
    if params.axis is None:
        if len(params.scale) != 1:
            raise BadPlanError(f"plan gives {len(params.scale)} scales for per-tensor '{name}'")
        return
    if params.axis >= len(shape) or shape[params.axis] != len(params.scale):
        raise BadPlanError(
            f"plan gives {len(params.scale)} scales on axis {params.axis} for '{name}' of shape {list(shape)}"
        )
