"""Shape inference that keeps the model as it was where onnx cannot infer a shape.

onnx's infer_shapes serialises the whole model and parses the result back, which on a 500 MB model
costs three extra copies of the weights. Only the initializers' shapes matter (their values only
for small integer shape tensors), so inference runs on a skeleton whose large initializers are
declared as typed graph inputs, and the inferred value_info is copied back.
"""

from __future__ import annotations

import onnx

from quantcli.preprocess.base import Pass, PassResult

# Initializers up to this size keep their values (shape tensors, axes, scalars used by data_prop).
_KEEP_VALUES_BYTES = 4096


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without the values of its large initializers (their type and shape kept)."""
    light = onnx.ModelProto(
        ir_version=model.ir_version,
        opset_import=model.opset_import,
        functions=model.functions,
    )
    g = model.graph
    light.graph.name = g.name
    light.graph.node.extend(g.node)
    light.graph.input.extend(g.input)
    light.graph.output.extend(g.output)
    light.graph.value_info.extend(g.value_info)
    light.graph.sparse_initializer.extend(g.sparse_initializer)
    inputs = {i.name for i in g.input}
    for init in g.initializer:
        nbytes = len(init.raw_data) if init.HasField("raw_data") else init.ByteSize()
        if nbytes <= _KEEP_VALUES_BYTES:
            light.graph.initializer.append(init)
        elif init.name not in inputs:
            light.graph.input.append(
                onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    return light


class InferShapes(Pass):
    name = "infer_shapes"
    in_place = True

    def call(self, model: onnx.ModelProto) -> PassResult:
        before = len(model.graph.value_info)
        try:
            inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False, data_prop=True)
        except (onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:
            return PassResult(model, False, [f"shape inference skipped: {str(exc).splitlines()[0]}"])
        known = {v.name for v in model.graph.value_info}
        model.graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in known)
        return PassResult(model, len(model.graph.value_info) != before)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    return InferShapes().call(model).model
