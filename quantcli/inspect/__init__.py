"""Read an ONNX model back into quantcli's vocabulary: the file, its parameters, how it is quantized,
and the findings that signal a broken or slow model. Nothing here prints (report/inspect.py renders).

The model is loaded without external data. Parameter sizes come from each initializer's `dims` and
`data_type`; values are decoded only where a statistic needs them (scales, zero points, float16
weights for the overflow check), each tensor at most once (`_Values`). With `use_ort`, onnxruntime's
CPU provider builds its optimized graph (ORT_ENABLE_EXTENDED, the QDQ fusions) into a temporary
directory: whether the model loads, which op runs each compute node, and which DequantizeLinear
survive as a cost instead of being fused.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from quantcli.graph import GraphIndex, attr, node_label
from quantcli.model_io import check_model_path, load_model

Q_OPS = ("QuantizeLinear", "DequantizeLinear")
FLOAT_COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul")
# Integer compute ops: (activation, scale, zero point) and (weight, scale, zero point) input indices.
INTEGER_COMPUTE: dict[str, tuple[tuple[int, int | None, int | None], tuple[int, int | None, int | None]]] = {
    "QLinearConv": ((0, 1, 2), (3, 4, 5)),
    "QLinearConvTranspose": ((0, 1, 2), (3, 4, 5)),
    "QLinearMatMul": ((0, 1, 2), (3, 4, 5)),
    "QGemm": ((0, 1, 2), (3, 4, 5)),
    "ConvInteger": ((0, None, 2), (1, None, 3)),
    "MatMulInteger": ((0, None, 2), (1, None, 3)),
    "MatMulIntegerToFloat": ((0, 2, 4), (1, 3, 5)),
    "DynamicQuantizeMatMul": ((0, None, None), (1, 2, 3)),
    "MatMulNBits": ((0, None, None), (1, 2, None)),
}
# Where an op's output scale and zero point are (input indices), for ops with a quantized output.
OUTPUT_QPARAMS = {
    "QLinearConv": (6, 7),
    "QLinearConvTranspose": (6, 7),
    "QLinearMatMul": (6, 7),
    "QGemm": (7, 8),
}
# com.microsoft QLinear ops laid out as (x, x_scale, x_zp, y_scale, y_zp).
UNARY_QLINEAR = {
    "QLinearSoftmax",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearReduceMean",
}
OTHER_INTEGER_OPS = {"DynamicQuantizeLinear", "QAttention", "GatherBlockQuantized", "DynamicQuantizeLSTM"}
SHAPE_ONLY = ("Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
FORMATS = ("QDQ", "QOperator", "dynamic", "weight-only", "fp16", "bf16", "mixed", "none")
_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535)}
_RANGE |= {"int4": (-8, 7), "uint4": (0, 15), "int2": (-2, 1), "uint2": (0, 3)}
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


@dataclass
class ExternalFile:
    location: str
    bytes: int | None  # None: missing


@dataclass
class FileFacts:
    path: Path
    bytes: int
    external: list[ExternalFile]
    ir_version: int
    opsets: dict[str, int]
    producer: str
    checker_error: str | None  # None: passes onnx.checker's full check
    ort_checked: bool
    ort_error: str | None  # None (when checked): onnxruntime's CPU provider loads it

    @property
    def total_bytes(self) -> int:
        return self.bytes + sum(e.bytes or 0 for e in self.external)


@dataclass
class ValueFacts:
    name: str
    dtype: str
    shape: list[int | str | None] | None  # str: a symbolic dimension; None: unknown


@dataclass
class DtypeBytes:
    dtype: str
    tensors: int
    elements: int
    bytes: int
    share: float  # of the file's bytes, external data included


@dataclass
class TensorFacts:
    name: str
    dtype: str
    shape: list[int]
    bytes: int
    location: str | None  # external data file, None when stored in the model
    role: str  # float weight, quantized weight, bias, scale, zero point, constant, unused


@dataclass
class Stats:
    """Distribution of scales or zero points: distinct tensors, values, min / median / max."""

    tensors: int = 0
    values: int = 0
    min: float | None = None
    median: float | None = None
    max: float | None = None
    histogram: dict[int, int] = field(
        default_factory=dict
    )  # scales: decade d counts values in [10^d, 10^(d+1))
    nonzero: int = 0  # zero points: how many are not 0

    @classmethod
    def of(cls, arrays: list[np.ndarray], *, decades: bool) -> Stats:
        values = np.concatenate([a.astype(np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
        finite = values[np.isfinite(values)]
        s = cls(tensors=len(arrays), values=int(values.size), nonzero=int(np.count_nonzero(values)))
        if finite.size:
            s.min, s.median, s.max = float(finite.min()), float(np.median(finite)), float(finite.max())
        if decades:
            positive = finite[finite > 0]
            s.histogram = dict(sorted(Counter(np.floor(np.log10(positive)).astype(int).tolist()).items()))
        return s


@dataclass
class QParams:
    """How one tensor of a compute node is quantized (scales and zero points summarised)."""

    tensor: str
    dtype: str
    granularity: str | None = None  # per-tensor, per-channel, block (weights)
    axis: int | None = None
    block_size: int | None = None
    scale_min: float | None = None
    scale_max: float | None = None
    scales: int = 0
    zero_point_min: int | None = None
    zero_point_max: int | None = None


@dataclass
class ComputeNode:
    """One Conv / ConvTranspose / Gemm / MatMul (or its integer form): how it is stored and run."""

    name: str
    op_type: str
    domain: str
    scheme: str  # QDQ, QOperator, dynamic, weight-only, fp16, bf16, float
    precision: str  # int8, uint8, int4, int16, fp16, bf16 ... or float
    weight: QParams | None = None
    input: QParams | None = None
    output: QParams | None = None
    ort_op: str | None = None  # the op onnxruntime runs for it; None: not checked or not found

    @property
    def quantized(self) -> bool:
        return self.precision != "float"


@dataclass
class Quantization:
    format: str  # one of FORMATS
    op_counts: dict[str, int]  # QuantizeLinear, DequantizeLinear, integer ops
    compute: list[ComputeNode]
    weight_granularity: dict[str, int]  # per-tensor / per-channel / block -> weights
    activation_dtypes: list[str]
    scales: dict[str, Stats]  # role (weight, activation, bias) -> distribution
    zero_points: dict[str, Stats]

    def compute_counts(self) -> dict[str, int]:
        """Compute nodes stored quantized (any precision but float) and in float, as convert counts them."""
        q = sum(n.quantized for n in self.compute)
        return {"quantized": q, "float": len(self.compute) - q, "total": len(self.compute)}


@dataclass
class Finding:
    code: str
    severity: str  # error (broken), warning (slow or lossy), info
    node: str | None
    message: str
    tensor: str | None = None


@dataclass
class Inspection:
    file: FileFacts
    inputs: list[ValueFacts]
    outputs: list[ValueFacts]
    operators: dict[tuple[str, str], int]  # (domain, op_type) -> count
    parameters: list[DtypeBytes]
    constant_nodes: tuple[int, int]  # Constant nodes' tensors: count, bytes
    quantization: Quantization
    findings: list[Finding]
    tensors: list[TensorFacts] | None = None  # with tensors=True
    show_nodes: bool = False

    @property
    def parameter_bytes(self) -> int:
        return sum(p.bytes for p in self.parameters)


def inspect_model(
    path: str | Path, *, nodes: bool = False, tensors: bool = False, use_ort: bool = True
) -> Inspection:
    """Everything `quantcli inspect` reports about the model at `path`; BadModelError if unreadable."""
    path = check_model_path(path)
    # onnx.checker, onnxruntime and our own load each hold a copy of the weights: one after the
    # other, the peak memory is one copy's, not three.
    checker_error = _checker_error(path)
    ort_error, optimized = _onnxruntime_graph(path) if use_ort else (None, None)
    model = load_model(path, external_data=False)
    g = model.graph
    index = GraphIndex(g)
    values = _Values(g, path.parent)
    types = _elem_types(model)
    facts = FileFacts(
        path=path,
        bytes=path.stat().st_size,
        external=_external_files(g, path.parent),
        ir_version=model.ir_version,
        opsets={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        checker_error=checker_error,
        ort_checked=use_ort,
        ort_error=ort_error,
    )
    refs = _qrefs(g, index, values, types)
    by_node: dict[int, list[_QRef]] = defaultdict(list)  # id(NodeProto): protobuf messages are unhashable
    for r in refs:
        by_node[id(r.node)].append(r)
    compute_nodes = [n for n in g.node if _is_compute(n)]
    compute = [_compute_node(n, index, values, types, by_node) for n in compute_nodes]
    if optimized is not None:
        for c, op in zip(compute, _ort_ops(compute_nodes, optimized.graph), strict=True):
            c.ort_op = op
    quant = _quantization(g, compute, refs, values)
    findings = _findings(facts, g, index, refs, values, types, optimized)
    total = facts.total_bytes
    by_dtype: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for t in g.initializer:
        row = by_dtype[dtype_name(t.data_type)]
        row[0] += 1
        row[1] += math.prod(t.dims)
        row[2] += tensor_bytes(t)
    params = [DtypeBytes(d, k, n, b, b / total if total else 0.0) for d, (k, n, b) in by_dtype.items()]
    params.sort(key=lambda p: -p.bytes)
    consts = [t for n in g.node if n.op_type == "Constant" for t in [_constant_tensor(n)] if t is not None]
    return Inspection(
        file=facts,
        inputs=[_value_facts(v) for v in g.input if v.name not in index.initializers],
        outputs=[_value_facts(v) for v in g.output],
        operators=dict(Counter((_domain(n), n.op_type) for n in g.node).most_common()),
        parameters=params,
        constant_nodes=(len(consts), sum(tensor_bytes(t) for t in consts)),
        quantization=quant,
        findings=findings,
        tensors=_tensor_rows(g, index, refs) if tensors else None,
        show_nodes=nodes,
    )


# --- reading ----------------------------------------------------------------------------------


def _decode(t: onnx.TensorProto, base_dir: Path) -> np.ndarray:
    """The values of one tensor; an external one reads only its own bytes from its file."""
    if t.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(t)
    info = {e.key: e.value for e in t.external_data}
    location = Path(info.get("location", ""))
    if location.is_absolute() or ".." in location.parts:
        raise ValueError(f"external data location {location} is outside the model's directory")
    want = tensor_bytes(t)
    with open(base_dir / location, "rb") as fh:
        fh.seek(int(info.get("offset", 0)))
        data = fh.read(int(info.get("length", want)))
    if len(data) < want:
        raise ValueError(f"external data file {location} is truncated")
    inline = TensorProto(name=t.name, dims=t.dims, data_type=t.data_type, raw_data=data[:want])
    return numpy_helper.to_array(inline)


class _Values:
    """Constant tensors (initializers and Constant nodes), decoded on demand and at most once."""

    KEEP_ELEMENTS = 1 << 16  # larger arrays are not kept: only the fp16 check reads them, once

    def __init__(self, graph: onnx.GraphProto, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.tensors = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.output and (t := _constant_tensor(node)) is not None:
                self.tensors[node.output[0]] = t
        self.cache: dict[str, np.ndarray | None] = {}
        self.errors: dict[str, str] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str | None) -> np.ndarray | None:
        if not name or name not in self.tensors:
            return None
        if name in self.cache:
            return self.cache[name]
        try:
            array = _decode(self.tensors[name], self.base_dir)
        except Exception as exc:  # noqa: BLE001 - a malformed tensor is a finding, not a crash
            self.errors[name] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            array = None
        if array is None or array.size <= self.KEEP_ELEMENTS:
            self.cache[name] = array
        return array

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
        p = base_dir / loc
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


def _onnxruntime_graph(path: Path) -> tuple[str | None, onnx.ModelProto | None]:
    """(load error, optimized graph) of onnxruntime's CPU provider at ORT_ENABLE_EXTENDED."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # its load error is reported as a fact, not logged on stderr
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.add_session_config_entry("session.disable_prepacking", "1")
    with tempfile.TemporaryDirectory(prefix="quantcli-inspect-") as tmp:
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        # Weights of the optimized copy go to a side file that is never read back.
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "optimized.data"
        )
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
        try:
            ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            text = str(exc).strip()
            return (text.splitlines()[0] if text else type(exc).__name__), None
        try:
            return None, onnx.load(opts.optimized_model_filepath, load_external_data=False)
        except Exception:  # noqa: BLE001 - the model loads; only the fusion check is lost
            return None, None


