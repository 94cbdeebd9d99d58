"""The modes, one declaration each: what a mode reads, how it plans and rewrites, what it warns
about and what its report adds. `api.convert` is one pass over a `Mode` (load -> preprocess ->
plan -> rewrite -> verify -> report) with no mode name in it, the CLI's per-mode option groups and
the plan file's checks come from the same declarations, and adding a mode is one `register` call
(with its planner and rewriter in their own module).

This module imports nothing heavy at load (the CLI reads the names and options before numpy,
onnx or onnxruntime are imported): planners and rewriters import their modules when called.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import onnx

    from quantcli.calibration.collect import CalibrationConfig, Ranges
    from quantcli.calibration.data import InputSpec, SampleSplit
    from quantcli.quantize.fallback import SearchResult
    from quantcli.quantize.plan import QuantConfig, QuantPlan
    from quantcli.quantize.speed import SpeedPlan

Progress = Callable[[str, int, int], None]


@dataclass
class PlanJob:
    """What a planner may use: the preprocessed model, the plan's config, the convert options and
    samples, and where to record its stages' seconds."""

    model: onnx.ModelProto
    config: QuantConfig
    options: Any  # api.ConvertOptions (api imports this module)
    split: SampleSplit
    specs: list[InputSpec]
    excluded: dict[str, str]  # node -> reason: kept float by --exclude-nodes/--exclude-op-types
    reference_model: Path | bytes  # the float model the accuracy search measures against
    progress: Progress | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    calibrated: Callable[[], None] | None = None  # called when a calibration is done

    def samples(self, refs: list) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
        """A source of `refs` as feeds of the preprocessed model."""
        from quantcli.calibration.data import iter_samples

        return lambda: as_inputs_of(self.model, iter_samples(refs, self.specs, self.options.calib_preprocess))

    def calibrate(self, calibration: CalibrationConfig, tensors: Collection[str] | None = None) -> Ranges:
        """Observed ranges of the model's float tensors (`tensors` alone, when given) over the
        calibration samples, timed as (part of) the `calibrate` stage."""
        from quantcli.calibration.collect import collect_ranges
        from quantcli.calibration.data import measure_samples

        t = time.perf_counter()
        total = len(self.split.calib)
        progress = self.progress

        def report_progress(group: int, groups: int, done: int) -> None:
            label = "calibrating" + (f" (pass {group + 1} of {groups})" if groups > 1 else "")
            progress(label, done, total)

        ranges = collect_ranges(
            self.model,
            self.samples(self.split.calib),
            calibration,
            progress=report_progress if progress else None,
            sample_shapes=measure_samples(
                self.split.calib, self.specs
            ),  # from the headers, before any is read
            tensors=tensors,
        )
        self.seconds["calibrate"] = self.seconds.get("calibrate", 0.0) + time.perf_counter() - t
        if self.calibrated is not None:
            self.calibrated()
        return ranges

    @cached_property
    def nonfinite(self) -> dict[str, tuple[int, int]]:
        """The model's float initializers holding NaN or inf (quantize/nonfinite.py), read once:
        every value of every weight is looked at."""
        from quantcli.quantize.nonfinite import nonfinite_initializers

        return nonfinite_initializers(self.model)

    def memo(self) -> dict:
        """A new memo for plans of this model (static.plan_static), the non-finite scan in it."""
        from quantcli.quantize.static import NONFINITE

        return {NONFINITE: self.nonfinite}

    def progress_of(self, label: str) -> Callable[[int, int], None] | None:
        progress = self.progress
        return (lambda done, total: progress(label, done, total)) if progress else None


@dataclass
class Planned:
    """A planner's result: the plan, and what the search and the speed plan found on the way."""

    plan: QuantPlan
    search: SearchResult | None = None
    speed: SpeedPlan | None = None


def _no_warnings(plan: QuantPlan) -> list[str]:
    return []


def _no_hint(plan: QuantPlan) -> str:
    return ""


def _no_rows(result: Any) -> list[tuple[str, str]]:
    return []


