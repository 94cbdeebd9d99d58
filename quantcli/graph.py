"""Use-def truth over an ONNX graph (subgraphs included): who produces, reads and may remove each tensor."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

# Compute ops (ai.onnx domain) as convert and inspect count them: one tuple, so the two reports agree.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that read only the shape of their input, so take it in any element type.
SHAPE_READERS = frozenset({"Shape", "Size"})


class GraphIndex:
    """The use-def truth of one graph, the one every pass and rewriter reads: who produces and who
    reads each tensor, which initializers are constants.

    A node counts as a consumer of every tensor of this graph that its subgraphs (If branches,
    Loop/Scan bodies, recursively) read by name; a subgraph's own names (its inputs, initializers
    and node outputs) shadow outer ones and are not reads of them. A tensor is used when a node or
    a subgraph reads it or it is a graph output (`is_used`).

    `initializers` holds the constants. An initializer that is also listed as a graph input is, from
    IR version 4 on, a default that the caller may override at run time (onnxruntime accepts it as an
    optional feed): it is in `overridable` and not in `initializers`, so no rewriter folds, quantizes
    or drops it. Below IR 4 every initializer is listed as an input and is a constant
    (preprocess/ir.py moves such models to the IR 4 convention before anything else runs).
    """

    def __init__(self, graph: onnx.GraphProto, *, ir_version: int | None = None) -> None:
        self.graph = graph
        listed = {i.name for i in graph.input}
        every = {t.name: t for t in graph.initializer}
        can_override = ir_version is None or ir_version >= 4
        self.overridable: dict[str, onnx.TensorProto] = (
            {name: t for name, t in every.items() if name in listed} if can_override else {}
        )
        self.initializers: dict[str, onnx.TensorProto] = {
            name: t for name, t in every.items() if name not in self.overridable
        }
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
            for name in subgraph_reads(node):
                self.consumers[name].append(node)
        # What a caller feeds: the required inputs (no initializer behind them).
        self.graph_inputs = listed - set(every)
        self.graph_outputs = {o.name for o in graph.output}
        self.value_info = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}

    @classmethod
    def of(cls, model: onnx.ModelProto) -> GraphIndex:
        """The index of a model's main graph, read by the model's IR version's convention."""
        return cls(model.graph, ir_version=model.ir_version)

    def is_used(self, name: str) -> bool:
        """True when a node or a subgraph reads `name`, or it is a graph output."""
        return bool(self.consumers.get(name)) or name in self.graph_outputs

    def only_reader(self, name: str) -> onnx.NodeProto | None:
        """The one node that reads `name` when nothing else uses it (no other node, no subgraph of
        another node, not a graph output): a rewrite may then change or remove `name` with it."""
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.graph_outputs else None

    def storable(self, name: str) -> bool:
        """True for a constant initializer whose stored form a rewriter may replace (by a quantized
        or narrower one behind a DequantizeLinear or Cast under its name): not a graph output,
        whose value must stay exactly what the float model returns."""
        return name in self.initializers and name not in self.graph_outputs

    def why_kept(self, name: str, what: str = "weight") -> str | None:
        """Why an initializer keeps its float form whatever the mode (for a plan's reason), or None:
        a caller may override it, or it is a graph output."""
        if name in self.overridable:
            return self.why_not_constant(name, what)
        if name in self.initializers and name in self.graph_outputs:
            return f"{what} {name} is also a graph output: it keeps its float values"
        return None

    def why_not_constant(self, name: str, what: str = "weight") -> str:
        """Why `name` is not a constant a rewriter may fold or quantize, for a plan's reason."""
        if name in self.overridable:
            return (
                f"{what} {name} is an initializer that is also a graph input: a caller may override it "
                "at run time, so it stays float"
            )
        return f"{what} is not a constant initializer"

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
    """Allocates tensor and node names that collide with none of the graph's, its subgraphs' included
    (a new outer name must not be shadowed where a subgraph is made to read it)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used = all_names(graph)

    def new(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name in the graph and, recursively, its subgraphs."""
    names = {v.name for v in (*graph.initializer, *graph.input, *graph.output, *graph.value_info)}
    names.update(t.values.name for t in graph.sparse_initializer)
    for node in graph.node:
        names.add(node.name)
        names.update(node.output)
        for g in subgraphs(node):
            names |= all_names(g)
    return names


