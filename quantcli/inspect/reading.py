"""Loading a model without its external data: file facts, element types, parameter bytes, tensor values."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from quantcli.inspect.facts import DtypeBytes, ExternalFile, ValueFacts
from quantcli.model_io import external_data_file

_BITS = {"float32": 32, "float64": 64, "float16": 16, "bfloat16": 16, "int64": 64, "uint64": 64}
_BITS |= {"int32": 32, "uint32": 32, "int16": 16, "uint16": 16, "int8": 8, "uint8": 8, "bool": 8}
_BITS |= {"complex64": 64, "complex128": 128, "int4": 4, "uint4": 4, "float4e2m1": 4, "int2": 2, "uint2": 2}


def dtype_name(data_type: int) -> str:
    """float32, float16, int8, uint8, int4 ... for an ONNX TensorProto data type."""
    if data_type == TensorProto.FLOAT:
        return "float32"
    if data_type == TensorProto.DOUBLE:
        return "float64"
    try:
        return TensorProto.DataType.Name(data_type).lower()
    except (ValueError, TypeError):
        return f"type{data_type}"


def tensor_bytes(t: onnx.TensorProto) -> int:
    """Bytes of an initializer's values from its dims and type (packed for 4- and 2-bit types)."""
    name = dtype_name(t.data_type)
    if name == "string":
        return sum(len(s) for s in t.string_data)
    n = math.prod(t.dims)
    return (n * _BITS.get(name, 8) + 7) // 8


def _decode(t: onnx.TensorProto, base_dir: Path) -> np.ndarray:
    """The values of one tensor; an external one reads only its own bytes from its file."""
    if t.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(t)
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    want = tensor_bytes(t)
    with open(external_data_file(base_dir, location), "rb") as fh:
        fh.seek(int(info.get("offset", 0)))
        data = fh.read(int(info.get("length", want)))
    if len(data) < want:
        raise ValueError(f"external data file {location} is truncated")
    inline = TensorProto(name=t.name, dims=t.dims, data_type=t.data_type, raw_data=data[:want])
    return numpy_helper.to_array(inline)


class _Values:
    """Constant tensors (initializers and Constant nodes), decoded on demand and at most once.

    Values are decoded only where a statistic needs them (scales, zero points, float16 weights for the
    overflow check); parameter sizes come from each initializer's `dims` and `data_type` instead.
    """

    KEEP_ELEMENTS = 1 << 16  # larger arrays are not kept: only the fp16 check reads them, once

    def __init__(
        self,
        graph: onnx.GraphProto,
        base_dir: Path,
        decode: Callable[[onnx.TensorProto, Path], np.ndarray] = _decode,
    ) -> None:
        self.base_dir = base_dir
        self.decode = decode
        self.tensors = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.output and (t := _constant_tensor(node)) is not None:
                self.tensors[node.output[0]] = t
        self.cache: dict[str, np.ndarray | None] = {}
        self.errors: dict[str, str] = {}
        self.read_external = False  # inspect --tensors reads external weights for their checks

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str | None) -> np.ndarray | None:
        if not name or name not in self.tensors:
            return None
        if name in self.cache:
            return self.cache[name]
        try:
            array = self.decode(self.tensors[name], self.base_dir)
        except Exception as exc:  # noqa: BLE001 - a malformed tensor is a finding, not a crash
            self.errors[name] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            array = None
        if array is None or array.size <= self.KEEP_ELEMENTS:
            self.cache[name] = array
        return array

    def decode_internal(self, t: onnx.TensorProto) -> np.ndarray | None:
        """The tensor's values when they are stored in the model file itself (or external data was
        asked for: `read_external`); None otherwise."""
        if t.data_location == onnx.TensorProto.EXTERNAL and not self.read_external:
            return None
        return self.get(t.name)

    def numel(self, name: str) -> int | None:
        t = self.tensors.get(name)
        return math.prod(t.dims) if t is not None else None


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
            return numpy_helper.from_array(np.asarray(onnx.helper.get_attribute_value(a)))
    return None


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor: declared, or inferred on a copy of the graph without weights."""
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    for v in (*g.input, *g.value_info, *g.output):
        if v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    skeleton = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import)
    sg = skeleton.graph
    skeleton.functions.extend(model.functions)
    sg.node.extend(g.node)
    sg.input.extend(g.input)
    sg.output.extend(g.output)
    declared = {i.name for i in g.input}
    sg.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in g.initializer
        if t.name not in declared
    )
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton)
    except Exception:  # noqa: BLE001 - inference is best effort: declared types remain
        return types
    for v in (*inferred.graph.value_info, *inferred.graph.output):
        if v.type.tensor_type.elem_type:
            types.setdefault(v.name, v.type.tensor_type.elem_type)
    return types


def _value_facts(v: onnx.ValueInfoProto) -> ValueFacts:
    tt = v.type.tensor_type
    shape = None
    if tt.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return ValueFacts(v.name, dtype_name(tt.elem_type) if tt.elem_type else "unknown", shape)


def _external_files(g: onnx.GraphProto, base_dir: Path) -> list[ExternalFile]:
    locations = dict.fromkeys(
        e.value
        for t in g.initializer
        if t.data_location == TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    )
    files = []
    for loc in locations:
        try:
            p = external_data_file(base_dir, loc)  # never a file outside the model's directory
        except ValueError as exc:
            files.append(ExternalFile(loc, None, str(exc)))
            continue
        files.append(ExternalFile(loc, p.stat().st_size if p.is_file() else None))
    return files


def _checker_error(path: Path) -> str | None:
    """onnx.checker's full check on the file (the path form: no second copy of the weights in memory)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001 - the checker raises several types; any is a failed check
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__
    return None


def _parameters(g: onnx.GraphProto, total: int) -> list[DtypeBytes]:
    """Initializers per dtype, largest first; `share` is of `total`, the file's bytes."""
    by_dtype: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for t in g.initializer:
        row = by_dtype[dtype_name(t.data_type)]
        row[0] += 1
        row[1] += math.prod(t.dims)
        row[2] += tensor_bytes(t)
    params = [DtypeBytes(d, k, n, b, b / total if total else 0.0) for d, (k, n, b) in by_dtype.items()]
    params.sort(key=lambda p: -p.bytes)
    return params


def _constant_nodes(g: onnx.GraphProto) -> tuple[int, int]:
    """Constant nodes' tensors: count, bytes."""
    consts = [t for n in g.node if n.op_type == "Constant" for t in [_constant_tensor(n)] if t is not None]
    return len(consts), sum(tensor_bytes(t) for t in consts)
