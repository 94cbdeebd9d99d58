"""Checks and metrics shared by convert and compare: checker, onnxruntime run, output agreement.

The two models are fed and compared through an IOMatch (quantcli/io_match.py), so float16 and
integer inputs/outputs are compared in float32.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from quantcli.calibration.data import sample_rows
from quantcli.errors import Notice, UnsupportedModelError, UsageError
from quantcli.io_match import IOMatch, match_io

TOP_K = 5


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
    """Agreement of one output between a reference and a candidate model over the samples.

    cosine_mean / cosine_min: cosine similarity of each sample's flattened output, mean and minimum
    over the samples. max_abs_error / mean_abs_error: over every element of every sample.
    relative_error: ||candidate - reference|| / ||reference|| over all samples (L2), so that
    sqnr_db = -20 log10(relative_error). top1_agreement / top5_overlap: classifier-shaped outputs
    ([batch, classes]) only; top5_overlap is the mean share of the reference's 5 best classes that
    are among the candidate's 5 best (outputs with more than 5 classes only). Every figure covers
    the elements (rows, for top-1/top-5) where the reference is finite; reference_nonfinite: the
    samples where the reference returns inf/NaN; candidate_nonfinite: those where the candidate
    does; new_nonfinite: those where the candidate does where the reference is finite.
    """

    name: str
    samples: int = 0
    cosine_mean: float = 1.0
    cosine_min: float = 1.0
    max_abs_error: float = 0.0
    mean_abs_error: float = 0.0
    sqnr_db: float = math.inf
    top1_agreement: float | None = None
    relative_error: float = 0.0
    top5_overlap: float | None = None
    reference_nonfinite: int = 0
    candidate_nonfinite: int = 0
    new_nonfinite: int = 0


class ErrorAccumulator:
    """Folds one (reference, candidate) pair of a tensor at a time into running sums; its memory
    does not grow with the number of samples."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.samples = 0
        self.cos_sum = 0.0
        self.cos_min = 1.0
        self.max_abs = 0.0
        self.abs_sum = 0.0
        self.count = 0
        self.signal = 0.0
        self.noise = 0.0
        self.classifier = True
        self.rows = 0
        self.top1_same = 0
        self.top5_rows = 0
        self.top5_sum = 0.0
        self.reference_nonfinite = 0  # samples where the reference returns inf/NaN
        self.candidate_nonfinite = 0  # samples where the candidate returns inf/NaN
        self.new_nonfinite = 0  # samples where it does where the reference is finite

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        """Fold one sample in. Only the elements where the reference is finite are compared: where
        it returns inf/NaN itself there is nothing to agree with (counted apart, per sample)."""
        if ref.shape != cand.shape:
            raise UsageError(
                f"'{self.name}': the reference gives shape {list(ref.shape)}, the candidate {list(cand.shape)}"
            )
        r = ref.astype(np.float64).ravel()
        c = cand.astype(np.float64).ravel()
        finite = np.isfinite(r)
        self.reference_nonfinite += int(not finite.all())
        self.candidate_nonfinite += int(not np.isfinite(c).all())
        self.new_nonfinite += int(not np.isfinite(c[finite]).all())
        if not finite.all():
            r, c = r[finite], c[finite]
        # A candidate inf/NaN where the reference is finite is an infinite error, reported as such.
        with np.errstate(invalid="ignore", over="ignore"):
            diff = r - c
            cos = cosine(r, c)
            self.cos_min = min(self.cos_min, cos) if self.samples else cos
            self.cos_sum += cos
            self.samples += 1
            if diff.size:
                self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))))
            self.abs_sum += float(np.sum(np.abs(diff)))
            self.count += diff.size
            self.signal += float(np.dot(r, r))
            self.noise += float(np.dot(diff, diff))
        if not (self.classifier and is_classifier_output(ref)):
            self.classifier = False
            return
        rows = np.isfinite(ref).all(axis=-1)  # rows the reference scores in full
        ref, cand = ref[rows], cand[rows]
        self.rows += ref.shape[0]
        self.top1_same += int(np.sum(ref.argmax(-1) == cand.argmax(-1)))
        if ref.shape[1] > TOP_K and ref.shape[0]:
            self.top5_rows += ref.shape[0]
            self.top5_sum += topk_overlap(ref, cand, TOP_K) * ref.shape[0]

    def result(self) -> OutputMetrics:
        classifier = self.classifier and self.rows > 0
        return OutputMetrics(
            name=self.name,
            samples=self.samples,
            cosine_mean=self.cos_sum / self.samples if self.samples else 1.0,
            cosine_min=self.cos_min,
            max_abs_error=self.max_abs,
            mean_abs_error=self.abs_sum / self.count if self.count else 0.0,
            sqnr_db=sqnr_db(self.signal, self.noise),
            top1_agreement=self.top1_same / self.rows if classifier else None,
            relative_error=_relative_error(self.signal, self.noise),
            top5_overlap=self.top5_sum / self.top5_rows if classifier and self.top5_rows else None,
            reference_nonfinite=self.reference_nonfinite,
            candidate_nonfinite=self.candidate_nonfinite,
            new_nonfinite=self.new_nonfinite,
        )


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal power / noise power); +inf when there is no noise at all, -inf when the noise
    is infinite (an overflow in the candidate), NaN when a value is NaN."""
    if noise == 0:
        return math.inf
    if not math.isfinite(noise) or math.isnan(signal):
        return -math.inf if math.isinf(noise) and not math.isnan(signal) else math.nan
    return 10 * math.log10(max(signal, 1e-300) / noise)


def _relative_error(signal: float, noise: float) -> float:
    if noise == 0:
        return 0.0
    return math.sqrt(noise / signal) if signal > 0 else math.inf


def topk_overlap(ref: np.ndarray, cand: np.ndarray, k: int) -> float:
    """Mean over rows of |topk(ref) & topk(cand)| / k for [rows, classes] scores."""
    top_r = np.argpartition(-ref, k - 1, axis=-1)[:, :k]
    top_c = np.argpartition(-cand, k - 1, axis=-1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_r, top_c, strict=True)]))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flattened tensors; 1.0 when both are all zeros."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN values give a NaN, not a warning
        return float(np.dot(a, b) / (na * nb))


@dataclass
class Agreement:
    """Per-output metrics plus accuracy against labels for both models (when labels exist)."""

    outputs: list[OutputMetrics]
    samples: int
    reference_accuracy: float | None = None
    candidate_accuracy: float | None = None

    @property
    def accuracy_drop(self) -> float | None:
        """Reference accuracy minus candidate accuracy (positive: the candidate is worse)."""
        if self.reference_accuracy is None or self.candidate_accuracy is None:
            return None
        return self.reference_accuracy - self.candidate_accuracy


def nonfinite_notices(
    agreement: Agreement, candidate: str = "converted", reference: str = "float", hint: str = ""
) -> list[str]:
    """One warning per output that returns inf/NaN: where the candidate does and the reference does
    not (`hint` appended), or what the reference already does (the figures then cover only the
    values where it is finite)."""
    notices: list[str] = []
    for o in agreement.outputs:
        already = (
            f"the {reference} model itself returns inf or NaN on {o.reference_nonfinite} of {o.samples} samples"
            if o.reference_nonfinite
            else ""
        )
        if o.new_nonfinite:
            text = (
                f"output {o.name}: the {candidate} model returns inf or NaN where the {reference} model is finite, "
                f"on {o.new_nonfinite} of {o.samples} samples{hint}" + (f"; {already}" if already else "")
            )
            notices.append(Notice("nonfinite-output", text))
        elif already:
            text = (
                f"output {o.name}: {already}, the {candidate} model on {o.candidate_nonfinite}; the figures "
                f"compare only the values where the {reference} model is finite"
            )
            notices.append(Notice("nonfinite-reference", text))
    return notices


def compare_sessions(
    reference,  # noqa: ANN001 - onnxruntime.InferenceSession
    candidate,  # noqa: ANN001
    samples: Iterable[dict[str, np.ndarray]],
    labels: np.ndarray | None = None,
    *,
    io: IOMatch | None = None,
    progress: Callable[[int], None] | None = None,
) -> Agreement:
    """Run both sessions on each sample and fold the differences, one sample at a time.

    Without `io`, the outputs both models have are compared (match_io with strict=False).
    Accuracy against `labels` uses the first output, when it is classifier-shaped with batch 1.
    """
    if io is None:
        io = match_io(reference, candidate, strict=False)
    names = [p.name for p in io.outputs]
    acc = {p.name: ErrorAccumulator(p.name) for p in io.outputs}
    ref_correct = cand_correct = labelled = 0
    count = rows = 0
    # A model with a free batch axis may be fed a batch per file: each row is a sample.
    inputs = reference.get_inputs()
    free_batch = bool(inputs) and all(
        i.shape and not (isinstance(i.shape[0], int) and i.shape[0] > 0) for i in inputs
    )
    for i, sample in enumerate(samples):
        ref_out = run_session(reference, names, io.feeds(sample, "reference"), "reference", i)
        cand_out = run_session(candidate, names, io.feeds(sample, "candidate"), "candidate", i)
        ref_out = [p.reference.to_float(v) for p, v in zip(io.outputs, ref_out, strict=True)]
        cand_out = [p.candidate.to_float(v) for p, v in zip(io.outputs, cand_out, strict=True)]
        for n, r, c in zip(names, ref_out, cand_out, strict=True):
            acc[n].update(r, c)
        first_r, first_c = ref_out[0], cand_out[0]
        if labels is not None and i < len(labels) and is_classifier_output(first_r) and first_r.shape[0] == 1:
            ref_correct += int(first_r.argmax(-1)[0] == labels[i])
            cand_correct += int(first_c.argmax(-1)[0] == labels[i])
            labelled += 1
        count += 1
        rows += sample_rows(sample) if free_batch else 1
        if progress is not None:
            progress(count)
    return Agreement(
        outputs=[a.result() for a in acc.values()],
        samples=rows,
        reference_accuracy=ref_correct / labelled if labelled else None,
        candidate_accuracy=cand_correct / labelled if labelled else None,
    )


@dataclass(frozen=True)
class _Arg:
    name: str
    type: str
    shape: list | None


@dataclass(frozen=True)
class _Meta:
    custom_metadata_map: dict[str, str]


RECORD_BYTES = 256 << 20  # outputs a RecordedOutputs keeps; past that the session stays alive


class RecordedOutputs:
    """A float session's outputs on known samples, computed up front, so that the session can be
    released before the model it is compared with is loaded: verification then holds one model's
    weights in onnxruntime at a time, not two (a 512 MiB model: about 0.6 GB less peak memory).
    It answers what compare_sessions asks of a session (metadata, and `run` on those samples)."""

    def __init__(  # noqa: ANN001 - onnxruntime session
        self, session, samples: Iterable[dict[str, np.ndarray]], stop: threading.Event | None = None
    ) -> None:
        # plain copies: onnxruntime's NodeArg objects point into the session they came from
        self.inputs = [_Arg(a.name, a.type, a.shape) for a in session.get_inputs()]
        self.outputs = [_Arg(a.name, a.type, a.shape) for a in session.get_outputs()]
        self.meta = _Meta(dict(session.get_modelmeta().custom_metadata_map))
        self.names = [o.name for o in self.outputs]
        self.recorded: dict[bytes, list] = {}
        self.complete = True
        size = 0
        io = match_io(session, session, strict=False)
        for i, sample in enumerate(samples):
            if stop is not None and stop.is_set():  # the conversion ended without it
                break
            feeds = io.feeds(sample, "reference")
            values = run_session(session, self.names, feeds, "reference", i)
            size += sum(getattr(v, "nbytes", 0) for v in values)
            if size > RECORD_BYTES:
                break
            self.recorded[feeds_key(feeds)] = values
        else:
            return
        self.recorded.clear()
        self.complete = False

    def get_inputs(self) -> list:
        return self.inputs

    def get_outputs(self) -> list:
        return self.outputs

    def get_modelmeta(self) -> _Meta:
        return self.meta

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list:
        values = self.recorded.get(feeds_key(feeds))
        if values is None:
            raise KeyError("a sample the reference outputs were not recorded for")  # a quantcli bug
        by_name = dict(zip(self.names, values, strict=True))
        return [by_name[n] for n in names]


def feeds_key(feeds: dict[str, np.ndarray]) -> bytes:
    """A digest of a sample's feeds (names, dtypes, shapes and values): the key recorded outputs
    are found by."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(feeds.items()):
        h.update(f"{k}|{v.dtype.str}|{v.shape}|".encode())
        h.update(np.ascontiguousarray(v).data)
    return h.digest()