def _ort_ops(nodes: list[onnx.NodeProto], optimized: onnx.GraphProto) -> list[str | None]:
    """The op onnxruntime runs for each node: the node of the same name (its QDQ fusions keep the
    name), or else the one node that reads the same first two inputs (FusedGemm, FusedMatMul ...)."""
    by_name: dict[str, list[str]] = defaultdict(list)
    by_inputs: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for n in optimized.node:
        by_name[n.name].append(n.op_type)
        if n.op_type not in Q_OPS:
            by_inputs[tuple(n.input[:2])].append(n.op_type)
    ops = []
    for node in nodes:
        same = by_name.get(node.name, []) if node.name else []
        same = same or by_inputs.get(tuple(node.input[:2]), [])
        ops.append(same[0] if len(same) == 1 else None)
    return ops


# --- quantization -----------------------------------------------------------------------------


@dataclass
class _QRef:
    """A (data, scale, zero point) triple some node reads: a Q/DQ, or an input of an integer op."""

    node: onnx.NodeProto
    data: str
    scale: str | None
    zero_point: str | None
    role: str  # weight, bias, constant (another quantized initializer), activation
    dtype: str  # the quantized type
    axis: int | None = None
    block_size: int | None = None


def _domain(node: onnx.NodeProto) -> str:
    return "" if node.domain == "ai.onnx" else node.domain


