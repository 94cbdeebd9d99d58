"""Checks and metrics shared by convert and compare: checker, onnxruntime run, output agreement."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx


def checker_error(model: onnx.ModelProto) -> str | None:
    """onnx.checker's full check; the first line of its complaint, or None when it passes."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        return str(exc).strip().splitlines()[0]
    return None


def is_classifier_output(value: np.ndarray) -> bool:
    """Logits-shaped: [batch, classes] with more than one class."""
    return value.ndim == 2 and value.shape[1] > 1


@dataclass
class OutputMetrics:
    """Agreement of one output between a reference and a candidate model over the samples."""

    name: str
    samples: int = 0
    cosine_mean: float = 1.0
    cosine_min: float = 1.0
    max_abs_error: float = 0.0
    mean_abs_error: float = 0.0
    sqnr_db: float = math.inf
    top1_agreement: float | None = None


@dataclass
class _Accumulator:
    name: str
    cos: list[float] = field(default_factory=list)
    max_abs: float = 0.0
    abs_sum: float = 0.0
    count: int = 0
    signal: float = 0.0
    noise: float = 0.0
    top1_same: int = 0
    top1_total: int = 0
    classifier: bool = True

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        r = ref.astype(np.float64).ravel()
        c = cand.astype(np.float64).ravel()
        diff = r - c
        self.cos.append(cosine(r, c))
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))))
        self.abs_sum += float(np.sum(np.abs(diff)))
        self.count += diff.size
        self.signal += float(np.sum(r * r))
        self.noise += float(np.sum(diff * diff))
        if is_classifier_output(ref) and ref.shape == cand.shape:
            self.top1_same += int(np.sum(ref.argmax(-1) == cand.argmax(-1)))
            self.top1_total += ref.shape[0]
        else:
            self.classifier = False

    def result(self) -> OutputMetrics:
        sqnr = math.inf if self.noise == 0 else 10 * math.log10(max(self.signal, 1e-300) / self.noise)
        return OutputMetrics(
            name=self.name,
            samples=len(self.cos),
            cosine_mean=float(np.mean(self.cos)) if self.cos else 1.0,
            cosine_min=float(np.min(self.cos)) if self.cos else 1.0,
            max_abs_error=self.max_abs,
            mean_abs_error=self.abs_sum / self.count if self.count else 0.0,
            sqnr_db=sqnr,
            top1_agreement=(self.top1_same / self.top1_total)
            if self.classifier and self.top1_total
            else None,
        )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flattened tensors; 1.0 when both are all zeros."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


@dataclass
class Agreement:
    """Per-output metrics plus accuracy against labels for both models (when labels exist)."""

    outputs: list[OutputMetrics]
    samples: int
    reference_accuracy: float | None = None
    candidate_accuracy: float | None = None


def compare_sessions(
    reference,  # noqa: ANN001 - onnxruntime.InferenceSession
    candidate,  # noqa: ANN001
    samples: Iterable[dict[str, np.ndarray]],
    labels: np.ndarray | None = None,
) -> Agreement:
    """Run both sessions on each sample and fold the differences, one sample at a time."""
    names = [o.name for o in reference.get_outputs()]
    cand_names = {o.name for o in candidate.get_outputs()}
    names = [n for n in names if n in cand_names]
    acc = {n: _Accumulator(n) for n in names}
    ref_correct = cand_correct = labelled = 0
    count = 0
    for i, feeds in enumerate(samples):
        ref_out = reference.run(names, feeds)
        cand_out = candidate.run(names, feeds)
        for n, r, c in zip(names, ref_out, cand_out, strict=True):
            acc[n].update(np.asarray(r), np.asarray(c).astype(np.float32))
        first_r, first_c = np.asarray(ref_out[0]), np.asarray(cand_out[0])
        if labels is not None and is_classifier_output(first_r) and first_r.shape[0] == 1:
            ref_correct += int(first_r.argmax(-1)[0] == labels[i])
            cand_correct += int(first_c.argmax(-1)[0] == labels[i])
            labelled += 1
        count += 1
    return Agreement(
        outputs=[a.result() for a in acc.values()],
        samples=count,
        reference_accuracy=ref_correct / labelled if labelled else None,
        candidate_accuracy=cand_correct / labelled if labelled else None,
    )


def requantized_by_onnxruntime(model: onnx.ModelProto, float_nodes: set[str]) -> list[str]:
    """Float Conv/ConvTranspose/Gemm that onnxruntime will quantize anyway when it loads the model.

    onnxruntime's WeightBiasQuantization transformer (core/optimizer/qdq_transformer/
    weight_bias_quantization.cc) gives a float Conv/ConvTranspose/Gemm INT8 per-tensor weights when
    its input comes from a per-tensor DequantizeLinear and its output runs, through Relu/Clip only
    and without branching, into a QuantizeLinear. A node the plan keeps in float then does not run
    in float; the caller reports it.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found = []
    for node in model.graph.node:
        if node.name not in float_nodes or node.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            continue
        parent = producers.get(node.input[0])
        if parent is None or parent.op_type != "DequantizeLinear":
            continue
        current = node
        while len(current.output) == 1 and len(consumers.get(current.output[0], [])) == 1:
            nxt = consumers[current.output[0]][0]
            if nxt.op_type == "QuantizeLinear":
                found.append(node.name)
                break
            if nxt.op_type not in ("Relu", "Clip"):
                break
            current = nxt
    return found
