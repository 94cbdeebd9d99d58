"""Run the float model in onnxruntime over the calibration samples and observe activation ranges."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from quantcli.calibration.data import SampleShapes, sample_rows
from quantcli.calibration.fold import observe, observer_pool
from quantcli.calibration.memory import check_fits, estimate_bytes
from quantcli.calibration.observers import DEFAULT_BINS, HISTOGRAM_VALUES, ChannelMeanObserver
from quantcli.calibration.ranges import CalibMethod, compute_range, make_observer
from quantcli.calibration.sessions import SessionFor, exposing_sessions
from quantcli.errors import UnsupportedModelError
from quantcli.graph import attr


@dataclass
class Ranges:
    """Observed float range per tensor name, and how many samples produced them."""

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: int = 0
    method: str = "minmax"
    excluded: dict[str, str] = field(default_factory=dict)  # tensor -> why its range is unusable
    # Per-channel means of the data inputs of Conv/Gemm nodes with constant weights (bias correction).
    channel_means: dict[str, np.ndarray] = field(default_factory=dict)
    # Per-channel E[x^2] of the data inputs of Conv/Gemm/MatMul nodes with constant weights: how much
    # each input channel's weights matter to the output (quantize/saturation.py).
    channel_energy: dict[str, np.ndarray] = field(default_factory=dict)
    # Float tensors calibration did not observe because no plan was expected to read their range
    # (`collect_ranges(tensors=...)`), and those of them a planner asked for all the same
    # (`why_missing`): the caller observes these and plans again (quantize/modes.py).
    unobserved: frozenset[str] = frozenset()
    wanted: set[str] = field(default_factory=set)

    def why_missing(self, name: str) -> str:
        """Why `name` has no usable range. Asking about a tensor that was left unobserved records
        it in `wanted`: the plan that asked is then not final."""
        if name in self.unobserved:
            self.wanted.add(name)
            return f"no range observed for {name}"
        return self.excluded.get(name, f"no calibrated range for {name}")

    def with_observed(self, more: Ranges) -> Ranges:
        """These ranges plus those of `more`, observed over the same samples afterwards: what was
        observed there is no longer unobserved, and nothing is wanted any more."""
        return replace(
            self,
            samples=max(self.samples, more.samples),
            ranges={**self.ranges, **more.ranges},
            excluded={**self.excluded, **more.excluded},
            channel_means={**self.channel_means, **more.channel_means},
            channel_energy={**self.channel_energy, **more.channel_energy},
            unobserved=self.unobserved & more.unobserved,
            wanted=set(),
        )


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Graph inputs and node outputs that are (or may be) float32: the candidates to observe."""
    known = {
        v.name: v.type.tensor_type.elem_type
        for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)
    }
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    names += [o for n in model.graph.node for o in n.output if o]
    return [n for n in names if known.get(n, onnx.TensorProto.FLOAT) in (onnx.TensorProto.FLOAT, 0)]


@dataclass(frozen=True)
class CalibrationConfig:
    """How activations are observed and their ranges chosen."""

    method: CalibMethod = CalibMethod.MSE  # measured best across the sample and real models (README)
    bins: int = DEFAULT_BINS
    percentile: float = 99.99
    symmetric: bool = False
    levels: int = 256  # quantization levels of the activation type: 2**bits
    memory_budget_bytes: int = 256 << 20
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], not {self.percentile}")


SampleSource = Callable[[], Iterable[dict[str, np.ndarray]]]