def _is_compute(node: onnx.NodeProto) -> bool:
    if node.op_type in INTEGER_COMPUTE:
        return True
    return node.op_type in FLOAT_COMPUTE and (_domain(node) == "" or node.op_type.startswith("Fused"))


def _input(node: onnx.NodeProto, i: int | None) -> str | None:
    return node.input[i] if i is not None and i < len(node.input) and node.input[i] else None


def _output(node: onnx.NodeProto) -> str:
    """The first output's name, "" when there is none (malformed graphs are inspected, not trusted)."""
    return node.output[0] if node.output else ""


def _qrefs(g: onnx.GraphProto, index: GraphIndex, values: _Values, types: dict[str, int]) -> list[_QRef]:
    """Every quantization parameter reference in the graph, with the role and type of its data."""

    def qtype(data: str | None, zp: str | None, default: str = "uint8") -> str:
        t = types.get(data) if data else None
        if t:
            return dtype_name(t)
        return dtype_name(values.tensors[zp].data_type) if zp in values else default

    refs = []
    for n in g.node:
        op = n.op_type
        triples: list[tuple[int | str, int | None, int | None]] = []
        if op == "DequantizeLinear":
            triples = [(0, 1, 2)]
        elif op == "QuantizeLinear":
            triples = [("out", 1, 2)]
        elif op in INTEGER_COMPUTE:
            triples = list(INTEGER_COMPUTE[op])
            if op in OUTPUT_QPARAMS:
                triples.append(("out", *OUTPUT_QPARAMS[op]))
        elif op in ("QLinearAdd", "QLinearMul"):
            triples = [(0, 1, 2), (3, 4, 5), ("out", 6, 7)]
        elif op == "QLinearConcat":
            triples = [("out", 0, 1)] + [(k, k + 1, k + 2) for k in range(2, len(n.input), 3)]
        elif op in UNARY_QLINEAR:
            triples = [(0, 1, 2), ("out", 3, 4)]
        for d, s, z in triples:
            data = (_output(n) or None) if d == "out" else _input(n, d)
            if data is None:
                continue
            scale, zp = _input(n, s), _input(n, z)
            if d == "out" and scale is None and zp is None:
                continue  # a float output (QGemm without y_scale)
            role = "activation"
            if data in values:
                weight_slot = op in INTEGER_COMPUTE and d == INTEGER_COMPUTE[op][1][0]
                if values.tensors[data].data_type == TensorProto.INT32:
                    role = "bias"
                elif weight_slot or (op == "DequantizeLinear" and _feeds_compute(_output(n), index)):
                    role = "weight"
                else:
                    role = "constant"
            if op == "MatMulNBits":
                dtype = f"int{attr(n, 'bits', 4)}"
            elif op == "QuantizeLinear" and attr(n, "output_dtype", 0):
                dtype = dtype_name(attr(n, "output_dtype"))
            else:
                dtype = qtype(data, zp)
            if scale is None and op in ("ConvInteger", "MatMulInteger") and role == "weight":
                scale = _dynamic_weight_scale(n, index, values)
            axis = attr(n, "axis", 1) if op in Q_OPS else None
            refs.append(_QRef(n, data, scale, zp, role, dtype, axis, attr(n, "block_size", 0) or None))
    return refs


