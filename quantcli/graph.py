"""Use-def index over an ONNX graph: who produces and who consumes each tensor, built once."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

# Compute ops (ai.onnx domain) as convert and inspect count them: one tuple, so the two reports agree.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that read only the shape of their input, so take it in any element type.
SHAPE_READERS = frozenset({"Shape", "Size"})


class GraphIndex:
    """Producer/consumer maps and initializer lookup for the main graph (not subgraphs)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
            # Tensors read inside subgraphs (If/Loop bodies) count as consumed by the outer node.
            for name in subgraph_reads(node):
                self.consumers[name].append(node)
        self.graph_inputs = {i.name for i in graph.input} - set(self.initializers)
        self.graph_outputs = {o.name for o in graph.output}
        self.value_info = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}

    def is_initializer(self, name: str) -> bool:
        return name in self.initializers

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name])

    def elem_type(self, name: str) -> int | None:
        if name in self.initializers:
            return self.initializers[name].data_type
        vi = self.value_info.get(name)
        if vi is None or not vi.type.HasField("tensor_type"):
            return None
        return vi.type.tensor_type.elem_type or None

    def dims(self, name: str) -> list[int | None] | None:
        """Declared shape of an initializer or a typed value (None for a dimension without a
        positive size: symbolic or unknown); None when no shape is declared."""
        if name in self.initializers:
            return list(self.initializers[name].dims)
        vi = self.value_info.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return None
        return [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in vi.type.tensor_type.shape.dim
        ]

    def rank(self, name: str) -> int | None:
        if name in self.initializers:
            return len(self.initializers[name].dims)
        vi = self.value_info.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return None
        return len(vi.type.tensor_type.shape.dim)


class NameAllocator:
    """Allocates tensor and node names that do not collide with the graph's."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used = {t.name for t in graph.initializer} | {i.name for i in graph.input}
        self.used |= {o for n in graph.node for o in n.output} | {n.name for n in graph.node}

    def new(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor name that a node of `node`'s subgraphs (recursively) reads."""
    names: set[str] = set()
    for g in subgraphs(node):
        for sub in g.node:
            names.update(i for i in sub.input if i)
            names.update(subgraph_reads(sub))
    return names


def attr(node: onnx.NodeProto, name: str, default=None):  # noqa: ANN001 - attribute values vary
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def node_label(node: onnx.NodeProto) -> str:
    """A node's name, or a stable stand-in when the exporter left it empty."""
    return node.name or f"{node.op_type}({node.output[0] if node.output else ''})"


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy of `model` (the rewriters' `in_place=False`)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in a node's attributes (If branches, Loop/Scan bodies)."""
    return [g for a in node.attribute for g in (*a.graphs, *([a.g] if a.HasField("g") else []))]


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set one `metadata_props` entry, replacing an earlier value of the same key."""
    kept = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=key, value=value)
