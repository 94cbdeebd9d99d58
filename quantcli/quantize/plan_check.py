"""Validation of a QuantPlan read from a file (`--plan`): every field, then the plan against the model.

A hand-edited or foreign plan must fail on load with one line naming the plan file, the node or
tensor and the field, never reach the rewriter with a value it would silently bend (a zero point
of 300 cast to uint8 is 44; a scale "abc" was an internal error). `check_plan_dict` checks the
JSON alone (types, ranges, known names, the schema version); `check_plan` checks what needs the
model: node and tensor names that exist, op types, per-channel lengths, axes within the rank, and
no quantized tensor holding NaN/inf.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import onnx

from quantcli.cpu import TARGETS
from quantcli.errors import BadPlanError
from quantcli.graph import GraphIndex
from quantcli.quantize import BLOCK_SIZES, modes
from quantcli.quantize.params import QType

SCHEMA_VERSIONS = (1, 2)
from quantcli.quantize.plan import FORMS, PRECISIONS, ROWS  # noqa: E402

ROLES = ("activation", "weight", "bias", "constant")
ROLE_DTYPES = {
    "activation": ("uint8", "int8", "int16"),
    "constant": ("uint8", "int8", "int16"),
    "weight": ("int8", "uint8", "uint4"),
    "bias": ("int32",),
}
PAIR_LAYOUTS = ("conv", "kn", "nk")
CALIB_METHODS = ("minmax", "entropy", "percentile", "mse")
DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Conv")

# field -> (kind, allowed values or None, required)
_CONFIG = {
    "per_channel": ("bool", None, True),
    "activation_type": ("str", ("uint8", "int8", "int16"), True),
    "calib_method": ("str", CALIB_METHODS, True),
    "weight_calibration": ("str", ("minmax", "mse"), False),
    "reduce_range": ("bool", None, False),
    "dynamic_op_types": ("str-list", DYNAMIC_OP_TYPES, False),
    "keep_io_types": ("bool", None, False),
    "block_size": ("int", BLOCK_SIZES, False),
    "weight_symmetric": ("bool", None, False),
    "int4_compute": ("str", ("float", "int8"), False),
    "integer_io": ("bool", None, False),
    "bias_correction": ("bool", None, False),
    "target_cpu": ("str", TARGETS, False),
}
_TOP = ("schema_version", "mode", "config", "calibration_samples", "nodes", "tensors")
_NODE = ("name", "op_type", "precision", "reason", "quantized_inputs", "quantized_outputs", "form")
_NODE_REQUIRED = ("name", "op_type", "precision")
_TENSOR = (
    "role",
    "dtype",
    "scale",
    "zero_point",
    "axis",
    "range",
    "correction",
    "pair_limit",
    "pair_layout",
    "pair_weights",
)
_TENSOR_REQUIRED = ("role", "dtype", "scale", "zero_point")


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> None:
        raise BadPlanError(f"{self.source}: {where}{': ' if where else ''}{problem}")

    def keys(self, where: str, data: Any, known: tuple[str, ...], required: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            self.fail(where, f"must be a JSON object, not {_json_type(data)}")
        missing = [k for k in required if k not in data]
        if missing:
            self.fail(where, f"field '{missing[0]}' is missing")
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            self.fail(where, f"unknown field '{unknown[0]}' (known: {', '.join(known)})")

    def value(self, where: str, field: str, value: Any, kind: str, allowed: tuple | None = None) -> None:
        ok = {
            "bool": isinstance(value, bool),
            "int": _is_int(value),
            "str": isinstance(value, str),
            "str-list": isinstance(value, list) and all(isinstance(v, str) for v in value),
        }[kind]
        if not ok:
            want = {"bool": "true or false", "int": "an integer", "str": "a string"}.get(
                kind, "a list of strings"
            )
            self.fail(where, f"{field} must be {want}, not {_show(value)}")
        values = value if kind == "str-list" else [value]
        if allowed is not None:
            for v in values:
                if v not in allowed:
                    self.fail(where, f"{field} must be one of {', '.join(map(str, allowed))}, not {_show(v)}")


def check_plan_dict(data: Any, source: str = "plan") -> None:
    """Raise BadPlanError naming `source`, the node/tensor and the field for the first problem of a
    plan's JSON; the plans every version of quantcli wrote pass."""
    c = _Checker(source)
    if not isinstance(data, dict):
        c.fail("", f"not a valid quantcli plan (expected a JSON object, not {_json_type(data)})")
    version = data.get("schema_version")
    if not _is_int(version) or version not in SCHEMA_VERSIONS:
        c.fail("", f"plan schema_version {version!r} is not {' or '.join(map(str, SCHEMA_VERSIONS))}")
    for key in ("mode", "config", "nodes", "tensors"):
        if key not in data:
            c.fail("", f"not a valid quantcli plan: field '{key}' is missing")
    c.keys("", data, _TOP, ())
    c.value("", "mode", data["mode"], "str", modes.names())
    mode = data["mode"]
    c.keys("config", data["config"], tuple(_CONFIG), tuple(k for k, v in _CONFIG.items() if v[2]))
    for key, value in data["config"].items():
        kind, allowed, _ = _CONFIG[key]
        c.value(f"config.{key}", key.replace("_", " "), value, kind, allowed)
    samples = data.get("calibration_samples", 0)
    c.value("", "calibration_samples", samples, "int")
    if samples < 0:
        c.fail("", f"calibration_samples must be 0 or more, not {samples}")

    if not isinstance(data["nodes"], list):
        c.fail("", f"nodes must be a list, not {_json_type(data['nodes'])}")
    seen: set[str] = set()
    for i, node in enumerate(data["nodes"]):
        where = f"nodes[{i}]"
        c.keys(where, node, _NODE, _NODE_REQUIRED)
        c.value(where, "name", node["name"], "str")
        where = f"node '{node['name']}'"
        if node["name"] in seen:
            c.fail(where, "named twice in the plan")
        seen.add(node["name"])
        c.value(where, "op_type", node["op_type"], "str")
        c.value(where, "precision", node["precision"], "str", PRECISIONS)
        if node["precision"] not in modes.get(mode).precisions:
            c.fail(
                where,
                f"precision {node['precision']} does not exist in --mode {mode} "
                f"(it takes {', '.join(modes.get(mode).precisions)})"
                + ('; set "mode": "mixed" to run nodes in FP16' if node["precision"] == "fp16" else ""),
            )
        c.value(where, "reason", node.get("reason", ""), "str")
        form = node.get("form", "")
        if form:
            c.value(where, "form", form, "str", tuple(FORMS))
            op_type, precisions = FORMS[form]
            if node["op_type"] != op_type or node["precision"] not in precisions:
                c.fail(where, f"form {form} is for {'/'.join(precisions)} {op_type} nodes only")
        for key in ("quantized_inputs", "quantized_outputs"):
            c.value(where, key, node.get(key, []), "str-list")

    if not isinstance(data["tensors"], dict):
        c.fail("", f"tensors must be a JSON object of name -> parameters, not {_json_type(data['tensors'])}")
    for name, params in data["tensors"].items():
        _check_tensor(c, f"tensor '{name}'", params, mode)


