"""Fold an inference BatchNormalization into the Conv before it.

With s = gamma / sqrt(var + eps) per output channel:
    W' = W * s            (broadcast over output-channel axis 0)
    b' = (b - mean) * s + beta
The Conv output must feed only the BatchNormalization and not be a graph output; the weight, bias
and BatchNormalization parameters must be constants (not overridable graph inputs) that nothing else
uses (no other node, no subgraph, no graph output), since the fused values replace them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from quantcli.graph import GraphIndex, NameAllocator, attr, remove_unused_initializers
from quantcli.preprocess.base import Pass, PassResult


def check(conv: onnx.NodeProto, bn: onnx.NodeProto, index: GraphIndex) -> str | None:
    """Why this Conv+BatchNormalization pair cannot be fused, or None when it can."""
    if len(bn.output) > 1 and any(bn.output[1:]):
        return "BatchNormalization is in training mode (running stats are outputs)"
    if conv.input[1] not in index.initializers:
        return f"Conv {index.why_not_constant(conv.input[1])}"
    if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in index.initializers:
        return f"Conv {index.why_not_constant(conv.input[2], 'bias')}"
    for name in bn.input[1:5]:
        if name not in index.initializers:
            return f"BatchNormalization {index.why_not_constant(name, 'parameter')}"
    if index.only_reader(conv.output[0]) is not bn:
        return "Conv output has other consumers"
    for name in conv.input[1:3]:
        if name and index.only_reader(name) is not conv:
            return f"initializer {name} is shared with other nodes, a subgraph or a graph output"
    return None


class FuseConvBatchNorm(Pass):
    name = "fuse_conv_bn"
    in_place = True

    def call(self, model: onnx.ModelProto) -> PassResult:
        out = model
        graph = out.graph
        index = GraphIndex(graph)
        names = NameAllocator(graph)
        removed: set[int] = set()
        fused: list[onnx.NodeProto] = []
        new_inits: dict[str, onnx.TensorProto] = {}
        notes: list[str] = []
        for bn in graph.node:
            if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
                continue
            conv = index.producer.get(bn.input[0])
            if conv is None or conv.op_type != "Conv":
                continue
            reason = check(conv, bn, index)
            if reason:
                notes.append(f"{bn.name or bn.output[0]}: not fused: {reason}")
                continue
            w = index.array(conv.input[1]).astype(np.float64)
            gamma, beta, mean, var = (index.array(n).astype(np.float64) for n in bn.input[1:5])
            eps = attr(bn, "epsilon", 1e-5)
            s = gamma / np.sqrt(var + eps)
            has_bias = len(conv.input) > 2 and conv.input[2]
            b = index.array(conv.input[2]).astype(np.float64) if has_bias else np.zeros_like(mean)
            dtype = numpy_helper.to_array(index.initializers[conv.input[1]]).dtype
            w_new = (w * s.reshape(-1, *([1] * (w.ndim - 1)))).astype(dtype)
            b_new = ((b - mean) * s + beta).astype(dtype)
            w_name = conv.input[1]
            b_name = conv.input[2] if has_bias else names.new(f"{w_name}_bn_bias")
            new_inits[w_name] = numpy_helper.from_array(w_new, w_name)
            new_inits[b_name] = numpy_helper.from_array(b_new, b_name)
            if not has_bias:
                while len(conv.input) < 3:
                    conv.input.append("")
                conv.input[2] = b_name
            conv.output[0] = bn.output[0]
            removed.add(id(bn))
            fused.append(bn)
        if not removed:
            return PassResult(model, False, notes)
        kept = [n for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        replaced = [t for t in graph.initializer if t.name not in new_inits]
        del graph.initializer[:]
        graph.initializer.extend(replaced)
        graph.initializer.extend(new_inits[k] for k in sorted(new_inits))
        # BN parameters that nothing uses any more (one read inside a subgraph, a graph output or a
        # graph input's default stays).
        remove_unused_initializers(graph, {name for bn in fused for name in bn.input[1:5]})
        notes.append(f"fused {len(removed)} BatchNormalization node(s) into Conv")
        return PassResult(out, True, notes)


def fuse_conv_bn(model: onnx.ModelProto) -> onnx.ModelProto:
    return FuseConvBatchNorm().call(model).model