@dataclass(frozen=True)
class Mode:
    """One mode of `quantcli convert --mode`."""

    name: str
    label: str  # the report's "compute nodes: N of M <label>"
    precisions: tuple[str, ...]  # the node precisions its rewriter acts on (a plan's others are refused)
    # the mode-specific ConvertOptions it reads, in --help order; given with another mode they are refused
    options: tuple[str, ...]
    plan: Callable[[PlanJob], Planned]
    rewrite: Callable[[onnx.ModelProto, QuantPlan], onnx.ModelProto]  # in place on the pipeline's copy
    calibration: str = "none"  # "required", "optional" (used when given) or "none"
    # element types preprocessing computes in float32 (preprocess/float32.py); None: its default
    float32_from: tuple[int, ...] | None = None
    integer_kernels: bool = False  # runs onnxruntime's integer kernels: saturation check, target-CPU metadata
    quantizes_activations: bool = False  # activation type and bias corrections in the report
    measures_weight_bytes: bool = False  # MatMul/Gemm weight bytes before and after in the report
    warnings: Callable[[QuantPlan], list[str]] = _no_warnings  # about how the result runs
    overflow_hint: Callable[[QuantPlan], str] = _no_hint  # added to an inf/NaN output's warning
    report_rows: Callable[[Any], list[tuple[str, str]]] = _no_rows  # rows of its own (ConvertResult)

    def reads(self, option: str) -> bool:
        return option in self.options


_REGISTRY: dict[str, Mode] = {}
DEFAULT_MODE = "static"


def register(mode: Mode) -> Mode:
    """Add a mode (or replace the one of its name)."""
    _REGISTRY[mode.name] = mode
    return mode


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> Mode:
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    """The modes, in the order `--mode` lists them."""
    return tuple(_REGISTRY)


def readers(option: str) -> tuple[str, ...]:
    """The modes that read a mode-specific option (empty for an option every mode reads)."""
    return tuple(m.name for m in _REGISTRY.values() if m.reads(option))


def mode_options() -> dict[str, tuple[str, ...]]:
    """Every mode-specific option, and the modes that read it."""
    options = dict.fromkeys(o for m in _REGISTRY.values() for o in m.options)
    return {o: readers(o) for o in options}


def as_inputs_of(
    model: onnx.ModelProto, samples: Iterator[dict[str, np.ndarray]]
) -> Iterator[dict[str, np.ndarray]]:
    """Samples in the float types of the preprocessed model's inputs: under --integer-io a
    float16/float64 model's inputs are float32 from preprocessing on (preprocess/float32.py)."""
    from quantcli.calibration.data import InputSpec

    types = {s.name: s.dtype for s in InputSpec.from_model(model)}
    for feeds in samples:
        yield {
            k: v.astype(types[k]) if v.dtype.kind == "f" and types.get(k, v.dtype) != v.dtype else v
            for k, v in feeds.items()
        }


# --- static and mixed: calibrate, keep float what the target runs slower in integer, then plan ---


def _calibration(job: PlanJob) -> CalibrationConfig:
    config = job.config
    return replace(
        job.options.calibration, symmetric=config.symmetric_activations, levels=2**config.activation_type.bits
    )


def _speed_plan(job: PlanJob, ranges: Ranges) -> tuple[SpeedPlan | None, dict[str, str], dict]:
    """The speed plan (when asked) made on the calibrated `ranges`, the nodes kept float around
    which the accuracy plan is made, and the weight parameters the plans made so far share."""
    from quantcli.quantize.static import plan_static

    options, config = job.options, job.config
    memo = job.memo()  # weight parameters shared by the plans made of this model
    excluded, speed = job.excluded, None
    if options.speed_plan:  # the float nodes for speed, then the accuracy plan around them
        from quantcli.quantize.speed import plan_speed, read_table

        t = time.perf_counter()
        given = None if options.cost_table is None else read_table(options.cost_table, config.target_cpu)
        speed = plan_speed(
            job.model, plan_static(job.model, ranges, config, keep_float=excluded, memo=memo), given
        )
        if options.fp16_nodes:  # mixed: what the user names comes first
            from quantcli.quantize.mixed import match_patterns

            speed = speed.without(match_patterns(job.model, options.fp16_nodes))
        excluded = {**speed.keep_float, **excluded}
        job.seconds["speed_plan"] = time.perf_counter() - t
    return speed, excluded, memo


