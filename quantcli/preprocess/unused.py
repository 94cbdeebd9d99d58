"""Drop initializers that no node reads: folding leaves them behind (a Constant whose only reader
was folded away), and exporters leave some too (EfficientNet-Lite0). onnxruntime warns about each
at load, and `inspect` reports them."""

from __future__ import annotations

import onnx

from quantcli.preprocess.base import Pass, PassResult


def read_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node of the graph, or of any subgraph, reads."""
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for a in node.attribute:
            for g in (*a.graphs, *([a.g] if a.HasField("g") else [])):
                names |= read_names(g)
    return names


class DropUnusedInitializers(Pass):
    name = "drop_unused_initializers"
    in_place = True

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        keep = read_names(graph) | {o.name for o in graph.output} | {i.name for i in graph.input}
        unused = [t for t in graph.initializer if t.name not in keep]
        for t in unused:
            graph.initializer.remove(t)
        notes = [f"dropped {len(unused)} initializer(s) that no node reads"] if unused else []
        return PassResult(model, bool(unused), notes)