def _dynamic_weight_scale(node: onnx.NodeProto, index: GraphIndex, values: _Values) -> str | None:
    """The weight scale of a dynamic MatMulInteger/ConvInteger: integer op -> Cast -> Mul(., Mul(x_scale, w_scale))."""
    for cast in index.consumers.get(_output(node), []):
        if cast.op_type != "Cast":
            continue
        for mul in index.consumers.get(_output(cast), []):
            other = [i for i in mul.input if i != _output(cast)] if mul.op_type == "Mul" else []
            producer = index.producer.get(other[0]) if other else None
            if producer is not None and producer.op_type == "Mul":
                consts = [i for i in producer.input if i in values]
                if len(consts) == 1:
                    return consts[0]
    return None


def _feeds_compute(name: str, index: GraphIndex) -> bool:
    """Whether a tensor reaches a compute node's input directly or through shape-only ops."""
    frontier = [name]
    for _ in range(4):
        users = [u for t in frontier for u in index.consumers.get(t, [])]
        if any(_is_compute(u) for u in users):
            return True
        frontier = [_output(u) for u in users if u.op_type in SHAPE_ONLY and u.output]
    return False


def _dq_behind(name: str, index: GraphIndex) -> onnx.NodeProto | None:
    """The DequantizeLinear that produces `name`, looking through up to 3 shape-only ops."""
    for _ in range(4):
        p = index.producer.get(name)
        if p is None:
            return None
        if p.op_type == "DequantizeLinear":
            return p
        if p.op_type not in SHAPE_ONLY or not p.input:
            return None
        name = p.input[0]
    return None


