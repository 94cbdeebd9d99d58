"""FP16 mode: plan which nodes compute in float16, then rewrite the model with Casts at the borders.

`plan_fp16` gives each node "fp16" or "float" (float32) and why. A node computes in float16 only
where onnxruntime's CPU provider has a float16 kernel for it (`FP16_CPU_KERNELS`, probed, not
guessed), its tensor types are known, the ONNX schema allows float16 for its float tensors, its type
attributes can be retargeted (Cast `to`, ConstantOfShape `value`) and no initializer of it overflows
float16 (|x| > 65504) or underflows it (storing it in float16 would cost more than UNDERFLOW_ERROR
relative L2 error: values below float16's smallest normal, 6.1e-5, lose their precision or become 0). A connected region of such nodes whose float borders all touch float32 nodes
stays float32: it would pay a Cast per border and run no faster (onnxruntime's InsertCastTransformer
applies this "isolated fp16 node" rule to single nodes). A region touching a graph input or output
stays float16: those are float16 under `keep_io_types=False`, and the plan does not depend on it.
Shape and Size read only the shape and take their input in either type, with no Cast.

Storage is planned too: each float32 initializer is stored as float16 (the file halves), except one
that overflows or underflows, or a small one (<= SMALL_CONSTANT values) read only by float32 nodes, where a Cast
would cost more than it saves. `quantized_inputs` lists what a node reads in float16 (every float
input of an fp16 node; the float16-stored initializers a float node reads through a Cast) and
`quantized_outputs` what it produces in float16.

The rewriter is `quantize/fp16_rewrite.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from quantcli.graph import (
    SHAPE_READERS,
    GraphIndex,
    attr,
    subgraphs,
)
from quantcli.quantize.plan import FLOAT, FP16, NodePlan

FP16_MAX = 65504.0
UNDERFLOW_ERROR = 1e-3  # relative L2 error of a float16-stored initializer beyond which it keeps float32
SMALL_CONSTANT = 8
F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16

# Op types onnxruntime 1.32.0's CPU provider runs natively in float16 on x86-64, found with
# scripts/probe_fp16_kernels.py: a one-node float16 model per op (122 candidates), opened at
# ORT_ENABLE_BASIC with optimized_model_filepath; listed when the session runs, the node is not
# inlined as a function, and onnxruntime inserted no Cast around it (its InsertCastTransformer
# does for ops with no float16 kernel). Conv, MatMul, Gemm, Add, Mul, Relu, Softmax ... have none
# here; ARM64 builds register more, so there this list is merely conservative.
FP16_CPU_KERNELS = frozenset(
    {
        "Cast", "Clip", "Concat", "ConstantOfShape", "Expand", "Flatten", "Gather", "GatherElements",
        "GatherND", "Identity", "IsInf", "IsNaN", "LayerNormalization", "Max", "Min", "Mod", "Reshape",
        "Round", "ScatterElements", "ScatterND", "Shape", "Shrink", "Sign", "Slice", "Split", "Squeeze",
        "Transpose", "Unsqueeze",
    }
)  # fmt: skip

_STORED_NOTE = "its weights are stored as float16 and Cast to float32 right before it (the file still halves)"
_TYPE_ATTRS = ("to", "dtype", "output_dtype", "value", "value_float", "value_floats")


@dataclass
class _Facts:
    """What planning needs to know about the model, computed once."""

    index: GraphIndex
    types: dict[str, int]  # element type of every tensor the graph declares
    float32_only: dict[str, str]  # float32 initializer float16 cannot hold -> why (overflow, underflow)
    opset: int
    peaks: dict[str, float]  # activation -> largest |value| seen on the calibration samples, when > 65504

    def floats(self, names) -> list[str]:  # noqa: ANN001 - a protobuf repeated string field
        """The float32 tensors among `names`, in order, once each."""
        return list(dict.fromkeys(t for t in names if t and self.types.get(t) == F32))


def plan_fp16(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]] | None = None) -> list[NodePlan]:
    """One NodePlan per node of the (preprocessed) model: precision "fp16" or "float" (float32) and the reason.

    `ranges` (tensor -> calibrated (min, max), from --calib) protects activations: a node that
    reads or writes a tensor whose calibrated range exceeds float16's stays float32. Without it
    only initializers are checked. Reductions and variances need no check of their own here:
    the CPU provider's one float16 reduction, LayerNormalization, accumulates in float32 (an input
    peaking at 30000 normalises to within 5e-4 of float64).
    """
    index = GraphIndex(model.graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    peaks = {t: peak for t, (lo, hi) in (ranges or {}).items() if (peak := max(abs(lo), abs(hi))) > FP16_MAX}
    facts = _Facts(index, elem_types(model.graph), _float32_only(index), opset, peaks)
    why_float = {n.name: _why_float(n, facts) for n in model.graph.node}
    capable = {name for name, why in why_float.items() if why is None}
    for region in _regions(model.graph, facts, capable):
        crossings, touches_io = _borders(region, facts)
        if crossings and not touches_io:
            why = f"isolated between float32 nodes: in float16 its region of {len(region)} node(s) would need {crossings} Cast(s) and run no faster"
            why_float.update((n.name, why) for n in region)
    fp16 = {name for name, why in why_float.items() if why is None}
    stored = _stored_fp16(facts, fp16)
    return [_node_plan(n, why_float[n.name], facts, stored) for n in model.graph.node]


def elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every tensor the graph declares (inputs, value_info, outputs, initializers)."""
    types = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    types.update((t.name, t.data_type) for t in graph.initializer)
    return types