def _check_tensor(c: _Checker, where: str, t: Any, mode: str) -> None:
    c.keys(where, t, _TENSOR, _TENSOR_REQUIRED)
    c.value(where, "role", t["role"], "str", ROLES)
    c.value(where, "dtype", t["dtype"], "str", ROLE_DTYPES[t["role"]])
    if t["dtype"] == "uint4" and mode != "weights-int4":
        c.fail(where, f"dtype uint4 exists in --mode weights-int4 only, not {mode}")
    dtype = QType(t["dtype"])
    scale, zero_point = t["scale"], t["zero_point"]
    if not isinstance(scale, list) or not scale:
        c.fail(where, f"scale must be a non-empty list of numbers, not {_show(scale)}")
    for i, s in enumerate(scale):
        if not _is_number(s) or not (math.isfinite(s) and s > 0):
            c.fail(where, f"scale[{i}] must be a finite number > 0, not {_show(s)}")
        if not 0 < abs(float(_float32(s))) < math.inf:
            c.fail(where, f"scale[{i}] {s} is outside float32's range")
    if not isinstance(zero_point, list):
        c.fail(where, f"zero_point must be a list of integers, not {_show(zero_point)}")
    lo, hi = dtype.bounds(symmetric=False)
    for i, z in enumerate(zero_point):
        if not _is_int(z):
            c.fail(where, f"zero_point[{i}] must be an integer, not {_show(z)}")
        if not lo <= z <= hi:
            c.fail(where, f"zero_point[{i}] {z} is outside {dtype.value}'s range [{lo}, {hi}]")
    if len(zero_point) != len(scale) and not (dtype is QType.UINT4 and not zero_point):
        c.fail(where, f"{len(zero_point)} zero points for {len(scale)} scales (one zero point per scale)")
    if t["role"] == "bias":
        nonzero = next((i for i, z in enumerate(zero_point) if z != 0), None)
        if nonzero is not None:
            c.fail(where, f"zero_point[{nonzero}] is {zero_point[nonzero]}: an INT32 bias has zero point 0")
    axis = t.get("axis")
    if axis is not None and not _is_int(axis):
        c.fail(where, f"axis must be an integer or null, not {_show(axis)}")
    if axis is None and len(scale) != 1:
        c.fail(where, f"axis is null (per tensor) but it has {len(scale)} scales")
    if axis is not None and t["role"] in ("activation", "constant"):
        c.fail(where, f"axis must be null: {t['role']}s are quantized per tensor")
    value_range = t.get("range")
    if value_range is not None:
        ok = isinstance(value_range, list) and len(value_range) == 2 and all(map(_is_number, value_range))
        if not ok or not all(map(math.isfinite, value_range)) or value_range[0] > value_range[1]:
            c.fail(
                where, f"range must be [min, max] of finite numbers with min <= max, not {_show(value_range)}"
            )
    for key in ("correction", "pair_weights"):
        values = t.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or not all(_is_number(v) and math.isfinite(v) for v in values):
            c.fail(where, f"{key} must be a list of finite numbers, not {_show(values)}")
        if key == "pair_weights" and any(v < 0 for v in values):
            c.fail(where, "pair_weights must be 0 or more")
    if t.get("correction") is not None and t["role"] != "bias":
        c.fail(where, f"correction applies to biases only, not to a {t['role']}")
    limit, layout = t.get("pair_limit"), t.get("pair_layout")
    if limit is not None and (not _is_int(limit) or limit < 1):
        c.fail(where, f"pair_limit must be an integer >= 1, not {_show(limit)}")
    if layout is not None:
        c.value(where, "pair_layout", layout, "str", PAIR_LAYOUTS)
    if (limit is None) != (layout is None):
        c.fail(where, "pair_limit and pair_layout go together")
    if limit is not None and (t["role"] != "weight" or dtype is not QType.INT8):
        c.fail(where, "pair_limit applies to INT8 weights only")


