"""What onnxruntime actually runs: the share of multiply-accumulates in integer kernels.

Method (see benchmarks/README.md):

1. onnxruntime optimizes each model as it would for inference (ORT_ENABLE_EXTENDED, CPU provider) and
   writes the optimized graph (`SessionOptions.optimized_model_filepath`).
2. Every tensor's shape and dtype are read by running a graph once on one batch-1 sample with all
   node outputs exposed as graph outputs (graph optimizations off, so the graph runs as written).
   Static shape inference cannot do this: `onnx.shape_inference` leaves the real models' compute
   shapes unknown (EfficientNet pads by computed amounts, MiniLM reshapes by computed shapes) and does
   not know onnxruntime's contrib ops (QGemm, MatMulIntegerToFloat, FusedConv, ...), and onnxruntime
   writes no value_info into the optimized file.
3. Each compute node's MACs come from its own tensors: convolutions numel(Y) * Cin/group * kh * kw (the
   weight's shape without its first axis), ConvTranspose numel(X) * Cout/group * kh * kw,
   MatMul-like numel(Y) * K (K from the first input's last axis), Gemm-like numel(Y) * K.
4. share = MACs of the optimized graph's integer kernels / MACs of the original FP32 model's Conv,
   ConvTranspose, MatMul and Gemm nodes. The optimized graph's integer + float MACs should add up to
   that total (`coverage`); the benchmark notes any model where they do not.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _bench_cases import Feed

INT_KERNELS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "QGemm",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "MatMulInteger",
        "ConvInteger",
    }
)
# MatMulNBits dequantizes its (4/8-bit) weight and multiplies in float: weight-only, float compute
FLOAT_KERNELS = frozenset(
    {"Conv", "FusedConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm", "FusedGemm", "MatMulNBits"}
)
CONVERSIONS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
CONV_WEIGHT_INPUT = {"Conv": 1, "FusedConv": 1, "ConvInteger": 1, "QLinearConv": 3}
MATMUL_LIKE = frozenset(
    {
        "MatMul",
        "FusedMatMul",
        "MatMulNBits",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QLinearMatMul",
    }
)
GEMM_LIKE = frozenset({"Gemm", "FusedGemm", "QGemm"})


@dataclass
class Tensor:
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass
class Kernels:
    """How one model's optimized graph computes: MACs by kind and the op types by precision."""

    int_macs: int = 0
    float_macs: int = 0
    int_ops: Counter[str] = field(default_factory=Counter)
    float_compute_ops: Counter[str] = field(default_factory=Counter)
    float_other_ops: Counter[str] = field(default_factory=Counter)  # non-compute ops with float outputs
    conversions: Counter[str] = field(default_factory=Counter)
    unmeasured: Counter[str] = field(default_factory=Counter)  # compute ops whose MACs are unknown

    def share(self, total_macs: int) -> float:
        return self.int_macs / total_macs if total_macs else 0.0

    def coverage(self, total_macs: int) -> float:
        return (self.int_macs + self.float_macs) / total_macs if total_macs else 0.0


def _session(path: Path, level: ort.GraphOptimizationLevel, optimized_to: Path | None = None):  # noqa: ANN202
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = level
    if optimized_to is not None:
        options.optimized_model_filepath = str(optimized_to)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def optimize(path: Path, workdir: Path) -> Path:
    """The graph onnxruntime runs for `path` at ORT_ENABLE_EXTENDED, written to workdir."""
    optimized = workdir / f"{path.stem}.optimized.onnx"
    _session(path, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, optimized_to=optimized)
    return optimized