def recorded_reference(
    session, samples: Iterable[dict[str, np.ndarray]], stop: threading.Event | None = None
):  # noqa: ANN001, ANN201
    """`session`'s outputs on `samples` recorded (RecordedOutputs), or the session itself when they
    do not fit RECORD_BYTES."""
    recorded = RecordedOutputs(session, samples, stop)
    return recorded if recorded.complete else session


# Up to this size (the model file), the reference is recorded while the conversion goes on: its
# session (about the model's size again) is then held beside the planner's model and the rewrite's
# copy. Past it, recording waits for verification, as the memory bound on big models needs.
OVERLAP_BYTES = 256 << 20


class ReferenceRecording:
    """The float reference's outputs on the evaluation samples (`recorded_reference`): recorded on
    a thread of its own from `start` on when `background` (planning and the rewrite leave a core
    idle: all-MiniLM-L6-v2, 100 samples, about 1.5 s of verification hidden), otherwise when
    `result` is first asked for. `close` stops a recording still under way (at its next sample)."""

    def __init__(
        self, model, samples: Callable[[], Iterable[dict[str, np.ndarray]]], *, background: bool
    ) -> None:  # noqa: ANN001 - a model path or bytes, as make_session takes
        self._model, self._samples, self._background = model, samples, background
        self._future = None
        self._stop = threading.Event()

    def _record(self):  # noqa: ANN202 - RecordedOutputs or an onnxruntime session
        from quantcli.runtime import make_session

        return recorded_reference(make_session(self._model, lean=True), self._samples(), self._stop)

    def start(self) -> None:
        if not self._background or self._future is not None:
            return
        from concurrent.futures import ThreadPoolExecutor

        runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantcli-reference")
        self._future = runner.submit(self._record)
        runner.shutdown(wait=False)  # the thread ends with the recording

    def result(self):  # noqa: ANN201 - what compare_sessions takes as its reference
        return self._record() if self._future is None else self._future.result()

    def close(self) -> None:
        self._stop.set()