def check_plan(plan, model: onnx.ModelProto, source: str | Path) -> None:  # noqa: ANN001 - QuantPlan
    """Raise BadPlanError naming `source` when the plan does not fit `model` (the preprocessed
    model it is replayed on)."""
    from quantcli.quantize.int4 import n_blocks
    from quantcli.quantize.nonfinite import nonfinite_initializers

    c = _Checker(str(source))
    index = GraphIndex(model.graph)
    nodes = {n.name: n for n in model.graph.node}
    known = set(index.initializers) | index.graph_inputs | set(index.producer)
    for p in plan.nodes:
        where = f"node '{p.name}'"
        node = nodes.get(p.name)
        if node is None:
            c.fail(where, "the model has no node of that name (was the plan made for another model?)")
        if node.op_type != p.op_type:
            c.fail(where, f"op_type {p.op_type} in the plan, {node.op_type} in the model")
        if p.precision in ("int8", "int4") and not (p.quantized_inputs or p.quantized_outputs):
            c.fail(where, f"precision {p.precision} but quantized_inputs and quantized_outputs are empty")
        if (
            p.precision in ("int8", "int4")
            and plan.mode in ("dynamic", "weights-int4")
            and len(node.input) > 1
        ):
            weight = node.input[0] if p.form == ROWS else node.input[1]
            if weight not in p.quantized_inputs:
                c.fail(where, f"quantized_inputs must name its weight '{weight}' in --mode {plan.mode}")
        for key, names in (("quantized_inputs", node.input), ("quantized_outputs", node.output)):
            for t in getattr(p, key):
                if t not in names:
                    c.fail(where, f"{key} names '{t}', which is not one of its {key.split('_')[1]}")
                if p.precision in ("int8", "int4") and t not in plan.tensors:
                    c.fail(where, f"{key} names '{t}', but the plan's tensors give no parameters for it")
    nonfinite = nonfinite_initializers(model)
    quantized = {
        t: p.name
        for p in plan.nodes
        if p.precision in ("int8", "int4")
        for t in (*p.quantized_inputs, *p.quantized_outputs)
    }
    for name, params in plan.tensors.items():
        where = f"tensor '{name}'"
        if name not in known:
            c.fail(where, "the model has no tensor of that name")
        elem = index.elem_type(name)
        if elem is not None and elem not in _FLOAT_TYPES:
            c.fail(
                where,
                f"is {onnx.TensorProto.DataType.Name(elem)} in the model: only float tensors are quantized",
            )
        initializer = index.initializers.get(name)
        if params.role in ("weight", "bias") and initializer is None:
            c.fail(where, f"role {params.role} needs a constant (an initializer); the model computes it")
        if name in nonfinite and name in quantized:
            bad, total = nonfinite[name]
            c.fail(
                where,
                f"holds {bad} NaN/inf values (of {total}) in the model: quantizing would make them finite; "
                f"set node '{quantized[name]}' to float",
            )
        if initializer is None:
            continue
        shape = list(initializer.dims)
        if params.axis is not None:
            if not -len(shape) <= params.axis < max(len(shape), 1) or not shape:
                c.fail(where, f"axis {params.axis} is outside its rank {len(shape)} (shape {shape})")
            params.axis %= len(shape)
        if params.dtype is QType.UINT4:
            if len(shape) != 2 or params.axis not in (0, 1):
                c.fail(
                    where,
                    f"INT4 blocks need a 2-D weight and axis 0 or 1, not shape {shape} axis {params.axis}",
                )
            k, n = shape[params.axis], shape[1 - params.axis]
            need = n * n_blocks(k, plan.config.block_size)
            if len(params.scale) != need:
                c.fail(
                    where,
                    f"{len(params.scale)} scales for shape {shape}: blocks of {plan.config.block_size} "
                    f"along axis {params.axis} need {need}",
                )
        elif params.axis is not None and len(params.scale) != shape[params.axis]:
            c.fail(
                where,
                f"{len(params.scale)} scales for axis {params.axis} of shape {shape} "
                f"({shape[params.axis]} channels)",
            )
        size = math.prod(shape)
        if params.correction is not None and len(params.correction) != size:
            c.fail(where, f"{len(params.correction)} correction values for {size} biases")
        if params.pair_layout is not None:
            _check_pairs(c, where, params, shape)


def _check_pairs(c: _Checker, where: str, params, shape: list[int]) -> None:  # noqa: ANN001
    ranks = {"conv": len(shape) >= 3, "kn": len(shape) >= 2, "nk": len(shape) == 2}
    if not ranks[params.pair_layout]:
        c.fail(where, f"pair_layout {params.pair_layout} does not fit shape {shape}")
    if params.pair_weights is not None:
        inputs = {"conv": shape[1], "kn": shape[-2], "nk": shape[-1]}[params.pair_layout]
        if len(params.pair_weights) != inputs:
            c.fail(where, f"{len(params.pair_weights)} pair_weights for {inputs} input channels")


_FLOAT_TYPES = (
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _float32(v: float):  # noqa: ANN202
    import numpy as np

    with np.errstate(over="ignore", under="ignore"):
        return np.float32(v)


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number"
    )


def _show(v: Any) -> str:
    text = repr(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) or v is None else str(v)
    if v is None:
        text = "null"
    return text if len(text) <= 40 else text[:37] + "..."