def local_names(graph: onnx.GraphProto) -> set[str]:
    """The names a (sub)graph defines itself: its inputs, initializers and node outputs. Inside a
    subgraph they shadow an outer tensor of the same name."""
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    names.update(t.values.name for t in graph.sparse_initializer)
    names.update(o for n in graph.node for o in n.output if o)
    return names


def subgraph_local_names(graph: onnx.GraphProto) -> set[str]:
    """Every name that some subgraph of `graph` (recursively) defines for itself: an outer read
    renamed to one of these would read the subgraph's own tensor instead."""
    names: set[str] = set()
    for node in graph.node:
        for g in subgraphs(node):
            names |= local_names(g) | subgraph_local_names(g)
    return names


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """The outer-scope tensors that `node`'s subgraphs (recursively) read: node inputs and subgraph
    outputs that name a tensor the subgraph does not define itself."""
    names: set[str] = set()
    for g in subgraphs(node):
        names |= _outer_reads(g)
    return names


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    reads = {i for n in graph.node for i in n.input if i} | {o.name for o in graph.output}
    for n in graph.node:
        reads |= subgraph_reads(n)
    return reads - local_names(graph)


def rename_subgraph_reads(
    node: onnx.NodeProto, rename: Callable[[str], str], _shadowed: frozenset[str] = frozenset()
) -> None:
    """Make `node`'s subgraphs (recursively) read each outer tensor under the name `rename` gives
    (it returns the name unchanged to leave a read alone); names a subgraph defines itself shadow
    the outer ones and are left alone."""
    for g in subgraphs(node):
        shadowed = _shadowed | local_names(g)
        for sub in g.node:
            for i, name in enumerate(sub.input):
                if name and name not in shadowed:
                    sub.input[i] = rename(name)
            rename_subgraph_reads(sub, rename, shadowed)
        for o in g.output:
            if o.name not in shadowed:
                o.name = rename(o.name)


def rename_reads(node: onnx.NodeProto, renamed: Mapping[str, str]) -> None:
    """Point `node`'s inputs and its subgraphs' outer-scope reads at the new names in `renamed`."""
    for i, name in enumerate(node.input):
        if name in renamed:
            node.input[i] = renamed[name]
    if renamed:
        rename_subgraph_reads(node, lambda t: renamed.get(t, t))


def graph_uses(graph: onnx.GraphProto) -> set[str]:
    """Every name the graph uses: node inputs, outer-scope reads of subgraphs, graph outputs, and
    graph inputs (an initializer listed as one is the input's default)."""
    used = {i for n in graph.node for i in n.input if i}
    for n in graph.node:
        used |= subgraph_reads(n)
    return used | {o.name for o in graph.output} | {i.name for i in graph.input}


def remove_unused_initializers(graph: onnx.GraphProto, candidates: Iterable[str] | None = None) -> list[str]:
    """Remove the initializers (among `candidates`, or all) that nothing uses: no node reads them,
    no subgraph reads them, they are not a graph output, and they are not listed as a graph input
    (removing its default would make an optional input required). Their value_info goes with them.
    Returns the names removed, in graph order."""
    used = graph_uses(graph)
    wanted = None if candidates is None else set(candidates)
    unused = [
        t.name for t in graph.initializer if t.name not in used and (wanted is None or t.name in wanted)
    ]
    if unused:
        gone = set(unused)
        kept = [t for t in graph.initializer if t.name not in gone]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        stale = [v for v in graph.value_info if v.name in gone]
        for v in stale:
            graph.value_info.remove(v)
    return unused


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
