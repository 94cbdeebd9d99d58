"""Static INT8 planning: each node's precision from the op rules, each tensor's scale and zero point
from the calibrated ranges (activations) or the values (weights, constants, INT32 biases)."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import onnx

from quantcli.calibration.collect import Ranges
from quantcli.graph import GraphIndex, attr
from quantcli.quantize.bias_correction import dequantized, output_shift
from quantcli.quantize.embedding import REASON as EMBEDDING_REASON
from quantcli.quantize.embedding import embedding_table
from quantcli.quantize.exact_layers import REASON as EXACT_REASON
from quantcli.quantize.exact_layers import exact_layers
from quantcli.quantize.integer_io import io_tensors, plan_io_tensors
from quantcli.quantize.layout import REASON as NHWC_FLATTEN_REASON
from quantcli.quantize.layout import nhwc_flattens, permute_gemm_weight
from quantcli.quantize.nonfinite import nonfinite_initializers, nonfinite_readers
from quantcli.quantize.params import QType, calculate_qparams
from quantcli.quantize.plan import FLOAT, INT8, NHWC, ROWS, NodePlan, QuantConfig, QuantPlan, TensorParams
from quantcli.quantize.rules import Kind, OpRule, activation_input_indices, rule_for
from quantcli.quantize.saturation import limit_pairs


def _absorbable(
    node: onnx.NodeProto,
    producer: onnx.NodeProto | None,
    index: GraphIndex,
    precision: dict[str, str],
    config: QuantConfig,
) -> str | None:
    """Why a Relu/Clip cannot vanish into its producer's output QuantizeLinear, or None."""
    if config.symmetric_activations:
        return "symmetric INT8 activations cannot absorb it (zero point is not the type minimum)"
    if producer is None or precision.get(producer.name) != INT8:
        return "its input is not produced by an INT8 node"
    prule = rule_for(producer)
    if prule is None or prule.kind not in (Kind.COMPUTE, Kind.ELEMENTWISE):
        return f"{producer.op_type} output cannot absorb it"
    src = node.input[0]
    if len(index.consumers[src]) != 1 or src in index.graph_outputs:
        return "its input has other consumers"
    return None


def plan_static(
    model: onnx.ModelProto,
    ranges: Ranges,
    config: QuantConfig,
    *,
    keep_float: dict[str, str] | None = None,
    memo: dict | None = None,
) -> QuantPlan:
    """Decide each node's precision and each quantized tensor's parameters; the nodes in
    `keep_float` (name -> reason) stay float and their neighbours are decided accordingly, as do
    the nodes that read a weight holding NaN or inf (quantize/nonfinite.py). `memo`: weight
    parameters and that scan of every weight value, kept between calls on the same model and
    ranges (the speed plan and a search plan it several times)."""
    index = GraphIndex(model.graph)
    ranges = _without_sentinels(ranges, index)
    if memo is not None and NONFINITE not in memo:  # read once for the plans sharing the memo
        memo[NONFINITE] = nonfinite_initializers(model)
    nonfinite = memo[NONFINITE] if memo is not None else nonfinite_initializers(model)
    precision, reasons, tables = _decisions(model, index, ranges, config, keep_float, nonfinite)
    permuted: dict[str, tuple[int, int, int]] = {}  # Gemm -> C, H, W of its NHWC-ordered weight
    flattens = nhwc_flattens(model, index, precision)
    for name, (c, h, w, gemm) in flattens.items():
        reasons[name] = NHWC_FLATTEN_REASON  # the rewriter applies it (quantize/layout.py)
        permuted[gemm.name] = (c, h, w)

    on_exact_kernel = _exact_kernel_layers(model, index, precision, config)
    nodes: list[NodePlan] = []
    tensors: dict[str, TensorParams] = {}
    for node in model.graph.node:
        rule = rule_for(node)
        plan = NodePlan(node.name, node.op_type, precision[node.name], reasons[node.name])
        nodes.append(plan)
        if node.name in flattens:
            plan.form = NHWC
        if plan.precision == INT8 and node.name in tables:
            plan.form = ROWS
            table = tables[node.name]
            tensors.setdefault(table, TensorParams.for_weight(index.array(table), 0, config))
            plan.quantized_inputs.append(table)
            continue
        if plan.precision != INT8 or rule is None:
            continue
        exact = on_exact_kernel.get(node.name)
        if exact is not None:
            plan.reason = EXACT_REASON.format(kernel=rule.kernel, where=exact[0], share=exact[1])
        _plan_tensors(
            node,
            rule,
            plan,
            index,
            ranges,
            precision,
            tensors,
            config,
            permuted.get(node.name),
            exact is not None,
            memo,
        )
    if config.integer_io:
        plan_io_tensors(model.graph, ranges, config, tensors)
    return QuantPlan("static", config, nodes, tensors, ranges.samples)


