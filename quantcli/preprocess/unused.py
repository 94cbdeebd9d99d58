"""Drop initializers that no node reads: folding leaves them behind (a Constant whose only reader
was folded away), and exporters leave some too (EfficientNet-Lite0). onnxruntime warns about each
at load, and `inspect` reports them."""

from __future__ import annotations

import onnx

from quantcli.graph import subgraph_reads
from quantcli.preprocess.base import Pass, PassResult


class DropUnusedInitializers(Pass):
    name = "drop_unused_initializers"
    in_place = True

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        keep = {o.name for o in graph.output} | {i.name for i in graph.input}
        for node in graph.node:
            keep.update(node.input)
            keep |= subgraph_reads(node)
        unused = [t for t in graph.initializer if t.name not in keep]
        for t in unused:
            graph.initializer.remove(t)
        notes = [f"dropped {len(unused)} initializer(s) that no node reads"] if unused else []
        return PassResult(model, bool(unused), notes)