def _plan_static(job: PlanJob) -> Planned:
    """Calibrate the tensors a static plan may read (static.tensors_to_observe) and plan; when a
    plan asked for a range left unobserved all the same, observe those too and plan again."""
    from quantcli.quantize.static import tensors_to_observe

    calibration = _calibration(job)
    observe = tensors_to_observe(job.model, job.config, keep_float=job.excluded, nonfinite=job.nonfinite)
    ranges = job.calibrate(calibration, observe)
    while True:
        planned = _plan_static_on(job, ranges)
        if not ranges.wanted:
            return planned
        ranges = ranges.with_observed(job.calibrate(calibration, ranges.wanted))


def _plan_static_on(job: PlanJob, ranges: Ranges) -> Planned:
    from quantcli.quantize.static import plan_static

    speed, excluded, memo = _speed_plan(job, ranges)
    if job.options.fallback is None:
        t = time.perf_counter()
        plan = plan_static(job.model, ranges, job.config, keep_float=excluded, memo=memo)
        job.seconds["plan"] = time.perf_counter() - t
        return Planned(plan, speed=speed)
    t = time.perf_counter()
    plan, search = _search(job, ranges, excluded)
    job.seconds["search"] = time.perf_counter() - t
    return Planned(plan, search=search, speed=speed)


def _search(job: PlanJob, ranges: Ranges, excluded: dict[str, str]) -> tuple[QuantPlan, SearchResult]:
    """--fallback: the static plan with the fewest nodes in the fallback precision that meets the
    accuracy thresholds on the evaluation samples (quantize/fallback.py)."""
    from quantcli.calibration.data import iter_samples
    from quantcli.quantize.fallback import (
        PER_LAYER_SAMPLES,
        SENSITIVITY_SAMPLES,
        TRIED_ALONE,
        CachedOutputs,
        rank,
        rewrite,
        search,
        target_session,
    )
    from quantcli.runtime import make_session
    from quantcli.text import count
    from quantcli.verify import Agreement, compare_sessions

    options, model, split = job.options, job.model, job.split
    reference = CachedOutputs(make_session(job.reference_model, lean=True))
    memo = job.memo()  # weight parameters, shared by every plan of the search

    def measure(plan: QuantPlan) -> Agreement:
        candidate = target_session(rewrite(model, plan), plan.config)
        return compare_sessions(
            reference,
            candidate,
            iter_samples(split.eval, job.specs, options.calib_preprocess),
            split.eval_labels,
        )

    refs = split.calib[:SENSITIVITY_SAMPLES]

    def rank_candidates() -> list:
        return rank(
            model,
            ranges,
            job.config,
            job.samples(refs),
            precision=options.fallback,
            keep_float=excluded,
            tried=TRIED_ALONE,
            memory_budget_bytes=options.calibration.memory_budget_bytes,
            progress=job.progress_of(f"ranking nodes on {count(len(refs), 'sample')}"),
            memo=memo,
            per_layer_samples=PER_LAYER_SAMPLES,
        )

    return search(
        model,
        ranges,
        job.config,
        precision=options.fallback,
        thresholds=options.thresholds,
        measure=measure,
        rank_candidates=rank_candidates,
        keep_float=excluded,
        max_fallback=options.max_fallback,
        progress=job.progress,
        memo=memo,
    )


def _plan_mixed(job: PlanJob) -> Planned:
    """The static plan with the named and the most INT8-sensitive nodes in FP16, the excluded ones in float."""
    from quantcli.quantize.fallback import SENSITIVITY_SAMPLES
    from quantcli.quantize.mixed import candidate_count, match_patterns, node_sensitivity, plan_mixed
    from quantcli.text import count

    # its float16 nodes are chosen by the ranges of every float tensor: all are observed
    ranges = job.calibrate(_calibration(job))
    speed, excluded, _ = _speed_plan(job, ranges)
    t = time.perf_counter()
    options, model = job.options, job.model
    named = match_patterns(model, options.fp16_nodes)
    sensitivity: dict[str, tuple[float, float]] = {}
    if options.fp16_count:
        refs = job.split.calib[:SENSITIVITY_SAMPLES]
        sensitivity = node_sensitivity(
            model,
            ranges,
            job.config,
            job.samples(refs),
            candidates=candidate_count(options.fp16_count),
            memory_budget_bytes=options.calibration.memory_budget_bytes,
            keep_float=excluded,
            progress=job.progress_of(f"measuring per-node INT8 error on {count(len(refs), 'sample')}"),
        )
    plan = plan_mixed(
        model,
        ranges,
        job.config,
        named=named,
        sensitivity=sensitivity,
        count=options.fp16_count,
        keep_float=excluded,
    )
    job.seconds["sensitivity"] = time.perf_counter() - t
    return Planned(plan, speed=speed)