def _params(ref: _QRef | None, values: _Values) -> QParams | None:
    if ref is None:
        return None
    p = QParams(tensor=ref.data, dtype=ref.dtype, axis=ref.axis, block_size=ref.block_size)
    scale, zp = values.get(ref.scale), values.get(ref.zero_point)
    n = values.numel(ref.scale) if ref.scale else values.numel(ref.zero_point or "")
    if ref.block_size or ref.node.op_type == "MatMulNBits":
        p.granularity = "block"
    elif n is not None:
        p.granularity = "per-tensor" if n == 1 else "per-channel"
    if p.granularity != "per-channel":
        p.axis = None
    if scale is not None and scale.size:
        p.scale_min, p.scale_max, p.scales = float(scale.min()), float(scale.max()), int(scale.size)
    if zp is not None and zp.size and np.isfinite(z := zp.astype(np.float64)).all():
        p.zero_point_min, p.zero_point_max = int(z.min()), int(z.max())
    return p


def _precision(dtype: str) -> str:
    if dtype == "float16":
        return "fp16"
    if dtype == "bfloat16":
        return "bf16"
    if dtype.startswith("float8"):
        return "fp8"
    return "float" if dtype.startswith("float") else dtype


def _compute_node(
    n: onnx.NodeProto,
    index: GraphIndex,
    values: _Values,
    types: dict[str, int],
    refs: dict[int, list[_QRef]],
) -> ComputeNode:
    mine = refs.get(id(n), [])
    c = ComputeNode(node_label(n), n.op_type, _domain(n), "float", "float")
    if n.op_type in INTEGER_COMPUTE:
        (a_idx, _, _), (w_idx, _, _) = INTEGER_COMPUTE[n.op_type]
        weight = next((r for r in mine if r.data == _input(n, w_idx)), None)
        act = next((r for r in mine if r.data == _input(n, a_idx)), None)
        out = next((r for r in mine if n.output and r.data == _output(n)), None)
        producer = index.producer.get(_input(n, a_idx) or "")
        dynamic = n.op_type == "DynamicQuantizeMatMul" or (
            producer is not None and producer.op_type == "DynamicQuantizeLinear"
        )
        c.scheme = "weight-only" if n.op_type == "MatMulNBits" else "dynamic" if dynamic else "QOperator"
        c.precision = _precision(weight.dtype if weight else dtype_name(types.get(_input(n, w_idx) or "", 0)))
        if weight is not None and weight.role == "activation":  # A x B of two activations
            weight = None
        c.weight, c.input, c.output = _params(weight, values), _params(act, values), _params(out, values)
        return c
    dq = [_dq_behind(i, index) if i else None for i in n.input[:2]]
    dq_refs = [refs[id(d)][0] if d is not None and refs.get(id(d)) else None for d in dq]
    act_refs = [r for r in dq_refs if r is not None and r.role == "activation"]
    weight_ref = (
        dq_refs[1]
        if len(dq_refs) > 1 and dq_refs[1] is not None and dq_refs[1].role != "activation"
        else None
    )
    if act_refs:
        c.scheme = "QDQ"
        c.precision = _precision((weight_ref or act_refs[0]).dtype)
        consumers = index.consumers.get(_output(n), [])
        while len(consumers) == 1 and consumers[0].op_type in ("Relu", "Clip"):
            consumers = index.consumers.get(_output(consumers[0]), [])
        q = next(
            (refs[id(u)][0] for u in consumers if u.op_type == "QuantizeLinear" and refs.get(id(u))), None
        )
        c.output = _params(q, values)
    elif weight_ref is not None:
        c.scheme, c.precision = "weight-only", _precision(weight_ref.dtype)
    else:
        dtypes = {dtype_name(types[i]) for i in n.input[:2] if i in types}
        for half in ("float16", "bfloat16"):
            if half in dtypes:
                c.precision = _precision(half)
                c.scheme = c.precision
        cast = index.producer.get(n.input[1]) if len(n.input) > 1 else None
        if cast is not None and cast.op_type == "Cast" and _input(cast, 0) in values:
            # float compute on a weight stored in another type (fp16 mode: float16 storage)
            c.weight = QParams(cast.input[0], dtype_name(values.tensors[cast.input[0]].data_type))
            return c
    c.weight = _params(weight_ref, values)
    c.input = _params(act_refs[0] if act_refs else None, values)
    return c


