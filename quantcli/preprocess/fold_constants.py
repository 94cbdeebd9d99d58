"""Turn Constant nodes into initializers and bypass Identity nodes that forward an initializer.

Exporters (Paddle, some torch paths) hand weights to Conv/MatMul through Constant or Identity
nodes; quantization rules only see a weight when it is an initializer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from quantcli.graph import GraphIndex, rename_reads, subgraph_local_names
from quantcli.preprocess.base import Pass, PassResult

_SCALAR_ATTRS = {
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a Constant node, or None for forms that are not plain tensors."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in _SCALAR_ATTRS:
            return np.array(onnx.helper.get_attribute_value(a), dtype=_SCALAR_ATTRS[a.name])
    return None


class FoldConstants(Pass):
    name = "fold_constants"
    in_place = True

    def call(self, model: onnx.ModelProto) -> PassResult:
        out = model
        graph = out.graph
        outputs = {o.name for o in graph.output}
        # Constants only: an initializer that is also a graph input may be overridden at run time.
        existing = set(GraphIndex(graph).initializers)
        # A subgraph that defines a name of its own would read that instead of the bypassed tensor.
        shadowed = subgraph_local_names(graph)
        kept: list[onnx.NodeProto] = []
        rename: dict[str, str] = {}
        folded = bypassed = 0
        for node in graph.node:
            rename_reads(node, rename)  # subgraphs read the bypassed tensor under its new name too
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = constant_value(node)
                if value is not None and node.output[0] not in outputs:
                    graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                    existing.add(node.output[0])
                    folded += 1
                    continue
            if (
                node.op_type == "Identity"
                and node.input[0] in existing
                and node.output[0] not in outputs
                and node.input[0] not in shadowed
            ):
                rename[node.output[0]] = node.input[0]
                bypassed += 1
                continue
            kept.append(node)
        kept, evaluated = _evaluate_constant_nodes(kept, existing, outputs, graph)
        if not (folded or bypassed or evaluated):
            return PassResult(model, False)
        del graph.node[:]
        graph.node.extend(kept)
        notes = [
            f"folded {folded} Constant node(s), bypassed {bypassed} Identity node(s), "
            f"evaluated {evaluated} node(s) of constants"
        ]
        return PassResult(out, True, notes)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    return FoldConstants().call(model).model


# Small shape computations (an exporter's padding arithmetic) are folded; weights are never
# recomputed here, and ops with randomness or side effects are left alone.
_FOLD_MAX_BYTES = 1 << 16
_NEVER_FOLD = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


def _evaluate_constant_nodes(
    nodes: list[onnx.NodeProto], constants: set[str], outputs: set[str], graph: onnx.GraphProto
) -> tuple[list[onnx.NodeProto], int]:
    """Replace default-domain nodes whose inputs are all small initializers by their results,
    computed with onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    values = {t.name: t for t in graph.initializer}
    kept, count = [], 0
    for node in nodes:
        inputs = [i for i in node.input if i]
        foldable = (
            node.domain in ("", "ai.onnx")
            and node.op_type not in _NEVER_FOLD
            and inputs
            and all(i in constants for i in inputs)
            and not any(o in outputs for o in node.output)
            and sum(len(values[i].raw_data) or values[i].ByteSize() for i in inputs) <= _FOLD_MAX_BYTES
            and not any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
            )
        )
        if not foldable:
            kept.append(node)
            continue
        try:
            results = ReferenceEvaluator(node).run(
                None, {i: numpy_helper.to_array(values[i]) for i in inputs}
            )
        except Exception:  # noqa: BLE001 - anything the reference cannot evaluate stays a node
            kept.append(node)
            continue
        for name, value in zip(node.output, results, strict=False):
            if name:
                tensor = numpy_helper.from_array(np.asarray(value), name)
                graph.initializer.append(tensor)
                values[name] = tensor
                constants.add(name)
        count += 1
    return kept, count
