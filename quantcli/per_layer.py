"""Per-layer error: the float model's intermediate tensors against their counterparts in the other
model, ranked by the error each layer adds, so that the first bad layer stands out.

Layers: the graph inputs, and the floating-point outputs of the reference model's nodes that
compute something (every op but those that only move, select or reshape data, DATA_MOVEMENT_OPS)
and that depend on a graph input (constant subgraphs are not layers).

Counterpart in the candidate: the tensor of the same name, when a candidate node produces it (or it
is a candidate graph input), taken as its consumers see it: if every consumer is a QuantizeLinear
(producer -> Q -> DQ), the output of the DequantizeLinear that follows; if every consumer is a
DequantizeLinear (an integer tensor), that DequantizeLinear's output; otherwise the tensor itself
(float16 is compared in float32). Names are matched, never parsed: a float tensor with no candidate
node output of that name is reported as unmatched (a Conv output fused with its BatchNormalization,
a Relu folded into the following QuantizeLinear).

Error added: added_db = min(input SQNR, CLEAN_SQNR_DB) - min(SQNR, CLEAN_SQNR_DB), where the input
SQNR is the worst SQNR among the nearest compared tensors the layer reads (through data-movement and
unmatched nodes; +inf when it reads none). Layers are ranked by added_db, then by SQNR.

Both models run with the compared tensors exposed as graph outputs and graph optimizations off, so
the figures describe the models executed op by op (onnxruntime cannot fuse a node whose output is a
graph output). Memory stays bounded: tensors are exposed in groups whose estimated bytes per sample
(both models' copies) fit a budget, one pass over the samples per group, and each sample's values
are folded into running statistics and dropped; nothing is kept across samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx

from quantcli.calibration.collect import estimated_bytes, tensor_groups
from quantcli.calibration.memory import tensor_bytes
from quantcli.graph import GraphIndex, node_label
from quantcli.io_match import IOMatch, TensorIO
from quantcli.runtime import exposing_session
from quantcli.verify import ErrorAccumulator, OutputMetrics, run_session

DATA_MOVEMENT_OPS = frozenset(
    {
        "Cast", "CastLike", "Concat", "Constant", "ConstantOfShape", "DepthToSpace", "Dropout",
        "Equal", "Expand", "Flatten", "Gather", "GatherElements", "GatherND", "Greater",
        "GreaterOrEqual", "Identity", "Less", "LessOrEqual", "MaxPool", "NonZero", "Not", "Pad",
        "Range", "Reshape", "Shape", "Size", "Slice", "SpaceToDepth", "Split", "Squeeze", "Tile",
        "Transpose", "Unsqueeze", "Where", "QuantizeLinear", "DequantizeLinear",
    }
)  # fmt: skip
CLEAN_SQNR_DB = 60.0  # at or above this SQNR a tensor counts as clean: no layer is charged for it
GRAPH_INPUT = "graph input"
_NOT_A_LAYER = "not floating point"  # found at run time: dropped, not reported as unmatched
NOTE = (
    "per-layer figures come from both models run op by op, with every compared tensor exposed as an "
    "output (onnxruntime cannot fuse across them); the end-to-end figures come from the real, fused models"
)


@dataclass
class LayerError:
    """The error of one compared tensor, and how much of it the layer that computes it added."""

    tensor: str  # in the reference model
    candidate_tensor: str
    node: str
    op_type: str
    position: int  # in the reference graph's order; graph inputs first
    metrics: OutputMetrics
    candidate_node: str = ""  # the candidate node that computes the value (behind its Q/DQ)
    candidate_op_type: str = ""
    inputs: list[str] = field(default_factory=list)  # the nearest compared tensors it reads
    input_sqnr_db: float = math.inf
    added_db: float = 0.0


@dataclass
class PerLayerResult:
    """Compared layers, worst first; reference layers with no counterpart, with the reason."""

    layers: list[LayerError]
    unmatched: list[tuple[str, str, str, str]]  # (tensor, node, op_type, reason)
    samples: int
    runs: int  # passes over the samples (one per group of exposed tensors)
    note: str = NOTE
    clean_sqnr_db: float = CLEAN_SQNR_DB


@dataclass
class _Layer:
    tensor: str
    node: str
    op_type: str
    position: int
    candidate: str | None = None  # None: no counterpart
    candidate_node: str = ""
    candidate_op_type: str = ""
    reason: str = ""


def reference_layers(model: onnx.ModelProto) -> list[_Layer]:
    """The graph inputs and layer outputs of a float model, in graph order (module docstring)."""
    index = GraphIndex.of(model)
    layers = [_Layer(i.name, i.name, GRAPH_INPUT, k) for k, i in enumerate(_inputs(model.graph))]
    dynamic = {layer.tensor for layer in layers}
    for node in model.graph.node:
        if not any(i in dynamic for i in node.input if i):
            continue
        dynamic.update(o for o in node.output if o)
        if node.op_type in DATA_MOVEMENT_OPS:
            continue
        for out in node.output:
            if out and index.elem_type(out) in (None, *_FLOAT_TYPES):
                layers.append(_Layer(out, node_label(node), node.op_type, len(layers)))
    return layers


_FLOAT_TYPES = (
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
)


def counterpart(index: GraphIndex, name: str) -> tuple[str | None, str]:
    """The candidate tensor to compare with the reference tensor `name` (module docstring), or None
    and the reason there is none."""
    if name not in index.producer and name not in index.graph_inputs:
        return None, "no tensor of that name in the candidate"
    consumers = index.consumers.get(name, [])
    if consumers and all(n.op_type == "QuantizeLinear" for n in consumers):
        dequantized = [
            n for n in index.consumers.get(consumers[0].output[0], []) if n.op_type == "DequantizeLinear"
        ]
        if not dequantized:
            return None, "quantized in the candidate with no DequantizeLinear after it"
        return dequantized[0].output[0], ""
    if consumers and all(n.op_type == "DequantizeLinear" for n in consumers):
        return consumers[0].output[0], ""
    return name, ""


def computing_node(index: GraphIndex, name: str) -> onnx.NodeProto | None:
    """The node that computes a tensor's value, looking behind QuantizeLinear/DequantizeLinear."""
    node = index.producer.get(name)
    while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        node = index.producer.get(node.input[0])
    return node


