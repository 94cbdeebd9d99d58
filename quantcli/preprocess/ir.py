"""Read IR < 4 models by the IR 4 convention: initializers listed as graph inputs are constants.

Below IR version 4 every initializer must also be listed as a graph input, and onnxruntime treats
them as constants that a caller cannot feed. From IR 4 on an initializer that is also a graph input
is an optional input with a default. This pass takes such listings out of `graph.input` and sets
IR 4, so every later pass reads one convention (graph.GraphIndex: an initializer listed as an
input is overridable), rewriters may add and remove initializers without listing them, and the
model's required inputs stay the same.
"""

from __future__ import annotations

import onnx

from quantcli.preprocess.base import Pass, PassResult
from quantcli.preprocess.initializer_inputs import unlist_initializers

IR_OVERRIDABLE_INITIALIZERS = 4


class NormalizeIR(Pass):
    name = "normalize_ir"
    in_place = True

    def call(self, model: onnx.ModelProto) -> PassResult:
        if model.ir_version >= IR_OVERRIDABLE_INITIALIZERS:
            return PassResult(model, False)
        before = model.ir_version
        listed = unlist_initializers(model.graph)
        model.ir_version = IR_OVERRIDABLE_INITIALIZERS
        return PassResult(
            model,
            True,
            [
                f"IR version {before} read as IR {IR_OVERRIDABLE_INITIALIZERS}: {listed} initializer(s) "
                "no longer listed as graph inputs (constants either way)"
            ],
        )


def normalize_ir(model: onnx.ModelProto) -> onnx.ModelProto:
    return NormalizeIR().call(model).model
