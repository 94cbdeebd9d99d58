"""Integer model inputs and outputs (`convert --integer-io`): which tensors, their parameters, the record.

With integer I/O the static model takes and returns the quantized tensors themselves: the
QuantizeLinear after each float graph input and the DequantizeLinear before each float graph
output are left out, and the input/output takes the quantized type (same name, same shape).
Non-float inputs and outputs (int64 token ids) are unchanged. A caller converts with the
parameters recorded in the model's metadata under IO_QUANTIZATION_KEY (quantcli/io_match.py reads
them back): q = clip(round(x / scale) + zero_point, qmin, qmax), x = (q - zero_point) * scale.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from quantcli.calibration.collect import Ranges
from quantcli.errors import UnsupportedModelError
from quantcli.graph import set_metadata
from quantcli.io_match import IO_QUANTIZATION_KEY, IOQuantization, encode_io_quantization
from quantcli.quantize.params import calculate_qparams
from quantcli.quantize.plan import QuantConfig, TensorParams


def io_tensors(graph: onnx.GraphProto) -> tuple[list[str], list[str]]:
    """The float32 graph inputs (initializers excluded) and float32 graph outputs, in graph order."""
    inits = {t.name for t in graph.initializer}
    inputs = [
        v.name
        for v in graph.input
        if v.name not in inits and v.type.tensor_type.elem_type == TensorProto.FLOAT
    ]
    outputs = [v.name for v in graph.output if v.type.tensor_type.elem_type == TensorProto.FLOAT]
    return inputs, outputs


def plan_io_tensors(
    graph: onnx.GraphProto, ranges: Ranges, config: QuantConfig, tensors: dict[str, TensorParams]
) -> None:
    """Give every float graph input and output activation parameters (those planned for a node are
    kept); one without a usable calibrated range cannot be an integer tensor."""
    inputs, outputs = io_tensors(graph)
    produced = {o for n in graph.node for o in n.output}
    for kind, names in (("input", inputs), ("output", outputs)):
        for name in names:
            if kind == "output" and name not in produced:
                if name in inputs:  # a graph input passed through: the same integer tensor
                    continue
                raise UnsupportedModelError(
                    f"--integer-io: graph output '{name}' is not computed by a node (a graph input or "
                    "initializer passed through); convert without --integer-io"
                )
            if name in tensors:
                continue
            if name not in ranges.ranges:
                raise UnsupportedModelError(
                    f"--integer-io: graph {kind} '{name}' cannot be quantized ({ranges.why_missing(name)}); "
                    "convert without --integer-io"
                )
            lo, hi = ranges.ranges[name]
            act = config.activation_type
            scale, zp = calculate_qparams(lo, hi, act, config.symmetric_activations)
            tensors[name] = TensorParams("activation", act, [float(scale)], [int(zp)], None, [lo, hi])


def record_io_quantization(model: onnx.ModelProto, params: dict[str, TensorParams]) -> None:
    """Write each integer input/output's scale, zero point and dtype into the model's metadata."""
    entries = {
        name: IOQuantization(float(p.scale[0]), int(p.zero_point[0]), p.dtype.value)
        for name, p in params.items()
    }
    set_metadata(model, IO_QUANTIZATION_KEY, encode_io_quantization(entries))