def _sizes(
    reference: onnx.ModelProto,
    names: list[str],
    samples: Callable[[], Iterable[dict[str, np.ndarray]]],
    io: IOMatch,
) -> dict[str, int]:
    """Bytes of each reference tensor for the first sample's input shapes (its free axes as large
    as that sample makes them, not 1), before any run exposes them."""
    first = next(iter(samples()), None)
    if first is None:
        return estimated_bytes(reference)
    shapes = {name: value.shape for name, value in io.feeds(first, "reference").items()}
    return tensor_bytes(reference, names, shapes)


def per_layer_errors(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    samples: Callable[[], Iterable[dict[str, np.ndarray]]],
    io: IOMatch,
    *,
    memory_budget_bytes: int = 1 << 30,
    progress: Callable[[int, int], None] | None = None,
    sample_count: int = 0,
) -> PerLayerResult:
    """Compare every layer of `reference` with its counterpart in `candidate` over the samples
    (`samples()` starts a new pass); the models are restored after. `progress(done, total)` counts
    sample runs over all passes (`sample_count` samples per pass)."""
    layers = reference_layers(reference)
    cand_index = GraphIndex.of(candidate)
    for layer in layers:
        layer.candidate, layer.reason = counterpart(cand_index, layer.tensor)
        if layer.candidate is not None:
            node = computing_node(cand_index, layer.candidate)
            layer.candidate_node, layer.candidate_op_type = (
                (node_label(node), node.op_type) if node is not None else (layer.candidate, GRAPH_INPUT)
            )
    matched = [layer for layer in layers if layer.candidate is not None]
    feeds_ref = {p.name: p.reference for p in io.inputs}
    feeds_cand = {p.name: p.candidate for p in io.inputs}
    acc: dict[str, ErrorAccumulator] = {}
    by_name = {x.tensor: x for x in matched}
    names = tensor_groups(
        list(by_name), _sizes(reference, list(by_name), samples, io), memory_budget_bytes // 2
    )
    groups = [[by_name[n] for n in group] for group in names]
    count = 0
    for g, group in enumerate(groups):
        ref_names = [x.tensor for x in group if x.op_type != GRAPH_INPUT]
        cand_names = list(
            dict.fromkeys(x.candidate for x in group if x.candidate not in cand_index.graph_inputs)
        )
        ref_session = exposing_session(reference, ref_names, optimize=False, lean=False)
        cand_session = exposing_session(candidate, cand_names, optimize=False, lean=False)
        _drop_non_float(group, ref_session, cand_session)
        live = [x for x in group if not x.reason]
        count = 0
        for sample in samples():
            ref_feeds, cand_feeds = io.feeds(sample, "reference"), io.feeds(sample, "candidate")
            ref_values = _values(ref_session, ref_names, ref_feeds, feeds_ref, "reference", count)
            cand_values = _values(cand_session, cand_names, cand_feeds, feeds_cand, "candidate", count)
            for x in live:
                if x.reason:
                    continue
                r, c = ref_values[x.tensor], cand_values[x.candidate]
                if r.shape != c.shape:
                    x.reason = f"shape {list(r.shape)} in the reference, {list(c.shape)} in the candidate"
                    acc.pop(x.tensor, None)
                    continue
                acc.setdefault(x.tensor, ErrorAccumulator(x.tensor)).update(r, c)
            count += 1
            if progress is not None:
                progress(g * sample_count + count, len(groups) * sample_count)
        del ref_session, cand_session
    compared = [x for x in layers if x.candidate is not None and not x.reason and x.tensor in acc]
    results = _rank(reference, compared, {x.tensor: acc[x.tensor].result() for x in compared})
    unmatched = [
        (x.tensor, x.node, x.op_type, x.reason) for x in layers if x.reason and x.reason != _NOT_A_LAYER
    ]
    return PerLayerResult(results, unmatched, count, len(groups))