def _overflow(values: np.ndarray) -> float | None:
    """The largest finite |value| when it exceeds float16's range (infinities convert exactly)."""
    peak = float(np.abs(values[np.isfinite(values)]).max(initial=0.0))
    return peak if peak > FP16_MAX else None


def _underflow(values: np.ndarray) -> float | None:
    """The relative L2 error of storing `values` in float16, when underflow makes it exceed
    UNDERFLOW_ERROR (rounding alone stays below ~2.6e-4 on every weight of the real models)."""
    v = values[np.isfinite(values)].astype(np.float64)
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        return None
    err = float(np.linalg.norm(v - v.astype(np.float16).astype(np.float64))) / norm
    return err if err > UNDERFLOW_ERROR else None


def _float32_only(index: GraphIndex) -> dict[str, str]:
    """The float32 initializers that float16 cannot hold, each with the reason."""
    notes = {}
    for name, t in index.initializers.items():
        if t.data_type != F32:
            continue
        values = index.array(name)
        if (peak := _overflow(values)) is not None:
            notes[name] = _overflow_note(name, peak)
        elif (err := _underflow(values)) is not None:
            notes[name] = (
                f"initializer {name} keeps float32: its small values underflow float16 (storing it "
                f"in float16 would cost a relative error of {err:.2g}, over {UNDERFLOW_ERROR:g})"
            )
    return notes


def _why_float(node: onnx.NodeProto, facts: _Facts) -> str | None:
    """Why this node cannot compute in float16, or None when it can."""
    if node.domain not in ("", "ai.onnx"):
        return f"op of domain {node.domain}: kept float32"
    if subgraphs(node):
        return f"{node.op_type} has a subgraph: kept float32 (subgraphs are not converted)"
    tensors = [t for t in (*node.input, *node.output) if t]
    unknown = [t for t in tensors if t not in facts.types]
    if not unknown and not facts.floats(tensors):
        return "no float tensors: runs unchanged"
    if node.op_type in SHAPE_READERS:
        return "reads only its input's shape: takes it in float16 or float32 as it comes, with no Cast"
    if node.op_type not in FP16_CPU_KERNELS:
        return (
            f"no float16 kernel for {node.op_type} in onnxruntime's CPU provider "
            "(it would insert Casts around it anyway)"
        )
    if unknown:
        return f"type of tensor {unknown[0]} is unknown (shape inference could not type it)"
    for t in facts.floats(node.input):
        if t in facts.float32_only:
            return facts.float32_only[t]
    for t in facts.floats((*node.input, *node.output)):
        if t in facts.peaks:
            return (
                f"activation {t} reaches {facts.peaks[t]:.6g} on the calibration samples: "
                "it would overflow float16 (max 65504)"
            )
    return _schema_forbids_fp16(node, facts) or attribute_forbids_fp16(node)


def _overflow_note(name: str, peak: float) -> str:
    return f"initializer {name} keeps float32: values up to {peak:.6g} overflow float16 (max 65504)"