def run_session(session, names: list[str], feeds: dict[str, np.ndarray], which: str, index: int) -> list:  # noqa: ANN001
    """session.run with a failure reported as the model that failed and the sample it failed on."""
    try:
        return session.run(names, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(
            f"onnxruntime failed running the {which} model on sample {index}: {first}"
        ) from exc


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
        if parent is None or parent.op_type != "DequantizeLinear" or not _scalar(model, parent.input[1]):
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


def _scalar(model: onnx.ModelProto, name: str) -> bool:
    """Whether a DequantizeLinear scale is per tensor (one value), as the transformer requires."""
    init = next((t for t in model.graph.initializer if t.name == name), None)
    return init is None or int(np.prod(init.dims)) == 1


def exact_kernel_model(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of the model that onnxruntime runs on exact integer kernels on any CPU, or None when
    nothing in it runs on U8S8 kernels (nothing to change).

    Each INT8 weight of a U8S8 integer layer (inspect/saturation.py: through a DequantizeLinear, or
    MatMulInteger's B) is stored as UINT8, value + 128 with zero point + 128: the same numbers, which
    onnxruntime multiplies on its U8U8 kernels (int32 sums) instead of U8S8's saturating int16
    pairs (FIELD_NOTES.md). On a CPU with VNNI or on ARM the two models compute the same outputs.
    """
    from onnx import numpy_helper

    from quantcli.inspect.saturation import u8s8_layers

    inits = {t.name for t in model.graph.initializer}
    reads = Counter(name for node in model.graph.node for name in node.input)
    targets = [
        (layer.weight, layer.zero_point)
        for layer in u8s8_layers(model.graph, decode=lambda t: None)  # which layers, not their values
        # both read once (a shared weight or zero point is left alone), the zero point stored
        if layer.zero_point in inits and reads[layer.weight] == reads[layer.zero_point] == 1
    ]
    if not targets:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_name = {t.name: t for t in out.graph.initializer}
    for x, zp in targets:
        for name in (x, zp):
            values = numpy_helper.to_array(by_name[name]).astype(np.int16) + 128
            by_name[name].CopyFrom(numpy_helper.from_array(values.astype(np.uint8), name))
    return out
