"""The first and last integer layers, where the int16 pair limit costs the most, on exact kernels.

Keeping INT8 weight pairs within what x86 CPUs without VNNI add exactly (quantize/saturation.py)
costs each layer some weight precision. Where a layer sits decides what that costs the outputs: a
first layer's error runs through the whole network, and a last layer's reaches the outputs with
nothing after it to average it out (the reason low-bit quantization commonly keeps both at higher
precision). Measured on exact kernels, logits SQNR of the default output with one layer back at
full range: EfficientNet-Lite0 22.8 -> 23.6 dB for its stem Conv (full range everywhere: 24.0),
nothing for its classifier; digits_mlp 52.0 -> 52.9 dB for its classifier; a middle layer
changed nothing measurable.

Such a layer keeps full-range weights, stored UINT8 (value + 128, zero point 128): numerically the
INT8 weight, which onnxruntime multiplies on its U8U8 kernel (int32 sums, exact on every CPU)
instead of U8S8's. U8U8 is slower per multiply (digits_cnn with every layer U8U8: 0.646 -> 0.868 of
FP32 at batch 32 on an AVX2 EPYC), so only layers that together hold at most EXACT_MAC_SHARE of the
model's integer multiply-accumulates qualify, cheapest first (EfficientNet-Lite0: stem and
classifier, 3.1% of its MACs, latency 0.670 -> 0.672 of FP32 on that CPU).
"""

from __future__ import annotations

import math

import onnx

from quantcli.graph import COMPUTE_OPS, GraphIndex, attr

EXACT_MAC_SHARE = 0.05
REASON = (
    "{kernel} with UINT8 weights (onnxruntime's exact U8U8 kernel on every CPU): a {where} integer "
    "layer, where the int16 pair limit of CPUs without VNNI costs the outputs most; {share:.1%} of the "
    "integer multiply-accumulates"
)


def exact_layers(
    model: onnx.ModelProto, index: GraphIndex, candidates: list[onnx.NodeProto]
) -> dict[str, tuple[str, float]]:
    """Node name -> (where: "first", "last" or "first and last"; its share of the candidates'
    multiply-accumulates) for the candidate integer layers (U8S8 Conv/Gemm/MatMul with a constant
    weight) to store with UINT8 weights."""
    macs = {n.name: _macs(n, index) for n in candidates}
    total = sum(m for m in macs.values() if m is not None)
    if not total:
        return {}
    upstream = _has_compute(model, index, forward=False)
    downstream = _has_compute(model, index, forward=True)
    positioned = []
    for n in candidates:
        first = not upstream.get(n.input[0], False)
        last = not any(downstream.get(o, False) for o in n.output if o)
        if (first or last) and macs[n.name] is not None:
            where = "first and last" if first and last else "first" if first else "last"
            positioned.append((macs[n.name], n.name, where))
    chosen: dict[str, tuple[str, float]] = {}
    spent = 0
    for m, name, where in sorted(positioned):
        if spent + m > EXACT_MAC_SHARE * total:
            break
        spent += m
        chosen[name] = (where, m / total)
    return chosen


def _has_compute(model: onnx.ModelProto, index: GraphIndex, *, forward: bool) -> dict[str, bool]:
    """Tensor -> whether a compute node (Conv, Gemm, MatMul, ConvTranspose) lies upstream of it
    (forward=False: among its producers, transitively) or downstream (forward=True: among the nodes
    that read it, transitively)."""
    found: dict[str, bool] = {}
    nodes = list(model.graph.node)
    if forward:
        for node in reversed(nodes):
            outs = [o for o in node.output if o]
            below = node.op_type in COMPUTE_OPS or any(found.get(o, False) for o in outs)
            for i in node.input:
                if i and i not in index.initializers:
                    found[i] = found.get(i, False) or below
        return found
    for node in nodes:
        ins = [i for i in node.input if i and i not in index.initializers]
        above = node.op_type in COMPUTE_OPS or any(found.get(i, False) for i in ins)
        for o in node.output:
            if o:
                found[o] = above
    return found


def _macs(node: onnx.NodeProto, index: GraphIndex) -> int | None:
    """Multiply-accumulates of one inference at batch 1; None when a shape it needs is unknown (a
    Conv's output size)."""
    w = index.initializers.get(node.input[1])
    if w is None:
        return None
    wd = list(w.dims)
    if node.op_type == "Conv":
        out = index.dims(node.output[0])
        if out is None or len(out) < 3 or any(d is None for d in out[2:]):
            return None
        return int(math.prod(wd) * math.prod(out[2:]))
    x = index.dims(node.input[0])
    if x is None or len(x) < 2:
        return None
    # The leading (batch) dimension counts 1, and so does a symbolic one (a sequence length): the
    # MatMuls of a transformer share it, so their shares of the total stay right.
    rows = math.prod(d or 1 for d in x[1:-1]) if len(x) > 2 else 1
    if node.op_type == "Gemm" and attr(node, "transA", 0):
        return None
    return int(rows * math.prod(wd))
