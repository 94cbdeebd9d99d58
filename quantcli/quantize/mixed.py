"""Mixed mode: static INT8 everywhere it runs, FP16 for the nodes named or measured most sensitive.

Planning starts from the static plan. The FP16 nodes are the ones `--fp16-nodes` names (shell-style
patterns on node names) plus the `fp16_count` INT8 nodes whose FP16 form helps most; the static
planner then decides every other node again with those kept out of INT8 (a Relu after an FP16 Conv
is no longer absorbed, a Reshape after it no longer runs on quantized data). Nodes that neither
INT8 nor FP16 can run stay float32, with the static planner's reason.

Sensitivity, on up to fallback.SENSITIVITY_SAMPLES calibration samples: the all-INT8 model (the static plan,
rewritten) and the float model run side by side with every layer exposed (per_layer.py); each
layer's added error (dB of SQNR lost in that layer) is charged to the INT8 node that computes it,
through Relu/Clip absorbed into a producer and through ops that only move quantized data. The
worst of those candidates are then each tried alone in FP16 and ranked by the SQNR the outputs
gain; a node whose FP16 form does not help is never chosen (node_sensitivity).

An FP16 node reads its activations through a Cast to float16, its float weights are stored as
float16, and its outputs are Cast back to float32 for their INT8 or float32 consumers (the fp16
rewriter, quantize/fp16_rewrite.py). onnxruntime's x86 CPU provider has no float16 Conv/MatMul/Gemm
kernel: it computes such a node in float32 on the float16-rounded values, which is the accuracy of
FP16 without its speed. The Cast also keeps the node out of onnxruntime's WeightBiasQuantization,
which would otherwise quantize a float Conv/Gemm that reads a DequantizeLinear output per tensor
at load (measured: the node ran as QLinearConv), and with it the node's accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx

from quantcli.calibration.collect import Ranges
from quantcli.graph import GraphIndex, subgraphs
from quantcli.quantize.fp16 import (
    FP16_CPU_KERNELS,
    FP16_MAX,
    attribute_forbids_fp16,
    elem_types,
)
from quantcli.quantize.fp16_rewrite import rewrite_fp16
from quantcli.quantize.plan import FP16, QuantConfig, QuantPlan
from quantcli.quantize.qdq import rewrite_qdq
from quantcli.quantize.static import plan_static

SampleSource = Callable[[], Iterable[dict[str, np.ndarray]]]


def candidate_count(count: int) -> int:
    """How many of the worst per-layer nodes are tried alone in FP16 to choose `count` of them."""
    return 2 * count + 4


def match_patterns(model: onnx.ModelProto, patterns: tuple[str, ...]) -> list[str]:
    """The node names that the shell-style `patterns` match, in graph order; a pattern matching
    nothing is a UsageError naming it (a typo should not silently change nothing)."""
    from quantcli.quantize.fallback import match_nodes

    return list(match_nodes(model, patterns, "--fp16-nodes"))


def node_sensitivity(
    model: onnx.ModelProto,
    ranges: Ranges,
    config: QuantConfig,
    samples: SampleSource,
    *,
    candidates: int,
    memory_budget_bytes: int,
    keep_float: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, tuple[float, float]]:
    """INT8 node -> (end-to-end SQNR gain in dB with it in FP16, SQNR its own layer loses in INT8),
    for the nodes whose FP16 form helps, best first: the fallback search's ranking
    (quantize/fallback.rank) with FP16 as the precision, `candidates` of them tried alone.

    The per-layer loss ranks every INT8 node cheaply, but it favours the first layers (their input
    is exact, so all of their error counts as added) and errors do not add up along a network:
    EfficientNet-Lite0's stem Conv loses 21.6 dB in its own layer, yet with it in FP16 the logits
    lost 0.7 dB. Hence the candidates are ranked by how much the model's outputs gain.
    `progress(done, total)` counts the passes over the samples: per-layer, baseline, each candidate.
    """
    from quantcli.quantize.fallback import rank

    ranked = rank(
        model,
        ranges,
        config,
        samples,
        precision=FP16,
        keep_float=keep_float or {},
        tried=candidates,
        memory_budget_bytes=memory_budget_bytes,
        progress=progress,
    )
    return {c.name: (c.gain_db, c.loss_db) for c in ranked if c.gain_db is not None and c.gain_db > 0}


def plan_mixed(
    model: onnx.ModelProto,
    ranges: Ranges,
    config: QuantConfig,
    *,
    named: list[str],
    sensitivity: dict[str, tuple[float, float]],
    count: int,
    chosen: dict[str, str] | None = None,
    keep_float: dict[str, str] | None = None,
    memo: dict | None = None,
) -> QuantPlan:
    """The static plan with the named nodes, the first `count` nodes of `sensitivity` (see
    node_sensitivity) and the `chosen` ones (name -> reason) in FP16, and the `keep_float` ones
    (name -> reason: --exclude-nodes) in float32."""
    index = GraphIndex(model.graph)
    types = elem_types(model.graph)
    excluded = keep_float or {}
    chosen = {k: v for k, v in (chosen or {}).items() if k not in excluded}
    for name in named:
        if name not in excluded:
            chosen[name] = "FP16: named by --fp16-nodes"
    ranked = [name for name in sensitivity if name not in chosen and name not in excluded]
    for name in ranked[:count]:
        gain, loss = sensitivity[name]
        chosen[name] = (
            f"FP16: in FP16 it raises the outputs' SQNR on the calibration samples by {gain:.2f} dB "
            f"(its INT8 form loses {loss:.1f} dB in its own layer)"
        )
    keep_float = dict(excluded)
    fp16: set[str] = set()
    for node in model.graph.node:
        if node.name not in chosen:
            continue
        why_not = _why_not_fp16(node, index, types, ranges)
        if why_not:
            keep_float[node.name] = f"float32: chosen for FP16, but {why_not}"
        else:
            keep_float[node.name] = chosen[node.name]
            fp16.add(node.name)
    plan = plan_static(model, ranges, config, keep_float=keep_float, memo=memo)
    for node_plan, node in zip(plan.nodes, model.graph.node, strict=True):
        if node.name in fp16:
            node_plan.precision = FP16
            # An initializer that must keep its float32 form (a graph output) is read through a Cast.
            node_plan.quantized_inputs = [
                t
                for t in node.input
                if types.get(t) == onnx.TensorProto.FLOAT
                and (t not in index.initializers or index.storable(t))
                and t not in index.overridable
            ]
            node_plan.quantized_outputs = [t for t in node.output if types.get(t) == onnx.TensorProto.FLOAT]
            if node.op_type not in FP16_CPU_KERNELS:
                node_plan.reason += (
                    f"; onnxruntime's CPU provider has no float16 {node.op_type}: it computes it in "
                    "float32 on the float16 values"
                )
    plan.mode = "mixed"
    return plan


def _why_not_fp16(
    node: onnx.NodeProto, index: GraphIndex, types: dict[str, int], ranges: Ranges
) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return f"it is an op of domain {node.domain}"
    if subgraphs(node):
        return "it has a subgraph"
    forbidden = attribute_forbids_fp16(node)
    if forbidden:
        return forbidden
    floats = [t for t in (*node.input, *node.output) if t and types.get(t) == onnx.TensorProto.FLOAT]
    if not floats:
        return "it has no float tensors"
    for t in floats:
        if t in index.initializers:
            peak = float(np.abs(index.array(t)).max(initial=0.0))
        else:
            if t in ranges.unobserved:  # static calibration left it out
                return ranges.why_missing(t)  # recorded: the caller observes it and plans again
            lo, hi = ranges.ranges.get(t, (0.0, 0.0))
            peak = max(abs(lo), abs(hi))
        if peak > FP16_MAX:
            return f"{t} reaches {peak:.6g}, beyond float16's 65504"
    return None


def rewrite_mixed(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """Q/DQ for the INT8 nodes (qdq.py), then float16 for the FP16 nodes (fp16_rewrite.py)."""
    from quantcli.preprocess.shapes import infer_shapes

    fp16_nodes = [n for n in plan.nodes if n.precision == FP16]
    out = rewrite_qdq(model, plan, in_place=True)
    if not fp16_nodes:
        return out
    infer_shapes(out)  # the fp16 rewriter needs the type of every tensor, the new Q/DQ outputs too
    return rewrite_fp16(out, fp16_nodes, keep_io_types=True, in_place=True)
