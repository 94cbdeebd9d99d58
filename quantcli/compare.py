"""Two models + data -> per-output and per-layer differences, sizes, latency, threshold checks.

`compare()` is the library behind `quantcli compare`: it raises QuantcliError subclasses on bad
input and returns a CompareResult of facts; rendering lives in quantcli/report/compare.py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from quantcli.calibration.data import InputSpec, find_samples, iter_samples, read_labels
from quantcli.calibration.images import ImagePreprocess
from quantcli.calibration.synthetic import random_samples, random_shapes
from quantcli.errors import ExitCode, Notice, UsageError
from quantcli.io_match import IOMatch, match_io
from quantcli.kernel_check import KernelCheck, Saturation, kernel_check, mismatch_warning
from quantcli.latency import MIN_ROUNDS, Latency, measure_latency
from quantcli.model_io import file_size, load_model
from quantcli.per_layer import PerLayerResult, per_layer_errors
from quantcli.runtime import make_session
from quantcli.thresholds import Check, Thresholds, evaluate
from quantcli.verify import Agreement, compare_sessions, exact_kernel_model, nonfinite_notices

RANDOM_SAMPLES = 32  # samples generated without --data


@dataclass(frozen=True)
class CompareOptions:
    """Everything `quantcli compare` accepts, as keyword-only fields."""

    reference: Path
    candidate: Path
    data: Path | None = None
    samples: int | None = None  # default: every file of `data`, or RANDOM_SAMPLES random ones
    preprocess: ImagePreprocess | None = None  # how image files in `data` become model input
    thresholds: Thresholds = field(default_factory=Thresholds)
    per_layer: bool = False
    latency: bool = False  # also timed when thresholds bound the latency ratio
    rounds: int = MIN_ROUNDS
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples is not None and self.samples < 1:
            raise UsageError(f"--samples {self.samples}: must be at least 1")
        if self.rounds < MIN_ROUNDS:
            raise UsageError(f"--rounds {self.rounds}: must be at least {MIN_ROUNDS} for a stable median")
        if self.threads < 1:
            raise UsageError(f"--threads {self.threads}: must be at least 1")


@dataclass(frozen=True)
class ModelFacts:
    """A model file: its path, size on disk (external data included) and parameter bytes per dtype."""

    path: Path
    file_bytes: int
    parameter_bytes: dict[str, int]


@dataclass(frozen=True)
class DataSource:
    """Where the samples came from: a directory of files, or random values from a fixed seed."""

    kind: str  # "directory" or "random"
    samples: int
    path: Path | None = None
    labels: bool = False
    seed: int | None = None

    def describe(self) -> str:
        if self.kind == "random":
            return f"{self.samples} random samples (standard normal, seed {self.seed}; no --data)"
        return f"{self.samples} samples from {self.path}" + (" with labels" if self.labels else "")


@dataclass
class CompareResult:
    """The facts of one comparison; quantcli/report/compare.py renders them."""

    reference: ModelFacts
    candidate: ModelFacts
    data: DataSource
    io: IOMatch
    agreement: Agreement
    per_layer: PerLayerResult | None
    latency: Latency | None
    checks: list[Check]
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    kernels: KernelCheck | None = None  # which integer kernels `agreement` came from

    @property
    def size_ratio(self) -> float:
        """Candidate file bytes / reference file bytes."""
        return self.candidate.file_bytes / self.reference.file_bytes if self.reference.file_bytes else 0.0

    @property
    def passed(self) -> bool:
        """Every threshold the user set is met (True when none was set)."""
        return all(c.passed for c in self.checks)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.OK if self.passed else ExitCode.THRESHOLD_NOT_MET


def compare(
    options: CompareOptions, *, progress: Callable[[str, int, int], None] | None = None
) -> CompareResult:
    """Compare `options.candidate` with `options.reference`; raises QuantcliError subclasses."""
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    warnings: list[str] = []
    reference_model = load_model(options.reference)
    candidate_model = load_model(options.candidate)
    facts = [
        ModelFacts(Path(p), file_size(p), parameter_bytes(m))
        for p, m in ((options.reference, reference_model), (options.candidate, candidate_model))
    ]
    layers = [_u8s8_layers(m) for m in (reference_model, candidate_model)]
    kernels = kernel_check(max((Saturation.of("", ls) for ls in layers), key=lambda r: r.pairs_over))
    if not options.per_layer:
        del reference_model, candidate_model
    reference = make_session(Path(options.reference))
    candidate = make_session(Path(options.candidate))
    io = match_io(
        reference, candidate, reference_label=str(options.reference), candidate_label=str(options.candidate)
    )
    options.thresholds.check_outputs(p.name for p in io.outputs)

    specs = [InputSpec(p.name, p.sample_dtype, p.reference.shape) for p in io.inputs]
    if options.data is not None:
        preprocess = options.preprocess
        if preprocess is not None and len(specs) == 1:
            preprocess = preprocess.fitted(specs[0].shape, "--data-preprocess")
        every = find_samples(options.data, preprocess=preprocess, option="--data-preprocess")
        refs = every[: options.samples]
        labels = read_labels(Path(options.data), refs, every)
        source = DataSource("directory", len(refs), Path(options.data), labels is not None)

        def samples() -> Iterator[dict[str, np.ndarray]]:
            return iter_samples(refs, specs, preprocess)
    else:
        labels = None
        random_shapes(specs, model=options.reference)  # too large to generate: said before any run
        source = DataSource("random", options.samples or RANDOM_SAMPLES, seed=options.seed)
        warnings.append(
            f"no --data: comparing on {source.samples} random samples (standard normal, seed {options.seed}); "
            "random inputs can hide real error, pass --data DIR with real samples"
        )

        def samples() -> Iterator[dict[str, np.ndarray]]:
            return random_samples(specs, source.samples, options.seed)

    seconds["load"] = time.perf_counter() - t0
    t = time.perf_counter()
    agreement = compare_sessions(
        reference,
        candidate,
        samples(),
        labels,
        io=io,
        progress=(lambda k: progress("comparing outputs", k, source.samples)) if progress else None,
    )
    if not kernels.same_as_exact:  # this CPU's U8S8 kernels can saturate: measure exact kernels too
        exact = [_exact_session(p) for p in (options.reference, options.candidate)]
        kernels.exact = compare_sessions(exact[0], exact[1], samples(), labels, io=io)
        del exact
        warnings += mismatch_warning(agreement, kernels)
    warnings += nonfinite_notices(agreement, "candidate", "reference")
    seconds["outputs"] = time.perf_counter() - t

    per_layer = None
    if options.per_layer:
        t = time.perf_counter()
        per_layer = per_layer_errors(
            reference_model,
            candidate_model,
            samples,
            io,
            progress=(lambda k, n: progress("comparing layers", k, n)) if progress else None,
            sample_count=source.samples,
        )
        del reference_model, candidate_model
        seconds["per_layer"] = time.perf_counter() - t
        if not kernels.same_as_exact:
            first = agreement.outputs[0]
            risky = sorted((r for ls in layers for r in ls if r.pairs_over), key=lambda r: -r.pairs_over)
            named = ", ".join(f"{r.node} ({r.pairs_over} pairs)" for r in risky[:3])
            more = f" and {len(risky) - 3} more" if len(risky) > 3 else ""
            warnings.append(
                Notice(
                    "per-layer-unfused",
                    "per-layer figures run each op unfused (float arithmetic on dequantized values), so "
                    f"they do not show the int16 saturation of this CPU's fused kernels: end to end, output "
                    f"{first.name} has {first.sqnr_db:.1f} dB SQNR here vs {kernels.exact.outputs[0].sqnr_db:.1f} dB "
                    f"on exact kernels; the layers whose INT8 weight pairs can saturate here: {named}{more}",
                )
            )

    latency = None
    if options.latency or options.thresholds.needs_latency:
        t = time.perf_counter()
        del reference, candidate
        latency = measure_latency(
            Path(options.reference),
            Path(options.candidate),
            next(iter(samples())),
            io,
            threads=options.threads,
            rounds=options.rounds,
        )
        seconds["latency"] = time.perf_counter() - t

    result = CompareResult(
        reference=facts[0],
        candidate=facts[1],
        data=source,
        io=io,
        agreement=agreement,
        per_layer=per_layer,
        latency=latency,
        checks=[],
        warnings=warnings,
        seconds=seconds,
        kernels=kernels,
    )
    result.checks = evaluate(
        options.thresholds,
        agreement,
        size_ratio=result.size_ratio,
        latency_ratio=latency.ratio if latency is not None else None,
    )
    seconds["total"] = time.perf_counter() - t0
    return result


def _u8s8_layers(model: onnx.ModelProto) -> list:
    """The model's INT8 layers on U8S8 kernels, with their pairs over the int16 limit."""
    from quantcli.inspect.saturation import u8s8_layers

    return u8s8_layers(model.graph)


def _exact_session(path: Path):  # noqa: ANN202 - onnxruntime session
    """A session over the model as exact integer kernels compute it (the model itself when nothing
    in it runs on U8S8 kernels). Read again from the file: compare drops its loaded copies before
    running the sessions, so that a big model is not held twice over for this rare case."""
    exact = exact_kernel_model(load_model(path))
    return make_session(Path(path)) if exact is None else make_session(exact)


def parameter_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of the initializers (and Constant node tensors) per element type, largest first."""
    totals: Counter[str] = Counter()
    tensors = list(model.graph.initializer)
    tensors += [
        a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    ]
    for t in tensors:
        name, bits = _element(t.data_type)
        count = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
        totals[name] += (count * bits + 7) // 8
    return dict(totals.most_common())


def _element(data_type: int) -> tuple[str, int]:
    """(numpy-style name, bits per element) of an ONNX element type."""
    bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(data_type).lower(), 8
    return dtype.name, bits.get(data_type, dtype.itemsize * 8)