def collect_ranges(
    model: onnx.ModelProto,
    samples: SampleSource,
    config: CalibrationConfig | None = None,
    *,
    progress: Callable[[int, int, int], None] | None = None,
    sample_shapes: SampleShapes | None = None,
    tensors: Collection[str] | None = None,
) -> Ranges:
    """Stream samples through the model with float tensors exposed as outputs; keep statistics only.

    `samples()` yields one sample at a time and is called once per pass. Tensors are exposed in
    groups whose estimated size per sample fits the memory budget: one pass when everything fits,
    several passes over the samples otherwise. A model whose inputs have a free batch axis runs
    `batch_size` samples at a time. The sizes come, before anything runs, from the model's shapes
    for the inputs of `sample_shapes` (the samples' headers; without it, the first sample's
    arrays); a sample whose inputs or largest tensor exceed the budget is a BadDataError.

    `tensors`: observe only these of the float tensors (the ones a plan may read: ranges, and the
    channel statistics of the data inputs among them); the others are `unobserved` in the result.
    Each observed tensor costs its share of the run's outputs and of the statistics' work
    (all-MiniLM-L6-v2: a static plan reads 1.0M of the 8.9M float values a sample computes).
    """
    config = config or CalibrationConfig()
    names = float_tensors(model)
    unobserved: frozenset[str] = frozenset()
    if tensors is not None:
        unobserved = frozenset(n for n in names if n not in tensors)
        names = [n for n in names if n not in unobserved]
    if not names:  # nothing to observe (a float16 model in fp16 mode); run([]) would return every output
        return Ranges({}, 0, config.method.value, unobserved=unobserved)
    with exposing_sessions(model) as expose, observer_pool() as pool:
        sizes, probe = _run_sizes(model, names, samples, sample_shapes, config.memory_budget_bytes, expose)
        # Samples per run: as many as fit the budget with every tensor exposed (at most batch_size);
        # when even one sample does not fit, one sample per run and the tensors split into passes.
        per_sample = max(1, sum(sizes.get(n, 0) for n in names))
        free_batch = _has_free_batch_axis(model)

        def samples_per_run(budget: int) -> int:
            return max(1, min(config.batch_size, budget // per_sample)) if free_batch else 1

        full = samples_per_run(config.memory_budget_bytes)
        # With CPUs to spare, the next run computes while this one's outputs are observed (the
        # observers and onnxruntime's kernels each leave cores idle: EfficientNet-Lite0, 200
        # samples, 1.5-1.7 of 2 cores busy before); two runs' outputs then share the budget.
        ahead = pool is not None and 2 * per_sample <= config.memory_budget_bytes
        budget = config.memory_budget_bytes // (2 if ahead else 1)
        batch = samples_per_run(budget)
        groups = tensor_groups(names, sizes, budget // batch)
        # A histogram bins a strided subset of each run's values (observers.HISTOGRAM_VALUES); a run
        # halved to share the budget bins its share of what the full run would, no more per sample.
        values = max(1, HISTOGRAM_VALUES * batch // full)
        observers = {n: make_observer(config.method, config.bins, values) for n in names}
        means = {n: ChannelMeanObserver(axis) for n, axis in weighted_inputs(model).items() if n in observers}
        count = 0
        for g, group in enumerate(groups):
            session = probe if probe is not None and len(groups) == 1 else expose(group)
            probe = None
            out_names = [o.name for o in session.get_outputs()]
            count = 0
            for result, feeds, n in _runs(session, out_names, _batches(samples(), batch), ahead):
                results = [result]
                del result
                if results[0] is None:  # the batch axis is not really free: one sample at a time from now on
                    batch = 1
                    results = [_run(session, out_names, one, strict=True) for one in _split(feeds, n)]
                observe(pool, out_names, results, observers, means)
                count += sample_rows(feeds) if free_batch else n  # a file holding a batch counts its rows
                results = None  # do not hold this run's outputs while the next run computes
                if progress is not None:
                    progress(g, len(groups), count)
            del session
        # KL reads the mass a saturating activation piles up at its bound (ReLU6 at 6) as an outlier
        # tail and clips it away (EfficientNet-Lite0: cosine 0.09); such outputs keep their observed range.
        saturating = _saturating_tensors(model)

        def clipping_range(name: str) -> tuple[float, float]:
            entropy_saturating = config.method is CalibMethod.ENTROPY and name in saturating
            return compute_range(
                observers[name],
                CalibMethod.MINMAX if entropy_saturating else config.method,
                symmetric=config.symmetric,
                percentile=config.percentile,
                levels=config.levels,
            )

        seen = [n for n, o in observers.items() if o.count]
        ranges = dict(
            zip(seen, pool.map(clipping_range, seen) if pool else map(clipping_range, seen), strict=True)
        )
    channel_means = {n: m for n, o in means.items() if (m := o.mean()) is not None and o.axis == 1}
    energy = {n: e for n, o in means.items() if (e := o.mean_square()) is not None}
    return Ranges(
        ranges,
        count,
        config.method.value,
        channel_means=channel_means,
        channel_energy=energy,
        unobserved=unobserved,
    )


def _run_sizes(
    model: onnx.ModelProto,
    names: list[str],
    samples: SampleSource,
    shapes: SampleShapes | None,
    budget: int,
    expose: SessionFor,
):  # noqa: ANN202 - (sizes, onnxruntime session or None)
    """Bytes of each tensor for one sample, known before any run exposes more than `budget`; and
    the session that measured them with every tensor exposed, when they all fit (else None).

    The figures come from the model's shapes for the samples' input shapes (the first sample's
    arrays when there are no headers to read); a sample that cannot fit is a BadDataError. What
    shape inference cannot tell is measured first, the guessed tensors alone, when the guesses
    are what puts the total over the budget.
    """
    first = None
    if shapes is None:  # no headers to read (images, a caller's own samples): the first sample
        first = next(iter(samples()), None)
        if first is None:
            return estimated_bytes(model), None
        shapes = _shapes_of(first)
    sizes, guessed = estimate_bytes(model, names, shapes.shapes)
    check_fits({n: b for n, b in sizes.items() if n not in guessed}, shapes, budget)
    if guessed and sum(sizes.values()) > budget:
        first = first if first is not None else next(iter(samples()), None)
        if first is None:
            return sizes, None
        scale = max(1.0, shapes.nbytes / max(1, _nbytes(first)))  # a larger sample further on
        for group in tensor_groups([n for n in names if n in guessed], sizes, budget):
            values = _run(expose(group), group, first, strict=True)
            sizes.update(_measured(group, values, scale))
            del values
        check_fits(sizes, shapes, budget)
    if sum(sizes.values()) > budget:
        return sizes, None
    # Shapes are often unknown past dynamic ops (a padded Conv, a reshape by Shape); measure one
    # sample with every tensor exposed instead of trusting the static estimate.
    probe = expose(names)
    first = first if first is not None else next(iter(samples()), None)
    if first is None:
        return sizes, probe
    scale = max(1.0, shapes.nbytes / max(1, _nbytes(first)))
    values = _run(probe, names, first, strict=True)
    return _measured(names, values, scale), probe


def _measured(names: list[str], values: list, scale: float) -> dict[str, int]:
    """Bytes of each run output, scaled up to the largest sample's inputs."""
    return {
        n: math.ceil(v.nbytes * scale)
        for n, v in zip(names, values, strict=True)
        if isinstance(v, np.ndarray)
    }


def weighted_inputs(model: onnx.ModelProto) -> dict[str, int]:
    """Data inputs of the Conv, (transA=0) Gemm and MatMul nodes whose weight is an initializer,
    with their channel axis (1; MatMul: -1, the last): the tensors whose channel statistics bias
    correction (means, axis 1) and the saturation fit (mean squares) need."""
    inits = {t.name for t in model.graph.initializer}
    found: dict[str, int] = {}
    for node in model.graph.node:
        if (
            node.op_type not in ("Conv", "Gemm", "MatMul")
            or len(node.input) < 2
            or node.input[1] not in inits
        ):
            continue
        if node.op_type == "Gemm" and attr(node, "transA", 0):
            continue
        # MatMul multiplies the last axis of its input by the weight's rows (its K)
        found.setdefault(node.input[0], -1 if node.op_type == "MatMul" else 1)
    return found


_PASS_THROUGH = (
    "Pad",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "MaxPool",
    "Slice",
)


def _saturating_tensors(model: onnx.ModelProto) -> set[str]:
    """Outputs of Clip (ReLU6) and of value-preserving ops fed by them (Pad, Reshape, MaxPool...)."""
    found: set[str] = set()
    for node in model.graph.node:  # topological order
        if node.op_type == "Clip" or (
            node.op_type in _PASS_THROUGH and node.input and node.input[0] in found
        ):
            found.update(o for o in node.output[:1] if o)
    return found


def tensor_groups(names: list[str], sizes: dict[str, int], budget: int) -> list[list[str]]:
    """Split `names` into groups whose bytes per sample (`sizes`) stay under `budget`."""
    groups: list[list[str]] = [[]]
    used = 0
    for name in names:
        size = sizes.get(name, 0)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return groups


def estimated_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of one sample of each tensor, from the inferred shapes (free dimensions count as 1)."""
    out = {}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        n = 1
        for d in tt.shape.dim:
            n *= d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
        out[vi.name] = 4 * n
    return out


def _nbytes(sample: dict[str, np.ndarray]) -> int:
    return sum(v.nbytes for v in sample.values())


def _shapes_of(sample: dict[str, np.ndarray]) -> SampleShapes:
    detail = ", ".join(f"{k} {v.dtype} {list(v.shape)}" for k, v in sample.items())
    return SampleShapes(
        "the first calibration sample", _nbytes(sample), {k: v.shape for k, v in sample.items()}, detail
    )


def _has_free_batch_axis(model: onnx.ModelProto) -> bool:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        if not dims or (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            return False
    return bool(inputs)


def _batches(samples: Iterable[dict[str, np.ndarray]], size: int):  # noqa: ANN202
    """Concatenate up to `size` consecutive samples along axis 0; yields (feeds, sample count).
    Samples of other shapes than the pending ones (free height/width) start a new batch."""
    pending: list[dict[str, np.ndarray]] = []
    for feeds in samples:
        if pending and any(np.shape(v) != np.shape(pending[0].get(k)) for k, v in feeds.items()):
            yield _concat(pending), len(pending)
            pending = []
        pending.append(feeds)
        if len(pending) == size:
            yield _concat(pending), len(pending)
            pending = []
    if pending:
        yield _concat(pending), len(pending)


def _concat(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(items) == 1:
        return items[0]
    return {k: np.concatenate([it[k] for it in items]) for k in items[0]}


def _split(feeds: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    if n == 1:
        return [feeds]
    return [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(n)]


def _runs(session, out_names: list[str], batches: Iterable[tuple[dict, int]], ahead: bool):  # noqa: ANN001, ANN202
    """(outputs, feeds, samples) of each batch's run (`_run`, strict for a single sample); with
    `ahead`, the next batch runs on a thread of its own while the caller works on this one's."""
    if not ahead:
        for feeds, n in batches:
            yield _run(session, out_names, feeds, strict=n == 1), feeds, n
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantcli-calibrate") as runner:
        started = ((runner.submit(_run, session, out_names, feeds, n == 1), feeds, n) for feeds, n in batches)
        pending = None
        try:
            for following in itertools.chain(started, [None]):
                if pending is not None:  # `following` was submitted first: it runs while the caller works
                    (future, feeds, n), pending = pending, None
                    yield future.result(), feeds, n
                pending = following
        finally:
            if pending is not None:  # interrupted: the run under way finishes, its outputs are dropped
                pending[0].cancel()


def _run(session, out_names: list[str], feeds: dict[str, np.ndarray], strict: bool):  # noqa: ANN001, ANN202
    """The session's outputs; None for a failed batched run (strict=False), an error otherwise."""
    try:
        return session.run(out_names, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        if not strict:
            return None
        raise UnsupportedModelError(
            f"onnxruntime failed running a calibration sample: {str(exc).strip().splitlines()[0]}"
        ) from exc
