"""Compute in float32: a float16 or float64 model (or the float16/float64 parts of a mixed one)
becomes a float32 model with Casts at its inputs and outputs, so its interface keeps its types.

Integer quantization needs float32 around its Q/DQ. ONNX QuantizeLinear/DequantizeLinear take no
float64 at any opset, and take float16 only from opset 19; onnxruntime 1.32 loads such float16
Q/DQ models but fuses none of them into integer kernels: it Casts the dequantized float16 values to
float32 and runs the float Conv/MatMul, so the model pays the Q/DQ and Casts and gains no integer
kernel (measured: DQ -> MatMul -> Q at opset 19 with float16 scales runs as DequantizeLinear, Cast,
MatMul, Cast, QuantizeLinear). The x86 CPU provider has no float16 Conv/MatMul/Gemm kernels either
(quantize/fp16.py): it computes them in float32 on Casts it inserts itself. So the modes that
quantize lift every float16/float64 value to float32 before planning:

- float16/float64 initializers (subgraphs' too) and tensor attributes (Constant, ConstantOfShape
  `value`) are converted; Cast `to` and the `dtype` of the generator ops retarget to float32;
- a float16/float64 graph input is read through one Cast(to=float32) by every node; a graph output
  is written by a Cast from its float32 value and keeps its name; a graph input that is also a
  graph output passes through untouched; with `interface` (--integer-io, whose inputs and outputs
  become integer tensors anyway) they are retyped to float32 instead, with no Cast;
- value_info types (main graph and subgraphs) follow, subgraph inputs/outputs included.

float64 -> float32 rounds to float32's 24-bit mantissa (values beyond 3.4e38 become inf); float16
-> float32 is exact. Both are far below the quantization step of the INT8 result.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantcli.graph import NameAllocator, subgraphs
from quantcli.preprocess.base import Pass, PassResult

F32 = TensorProto.FLOAT
LIFTED = (TensorProto.FLOAT16, TensorProto.DOUBLE)
_TYPE_NAMES = {TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64"}
# ai.onnx ops whose `dtype` attribute fixes a float output type
_DTYPE_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike", "Bernoulli"}
)


class ComputeInFloat32(Pass):
    """Lift the tensors of the element types `types` (float16, float64) to float32."""

    name = "compute_in_float32"
    in_place = True

    def __init__(self, types: tuple[int, ...] = LIFTED, *, interface: bool = False) -> None:
        self.types = frozenset(types)
        self.interface = interface  # retype the graph inputs/outputs too, with no Cast (--integer-io)

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        found = lifted_types(graph, self.types)
        if not found:
            return PassResult(model, False)
        if self.interface:
            _lift_graph(graph, self.types, interface=True)
            kinds = " and ".join(_TYPE_NAMES[t] for t in sorted(found))
            return PassResult(
                model, True, [f"{kinds} tensors, inputs and outputs included, computed in float32"]
            )
        names = NameAllocator(graph)
        rename: dict[str, str] = {}
        head: list[onnx.NodeProto] = []
        tail: list[onnx.NodeProto] = []
        outputs = {o.name for o in graph.output}
        produced = {o for n in graph.node for o in n.output if o}
        for vi in graph.input:
            if _elem_type(vi) in self.types and vi.name not in rename:
                lifted = names.new(f"{vi.name}_float32")
                rename[vi.name] = lifted
                head.append(_cast(vi.name, lifted, F32, names))
        for vi in graph.output:
            t = _elem_type(vi)
            if t not in self.types or vi.name in rename:
                continue  # a graph input passed through keeps its value and type
            if vi.name not in produced and vi.name not in {i.name for i in graph.initializer}:
                continue
            lifted = names.new(f"{vi.name}_float32")
            rename[vi.name] = lifted
            tail.append(_cast(lifted, vi.name, t, names))
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
            for i, name in enumerate(node.output):
                if name in rename and name in outputs:
                    node.output[i] = rename[name]
            _rename_subgraph_reads(node, rename)
        for t in graph.initializer:
            if t.name in rename:
                t.name = rename[t.name]
        _lift_graph(graph, self.types, interface=False)
        for vi in graph.value_info:
            if vi.name in rename:
                vi.name = rename[vi.name]
        body = list(graph.node)
        del graph.node[:]
        graph.node.extend(head + body + tail)
        kinds = " and ".join(_TYPE_NAMES[t] for t in sorted(found))
        return PassResult(
            model,
            True,
            [
                f"{kinds} tensors computed in float32 (quantization runs on float32; Casts at the "
                "inputs and outputs keep their types)"
            ],
        )


def lifted_types(graph: onnx.GraphProto, types: frozenset[int] | tuple[int, ...] = LIFTED) -> set[int]:
    """The element types among `types` that the graph (or a subgraph) uses."""
    found: set[int] = set()
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if _elem_type(vi) in types:
            found.add(_elem_type(vi))
    found.update(t.data_type for t in graph.initializer if t.data_type in types)
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in types:
                found.add(a.t.data_type)
            elif a.type == onnx.AttributeProto.INT and a.i in types and _is_type_attr(node, a.name):
                found.add(a.i)
        for g in subgraphs(node):
            found |= lifted_types(g, types)
    return found


def _is_type_attr(node: onnx.NodeProto, name: str) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    return (node.op_type == "Cast" and name == "to") or (node.op_type in _DTYPE_OPS and name == "dtype")


def _lift_graph(graph: onnx.GraphProto, types: frozenset[int], *, interface: bool) -> None:
    """Retype the graph's values, initializers and attributes (`interface`: its inputs/outputs too)."""
    infos = [*graph.value_info, *((*graph.input, *graph.output) if interface else ())]
    for vi in infos:
        if _elem_type(vi) in types:
            vi.type.tensor_type.elem_type = F32
        elif _sequence_elem_type(vi) in types:  # a sequence of tensors (SequenceConstruct ...)
            vi.type.sequence_type.elem_type.tensor_type.elem_type = F32
    for i, t in enumerate(graph.initializer):
        if t.data_type in types:
            graph.initializer[i].CopyFrom(_to_float32(t))
    for node in graph.node:
        for a in node.attribute:
            if (
                a.type == onnx.AttributeProto.TENSOR
                and a.t.data_type in types
                and node.domain in ("", "ai.onnx")
            ):
                a.t.CopyFrom(_to_float32(a.t))
            elif a.type == onnx.AttributeProto.INT and a.i in types and _is_type_attr(node, a.name):
                a.i = F32
        for g in subgraphs(node):
            _lift_graph(g, types, interface=True)


def _to_float32(tensor: onnx.TensorProto) -> onnx.TensorProto:
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, as a Cast would
        values = numpy_helper.to_array(tensor).astype(np.float32)
    return numpy_helper.from_array(values, tensor.name)


def _rename_subgraph_reads(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    for g in subgraphs(node):
        for sub in g.node:
            for i, name in enumerate(sub.input):
                if name in rename:
                    sub.input[i] = rename[name]
            _rename_subgraph_reads(sub, rename)
        for o in g.output:  # a subgraph may return an outer value as is
            if o.name in rename:
                o.name = rename[o.name]


def _elem_type(vi: onnx.ValueInfoProto) -> int:
    return vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0


def _sequence_elem_type(vi: onnx.ValueInfoProto) -> int:
    if not vi.type.HasField("sequence_type"):
        return 0
    inner = vi.type.sequence_type.elem_type
    return inner.tensor_type.elem_type if inner.HasField("tensor_type") else 0


def _cast(source: str, target: str, to: int, names: NameAllocator) -> onnx.NodeProto:
    return helper.make_node("Cast", [source], [target], name=names.new(f"{target}_Cast"), to=to)
