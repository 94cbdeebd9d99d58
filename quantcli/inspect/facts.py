"""The facts `quantcli inspect` reports, as dataclasses: rendering them is report/inspect.py's job."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMATS = ("QDQ", "QOperator", "dynamic", "weight-only", "fp16", "bf16", "mixed", "none")


@dataclass
class ExternalFile:
    location: str
    bytes: int | None  # None: missing, or not read (problem)
    problem: str | None = None  # why it is not read: outside the model's directory, not a regular file


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
    not_run: str | None = None  # why neither onnx.checker nor onnxruntime was given the file

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
