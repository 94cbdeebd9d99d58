"""Fold a zero constant Pad of the spatial axes into the Conv after it.

    Conv(Pad(x, pads=[0, 0, h0, w0, 0, 0, h1, w1]), W, pads=[a, b, c, d])
      == Conv(x, W, pads=[a + h0, b + w0, c + h1, d + w1])
Exporters of TensorFlow-style "same" padding (EfficientNet) emit such Pads; left in place they run
in float between a DequantizeLinear and a QuantizeLinear in an INT8 model.
"""

from __future__ import annotations

import onnx

from quantcli.graph import GraphIndex, attr
from quantcli.preprocess.base import Pass, PassResult


def check(pad: onnx.NodeProto, conv: onnx.NodeProto, index: GraphIndex) -> str | None:
    """Why this Pad cannot be folded into the Conv, or None when it can."""
    if attr(pad, "mode", b"constant") not in (b"constant", "constant"):
        return "Pad is not in constant mode"
    if len(pad.input) < 2 or pad.input[1] not in index.initializers:
        return "pads are not a constant"
    if len(pad.input) > 2 and pad.input[2]:
        if pad.input[2] not in index.initializers or float(index.array(pad.input[2]).ravel()[0]) != 0.0:
            return "Pad value is not 0"
    if len(pad.input) > 3 and pad.input[3]:
        return "Pad has an axes input"
    if attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return "Conv uses auto_pad"
    if index.only_reader(pad.output[0]) is not conv:
        return "Pad output has other consumers"
    pads = [int(v) for v in index.array(pad.input[1]).ravel()]
    rank = len(pads) // 2
    if rank < 3 or any(pads[i] or pads[rank + i] for i in (0, 1)) or any(v < 0 for v in pads):
        return "Pad touches the batch or channel axis, or crops"
    return None


class FusePadConv(Pass):
    name = "fuse_pad_conv"
    in_place = True

    def call(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        index = GraphIndex(graph)
        removed: set[int] = set()
        for conv in graph.node:
            if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
                continue
            pad = index.producer.get(conv.input[0])
            if pad is None or pad.op_type != "Pad" or check(pad, conv, index) is not None:
                continue
            pads = [int(v) for v in index.array(pad.input[1]).ravel()]
            rank = len(pads) // 2
            spatial = rank - 2
            begin, end = pads[2:rank], pads[rank + 2 :]
            old = list(attr(conv, "pads", [0] * (2 * spatial)))
            new = [old[i] + begin[i] for i in range(spatial)] + [
                old[spatial + i] + end[i] for i in range(spatial)
            ]
            for a in list(conv.attribute):
                if a.name == "pads":
                    conv.attribute.remove(a)
            conv.attribute.append(onnx.helper.make_attribute("pads", new))
            conv.input[0] = pad.input[0]
            removed.add(id(pad))
        if not removed:
            return PassResult(model, False)
        kept = [n for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        return PassResult(model, True, [f"folded {len(removed)} Pad node(s) into Conv padding"])
