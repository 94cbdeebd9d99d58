"""The FP16 rewriter: the nodes an FP16 plan (quantize/fp16.py) marks "fp16" compute in float16.

`rewrite_fp16` decides nothing. Each float value has one type; a consumer wanting the other reads it
through one Cast per tensor and direction, shared by all such consumers and placed right after the
producer. Inserted Casts read original tensors only, never another inserted Cast, so no pair can
cancel. With `keep_io_types` float graph inputs and outputs stay float32 (an output keeps its name,
on its Cast). Cast `to=FLOAT` in an fp16 node becomes FLOAT16; onnxconverter-common leaves it and
onnxruntime refuses the model (its #320). Nodes with subgraphs, and their subgraphs, stay float32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantcli import __version__
from quantcli.errors import BadPlanError
from quantcli.graph import SHAPE_READERS, GraphIndex, all_names, copy_model, rename_subgraph_reads, subgraphs
from quantcli.quantize.fp16 import F16, F32, attribute_forbids_fp16, elem_types
from quantcli.quantize.plan import FLOAT, FP16, NodePlan

_SUFFIX = {F32: "fp32", F16: "fp16"}  # the names of inserted Casts' outputs


def rewrite_fp16(
    model: onnx.ModelProto, nodes: list[NodePlan], *, keep_io_types: bool = True, in_place: bool = False
) -> onnx.ModelProto:
    """The model in which the nodes planned "fp16" compute in float16: a new one (the input is not
    modified) unless `in_place` (the pipeline's own copy: no second copy of a big model's weights)."""
    out = model if in_place else copy_model(model)
    graph = out.graph
    index = GraphIndex(graph)
    types = elem_types(graph)
    fp16, stored = _read_plan(graph, index, types, nodes)
    io_type = F32 if keep_io_types else F16
    have = dict.fromkeys(stored, F16)  # the type of each float value that is not float32
    have.update((t, io_type) for t in index.graph_inputs if types.get(t) == F32)
    for node in graph.node:
        if node.name in fp16:
            have.update((t, F16) for t in node.output if types.get(t) == F32)
    casts = _Casts(graph, index, have)
    for o in graph.output:
        if types.get(o.name) == F32:
            casts.pin_graph_output(o.name, io_type)
            o.type.tensor_type.elem_type = io_type
    for node in graph.node:
        want = F16 if node.name in fp16 else F32
        for i, t in enumerate(node.input):
            if types.get(t) == F32:
                node.input[i] = casts.get(t, have.get(t, F32) if node.op_type in SHAPE_READERS else want)
        if node.name in fp16:
            _retarget(node)
        else:  # a subgraph reads outer tensors by name, in float32
            rename_subgraph_reads(node, lambda t: casts.get(t, F32) if types.get(t) == F32 else t)
    for vi in (*graph.input, *graph.value_info):
        if types.get(vi.name) == F32 and vi.name not in index.initializers:
            outer = io_type if vi.name in index.graph_outputs else have.get(vi.name, F32)
            vi.type.tensor_type.elem_type = outer
    for init in graph.initializer:
        if init.name in stored:
            init.CopyFrom(_half(init))
        init.name = casts.renamed.get(init.name, init.name)
    casts.place(graph)
    out.producer_name, out.producer_version = "quantcli", __version__
    return out


def _read_plan(
    graph: onnx.GraphProto, index: GraphIndex, types: dict[str, int], nodes: list[NodePlan]
) -> tuple[set[str], set[str]]:
    """The fp16 node names and the initializers stored as float16; BadPlanError for a bad plan."""
    by_name = {n.name: n for n in graph.node}
    fp16, stored = set(), set()
    for plan in nodes:
        if plan.name not in by_name:
            raise BadPlanError(f"plan names node '{plan.name}', which is not in the model")
        if plan.precision not in (FP16, FLOAT):
            raise BadPlanError(
                f"node {plan.name}: precision must be 'fp16' or 'float', not {plan.precision!r}"
            )
        why_not = attribute_forbids_fp16(by_name[plan.name]) if plan.precision == FP16 else None
        if why_not or (plan.precision == FP16 and subgraphs(by_name[plan.name])):
            raise BadPlanError(f"node {plan.name} cannot be fp16: {why_not or 'it has a subgraph'}")
        if plan.precision == FP16:
            fp16.add(plan.name)
        for t in plan.quantized_inputs:
            if t in index.overridable or (t in index.initializers and not index.storable(t)):
                raise BadPlanError(
                    f"plan stores initializer {t} as float16, but it is a graph input or output"
                )
            if t in index.initializers and types.get(t) == F32:
                stored.add(t)
    return fp16, stored


class _Casts:
    """One Cast per tensor and target type, shared by its consumers; names derived and fresh."""

    def __init__(self, graph: onnx.GraphProto, index: GraphIndex, have: dict[str, int]) -> None:
        self.index, self.have = index, have
        self.used = all_names(graph)
        self.source: dict[tuple[str, int], str] = {}  # (tensor, type) -> the name holding it in that type
        self.renamed: dict[str, str] = {}  # graph output -> the name its value now goes by
        self.head: list[onnx.NodeProto] = []
        self.after: dict[str, list[onnx.NodeProto]] = {}

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def pin_graph_output(self, t: str, io_type: int) -> None:
        """Keep graph output `t` under its name in `io_type`; its value moves to a new name if needed."""
        value_type = self.have.get(t, F32)
        if value_type == io_type or t in self.index.graph_inputs or t in self.renamed:
            return
        value = self.renamed[t] = self.fresh(f"{t}_{_SUFFIX[value_type]}")
        producer = self.index.producer.get(t)
        if producer is not None:
            producer.output[list(producer.output).index(t)] = value
        self.source[(t, io_type)] = t
        self._emit(t, value, t, io_type)

    def get(self, t: str, want: int) -> str:
        """The name under which a consumer reads tensor `t` in type `want`."""
        value = self.renamed.get(t, t)
        if want == self.have.get(t, F32):
            return value
        if (t, want) not in self.source:
            self.source[(t, want)] = self.fresh(f"{t}_{_SUFFIX[want]}")
            self._emit(t, value, self.source[(t, want)], want)
        return self.source[(t, want)]

    def _emit(self, t: str, value: str, output: str, to: int) -> None:
        node = helper.make_node("Cast", [value], [output], name=self.fresh(f"{output}_Cast"), to=to)
        producer = self.index.producer.get(t)
        (self.after.setdefault(producer.name, []) if producer is not None else self.head).append(node)

    def place(self, graph: onnx.GraphProto) -> None:
        """Put the Casts into the graph: after their producer, or first for inputs and initializers."""
        nodes = list(self.head)
        for node in graph.node:
            nodes.append(node)
            nodes.extend(self.after.get(node.name, []))
        del graph.node[:]
        graph.node.extend(nodes)


def _retarget(node: onnx.NodeProto) -> None:
    """Point the attributes of an fp16 node that fix a float32 output type at float16."""
    if node.op_type == "Cast":
        to = next(a for a in node.attribute if a.name == "to")
        to.i = F16 if to.i == F32 else to.i
    elif node.op_type == "ConstantOfShape":
        value = next((a for a in node.attribute if a.name == "value"), None)
        zero = numpy_helper.from_array(np.zeros(1, np.float16))  # no value attribute means a float32 zero
        if value is None:
            node.attribute.append(helper.make_attribute("value", zero))
        elif value.t.data_type == F32:
            value.t.CopyFrom(_half(value.t))


def _half(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name)
