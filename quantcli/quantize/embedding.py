"""Embedding tables (Gather on a constant 2-D float table) stored INT8, one scale per row.

Dequantizing a whole table before the Gather would cost a pass over every row on every run
(30522 x 384 values in all-MiniLM-L6-v2, about half its parameters), so the rows are gathered
first and only they are dequantized:

    Gather(table_q, ids) -> Cast(float) -> Mul(., Unsqueeze(Gather(row_scale, ids), -1))

Symmetric INT8 per row (zero point 0), so no zero point is subtracted.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantcli.graph import GraphIndex, NameAllocator, attr
from quantcli.quantize.plan import INT8, ROWS, NodePlan, QuantConfig, TensorParams

REASON = "embedding table stored INT8 with one scale per row; only the gathered rows are dequantized"


def embedding_table(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    """The table of a Gather that looks up rows of a constant float32 2-D initializer, else None."""
    if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    table, ids = node.input
    t = index.initializers.get(table)
    if t is None or t.data_type != TensorProto.FLOAT or len(t.dims) != 2 or ids in index.initializers:
        return None
    return table if attr(node, "axis", 0) == 0 else None


def plan_embedding(
    node: onnx.NodeProto, index: GraphIndex, tensors: dict[str, TensorParams], config: QuantConfig
) -> NodePlan | None:
    """The INT8 plan of a row-lookup Gather, its table's per-row parameters added to `tensors`;
    None when `node` is not one (the weight-only modes' shared first step)."""
    table = embedding_table(node, index)
    if table is None:
        return None
    tensors.setdefault(table, TensorParams.for_weight(index.array(table), 0, config))
    return NodePlan(node.name, node.op_type, INT8, REASON, quantized_inputs=[table], form=ROWS)


def gather_rows(
    node: onnx.NodeProto, q_table: str, row_scale: str, names: NameAllocator
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes (and the one small initializer they need) that replace `node`, keeping its output name."""
    out, ids = node.output[0], node.input[1]
    rows, rows_f = names.new(f"{out}_rows_int8"), names.new(f"{out}_rows_float")
    scale, scale_u, axes = (
        names.new(f"{out}_row_scale"),
        names.new(f"{out}_row_scale_1"),
        names.new(f"{out}_axes"),
    )
    base = node.name
    nodes = [
        helper.make_node("Gather", [q_table, ids], [rows], name=names.new(f"{base}_rows"), axis=0),
        helper.make_node("Cast", [rows], [rows_f], name=names.new(f"{base}_Cast"), to=TensorProto.FLOAT),
        helper.make_node("Gather", [row_scale, ids], [scale], name=names.new(f"{base}_row_scale"), axis=0),
        helper.make_node("Unsqueeze", [scale, axes], [scale_u], name=names.new(f"{base}_Unsqueeze")),
        helper.make_node("Mul", [rows_f, scale_u], [out], name=names.new(f"{base}_dequantize")),
    ]
    return nodes, [numpy_helper.from_array(np.array([-1], np.int64), axes)]
