"""Weights that hold NaN or inf stay float: quantizing them would silently turn them into finite numbers.

A NaN weight quantizes to some integer code (the cast of NaN is undefined; numpy gives the type's
minimum or 0), an inf weight to the type's extreme code: the converted model then computes finite
values where the input model computes NaN/inf, and no metric shows why. Every mode that stores
weights as integers asks `nonfinite_initializers` first: the nodes that read such a tensor stay in
float32, their plan says why, and convert prints one warning per tensor. A replayed plan that
quantizes one is refused (plan_check.py).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from quantcli.errors import Notice
from quantcli.quantize.plan import FLOAT, INT4, INT8, QuantPlan
from quantcli.text import count

_FLOAT_TYPES = (
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
)
CODE = "nonfinite-weights"
KEPT = "kept in float32: "  # how every reason of this module starts


def nonfinite_initializers(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """Float initializers holding NaN or inf: name -> (how many such values, how many values)."""
    found: dict[str, tuple[int, int]] = {}
    for t in model.graph.initializer:
        if t.data_type not in _FLOAT_TYPES:
            continue
        values = numpy_helper.to_array(t)
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            found[t.name] = (bad, int(values.size))
    return found


def reason(tensor: str, counts: tuple[int, int]) -> str:
    """The plan reason of a node kept in float32 because it reads `tensor`."""
    bad, total = counts
    return (
        f"{KEPT}{tensor} holds {count(bad, 'NaN/inf value')} (of {total}); "
        "quantizing would turn them into finite numbers"
    )


def nonfinite_readers(model: onnx.ModelProto, found: dict[str, tuple[int, int]]) -> dict[str, str]:
    """Node name -> reason, for the nodes that read one of the `found` initializers."""
    readers: dict[str, str] = {}
    for node in model.graph.node:
        bad = next((i for i in node.input if i in found), None)
        if bad is not None:
            readers[node.name] = reason(bad, found[bad])
    return readers


def keep_float(plan: QuantPlan, found: dict[str, tuple[int, int]]) -> None:
    """Every INT8/INT4 node of `plan` that quantizes one of the `found` tensors goes float32 (in
    place); those tensors leave the plan. For the weight-only and dynamic planners, whose nodes do
    not depend on each other; static planning keeps them float from the start (plan_static)."""
    if not found:
        return
    for node in plan.nodes:
        bad = next((t for t in (*node.quantized_inputs, *node.quantized_outputs) if t in found), None)
        if bad is not None and node.precision in (INT8, INT4):
            node.precision, node.reason = FLOAT, reason(bad, found[bad])
            node.quantized_inputs, node.quantized_outputs = [], []
    for name in found:
        plan.tensors.pop(name, None)


def warnings(plan: QuantPlan, found: dict[str, tuple[int, int]]) -> list[str]:
    """One warning per non-finite tensor whose readers the plan keeps in float32 for it."""
    lines = []
    for tensor, counts in found.items():
        kept = [
            n.name for n in plan.nodes if n.precision == FLOAT and n.reason.startswith(reason(tensor, counts))
        ]
        if not kept:
            continue
        shown = ", ".join(kept[:3]) + (f" and {len(kept) - 3} more" if len(kept) > 3 else "")
        lines.append(
            Notice(
                CODE,
                f"{tensor}: {counts[0]} of {counts[1]} values are NaN or inf in the input model: "
                f"{shown} kept in float32 instead of quantizing them into finite numbers",
            )
        )
    return lines