def _quantization(
    g: onnx.GraphProto, compute: list[ComputeNode], refs: list[_QRef], values: _Values
) -> Quantization:
    ops = Counter(
        n.op_type
        for n in g.node
        if n.op_type in Q_OPS
        or n.op_type in INTEGER_COMPUTE
        or n.op_type in OTHER_INTEGER_OPS
        or n.op_type.startswith("QLinear")
    )
    schemes = {c.scheme for c in compute if c.quantized}
    if len(schemes) == 1:
        fmt = schemes.pop()
    elif schemes:
        fmt = "mixed"
    elif any(op.startswith("QLinear") or op == "QGemm" for op in ops):
        fmt = "QOperator"
    elif ops["DynamicQuantizeLinear"]:
        fmt = "dynamic"
    elif any(r.role == "activation" for r in refs):
        fmt = "QDQ"
    elif any(r.role == "weight" for r in refs):
        fmt = "weight-only"
    elif any(t.data_type == TensorProto.FLOAT16 for t in g.initializer):
        fmt = "fp16"
    elif any(t.data_type == TensorProto.BFLOAT16 for t in g.initializer):
        fmt = "bf16"
    else:
        fmt = "none"
    weights: dict[str, str | None] = {}
    for c in compute:
        if c.weight is not None:
            weights[c.weight.tensor] = c.weight.granularity
    scales: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    zps: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for r in refs:
        for name, bucket in ((r.scale, scales), (r.zero_point, zps)):
            a = values.get(name)
            if a is not None:
                bucket[r.role][name] = a
    act_dtypes = sorted({r.dtype for r in refs if r.role == "activation"})
    return Quantization(
        format=fmt,
        op_counts=dict(sorted(ops.items())),
        compute=compute,
        weight_granularity=dict(Counter(v for v in weights.values() if v)),
        activation_dtypes=act_dtypes,
        scales={k: Stats.of(list(v.values()), decades=True) for k, v in sorted(scales.items())},
        zero_points={k: Stats.of(list(v.values()), decades=False) for k, v in sorted(zps.items())},
    )


