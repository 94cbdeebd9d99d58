"""Drop initializers that nothing uses: folding leaves them behind (a Constant whose only reader
was folded away), and exporters leave some too (EfficientNet-Lite0). onnxruntime warns about each
at load, and `inspect` reports them. A read inside a subgraph, a graph output and a graph input's
default are uses (graph.remove_unused_initializers)."""

from __future__ import annotations

import onnx

from quantcli.graph import remove_unused_initializers
from quantcli.preprocess.base import Pass, PassResult


class DropUnusedInitializers(Pass):
    name = "drop_unused_initializers"
    in_place = True

    def call(self, model: onnx.ModelProto) -> PassResult:
        unused = remove_unused_initializers(model.graph)
        notes = [f"dropped {len(unused)} initializer(s) that no node reads"] if unused else []
        return PassResult(model, bool(unused), notes)
