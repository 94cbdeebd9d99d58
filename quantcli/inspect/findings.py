"""The checks behind inspect's findings: broken scales and zero points, dangling Q/DQ, fp16 loss, Casts."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from quantcli.graph import GraphIndex, attr, node_label
from quantcli.inspect.facts import FileFacts, Finding
from quantcli.inspect.quantization import Q_OPS, _QRef
from quantcli.inspect.reading import _Values, dtype_name, tensor_bytes
from quantcli.inspect.runtime import _not_fused
from quantcli.inspect.saturation import LIMIT_8BIT, u8s8_layers

_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535)}
_RANGE |= {"int4": (-8, 7), "uint4": (0, 15), "int2": (-2, 1), "uint2": (0, 3)}


def _findings(
    facts: FileFacts,
    g: onnx.GraphProto,
    index: GraphIndex,
    refs: list[_QRef],
    values: _Values,
    types: dict[str, int],
    optimized: onnx.ModelProto | None,
) -> list[Finding]:
    found: list[Finding] = []
    if facts.checker_error and not facts.not_run:
        found.append(
            Finding("checker", "error", None, f"onnx.checker (full check) fails: {facts.checker_error}")
        )
    if facts.ort_error and not facts.not_run:
        found.append(
            Finding(
                "ort-load", "error", None, f"onnxruntime's CPU provider cannot load it: {facts.ort_error}"
            )
        )
    for e in facts.external:
        if e.problem is not None:
            found.append(Finding("external-data", "error", None, f"{e.problem}; not read"))
        elif e.bytes is None:
            found.append(
                Finding("external-data", "error", None, f"external data file {e.location} is missing")
            )
    found += _qparam_findings(refs, values)
    found += _dangling(g, index)
    if optimized is not None:
        found += _not_fused(g, optimized)
    found += _half_findings(g, index, values)
    found += _cast_round_trips(g, index, types)
    found += saturation_risk(g, values.decode_internal)
    used = set(index.consumers) | index.graph_outputs
    for t in g.initializer:
        if t.name not in used:
            found.append(
                Finding(
                    "unused-initializer",
                    "info",
                    None,
                    f"initializer {t.name} ({dtype_name(t.data_type)}, {tensor_bytes(t):,} B) is used by no node",
                    t.name,
                )
            )
    for i in g.input:
        if i.name in index.overridable:
            found.append(
                Finding(
                    "input-is-initializer",
                    "warning",
                    None,
                    f"graph input {i.name} is also an initializer: onnxruntime treats it as an overridable "
                    "input, so it cannot fold it as a constant or fuse the Q/DQ around it",
                    i.name,
                )
            )
    for name, why in values.errors.items():
        found.append(
            Finding("unreadable-tensor", "error", None, f"tensor {name} cannot be read: {why}", name)
        )
    return found


def _qparam_findings(refs: list[_QRef], values: _Values) -> list[Finding]:
    found = []
    checked: set[tuple[str, str]] = set()
    for r in refs:
        label = node_label(r.node)
        scale = values.get(r.scale)
        if scale is not None and (label, r.scale) not in checked:
            checked.add((label, r.scale))
            s = scale.astype(np.float64)
            zero, bad, neg = int(np.sum(s == 0)), int(np.sum(~np.isfinite(s))), int(np.sum(s < 0))
            if zero or bad or neg:
                what = ", ".join(
                    f"{k} {w}" for k, w in ((zero, "zero"), (bad, "not finite"), (neg, "negative")) if k
                )
                found.append(
                    Finding(
                        "scale-invalid",
                        "error",
                        label,
                        f"{r.node.op_type} {label}: scale {r.scale} has {what} of {s.size} values",
                    )
                )
        zp = values.get(r.zero_point)
        lo_hi = _RANGE.get(r.dtype)
        if zp is not None and lo_hi is not None and zp.size and (label, r.zero_point) not in checked:
            checked.add((label, r.zero_point))
            z = zp.astype(np.float64)
            outside = int(np.sum((z < lo_hi[0]) | (z > lo_hi[1]) | (z != np.round(z))))
            if outside:
                found.append(
                    Finding(
                        "zero-point-range",
                        "error",
                        label,
                        f"{r.node.op_type} {label}: zero point {r.zero_point} has {outside} of {z.size} values "
                        f"outside {r.dtype}'s range [{lo_hi[0]}, {lo_hi[1]}] (stored as "
                        f"{dtype_name(values.tensors[r.zero_point].data_type)})",
                    )
                )
    return found


def _dangling(g: onnx.GraphProto, index: GraphIndex) -> list[Finding]:
    known = set(index.producer) | set(index.initializers) | {i.name for i in g.input}
    found = []
    for n in g.node:
        if n.op_type not in Q_OPS:
            continue
        label = node_label(n)
        if not n.input or not n.input[0] or n.input[0] not in known:
            missing = n.input[0] if n.input and n.input[0] else "(none)"
            found.append(
                Finding(
                    "dangling-qdq",
                    "error",
                    label,
                    f"{n.op_type} {label}: its input {missing} is produced by nothing",
                )
            )
        elif n.output and n.output[0] not in index.consumers and n.output[0] not in index.graph_outputs:
            found.append(
                Finding(
                    "dangling-qdq",
                    "warning",
                    label,
                    f"{n.op_type} {label}: its output {n.output[0]} is consumed by nothing",
                )
            )
    return found


def _half_findings(g: onnx.GraphProto, index: GraphIndex, values: _Values) -> list[Finding]:
    found = []
    for t in g.initializer:
        if t.data_type not in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
            continue
        a = values.get(t.name)
        if a is None or not a.size:
            continue
        a = a.astype(np.float32)
        users_of = [node_label(n) for n in index.consumers.get(t.name, [])]
        users = ", ".join(users_of[:3]) + (" ..." if len(users_of) > 3 else "") or "no node"
        node = users_of[0] if users_of else None
        inf, nan = int(np.sum(np.isinf(a))), int(np.sum(np.isnan(a)))
        if inf or nan:
            found.append(
                Finding(
                    "fp16-overflow",
                    "error",
                    node,
                    f"{dtype_name(t.data_type)} initializer {t.name} (used by {users}): {inf} values overflowed "
                    f"to inf, {nan} NaN, of {a.size}",
                    t.name,
                )
            )
        tiny = float(np.finfo(np.float16).tiny)
        zeros, subnormal = int(np.sum(a == 0)), int(np.sum((a != 0) & (np.abs(a) < tiny)))
        if t.data_type == TensorProto.FLOAT16 and zeros and subnormal:
            found.append(
                Finding(
                    "fp16-flushed",
                    "warning",
                    node,
                    f"float16 initializer {t.name} (used by {users}): {zeros} of {a.size} values are zero and "
                    f"{subnormal} subnormal: small weights were flushed to zero or lost precision in float16",
                    t.name,
                )
            )
    return found


def _cast_round_trips(g: onnx.GraphProto, index: GraphIndex, types: dict[str, int]) -> list[Finding]:
    found = []
    for second in g.node:
        first = index.producer.get(second.input[0]) if second.op_type == "Cast" and second.input else None
        if first is None or first.op_type != "Cast" or not first.input:
            continue
        origin, middle, back = types.get(first.input[0]), attr(first, "to"), attr(second, "to")
        if origin and back == origin and middle != origin:
            found.append(
                Finding(
                    "cast-round-trip",
                    "warning",
                    node_label(second),
                    f"Cast {node_label(first)} ({dtype_name(origin)} -> {dtype_name(middle)}) then Cast "
                    f"{node_label(second)} back to {dtype_name(back)}: time spent, precision maybe lost",
                )
            )
    return found


def saturation_risk(g: onnx.GraphProto, decode=None) -> list[Finding]:  # noqa: ANN001
    """INT8 weights on onnxruntime's U8S8 kernels with a pair of codes whose int16 sum can saturate on
    x86 CPUs without VNNI (VPMADDUBSW; quantize/saturation.py): one warning per layer, whatever the
    host, since the model runs wherever it is deployed. Layers whose weights were not read (external
    data, unless asked) get one info finding."""
    found: list[Finding] = []
    layers = u8s8_layers(g, decode)
    for layer in layers:
        if not layer.pairs_over:
            continue
        found.append(
            Finding(
                "u8s8-saturation",
                "warning",
                layer.node,
                f"{layer.pairs_over} of {layer.pairs} INT8 weight pairs (largest same-sign sum "
                f"{layer.worst_pair}) exceed {LIMIT_8BIT}: on x86 CPUs without VNNI, onnxruntime's U8S8 "
                "kernel adds each pair in a saturating int16 and can compute wrong results; exact on "
                "VNNI and ARM (reconvert with quantcli convert --target-cpu any)",
                layer.weight,
            )
        )
    unchecked = [layer for layer in layers if not layer.checked]
    if unchecked:
        found.append(
            Finding(
                "u8s8-unchecked",
                "info",
                None,
                f"{len(unchecked)} U8S8 integer layer(s) keep their INT8 weights in external data, which "
                "inspect does not read unless asked: pass --tensors to check their pairs for int16 saturation",
                unchecked[0].weight,
            )
        )
    return found