def _inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in inits]


def _drop_non_float(group: list[_Layer], ref_session, cand_session) -> None:  # noqa: ANN001
    ref_types = {o.name: o.type for o in ref_session.get_outputs()}
    ref_types.update({i.name: i.type for i in ref_session.get_inputs()})
    cand_types = {o.name: o.type for o in cand_session.get_outputs()}
    cand_types.update({i.name: i.type for i in cand_session.get_inputs()})
    for x in group:
        if not TensorIO(x.tensor, ref_types.get(x.tensor, ""), None).is_float:
            x.reason = _NOT_A_LAYER
        elif not TensorIO(x.candidate, cand_types.get(x.candidate, ""), None).is_float and not (
            x.op_type == GRAPH_INPUT
        ):
            x.reason = f"'{x.candidate}' is {cand_types.get(x.candidate, 'of unknown type')} in the candidate"


def _values(
    session,  # noqa: ANN001
    names: list[str],
    feeds: dict[str, np.ndarray],
    inputs: dict[str, TensorIO],
    which: str,
    index: int,
) -> dict[str, np.ndarray]:
    """The exposed tensors of one run, plus the graph inputs as float32."""
    values = dict(zip(names, run_session(session, names, feeds, which, index), strict=True)) if names else {}
    values = {k: np.asarray(v).astype(np.float32, copy=False) for k, v in values.items()}
    for name, tensor in inputs.items():
        values.setdefault(name, tensor.to_float(feeds[name]))
    return values


def _rank(
    reference: onnx.ModelProto, compared: list[_Layer], metrics: dict[str, OutputMetrics]
) -> list[LayerError]:
    """LayerErrors worst first: the nearest compared inputs of each layer, their worst SQNR, the drop."""
    tracked = set(metrics)
    nearest: dict[str, frozenset[str]] = {name: frozenset([name]) for name in tracked}
    reads: dict[str, frozenset[str]] = {}
    for node in reference.graph.node:
        sources = frozenset().union(*(nearest.get(i, frozenset()) for i in node.input if i))
        for out in node.output:
            if out:
                reads[out] = sources
                if out not in tracked:
                    nearest[out] = sources
    results = []
    for x in compared:
        m = metrics[x.tensor]
        inputs = sorted(reads.get(x.tensor, frozenset()))
        input_sqnr = min((metrics[i].sqnr_db for i in inputs), default=math.inf)
        added = min(input_sqnr, CLEAN_SQNR_DB) - min(m.sqnr_db, CLEAN_SQNR_DB)
        results.append(
            LayerError(
                x.tensor,
                x.candidate,
                x.node,
                x.op_type,
                x.position,
                m,
                x.candidate_node,
                x.candidate_op_type,
                inputs,
                input_sqnr,
                added,
            )
        )
    results.sort(key=lambda e: (-_finite(e.added_db), _finite(e.metrics.sqnr_db), e.position))
    return results


def _finite(x: float) -> float:
    """NaN (a NaN in a tensor) sorts as the worst value."""
    return math.inf if math.isnan(x) else x