def _rewrite_qdq(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    from quantcli.quantize.qdq import rewrite_qdq

    return rewrite_qdq(model, plan, in_place=True)


def _rewrite_mixed(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    from quantcli.quantize.mixed import rewrite_mixed

    return rewrite_mixed(model, plan)


def _static_warnings(plan: QuantPlan) -> list[str]:
    if plan.config.activation_type.bits != 16:
        return []
    return [
        "16-bit activations are an accuracy option, not a speed one: onnxruntime has no 16-bit "
        "integer kernels and runs each quantized op as DequantizeLinear -> float op -> QuantizeLinear"
    ]


def _mixed_rows(r: Any) -> list[tuple[str, str]]:
    from quantcli.graph import COMPUTE_OPS
    from quantcli.quantize.plan import FP16, INT8

    total = r.compute_counts()["total"]
    chosen = [n for n in r.nodes if n.precision == FP16]
    int8 = sum(n.precision == INT8 and n.op_type in COMPUTE_OPS for n in r.nodes)
    return [
        ("int8 compute", f"{int8} of {total} compute nodes"),
        ("fp16 nodes", f"{len(chosen)}" + (":" if chosen else "")),
        *((f"  {n.name}", f"{n.op_type}: {n.reason}") for n in chosen),
    ]


# --- the modes without calibration ---


def _plan_dynamic(job: PlanJob) -> Planned:
    from quantcli.quantize.dynamic import plan_dynamic

    return Planned(plan_dynamic(job.model, job.config))


def _rewrite_dynamic(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    from quantcli.quantize.dynamic import rewrite_dynamic

    return rewrite_dynamic(model, plan, in_place=True)


def _plan_weights_int8(job: PlanJob) -> Planned:
    from quantcli.quantize.weights import plan_weights_int8

    return Planned(plan_weights_int8(job.model, job.config))


def _plan_weights_int4(job: PlanJob) -> Planned:
    from quantcli.quantize.int4 import plan_weights_int4

    return Planned(plan_weights_int4(job.model, job.config))


def _rewrite_int4(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    from quantcli.quantize.int4 import rewrite_int4
    from quantcli.quantize.qdq import rewrite_qdq

    return rewrite_qdq(rewrite_int4(model, plan, in_place=True), plan, in_place=True)


# --- float16 and bfloat16 ---


def _plan_fp16(job: PlanJob) -> Planned:
    from quantcli.calibration.ranges import CalibMethod
    from quantcli.quantize.fp16 import plan_fp16
    from quantcli.quantize.plan import QuantPlan

    ranges = None
    if job.split.calib:  # observed ranges protect activations that would overflow float16
        ranges = job.calibrate(replace(job.options.calibration, method=CalibMethod.MINMAX, symmetric=False))
    nodes = plan_fp16(job.model, ranges.ranges if ranges else None)
    config = replace(job.config, calib_method="minmax")
    return Planned(QuantPlan("fp16", config, nodes, {}, ranges.samples if ranges else 0))


def _rewrite_fp16(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    from quantcli.quantize.fp16_rewrite import rewrite_fp16

    return rewrite_fp16(model, plan.nodes, keep_io_types=plan.config.keep_io_types, in_place=True)


def _fp16_warnings(plan: QuantPlan) -> list[str]:
    from quantcli.quantize.plan import FP16

    if plan.calibration_samples or not any(n.precision == FP16 for n in plan.nodes):
        return []
    return [
        "activations were not checked for float16 overflow (|x| > 65504): pass --calib to keep "
        "the nodes of overflowing activations in float32"
    ]


def _fp16_overflow_hint(plan: QuantPlan) -> str:
    if not plan.calibration_samples:
        return "; an activation overflows float16: pass --calib so that overflowing activations stay float32"
    return "; an activation outside the calibrated range overflows float16: calibrate on more representative samples"


def _plan_bf16(job: PlanJob) -> Planned:
    from quantcli.quantize.bf16 import plan_bf16
    from quantcli.quantize.plan import QuantPlan

    return Planned(QuantPlan("bf16", job.config, plan_bf16(job.model), {}, 0))


def _rewrite_bf16(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    from quantcli.quantize.bf16 import rewrite_bf16

    return rewrite_bf16(model, plan.nodes, in_place=True)


def _stored_weight_rows(dtype: str) -> Callable[[Any], list[tuple[str, str]]]:
    def rows(r: Any) -> list[tuple[str, str]]:
        total = r.compute_counts()["total"]
        return [
            (
                "weights",
                f"{r.stored_weight_nodes()} of {total} compute nodes read {dtype}-stored weights through a Cast to float32",
            )
        ]

    return rows


# Options of the integer weight modes and of the calibrated ones.
_WEIGHTS = ("per_channel", "reduce_range", "weight_calibration")
_CALIBRATED = ("calib_method", "percentile", "calib_bins", "calib_memory")
_STATIC = (
    *_WEIGHTS,
    *_CALIBRATED,
    "activation_type",
    "bias_correction",
    "target_cpu",
    "exclude_nodes",
    "exclude_op_types",
    "speed_plan",
    "cost_table",
)
_DOUBLE = (11,)  # onnx.TensorProto.DOUBLE: fp16/bf16 convert float32 values; float16 is theirs to leave

register(
    Mode(
        "static",
        "in INT8",
        ("int8", "float"),
        (*_STATIC, "fallback", "max_fallback", "keep_best", "integer_io"),
        _plan_static,
        _rewrite_qdq,
        calibration="required",
        integer_kernels=True,
        quantizes_activations=True,
        warnings=_static_warnings,
    )
)
register(
    Mode(
        "dynamic",
        "in INT8 (activations quantized at run time)",
        ("int8", "float"),
        (*_WEIGHTS, "dynamic_op_types", "target_cpu"),
        _plan_dynamic,
        _rewrite_dynamic,
        integer_kernels=True,
    )
)
register(
    Mode(
        "weights-int8",
        "with INT8 weights (float compute)",
        ("int8", "float"),
        _WEIGHTS,
        _plan_weights_int8,
        _rewrite_qdq,
    )
)
register(
    Mode(
        "weights-int4",
        "with INT4 weights (MatMulNBits, float compute)",
        ("int4", "int8", "float"),  # int8: embedding tables stored per row
        ("block_size", "weight_symmetric", "int4_compute"),
        _plan_weights_int4,
        _rewrite_int4,
        measures_weight_bytes=True,
    )
)
register(
    Mode(
        "fp16",
        "in FP16",
        ("fp16", "float"),
        ("keep_io_types", "calib_memory"),  # min/max only: overflow is about the extremes
        _plan_fp16,
        _rewrite_fp16,
        calibration="optional",
        float32_from=_DOUBLE,
        warnings=_fp16_warnings,
        overflow_hint=_fp16_overflow_hint,
        report_rows=_stored_weight_rows("float16"),
    )
)
register(
    Mode(
        "bf16",
        "in BF16",
        ("float",),
        (),
        _plan_bf16,
        _rewrite_bf16,
        float32_from=_DOUBLE,
        report_rows=_stored_weight_rows("bfloat16"),
    )
)
register(
    Mode(
        "mixed",
        "in INT8 or FP16",
        ("int8", "fp16", "float"),
        (*_STATIC, "fp16_nodes", "fp16_count"),
        _plan_mixed,
        _rewrite_mixed,
        calibration="required",
        integer_kernels=True,
        quantizes_activations=True,
        warnings=_static_warnings,
        report_rows=_mixed_rows,
    )
)
