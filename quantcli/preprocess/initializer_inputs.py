"""Initializers also listed as graph inputs become plain constants (leave the input list).

From IR 4 such an initializer is an overridable default: a caller may feed another value. Old
exporters (PyTorch's keep_initializers_as_inputs, IR 3 converters) list every weight so; nobody
feeds them, and a quantized weight cannot be overridden by a float one anyway (its name now
belongs to a DequantizeLinear output, which a graph input may not share). Before IR 4 the listing
is only how initializers were declared (preprocess/opset.py drops it when raising the IR).
"""

from __future__ import annotations

import onnx

from quantcli.preprocess.base import Pass, PassResult


def overridable_initializers(model: onnx.ModelProto) -> list[str]:
    """The initializers a caller may override: listed as graph inputs of an IR >= 4 model."""
    if model.ir_version < 4:
        return []
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name in inits]


def unlist_initializers(graph: onnx.GraphProto) -> int:
    """Take the initializers out of the graph's input list (in place); how many were listed."""
    inits = {t.name for t in graph.initializer}
    kept = [i for i in graph.input if i.name not in inits]
    dropped = len(graph.input) - len(kept)
    if dropped:
        del graph.input[:]
        graph.input.extend(kept)
    return dropped


class DropInitializerInputs(Pass):
    name = "drop_initializer_inputs"
    in_place = True

    def call(self, model: onnx.ModelProto) -> PassResult:
        dropped = unlist_initializers(model.graph)
        if not dropped:
            return PassResult(model, False)
        return PassResult(
            model,
            True,
            [
                f"{dropped} initializer(s) listed as graph inputs (overridable defaults) are treated "
                "as constants: the converted model does not accept them as inputs"
            ],
        )