# --- findings ---------------------------------------------------------------------------------


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
    if facts.checker_error:
        found.append(
            Finding("checker", "error", None, f"onnx.checker (full check) fails: {facts.checker_error}")
        )
    if facts.ort_error:
        found.append(
            Finding(
                "ort-load", "error", None, f"onnxruntime's CPU provider cannot load it: {facts.ort_error}"
            )
        )
    for e in facts.external:
        if e.bytes is None:
            found.append(
                Finding("external-data", "error", None, f"external data file {e.location} is missing")
            )
    found += _qparam_findings(refs, values)
    found += _dangling(g, index)
    if optimized is not None:
        found += _not_fused(g, optimized)
    found += _half_findings(g, index, values)
    found += _cast_round_trips(g, index, types)
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
        if i.name in index.initializers:
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


def _not_fused(g: onnx.GraphProto, optimized: onnx.ModelProto) -> list[Finding]:
    """DequantizeLinear of an activation that survives in onnxruntime's optimized graph and feeds ops:
    onnxruntime runs it (and a float op after it) instead of an integer kernel."""
    og = optimized.graph
    constants = {t.name for t in og.initializer} | {
        o for n in og.node if n.op_type == "Constant" for o in n.output
    }
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in og.node:
        for i in n.input:
            consumers[i].append(n)
    original = {n.name for n in g.node if n.op_type == "DequantizeLinear"}
    by_input = defaultdict(list)
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input:
            by_input[n.input[0]].append(n.name)
    feeds_by_dq: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in og.node:
        if n.op_type != "DequantizeLinear" or not n.input or n.input[0] in constants:
            continue
        # onnxruntime may duplicate a DQ per consumer: report them under the original's name
        name = n.name if n.name in original else (by_input[n.input[0]] or [n.name])[0]
        feeds_by_dq[name] += consumers.get(_output(n), [])  # none: a graph output, the model's result
    found = []
    for name, feeds in feeds_by_dq.items():
        if not feeds:
            continue
        ops = ", ".join(f"{c.op_type} {c.name}" for c in feeds)
        severity = "warning" if any(c.op_type in FLOAT_COMPUTE for c in feeds) else "info"
        found.append(
            Finding(
                "dq-not-fused",
                severity,
                name,
                f"DequantizeLinear {name} is not fused by onnxruntime: it runs, and feeds float {ops}",
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


def _tensor_rows(g: onnx.GraphProto, index: GraphIndex, refs: list[_QRef]) -> list[TensorFacts]:
    roles: dict[str, str] = {}
    for r in refs:
        if r.role in ("weight", "bias") and r.data in index.initializers:
            roles.setdefault(r.data, f"quantized {r.role}")
        if r.scale:
            roles.setdefault(r.scale, "scale")
        if r.zero_point:
            roles.setdefault(r.zero_point, "zero point")
    rows = []
    for t in g.initializer:
        location = next((e.value for e in t.external_data if e.key == "location"), None)
        role = roles.get(t.name)
        if role is None:
            users = index.consumers.get(t.name, [])
            role = "unused" if not users and t.name not in index.graph_outputs else "constant"
            if (
                users
                and any(_is_compute(u) for u in users)
                and dtype_name(t.data_type).startswith(("float", "bfloat"))
            ):
                role = "float weight"
        rows.append(
            TensorFacts(t.name, dtype_name(t.data_type), list(t.dims), tensor_bytes(t), location, role)
        )
    return rows