def _schema_forbids_fp16(node: onnx.NodeProto, facts: _Facts) -> str | None:
    """Why the ONNX schema keeps one of the node's float tensors float32 (Resize scales), or None."""
    try:
        schema = onnx.defs.get_schema(node.op_type, facts.opset, node.domain)
    except onnx.defs.SchemaError:
        return f"no ONNX schema for {node.op_type} at opset {facts.opset}"
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for kind, names, formals in (
        ("input", node.input, schema.inputs),
        ("output", node.output, schema.outputs),
    ):
        for i, name in enumerate(names):
            if not formals or facts.types.get(name) != F32:
                continue
            formal = formals[min(i, len(formals) - 1)]  # a variadic formal is the last one
            if "tensor(float16)" not in allowed.get(formal.type_str, {formal.type_str}):
                return f"its {kind} '{formal.name}' must be float32 (ONNX schema of {node.op_type})"
    return None


def attribute_forbids_fp16(node: onnx.NodeProto) -> str | None:
    """Why an attribute fixing an output type cannot be retargeted to float16, or None."""
    if node.op_type == "Cast":
        return None
    if node.op_type == "ConstantOfShape":
        value = attr(node, "value")
        if (
            value is None
            or value.data_type != F32
            or (peak := _overflow(numpy_helper.to_array(value))) is None
        ):
            return None
        return f"its value {peak:.6g} overflows float16 (max 65504)"
    for a in node.attribute:
        if a.name in _TYPE_ATTRS:
            return f"its '{a.name}' attribute fixes an output type that quantcli does not retarget"
    return None


def _regions(graph: onnx.GraphProto, facts: _Facts, capable: set[str]) -> list[list[onnx.NodeProto]]:
    """Connected groups of float16-capable nodes (joined by float activations), in graph order."""
    parent = {name: name for name in capable}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for node in graph.node:
        for t in facts.floats(node.input) if node.name in capable else ():
            producer = facts.index.producer.get(t)
            if producer is not None and producer.name in capable:
                parent[root(producer.name)] = root(node.name)
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.name in capable:
            groups.setdefault(root(node.name), []).append(node)
    return list(groups.values())


def _borders(region: list[onnx.NodeProto], facts: _Facts) -> tuple[int, bool]:
    """How many float activations cross the region's border; whether one is a graph input or output."""
    index, names = facts.index, {n.name for n in region}
    crossing: set[str] = set()
    touches_io = False
    for node in region:
        for t in facts.floats(node.input):
            producer = index.producer.get(t)
            if t not in index.initializers and (producer is None or producer.name not in names):
                crossing.add(t)
                touches_io |= t in index.graph_inputs
        for t in facts.floats(node.output):
            readers = [c for c in index.consumers[t] if c.op_type not in SHAPE_READERS]
            if t in index.graph_outputs or any(c.name not in names for c in readers):
                crossing.add(t)
                touches_io |= t in index.graph_outputs
    return len(crossing), touches_io


def _stored_fp16(facts: _Facts, fp16: set[str]) -> set[str]:
    """The float32 initializers to store as float16."""
    index, stored = facts.index, set()
    for name, init in index.initializers.items():
        if init.data_type != F32 or name in facts.float32_only or not index.storable(name):
            continue
        if np.prod(init.dims) > SMALL_CONSTANT or any(c.name in fp16 for c in index.consumers[name]):
            stored.add(name)
    return stored


def _node_plan(node: onnx.NodeProto, why_float: str | None, facts: _Facts, stored: set[str]) -> NodePlan:
    inputs = facts.floats(node.input)
    if why_float is None:
        reason = "float16 kernel in onnxruntime's CPU provider"
        if node.op_type == "Cast" and attr(node, "to") == F32:
            reason += "; its to=FLOAT becomes FLOAT16"
        read16 = [t for t in inputs if t not in facts.index.initializers or t in stored]
        return NodePlan(node.name, node.op_type, FP16, reason, read16, facts.floats(node.output))
    weights = [t for t in inputs if t in stored]
    notes = [why_float] + [_STORED_NOTE] * bool(weights)
    notes += [facts.float32_only[t] for t in inputs if t in facts.float32_only]
    notes += [why for t in inputs if (why := facts.index.why_kept(t))]
    return NodePlan(node.name, node.op_type, FLOAT, "; ".join(dict.fromkeys(notes)), weights, [])
