"""Shape inference that keeps the model as it was where onnx cannot infer a shape."""

from __future__ import annotations

import onnx

from quantcli.preprocess.base import Pass, PassResult


class InferShapes(Pass):
    name = "infer_shapes"

    def call(self, model: onnx.ModelProto) -> PassResult:
        before = len(model.graph.value_info)
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except (onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:
            return PassResult(model, False, [f"shape inference skipped: {str(exc).splitlines()[0]}"])
        return PassResult(inferred, len(inferred.graph.value_info) != before)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    return InferShapes().call(model).model