def _decisions(
    model: onnx.ModelProto,
    index: GraphIndex,
    ranges: Ranges,
    config: QuantConfig,
    keep_float: dict[str, str] | None,
    nonfinite: dict[str, tuple[int, int]],
    tried: set[str] | None = None,
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Each node's precision and reason, and the embedding tables of the INT8 Gathers; the readers
    of `nonfinite` initializers stay float; `tried` collects the nodes that were INT8 in any round
    of the replay, final or not."""
    keep_float = {**nonfinite_readers(model, nonfinite), **(keep_float or {})}
    tables: dict[str, str] = {}
    for node in model.graph.node:
        table = embedding_table(node, index)
        if table is not None:
            tables[node.name] = table

    # Decisions go in graph order (a node's depends on its producers'); a node whose quantized
    # output no INT8 node would read is then kept in float and the order replayed, until none is.
    kept_float: dict[str, str] = dict(keep_float)
    while True:
        precision, reasons = _decide_all(model, index, ranges, config, tables, kept_float)
        if tried is not None:
            tried.update(name for name, p in precision.items() if p == INT8)
        dequantized_only = _dequantized_right_away(model, index, precision)
        if not dequantized_only:
            break
        kept_float.update(dequantized_only)
    return precision, reasons, tables


def tensors_to_observe(
    model: onnx.ModelProto,
    config: QuantConfig,
    *,
    keep_float: dict[str, str] | None = None,
    nonfinite: dict[str, tuple[int, int]] | None = None,
) -> set[str]:
    """The tensors whose calibrated ranges and channel statistics a static plan of `model` may
    read: the inputs and outputs of every node that is INT8 in some round of the decisions when
    every tensor has a usable range, and the graph's inputs and outputs under --integer-io.
    Calibration observes these alone, as onnxruntime's calibrator observes only the tensors of the
    ops it quantizes.

    A real range can only keep more nodes float (a sentinel, a NaN), so the real plan reads a subset
    of these; should it ask for another tensor all the same, the tensor is in `Ranges.wanted` and
    the caller observes it and plans again (quantize/modes.py)."""
    from quantcli.calibration.collect import float_tensors

    index = GraphIndex(model.graph)
    everything = Ranges({name: (-1.0, 1.0) for name in float_tensors(model)})
    tried: set[str] = set()
    if nonfinite is None:
        nonfinite = nonfinite_initializers(model)
    _decisions(model, index, everything, config, keep_float, nonfinite, tried)
    found = {
        name
        for node in model.graph.node
        if node.name in tried
        for name in (*node.input, *node.output)
        if name
    }
    if config.integer_io:
        inputs, outputs = io_tensors(model.graph)
        found.update(inputs, outputs)
    return found


NONFINITE = "nonfinite initializers"  # the memo's entry for them (not a weight's key: those are tuples)
SENTINEL = 1e30  # |x| this large is a "minus infinity" stand-in (torch.finfo(float32).min masks)
MASK = 1e4  # a Softmax input reaching this far holds an additive attention mask (-10000 masks)


def _without_sentinels(ranges: Ranges, index: GraphIndex) -> Ranges:
    """The ranges minus those that 8 bits cannot represent usefully, each with the reason.

    Attention masks add huge negative constants before a Softmax (-3.4e38, -inf, -1e4): a range
    that includes them leaves no resolution for the real scores (FIELD_NOTES.md: onnxruntime's
    quantize_static keeps ~0.4 cosine on all-MiniLM-L6-v2 for this reason). Such tensors stay
    float; the Softmax after them too, and the integer kernels around them take float in or out.
    """
    kept, excluded = {}, dict(ranges.excluded)
    for name, (lo, hi) in ranges.ranges.items():
        peak = max(abs(lo), abs(hi))
        to_softmax = any(c.op_type == "Softmax" for c in index.consumers.get(name, []))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            excluded[name] = (
                f"range [{lo:.3g}, {hi:.3g}] of {name}: the float model computes inf or NaN there on the "
                "calibration samples, so it stays float"
            )
        elif not (peak < SENTINEL) or (to_softmax and peak >= MASK):
            excluded[name] = (
                f"range [{lo:.3g}, {hi:.3g}] of {name} holds mask or sentinel values: quantizing it "
                "would leave no resolution for the rest, so it stays float"
            )
        else:
            kept[name] = (lo, hi)
    return replace(ranges, ranges=kept, excluded=excluded)  # the same `wanted`: asks are recorded


def _decide_all(
    model: onnx.ModelProto,
    index: GraphIndex,
    ranges: Ranges,
    config: QuantConfig,
    tables: dict[str, str],
    kept_float: dict[str, str],
) -> tuple[dict[str, str], dict[str, str]]:
    """(precision, reason) of every node, in graph order; `kept_float` nodes are float with their reason."""
    precision: dict[str, str] = {}
    reasons: dict[str, str] = {}
    produced_int8: set[str] = set()
    for node in model.graph.node:
        if node.name in kept_float:
            precision[node.name], reasons[node.name] = FLOAT, kept_float[node.name]
            continue
        if node.name in tables:
            precision[node.name], reasons[node.name] = INT8, EMBEDDING_REASON
            continue  # its output is float (rows dequantized), not a quantized activation
        rule = rule_for(node)
        decision, reason = _decide(node, rule, index, ranges, precision, produced_int8, config)
        precision[node.name] = decision
        reasons[node.name] = reason
        if decision == INT8:
            produced_int8.update(o for o in node.output if o)
    return precision, reasons


def _exact_kernel_layers(
    model: onnx.ModelProto, index: GraphIndex, precision: dict[str, str], config: QuantConfig
) -> dict[str, tuple[str, float]]:
    """The first/last integer layers that keep full-range weights on the exact U8U8 kernel
    (quantize/exact_layers.py): only where the target has CPUs whose U8S8 kernels saturate."""
    if not (config.saturation_safe and config.activation_type.bits == 8):
        return {}
    candidates = []
    for node in model.graph.node:
        rule = rule_for(node)
        if precision.get(node.name) != INT8 or rule is None or rule.weight_input is None:
            continue
        weight = node.input[rule.weight_input] if rule.weight_input < len(node.input) else ""
        if weight not in index.initializers or len(index.consumers[weight]) != 1:
            continue
        if rule.pair_layout(node, index.initializers[weight].dims) is not None:
            candidates.append(node)
    return exact_layers(model, index, candidates)


def _dequantized_right_away(
    model: onnx.ModelProto, index: GraphIndex, precision: dict[str, str]
) -> dict[str, str]:
    """INT8 elementwise nodes whose output only float nodes read, each with the reason to keep it float.

    Its integer kernel would requantize a result that a DequantizeLinear turns back into float right
    after. In float it reads the float output of an INT8 MatMul/Gemm before it as is (one
    QuantizeLinear and one DequantizeLinear fewer), and its result is exact. Keeping one in float can
    leave its producer's output read only in float too, hence the replay: on digits_vit the score
    scaling Muls before the (float) Softmax and the whole residual stream of Adds go float.
    Measured (onnxruntime 1.32, one thread, interleaved medians in shuffled order, 3 repeats, spread
    <= 0.015): digits_vit 0.848 -> 0.786 of FP32 at batch 1, 0.685 -> 0.622 at batch 32 (with float
    Softmax, see rules.py), cosine 0.99989 -> 0.99996; all-MiniLM-L6-v2 (its score Muls)
    0.431 -> 0.419 at batch 1. The CNN, MLP and EfficientNet-Lite0 plans do not change.
    """
    found: dict[str, str] = {}
    for node in model.graph.node:
        rule = rule_for(node)
        if precision.get(node.name) != INT8 or rule is None or rule.kind is not Kind.ELEMENTWISE:
            continue
        out = node.output[0]
        readers = index.consumers.get(out, [])
        if not readers or out in index.graph_outputs:
            continue
        if not any(_reads_quantized(c, out, precision) for c in readers):
            found[node.name] = (
                f"kept in float: only float nodes read its output, so {rule.kernel} would requantize a "
                "result dequantized right after"
            )
    return found


def _reads_quantized(node: onnx.NodeProto, tensor: str, precision: dict[str, str]) -> bool:
    rule = rule_for(node)
    if rule is None or precision.get(node.name) != INT8:
        return False
    return tensor in [node.input[i] for i in activation_input_indices(rule, node)]


def _decide(
    node: onnx.NodeProto,
    rule: OpRule | None,
    index: GraphIndex,
    ranges: Ranges,
    precision: dict[str, str],
    produced_int8: set[str],
    config: QuantConfig,
) -> tuple[str, str]:
    """(precision, reason) of one node, given the decisions already made for its producers."""
    if rule is None:
        where = (
            f"domain {node.domain}" if node.domain not in ("", "ai.onnx") else "onnxruntime's CPU provider"
        )
        return FLOAT, f"no INT8 kernel for {node.op_type} in {where}"
    why_not = rule.check(node, index)
    if why_not:
        return FLOAT, why_not
    if rule.weight_input is not None and rule.weight_input < len(node.input):
        if node.input[rule.weight_input] in index.overridable:  # a weight the caller may replace
            return FLOAT, index.why_not_constant(node.input[rule.weight_input])
    if rule.kind is Kind.ABSORBED:
        producer = index.producer.get(node.input[0])
        why_not = _absorbable(node, producer, index, precision, config)
        if why_not:
            return FLOAT, f"{node.op_type} kept in float: {why_not}"
        if node.output[0] not in ranges.ranges:
            return FLOAT, ranges.why_missing(node.output[0])
        return INT8, f"absorbed into {producer.name}'s output range"
    act_inputs = [
        node.input[i] for i in activation_input_indices(rule, node) if node.input[i] not in index.initializers
    ]
    if rule.op_type == "MatMul" and node.input[1] in index.initializers:
        act_inputs = [node.input[0]]
    if rule.op_type == "Add":
        producer = _float_output_producer(node, index, precision)
        if producer is not None:
            return FLOAT, (
                f"bias of an INT8 {producer.op_type}: added in float to the integer kernel's "
                "float output (more accurate than requantizing for QLinearAdd)"
            )
    if rule.kind in (Kind.ELEMENTWISE, Kind.FIXED, Kind.SHARED):
        fed = [t for t in act_inputs if t in produced_int8]
        if rule.kind is Kind.SHARED:
            fed = fed[:1] if act_inputs and act_inputs[0] in produced_int8 else []
        if not fed:
            return FLOAT, "its inputs are float; Q/DQ around it alone would only add cost"
    if rule.kind is not Kind.SHARED:
        needed = list(act_inputs)
        if rule.kind not in (Kind.FIXED,):
            needed += [o for o in node.output[:1] if not _float_output(rule, node, index, config)]
        missing = [t for t in needed if t not in ranges.ranges and t not in produced_int8]
        if missing:
            return FLOAT, ranges.why_missing(missing[0])
    return INT8, f"{rule.kernel}"


def _float_output_producer(
    node: onnx.NodeProto, index: GraphIndex, precision: dict[str, str]
) -> onnx.NodeProto | None:
    """The INT8 MatMul/Gemm whose bias this Add adds, when that kernel can return float.

    MatMul + Add(bias) is how exporters write a Linear on 3-D input. Returning float from the
    MatMul (MatMulIntegerToFloat) and adding the bias in float is more accurate than
    requantizing the MatMul output for a QLinearAdd, and saves a Q/DQ pair and a kernel.
    """
    consts = [i for i in node.input if i in index.initializers]
    acts = [i for i in node.input if i and i not in index.initializers]
    if len(consts) != 1 or len(acts) != 1:
        return None
    producer = index.producer.get(acts[0])
    prule = rule_for(producer) if producer is not None else None
    if prule is None or not prule.float_output_ok or precision.get(producer.name) != INT8:
        return None
    if len(index.consumers[acts[0]]) != 1 or acts[0] in index.graph_outputs:
        return None
    return producer


def _float_output(rule: OpRule, node: onnx.NodeProto, index: GraphIndex, config: QuantConfig) -> bool:
    """True when the node's output stays float (integer kernel with float output); never with
    integer I/O, whose graph outputs are quantized."""
    return rule.float_output_ok and node.output[0] in index.graph_outputs and not config.integer_io


def _plan_tensors(
    node,
    rule: OpRule,
    plan: NodePlan,
    index: GraphIndex,
    ranges: Ranges,
    precision: dict[str, str],
    tensors: dict[str, TensorParams],
    config: QuantConfig,
    nhwc: tuple[int, int, int] | None = None,
    exact: bool = False,
    memo: dict | None = None,
) -> None:  # noqa: ANN001
    """Parameters of the node's quantized tensors; `nhwc`: C, H, W when the node is a Gemm whose
    weight the rewriter stores in H, W, C order (quantize/layout.py); `exact`: its weight is stored
    UINT8 for the exact U8U8 kernel (quantize/exact_layers.py) instead of within the pair limit."""
    act = config.activation_type
    sym = config.symmetric_activations

    def activation(name: str) -> TensorParams:
        if name in tensors:
            return tensors[name]
        producer = index.producer.get(name)
        prule = rule_for(producer) if producer is not None else None
        if prule is not None and precision.get(producer.name) == INT8:
            if prule.kind is Kind.SHARED:
                src = activation(producer.input[0])
                params = TensorParams(
                    "activation", src.dtype, list(src.scale), list(src.zero_point), None, src.range
                )
                tensors[name] = params
                return params
            if prule.kind is Kind.FIXED and prule.fixed_range is not None:
                lo, hi = prule.fixed_range
                scale, zp = calculate_qparams(lo, hi, act, sym)
                tensors[name] = TensorParams("activation", act, [float(scale)], [int(zp)], None, [lo, hi])
                return tensors[name]
        lo, hi = ranges.ranges[name]
        scale, zp = calculate_qparams(lo, hi, act, sym)
        tensors[name] = TensorParams("activation", act, [float(scale)], [int(zp)], None, [lo, hi])
        return tensors[name]

    def constant(name: str) -> None:
        if name in tensors:
            return
        values = index.array(name)
        lo, hi = float(np.min(values, initial=0.0)), float(np.max(values, initial=0.0))
        scale, zp = calculate_qparams(lo, hi, act, sym)
        tensors[name] = TensorParams("constant", act, [float(scale)], [int(zp)], None, [lo, hi])

    if rule.kind is Kind.ABSORBED:
        activation(node.output[0])
        plan.quantized_outputs.append(node.output[0])
        return

    weight_name = None
    if rule.weight_input is not None and rule.weight_input < len(node.input):
        candidate = node.input[rule.weight_input]
        if candidate in index.initializers:
            weight_name = candidate

    for i in activation_input_indices(rule, node):
        name = node.input[i]
        if name == weight_name:
            continue
        if name in index.initializers:
            constant(name)
        else:
            activation(name)
        plan.quantized_inputs.append(name)

    if weight_name is not None:
        source = tensors.get(node.input[0])
        key = (weight_name, exact, nhwc, None if source is None else (*source.scale, *source.zero_point))
        if weight_name not in tensors and memo is not None and key in memo:
            tensors[weight_name] = copy.deepcopy(memo[key])
        if weight_name not in tensors:
            w = index.array(weight_name)
            axis = rule.weight_axis(node, index) if config.per_channel else None
            tensors[weight_name] = TensorParams.for_weight(w, axis, config)
            layout = rule.pair_layout(node, w.shape)
            if exact:
                tensors[weight_name].to_uint8()
            elif config.saturation_safe and act.bits == 8 and layout is not None:
                energy = ranges.channel_energy.get(node.input[0])
                if nhwc is not None:
                    trans_b = bool(attr(node, "transB", 0))
                    stored = permute_gemm_weight(w, nhwc, trans_b)
                    if energy is not None and energy.size == np.prod(nhwc):
                        energy = permute_gemm_weight(energy.reshape(1, -1), nhwc, True).reshape(-1)
                else:
                    stored = w
                limit_pairs(tensors[weight_name], stored, layout, tensors[node.input[0]], energy)
            if memo is not None:
                memo[key] = copy.deepcopy(tensors[weight_name])
        plan.quantized_inputs.append(weight_name)
        bias_i = rule.bias_input
        # An INT32 bias is what the 8-bit integer kernels need. 16-bit activations have no integer
        # kernel (onnxruntime runs the float op on dequantized inputs), so the bias stays float:
        # exact, where an INT32 bias at input_scale x weight_scale, 256 times finer than with 8
        # bits, saturates (EfficientNet-Lite0: 125 values at the INT32 bound).
        if (
            act.bits == 8
            and bias_i is not None
            and bias_i < len(node.input)
            and node.input[bias_i] in index.initializers
        ):
            bias = node.input[bias_i]
            in_scale = np.float32(tensors[node.input[0]].scale[0])
            values = index.array(bias)
            names = (weight_name, tensors[weight_name]), (bias, values)
            shift = _bias_shift(node, index, ranges, config, *names, nhwc)
            scale_before = tensors[weight_name].scale
            _fit_bias(tensors[weight_name], values if shift is None else values - shift, in_scale)
            if shift is not None and tensors[weight_name].scale != scale_before:
                shift = _bias_shift(node, index, ranges, config, *names, nhwc)  # with the widened scales
            w_scale = np.asarray(tensors[weight_name].scale, dtype=np.float32)
            b_scale = (in_scale * w_scale).astype(np.float32)
            if bias not in tensors:
                tensors[bias] = TensorParams(
                    "bias",
                    QType.INT32,
                    b_scale.tolist(),
                    [0] * b_scale.size,
                    0 if b_scale.size > 1 else None,
                    correction=None if shift is None else shift.reshape(-1).tolist(),
                )
            plan.quantized_inputs.append(bias)

    # Outputs: quantized unless a consumer absorbs them or the kernel may return float.
    out = node.output[0]
    consumers = index.consumers[out]
    absorbed = (
        len(consumers) == 1
        and precision.get(consumers[0].name) == INT8
        and (rule_for(consumers[0]) is not None and rule_for(consumers[0]).kind is Kind.ABSORBED)
    )
    if absorbed:
        return
    if rule.float_output_ok:
        if out in index.graph_outputs:
            if config.integer_io:
                activation(out)
                plan.quantized_outputs.append(out)
            return
        feeds_int8 = any(
            precision.get(c.name) == INT8
            and out in [c.input[i] for i in activation_input_indices(rule_for(c), c)]
            for c in consumers
            if rule_for(c) is not None
        )
        if not feeds_int8:
            return
    activation(out)
    plan.quantized_outputs.append(out)


def _bias_shift(
    node: onnx.NodeProto,
    index: GraphIndex,
    ranges: Ranges,
    config: QuantConfig,
    weight: tuple[str, TensorParams],
    bias: tuple[str, np.ndarray],
    nhwc: tuple[int, int, int] | None = None,
) -> np.ndarray | None:
    """The bias correction of an INT8 Conv/Gemm (quantize/bias_correction.py), shaped like its bias;
    None when it is off, no channel means were calibrated, or the bias is shared or shaped otherwise."""
    mean = ranges.channel_means.get(node.input[0])
    (weight_name, params), (bias_name, values) = weight, bias
    if not config.bias_correction or mean is None or len(index.consumers[bias_name]) != 1:
        return None
    w = index.array(weight_name)
    w_dequantized = None
    if nhwc is not None and params.pair_limit is not None:  # pairs are fitted in the stored order
        trans_b = bool(attr(node, "transB", 0))
        stored = dequantized(permute_gemm_weight(w, nhwc, trans_b), params)
        w_dequantized = permute_gemm_weight(stored, nhwc, trans_b, inverse=True)
    shift = output_shift(node, w, params, mean, w_dequantized)
    if shift is None or shift.size != values.size or not np.isfinite(shift).all():
        return None
    return shift.reshape(values.shape)


INT32_LIMIT = 2**31 - 1


def _fit_bias(weight: TensorParams, bias: np.ndarray, in_scale: np.float32) -> None:
    """Widen the weight scale of the channels whose INT32 bias would saturate.

    The bias is stored at scale input_scale x weight_scale. A channel whose weights are all near
    zero gets a tiny weight scale, and its bias then needs more than 31 bits (EfficientNet-Lite0:
    83 biases clipped at the INT32 bound). Such a channel's weight scale grows until its bias
    fits; its weights, near zero, lose little. onnxruntime's quantizer does the same.
    """
    scale = np.asarray(weight.scale, dtype=np.float64)
    peak = np.abs(bias.astype(np.float64)).reshape(-1)
    if scale.size == 1:
        peak = peak.max(initial=0.0, keepdims=True)
    if peak.size != scale.size or not in_scale > 0:
        return
    needed = peak / (float(in_scale) * INT32_LIMIT) * 1.0001  # float32 rounding margin
    if np.any(needed > scale):
        weight.scale = np.maximum(scale, needed).astype(np.float32).tolist()