def runtime_tensors(model: onnx.ModelProto, feed: Feed, workdir: Path) -> dict[str, Tensor]:
    """Shape and dtype of every tensor of `model` on one run of `feed`: initializers, inputs, and
    every node output (exposed as a graph output; the graph runs unoptimized, as written)."""
    tensors = {
        i.name: Tensor(tuple(i.dims), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(i.data_type)))
        for i in model.graph.initializer
    }
    tensors |= {name: Tensor(a.shape, a.dtype) for name, a in feed.items()}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    have = set(tensors) | {o.name for o in exposed.graph.output}
    for name in (o for node in exposed.graph.node for o in node.output):
        if name and name not in have:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
            have.add(name)
    path = workdir / "exposed.onnx"
    onnx.save(exposed, str(path))
    del exposed
    session = _session(path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    names = [o.name for o in session.get_outputs()]
    inputs = {i.name for i in session.get_inputs()}
    values = session.run(names, {k: v for k, v in feed.items() if k in inputs})
    tensors |= {n: Tensor(np.shape(v), np.asarray(v).dtype) for n, v in zip(names, values, strict=True)}
    path.unlink()
    return tensors


def _attr(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _shape(names: Sequence[str], index: int, tensors: dict[str, Tensor]) -> tuple[int, ...] | None:
    t = tensors.get(names[index]) if index < len(names) else None
    return None if t is None else tuple(t.shape)


def node_macs(node: onnx.NodeProto, tensors: dict[str, Tensor]) -> int | None:
    """Multiply-accumulates of one compute node, or None when it is not one or a shape is unknown."""
    op = node.op_type
    y = _shape(node.output, 0, tensors)
    if op in CONV_WEIGHT_INPUT:
        w = _shape(node.input, CONV_WEIGHT_INPUT[op], tensors)
        return None if y is None or w is None else math.prod(y) * math.prod(w[1:])
    if op == "ConvTranspose":
        x, w = _shape(node.input, 0, tensors), _shape(node.input, 1, tensors)
        return None if x is None or w is None else math.prod(x) * math.prod(w[1:])
    a = _shape(node.input, 0, tensors)
    if y is None or a is None or len(a) == 0:
        return None
    if op in MATMUL_LIKE:
        k = a[-2] if _attr(node, "transA") and len(a) >= 2 else a[-1]
        return math.prod(y) * k
    if op in GEMM_LIKE:
        return math.prod(y) * (a[0] if _attr(node, "transA") else a[1])
    return None


def total_macs(model_path: Path, feed: Feed, workdir: Path) -> int:
    """MACs of the FP32 model's Conv, ConvTranspose, MatMul and Gemm nodes at this feed's shapes."""
    model = onnx.load(str(model_path))
    tensors = runtime_tensors(model, feed, workdir)
    compute = ("Conv", "ConvTranspose", "MatMul", "Gemm")
    macs = [node_macs(n, tensors) for n in model.graph.node if n.op_type in compute]
    if any(m is None for m in macs):
        raise ValueError(f"{model_path}: a compute node's shape could not be measured")
    return sum(m for m in macs if m is not None)


def _is_float(names: Iterable[str], tensors: dict[str, Tensor]) -> bool:
    return any(n in tensors and tensors[n].dtype.kind == "f" for n in names if n)


def classify(model: onnx.ModelProto, tensors: dict[str, Tensor]) -> Kernels:
    """Sort the optimized graph's nodes into integer kernels, float compute, other float ops and Q/DQ."""
    k = Kernels()
    for node in model.graph.node:
        op = node.op_type
        if op in INT_KERNELS or op in FLOAT_KERNELS:
            macs = node_macs(node, tensors)
            if macs is None:
                k.unmeasured[op] += 1
            elif op in INT_KERNELS:
                k.int_macs += macs
            else:
                k.float_macs += macs
            (k.int_ops if op in INT_KERNELS else k.float_compute_ops)[op] += 1
        elif op in CONVERSIONS:
            k.conversions[op] += 1
        elif _is_float(node.output, tensors):
            k.float_other_ops[op] += 1
    return k


def analyze(model_path: Path, feed: Feed, workdir: Path) -> Kernels:
    """Integer vs float compute of the graph onnxruntime optimizes for model_path, at feed's shapes."""
    optimized = optimize(model_path, workdir)
    model = onnx.load(str(optimized))
    kernels = classify(model, runtime_tensors(model, feed, workdir))
    optimized.unlink()
    return kernels
