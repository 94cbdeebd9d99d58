"""The Python API the CLI calls: convert() runs load -> preprocess -> calibrate -> plan -> rewrite -> verify."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

import onnx

from quantcli.calibration.collect import CalibrationConfig
from quantcli.calibration.data import LAYOUTS, InputSpec, SampleSplit, iter_samples, split_samples
from quantcli.calibration.images import ImagePreprocess
from quantcli.calibration.ranges import CalibMethod
from quantcli.cpu import DEFAULT_TARGET, HOST, TARGETS, host_target
from quantcli.errors import (
    BadDataError,
    BadModelError,
    ExitCode,
    InternalError,
    Notice,
    QuantcliError,
    UnsupportedModelError,
    UsageError,
)
from quantcli.graph import COMPUTE_OPS, set_metadata
from quantcli.io_match import IOQuantization
from quantcli.io_match import io_quantization as read_io_quantization
from quantcli.kernel_check import KernelCheck, Saturation, kernel_check, mismatch_warning, saturation_warning
from quantcli.latency import BUDGET_MIN_ROUNDS, Latency, OpTime
from quantcli.model_io import (
    LARGE_MODEL_BYTES,
    check_model_path,
    check_outputs,
    external_data_files,
    load_valid_model,
    same_file,
    staged_model,
)
from quantcli.preprocess import preprocess
from quantcli.preprocess.float32 import LIFTED, ComputeInFloat32
from quantcli.preprocess.initializer_inputs import overridable_initializers
from quantcli.quantize import BLOCK_SIZES, DEFAULT_BLOCK_SIZE, FP16_COUNT, modes
from quantcli.quantize.already import half_compute_nodes, input_kind, refusal
from quantcli.quantize.dynamic import OP_TYPES as DYNAMIC_OP_TYPES
from quantcli.quantize.fallback import PRECISIONS as FALLBACK_PRECISIONS
from quantcli.quantize.fallback import SearchResult, excluded_nodes
from quantcli.quantize.int4 import matmul_weight_bytes
from quantcli.quantize.modes import DEFAULT_MODE, Mode, PlanJob
from quantcli.quantize.nonfinite import keep_float as keep_nonfinite_float
from quantcli.quantize.nonfinite import nonfinite_initializers
from quantcli.quantize.nonfinite import warnings as nonfinite_warnings
from quantcli.quantize.params import QType
from quantcli.quantize.plan import FLOAT, NodePlan, QuantConfig, QuantPlan
from quantcli.quantize.plan_check import check_plan
from quantcli.quantize.speed import SpeedPlan
from quantcli.runtime import make_session, release_freed_memory
from quantcli.text import count
from quantcli.thresholds import Check, Thresholds, evaluate
from quantcli.verify import (
    OVERLAP_BYTES,
    Agreement,
    ReferenceRecording,
    checker_error,
    compare_sessions,
    exact_kernel_model,
    nonfinite_notices,
    requantized_by_onnxruntime,
)


@dataclass(frozen=True)
class ConvertOptions:
    """Everything `quantcli convert` accepts, as keyword-only fields."""

    model: Path
    output: Path
    mode: str | None = None  # static, or the plan's mode with --plan
    calib: Path | None = None
    calib_samples: int = 200
    eval: Path | None = None
    eval_samples: int | None = None
    per_channel: bool = True
    activation_type: QType = QType.UINT8
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    calib_layout: str = "auto"
    weight_calibration: str = "minmax"
    reduce_range: bool = False
    target_cpu: str = DEFAULT_TARGET  # the CPU kind the model is made for (cpu.TARGETS)
    dynamic_op_types: tuple[str, ...] = ("MatMul", "Gemm")
    calib_preprocess: ImagePreprocess | None = None
    keep_io_types: bool = True
    # time the result against FP32 on this CPU and say where the time goes when it is slower:
    # None (default) where it takes a few seconds at most, True always, False never
    check_latency: bool | None = None
    latency_threads: int = 1
    save_plan: Path | None = None
    plan: Path | None = None
    fp16_nodes: tuple[str, ...] = ()  # mixed: node name patterns to run in FP16
    fp16_count: int = FP16_COUNT  # mixed: how many of the most INT8-sensitive nodes run in FP16
    block_size: int = DEFAULT_BLOCK_SIZE  # weights-int4
    weight_symmetric: bool = False  # weights-int4
    int4_compute: str = "float"  # weights-int4: float, or int8 (MatMulNBits accuracy_level 4)
    bias_correction: bool = True  # static/mixed: INT32 biases cancel the INT8 weights' mean shift
    integer_io: bool = False
    # Bounds on the evaluation's figures (compare's flags): missed ones make the exit code 1.
    thresholds: Thresholds = field(default_factory=Thresholds)
    # static: meet the accuracy thresholds by moving the most sensitive nodes to this precision
    # (quantize/fallback.py): one of fallback.PRECISIONS; unreachable is exit 3
    fallback: str | None = None
    max_fallback: str | int | None = None  # at most N candidates, or "P%" of them
    keep_best: bool = False  # write the most accurate model even when the thresholds are unreachable
    exclude_nodes: tuple[str, ...] = ()  # static/mixed: shell patterns on node names kept float
    exclude_op_types: tuple[str, ...] = ()  # static/mixed: op types kept float
    # static/mixed: keep in float the nodes the target's cost table says run slower in integer
    # (quantize/speed.py); `cost_table`: one the user measured (quantcli measure-costs), in place
    # of the shipped table of its kind
    speed_plan: bool = True
    cost_table: Path | None = None

    def __post_init__(self) -> None:
        self._coerce()
        check_model_path(self.model)  # a missing model is the first thing to say, before option errors
        if self.block_size not in BLOCK_SIZES:
            raise UsageError(f"--block-size {self.block_size}: not one of {', '.join(map(str, BLOCK_SIZES))}")
        if self.integer_io and self.mode is not None and not modes.get(self.mode).reads("integer_io"):
            raise UsageError(
                f"--integer-io needs {_modes_text(modes.readers('integer_io'))} (quantized inputs/outputs), "
                f"not --mode {self.mode}"
            )
        if self.calib_samples < 1:
            raise UsageError(f"--calib-samples {self.calib_samples}: must be at least 1")
        if self.eval_samples is not None and self.eval_samples < 1:
            raise UsageError(f"--eval-samples {self.eval_samples}: must be at least 1")
        mode = self.mode or DEFAULT_MODE
        if modes.get(mode).calibration == "required" and self.calib is None and self.plan is None:
            raise UsageError(f"--mode {mode} needs calibration data: pass --calib DIR (or --plan FILE)")
        if self.fp16_count < 0:
            raise UsageError(f"--fp16-count {self.fp16_count}: must be 0 or more")
        self._check_mode_options()
        self._check_fallback()
        if self.cost_table is not None:
            if not self.speed_plan:
                raise UsageError("--cost-table prices the speed plan: drop --no-speed-plan or the table")
            if self.plan is None:  # a replay is refused below, with the other new-plan options
                from quantcli.quantize.speed import read_table

                read_table(self.cost_table, self.target_cpu)  # a bad file or kind: said before any work

    def _check_fallback(self) -> None:
        """--fallback searches for a plan meeting accuracy bounds: it needs one; its own options need it."""
        from quantcli.quantize.fallback import accuracy_bounds, check_limit

        if self.fallback is None:
            for option in ("max_fallback", "keep_best"):
                if _given(self, option):
                    raise UsageError(f"{_flag(option)} applies to --fallback only")
            return
        if not any(bounds for _, bounds in accuracy_bounds(self.thresholds).items()):
            raise UsageError(
                f"--fallback {self.fallback} needs an accuracy threshold to meet: --min-cosine, "
                "--min-sqnr, --min-top1-agreement, --max-abs-error or --max-accuracy-drop"
            )
        check_limit(self.max_fallback)

    def _coerce(self) -> None:
        """The Python API takes what the CLI takes: paths as str or os.PathLike, enums by their
        names, lists as comma-separated text; a wrong value is a UsageError naming the option."""
        put = partial(object.__setattr__, self)
        for name in ("model", "output", "save_plan", "plan", "cost_table"):
            value = getattr(self, name)
            if value is not None:
                put(name, _path(value, name))
        for name in ("calib", "eval"):  # a directory, or samples in memory (calibration/data.py)
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):
                put(name, Path(value))
        put("mode", None if self.mode is None else _choice(self.mode, "mode", modes.names()))
        put("activation_type", QType(_choice(self.activation_type, "activation_type", _ACTIVATION_TYPES)))
        put("target_cpu", _choice(self.target_cpu, "target_cpu", (*TARGETS, HOST)))
        if self.target_cpu == HOST:  # this CPU's kind, from here on (cpu.host_target)
            put("target_cpu", host_target())
        put("weight_calibration", _choice(self.weight_calibration, "weight_calibration", ("minmax", "mse")))
        put("calib_layout", _choice(self.calib_layout, "calib_layout", LAYOUTS))
        put("int4_compute", _choice(self.int4_compute, "int4_compute", ("float", "int8")))
        put("dynamic_op_types", _names(self.dynamic_op_types, "dynamic_op_types", DYNAMIC_OP_TYPES))
        put("fp16_nodes", _names(self.fp16_nodes, "fp16_nodes"))
        put("exclude_nodes", _names(self.exclude_nodes, "exclude_nodes"))
        put("exclude_op_types", _names(self.exclude_op_types, "exclude_op_types"))
        if self.fallback is not None:
            put("fallback", _choice(self.fallback, "fallback", FALLBACK_PRECISIONS))
        if isinstance(self.calib_preprocess, str):
            put("calib_preprocess", ImagePreprocess.parse(self.calib_preprocess))
        try:
            put("block_size", int(self.block_size))
        except (TypeError, ValueError):
            raise UsageError(f"--block-size {self.block_size}: not a number") from None
        method = self.calibration.method
        if not isinstance(method, CalibMethod):
            method = CalibMethod(_choice(method, "calib_method", tuple(m.value for m in CalibMethod)))
            put("calibration", replace(self.calibration, method=method))

    def _check_mode_options(self) -> None:
        """A mode-specific option given with another mode would silently change nothing: refuse it.
        Without --mode a plan's mode decides (checked once the plan is read), or the mode is static."""
        mode = self.mode or (DEFAULT_MODE if self.plan is None else None)
        if mode is not None:
            for option, readers in _mode_options().items():
                if _given(self, option) and mode not in readers:
                    raise UsageError(
                        f"{_flag(option)} applies to {_modes_text(readers)} only, not --mode {mode}"
                    )
        method = self.calibration.method
        if _given(self, "percentile") and method is not CalibMethod.PERCENTILE:
            raise UsageError(f"--percentile applies to --calib-method percentile only, not {method.value}")
        if _given(self, "calib_bins") and method is CalibMethod.MINMAX:
            raise UsageError(
                "--calib-bins applies to the histogram methods (entropy, percentile, mse), not minmax"
            )

    def check_plan_options(self, plan: QuantPlan) -> None:
        """A replayed plan fixes every decision: an option that contradicts it, or that only
        shapes a new plan (calibration, sensitivity), would be silently ignored: refuse it."""
        if self.mode is not None and self.mode != plan.mode:
            raise UsageError(
                f"--mode {self.mode} contradicts the plan {self.plan}, made for --mode {plan.mode}"
            )
        for option, readers in _mode_options().items():
            if _given(self, option) and plan.mode not in readers:
                raise UsageError(
                    f"{_flag(option)} applies to {_modes_text(readers)} only; the plan {self.plan} is --mode {plan.mode}"
                )
        for option in _PLAN_FIXED:
            value, planned = _value(self, option), getattr(plan.config, option)
            if _given(self, option) and value != planned:
                raise UsageError(
                    f"{_as_given(option, value)} contradicts the plan {self.plan}, {_made_with(option, planned)}"
                )
        for option in _NEW_PLAN_ONLY:
            if _given(self, option):
                raise UsageError(
                    f"{_flag(option)} shapes a new plan; the plan {self.plan} is replayed as it is: drop the option or make a new plan"
                )


def _path(value: object, option: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise UsageError(f"{_flag(option)}: expected a path (str or os.PathLike), not {type(value).__name__}")
    return Path(value)


def _choice(value: object, option: str, choices: tuple[str, ...]) -> str:
    """An enum member or its name, checked against the option's choices."""
    text = value.value if isinstance(value, Enum) else value
    if text not in choices:
        raise UsageError(f"{_flag(option)} {text}: not one of {', '.join(choices)}")
    return text


def _names(value: object, option: str, choices: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """A tuple of names from a comma-separated string or any iterable of strings."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(n).strip() for n in items if str(n).strip())
    unknown = [n for n in names if choices is not None and n not in choices]
    if unknown or (choices is not None and not names):
        raise UsageError(f"{_flag(option)} {','.join(names)}: choose from {', '.join(choices)}")
    return names


_ACTIVATION_TYPES = ("uint8", "int8", "int16")


def _value(options: ConvertOptions, option: str) -> object:
    """A field of the options, or of their CalibrationConfig for the calibration options."""
    if option in _CALIBRATION_FIELDS:
        return getattr(options.calibration, _CALIBRATION_FIELDS[option])
    if option == "per_channel":
        return options.per_channel
    return getattr(options, option)


def _default(option: str) -> object:
    if option in _CALIBRATION_FIELDS:
        return CalibrationConfig.__dataclass_fields__[_CALIBRATION_FIELDS[option]].default
    f = ConvertOptions.__dataclass_fields__[option]
    return f.default


def _given(options: ConvertOptions, option: str) -> bool:
    """Whether an option differs from its default (passing the default changes nothing either way)."""
    return _value(options, option) != _default(option)


def _flag(option: str) -> str:
    return _FLAGS.get(option, "--" + option.replace("_", "-"))


def _as_given(option: str, value: object) -> str:
    """An option's value as the flag that gives it: `--activation-type int8`, `--per-tensor`."""
    if isinstance(value, bool):
        return _flag(option)
    if isinstance(value, tuple):
        value = ",".join(value)
    return f"{_flag(option)} {value.value if isinstance(value, Enum) else value}"


def _made_with(option: str, value: object) -> str:
    """How a plan's config value reads: `made with --activation-type uint8`, `made without --per-tensor`."""
    if isinstance(value, bool):
        return f"made {'without' if value == _default(option) else 'with'} {_flag(option)}"
    return f"made with {_as_given(option, value)}"


def _mode_options() -> dict[str, tuple[str, ...]]:
    """Options only some modes read, and those modes (their declarations, quantize/modes.py): given
    with another mode they would change nothing. --integer-io is checked on its own, first."""
    return {o: m for o, m in modes.mode_options().items() if o != "integer_io"}


def _modes_text(names: tuple[str, ...]) -> str:
    return " or ".join(f"--mode {m}" for m in names)


# Options a replayed plan records (QuantConfig's fields, of the same names): allowed when they agree with it.
_PLAN_FIXED = tuple(f.name for f in fields(QuantConfig))
# Options that only shape a new plan: a replay reads none of them.
_NEW_PLAN_ONLY = (
    "fp16_nodes",
    "fp16_count",
    "percentile",
    "calib_bins",
    "calib_memory",
    "calib_samples",
    "fallback",
    "max_fallback",
    "keep_best",
    "exclude_nodes",
    "exclude_op_types",
    "speed_plan",
    "cost_table",
)
_CALIBRATION_FIELDS = {
    "calib_method": "method",
    "percentile": "percentile",
    "calib_bins": "bins",
    "calib_memory": "memory_budget_bytes",
}
_FLAGS = {
    "weight_symmetric": "--weight-symmetric",
    "keep_io_types": "--no-keep-io-types",
    "bias_correction": "--no-bias-correction",
    "speed_plan": "--no-speed-plan",
    "per_channel": "--per-tensor",
    "eval": "--eval",
    "model": "MODEL",
}


@dataclass
class ConvertResult:
    """The facts of one conversion; report.py renders them."""

    model: Path
    output: Path
    mode: str
    input_bytes: int
    output_bytes: int
    nodes: list[NodePlan]
    agreement: Agreement | None
    eval_source: str
    calibration_samples: int
    calib_method: str
    preprocess_applied: list[str] = field(default_factory=list)
    preprocess_notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    plan_replayed: bool = False
    warnings: list[str] = field(default_factory=list)
    latency: Latency | None = None
    latency_ops: dict[str, list[OpTime]] | None = None  # slower than FP32: where each model's time goes
    latency_skipped: str | None = None  # why the default latency check did not run
    weight_bytes: dict[str, int] | None = None  # MatMul/Gemm weights {"before", "after"} (weights-int4)
    activation_type: str | None = None  # static mode: uint8, int8 or int16
    io_quantization: dict[str, IOQuantization] = field(default_factory=dict)  # --integer-io
    bias_corrected: int | None = None  # static/mixed: INT32 biases with a bias correction
    saturation: Saturation | None = None  # static/mixed/dynamic: U8S8 weight pairs vs the int16 limit
    kernels: KernelCheck | None = None  # which integer kernels the accuracy figures came from
    checks: list[Check] = field(default_factory=list)  # the thresholds, checked on `agreement`
    input_half: dict[str, str] = field(default_factory=dict)  # compute node -> float16/bfloat16 before
    search: SearchResult | None = None  # --fallback: what the search measured and moved
    speed: SpeedPlan | None = None  # static/mixed: the nodes kept in float for speed (quantize/speed.py)
    written: bool = True  # False: --fallback could not meet the thresholds (and no --keep-best)

    @property
    def exit_code(self) -> int:
        """0; 1 when a threshold was missed (the model is written); 3 when --fallback could not meet
        them (the model is written only with --keep-best)."""
        if self.search is not None and not self.search.met:
            return int(ExitCode.CANNOT_DO)
        return int(ExitCode.THRESHOLD_NOT_MET if any(not c.passed for c in self.checks) else ExitCode.OK)

    @property
    def problem(self) -> str | None:
        """One line for stderr when --fallback could not meet the thresholds."""
        search = self.search
        if search is None or search.met:
            return None
        best = search.best()
        moved = best.moved if best is not None else 0
        limit = (
            f"all {count(len(search.candidates), 'candidate')}"
            if search.limit == len(search.candidates)
            else f"--max-fallback {search.limit} of {len(search.candidates)} candidates"
        )
        failed = "; ".join(c.message for c in (best.checks if best else []) if not c.passed)
        written = (
            "the most accurate model was written (--keep-best)"
            if self.written
            else ("no model written (--keep-best writes the most accurate one)")
        )
        return (
            f"cannot meet {', '.join(search.goal)} with --fallback {search.precision} and at most {limit}: "
            f"best with {count(moved, 'node')} moved: {failed}; {written}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The object `quantcli convert --json` prints (docs: the convert JSON fields)."""
        from quantcli.report.convert import convert_to_dict

        return convert_to_dict(self)

    @property
    def size_ratio(self) -> float:
        return self.output_bytes / self.input_bytes if self.input_bytes else 0.0

    @property
    def weight_ratio(self) -> float | None:
        """MatMul/Gemm weight bytes after / before, when they were measured."""
        w = self.weight_bytes
        return None if w is None else w["after"] / w["before"] if w["before"] else 0.0

    def compute_counts(self) -> dict[str, int]:
        """Compute nodes (Conv, ConvTranspose, Gemm, MatMul) in the mode's precision and in float
        (float32, or the half precision of the input: half_as_input)."""
        compute = [n for n in self.nodes if n.op_type in COMPUTE_OPS]
        q = sum(n.precision != FLOAT for n in compute)
        return {"quantized": q, "float": len(compute) - q, "total": len(compute)}

    def half_as_input(self) -> int:
        """Of the float compute nodes, those left in the float16/bfloat16 the input model had."""
        return sum(n.precision == FLOAT and n.name in self.input_half for n in self.nodes)

    def stored_weight_nodes(self) -> int:
        """Compute nodes that run in float32 on weights stored in a smaller float type (fp16/bf16)."""
        return sum(
            n.op_type in COMPUTE_OPS and n.precision == FLOAT and bool(n.quantized_inputs) for n in self.nodes
        )

    def float_reasons(self) -> list[tuple[str, str, list[str]]]:
        """(op_type, reason, node names) for the nodes kept in float32, largest group first."""
        groups: dict[tuple[str, str], list[str]] = {}
        for n in self.nodes:
            if n.precision == FLOAT:
                groups.setdefault((n.op_type, n.reason), []).append(n.name)
        ranked = sorted(groups.items(), key=lambda item: -len(item[1]))  # stable: graph order on ties
        return [(op, reason, names) for (op, reason), names in ranked]


def convert(
    options: ConvertOptions, *, progress: Callable[[str, int, int], None] | None = None
) -> ConvertResult:
    """Quantize `options.model` into `options.output`; raises QuantcliError subclasses on bad input."""
    with contextlib.ExitStack() as cleanup:  # what runs beside the stages stops with the conversion
        return _convert(options, progress, cleanup)


def _convert(
    options: ConvertOptions,
    progress: Callable[[str, int, int], None] | None,
    cleanup: contextlib.ExitStack,
) -> ConvertResult:
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    # Cheap checks first: a bad output path or plan is reported before a big model is read.
    check_model_path(options.model)
    # The input's external data files are inputs too: no output may replace them.
    input_files = (Path(options.model), *external_data_files(options.model))
    check_outputs({"-o": options.output, "--save-plan": options.save_plan}, list(input_files))
    if options.plan is not None and same_file(Path(options.output), Path(options.plan)):
        raise UsageError(f"{options.output}: -o is the --plan file; choose another path")
    plan = QuantPlan.load(options.plan) if options.plan is not None else None
    source = load_valid_model(options.model)
    if not source.graph.node:
        raise UnsupportedModelError(
            f"{options.model}: the graph has no nodes (its outputs are its inputs or initializers): "
            "nothing to quantize"
        )
    mode = modes.get(options.mode or (plan.mode if plan is not None else DEFAULT_MODE))
    refused = refusal(input_kind(source), mode.name)
    if refused:
        raise UnsupportedModelError(f"{options.model}: {refused}")
    input_bytes = sum(f.stat().st_size for f in input_files)

    source_value_info = {v.name for v in source.graph.value_info}
    specs = InputSpec.from_model(source)  # the samples' types: the model's own inputs
    overridable = overridable_initializers(source)
    integer_io = options.integer_io or (plan is not None and plan.config.integer_io)
    pre = preprocess(  # loaded from the file here: ours to change
        source, in_place=True, float32_from=mode.float32_from or LIFTED, float32_interface=integer_io
    )
    del source
    model = pre.model
    input_half = half_compute_nodes(model)  # compute nodes already float16/bfloat16, for the report
    if plan is not None:  # names, shapes and values the plan refers to, before any work
        check_plan(plan, model, options.plan)
    # --exclude-nodes/--exclude-op-types: a pattern that matches nothing is said before any work
    excluded = excluded_nodes(model, options.exclude_nodes, options.exclude_op_types)
    split = split_samples(
        options.calib,
        options.calib_samples,
        options.eval,
        options.eval_samples,
        layout=options.calib_layout,
        preprocess=options.calib_preprocess,
    )
    # the latency check: asked for (--check-latency, --max-latency-ratio) it runs or fails; by
    # default it runs where it costs a few seconds at most and says why where it does not
    timed = options.check_latency is not False or options.thresholds.needs_latency
    asked = options.check_latency is True or options.thresholds.needs_latency
    latency_skipped = None
    if timed and not asked and input_bytes > AUTO_LATENCY_MAX_BYTES:
        latency_skipped = (
            f"the default check skips models over {AUTO_LATENCY_MAX_BYTES >> 20} MiB (a run takes long): "
            "--check-latency times it"
        )
    elif timed and not (split.eval or split.calib):  # timed on a random sample
        from quantcli.calibration.synthetic import random_shapes

        try:  # one too large to make is said before converting
            random_shapes(specs, model=options.model, hint=_RANDOM_HINT)
        except BadDataError as exc:
            if asked:
                raise
            latency_skipped = exc.message
    seconds["preprocess"] = time.perf_counter() - t0
    gated = any(bounds for _, bounds in options.thresholds.items())
    if gated:
        options.thresholds.check_outputs(o.name for o in model.graph.output)
        if not split.eval:
            raise UsageError(
                "thresholds are checked on evaluation samples: give --eval DIR, or --calib with 2 or "
                "more samples (the last 20% are held out)"
            )

    config = QuantConfig(  # the options of the same names
        **{name: _value(options, name) for name in _PLAN_FIXED if name != "calib_method"},
        calib_method=options.calibration.method.value,
    )
    replayed = plan is not None
    reference_model, reference_warnings = Path(options.model), []
    if ComputeInFloat32.name in pre.applied and split.eval:
        reference_model, reference_warnings = _float_reference(Path(options.model), model)
    # The reference's outputs on the evaluation samples are recorded once calibration (which keeps
    # every core busy) is done, while planning and the rewrite go on (verify.ReferenceRecording).
    recording = ReferenceRecording(
        reference_model,
        lambda: iter_samples(split.eval, specs, options.calib_preprocess),
        background=bool(split.eval) and input_bytes <= OVERLAP_BYTES,
    )
    cleanup.callback(recording.close)
    search = speed = nonfinite = None
    if plan is not None:
        options.check_plan_options(plan)
    else:
        job = PlanJob(model, config, options, split, specs, excluded, reference_model, progress, seconds)
        job.calibrated = recording.start
        planned = mode.plan(job)
        nonfinite = job.nonfinite  # read once: a static planner has, for its plans
        del job  # not kept, nor the result: they hold the float model, which the rewrite and
        # verification must be able to free
        plan, search, speed = planned.plan, planned.search, planned.speed
        del planned
    recording.start()  # a mode that does not calibrate, or a replayed plan: from here
    mode = modes.get(plan.mode)  # a plan may be another mode's: --fallback fp16 makes a mixed one

    if nonfinite is None:
        nonfinite = nonfinite_initializers(model)
    if not replayed:  # a replayed plan that quantizes one was refused (plan_check.py)
        keep_nonfinite_float(plan, nonfinite)
    t = time.perf_counter()
    # a full collection costs tens of ms in a process holding many objects: big models only
    big = input_bytes > LARGE_MODEL_BYTES
    if big:  # what calibration and planning freed, before the rewrite's copies
        release_freed_memory()
    before = matmul_weight_bytes(model) if mode.measures_weight_bytes else None
    quantized = mode.rewrite(model, plan)
    weight_bytes = None if before is None else {"before": before, "after": matmul_weight_bytes(quantized)}
    applied, notes = pre.applied, pre.notes
    del model, pre
    _drop_inferred_value_info(quantized, source_value_info)
    io_quantization = {}
    if plan.config.integer_io:  # reported as recorded in the model, for callers to convert with
        io_quantization = read_io_quantization(
            {p.key: p.value for p in quantized.metadata_props}, str(options.output)
        )
    seconds["rewrite"] = time.perf_counter() - t

    t = time.perf_counter()
    saturation = None
    if mode.integer_kernels:
        from quantcli.inspect.saturation import u8s8_layers

        exact_layers = sum(p.role == "weight" and p.dtype is QType.UINT8 for p in plan.tensors.values())
        saturation = Saturation.of(plan.config.target_cpu, u8s8_layers(quantized.graph), exact_layers)
        set_metadata(quantized, TARGET_CPU_KEY, plan.config.target_cpu)
    warnings = (
        nonfinite_warnings(plan, nonfinite)
        + _warnings(mode, plan, quantized)
        + saturation_warning(saturation)
        + reference_warnings
        + _sample_warnings(plan, replayed, split)
    )
    if overridable:
        shown = ", ".join(overridable[:3]) + (
            f" and {len(overridable) - 3} more" if len(overridable) > 3 else ""
        )
        warnings.append(
            f"{shown}: initializers listed as graph inputs (defaults a caller may override) are constants "
            "in the converted model, which no longer takes them as inputs"
        )
    kernels = kernel_check(saturation)
    # Written under a temporary name beside the output, verified from there, renamed at the end:
    # a failed check or an interruption leaves nothing behind.
    with staged_model(quantized, Path(options.output), keep=input_files) as staged:
        del quantized
        problem = checker_error(str(staged.path))
        if problem and checker_error(str(options.model)):  # the input's own declarations are wrong
            raise BadModelError(
                f"{options.model}: fails onnx.checker's full check ({checker_error(str(options.model))}); "
                "fix its shapes or value_info and convert again"
            )
        if problem:
            raise InternalError(
                f"{options.model}: the quantized model fails onnx.checker ({problem}); this is a quantcli bug, please report it"
            )
        if big:  # what planning and the rewrite freed, before sessions are built
            release_freed_memory()
        reference = agreement = None
        if split.eval:  # the float reference (same numerics, less memory), its outputs recorded
            # first so that it is released before the converted model is loaded
            reference = recording.result()
        candidate = _candidate_session(staged.path, Path(options.model))
        if split.eval:
            agreement = compare_sessions(
                reference,
                candidate,
                iter_samples(split.eval, specs, options.calib_preprocess),
                split.eval_labels,
                progress=(lambda k: progress("evaluating", k, len(split.eval))) if progress else None,
            )
            if not kernels.same_as_exact:  # what VNNI/ARM CPUs compute, beside this CPU's figure
                exact = exact_kernel_model(onnx.load(str(staged.path)))
                if exact is not None:
                    kernels.exact = compare_sessions(
                        reference,
                        make_session(exact),
                        iter_samples(split.eval, specs, options.calib_preprocess),
                        split.eval_labels,
                    )
                del exact
        seconds["verify"] = time.perf_counter() - t
        warnings += _agreement_warnings(mode, plan, agreement) + mismatch_warning(agreement, kernels)
        del candidate  # the latency check makes sessions of its own
        latency = latency_ops = None
        if timed and latency_skipped is None:
            t = time.perf_counter()
            try:
                latency, latency_ops = _latency(options, reference_model, staged.path, split, specs, asked)
            except QuantcliError as exc:
                if asked:
                    raise
                latency_skipped = exc.message
            seconds["latency"] = time.perf_counter() - t
        checks = []
        if gated:  # before the rename: a bound that cannot be checked leaves nothing behind
            checks = evaluate(
                options.thresholds,
                _on_target(agreement, kernels, plan.config),
                size_ratio=staged.size / input_bytes if input_bytes else None,
                latency_ratio=latency.ratio if latency is not None else None,
            )
        if options.save_plan is not None:  # put in place with the model, or not at all
            staged.add(options.save_plan, plan.to_json().encode())
        written = search is None or search.met or options.keep_best
        staged.discard = not written  # an unreachable --fallback target: the plan only
        output_bytes = staged.size
    seconds["total"] = time.perf_counter() - t0
    return ConvertResult(
        model=Path(options.model),
        output=Path(options.output),
        mode=plan.mode,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        nodes=plan.nodes,
        agreement=agreement,
        eval_source=split.eval_source,
        calibration_samples=plan.calibration_samples,
        calib_method=plan.config.calib_method,
        preprocess_applied=applied,
        preprocess_notes=notes,
        seconds=seconds,
        plan_replayed=replayed,
        warnings=warnings,
        input_half=input_half,
        latency=latency,
        latency_ops=latency_ops,
        latency_skipped=latency_skipped,
        weight_bytes=weight_bytes,
        activation_type=plan.config.activation_type.value if mode.quantizes_activations else None,
        io_quantization=io_quantization,
        saturation=saturation,
        kernels=kernels,
        checks=checks,
        bias_corrected=sum(t.correction is not None for t in plan.tensors.values())
        if mode.quantizes_activations
        else None,
        search=search,
        speed=speed,
        written=written,
    )


def _on_target(agreement: Agreement | None, kernels: KernelCheck, config: QuantConfig) -> Agreement | None:
    """The figures the thresholds check: those of the target's kernels. A model made for VNNI/ARM
    (full-range weights) is judged on exact kernels when this CPU's saturate; otherwise this CPU
    computes what the target's do."""
    if kernels.exact is not None and not config.saturation_safe:
        return kernels.exact
    return agreement


def _float_reference(path: Path, lifted: onnx.ModelProto) -> tuple[Path | bytes, list[str]]:
    """The float model to measure a float16/float64 model's conversion against: the model itself,
    or, where onnxruntime cannot run it (no float64 Conv kernel), its float32 computation."""
    from quantcli.errors import QuantcliError

    try:
        make_session(path, lean=True)
        return path, []
    except QuantcliError as exc:
        from quantcli.model_io import serialize_model

        return serialize_model(lifted), [
            f"{path}: the accuracy figures compare with the model computed in float32 "
            f"(as it is, {str(exc)[0].lower()}{str(exc)[1:]})"
        ]


def _candidate_session(candidate: Path, source: Path):  # noqa: ANN202 - an onnxruntime session
    """The session of the converted model. When onnxruntime refuses it but loads the input model,
    the conversion broke it: a quantcli bug (exit 70), not a model that cannot be done (exit 3)."""
    try:
        return make_session(candidate)
    except UnsupportedModelError as exc:
        try:
            make_session(source, lean=True)
        except UnsupportedModelError as source_exc:
            raise UnsupportedModelError(f"{source}: {source_exc.message}") from exc
        raise InternalError(
            f"{source}: the quantized model fails to load in onnxruntime ({exc.message}) while the input "
            "model loads; this is a quantcli bug, please report it"
        ) from exc


_RANDOM_HINT = "pass --eval DIR with real samples to time --check-latency on"
LATENCY_BUDGET_S = 2.0  # the latency check's timed rounds (a median of at least BUDGET_MIN_ROUNDS)
AUTO_LATENCY_MAX_BYTES = 256 << 20  # the default check skips larger models (one run takes long)
TOP_OPS = 5  # op types a slower result names, for each model


def _latency(
    options: ConvertOptions,
    reference: Path | bytes,
    candidate_path: Path,
    split: SampleSplit,
    specs: list[InputSpec],
    asked: bool,
) -> tuple[Latency, dict[str, list[OpTime]] | None]:
    """Candidate vs FP32 (`reference`: the input model, or its float32 computation where
    onnxruntime cannot run it) latency, interleaved in this process: a median over at most about
    LATENCY_BUDGET_S of rounds, 1 thread by default. Not `asked`, a model whose one run takes
    longer than the budget allows is a QuantcliError (the check is skipped). When the candidate is
    slower, where each model's time goes (onnxruntime's profiler, per op type)."""
    from quantcli.io_match import match_io
    from quantcli.latency import measure_latency, op_times, timing_session

    threads = options.latency_threads
    sessions = (timing_session(reference, threads), timing_session(candidate_path, threads))
    io = match_io(sessions[0], sessions[1], strict=False)
    refs = split.eval or split.calib
    if refs:
        sample = next(iter_samples(refs[:1], specs, options.calib_preprocess))
    else:
        from quantcli.calibration.synthetic import random_samples

        sample = next(random_samples(specs, 1, seed=0, model=options.model, hint=_RANDOM_HINT))
    latency = measure_latency(
        reference,
        candidate_path,
        sample,
        io,
        threads=threads,
        budget_s=LATENCY_BUDGET_S,
        sessions=sessions,
        give_up_s=None if asked else LATENCY_BUDGET_S / BUDGET_MIN_ROUNDS,
    )
    del sessions
    if latency.ratio <= 1.0:
        return latency, None
    return latency, {
        "candidate": op_times(candidate_path, io.feeds(sample, "candidate"), threads=threads)[:TOP_OPS],
        "reference": op_times(reference, io.feeds(sample, "reference"), threads=threads)[:TOP_OPS],
    }


def _warnings(mode: Mode, plan: QuantPlan, quantized: onnx.ModelProto) -> list[str]:
    """What the user should know about how onnxruntime will run the result."""
    float_nodes = {n.name for n in plan.nodes if n.precision == FLOAT}
    warnings = [
        f"{name}: kept in float by the plan, but onnxruntime will quantize it per-tensor at load "
        "(WeightBiasQuantization: its input is dequantized and its output feeds a QuantizeLinear); "
        "set its neighbours to float too to keep it in float"
        for name in requantized_by_onnxruntime(quantized, float_nodes)
    ]
    return warnings + mode.warnings(plan)


MIN_CALIB_SAMPLES = 32  # below this, calibrated ranges are a guess (typical: 100-500)
MIN_EVAL_SAMPLES = 10  # below this, accuracy figures say little


def _sample_warnings(plan: QuantPlan, replayed: bool, split: SampleSplit) -> list[str]:
    """Too few samples to mean anything: calibration (when this run calibrated) and evaluation."""
    warnings = []
    n = plan.calibration_samples
    if not replayed and 0 < n < MIN_CALIB_SAMPLES:
        warnings.append(
            Notice(
                "few-calibration-samples",
                f"calibrated on {count(n, 'sample')}: ranges from fewer than {MIN_CALIB_SAMPLES} samples "
                "may miss values real inputs reach (100-500 representative samples are typical)",
            )
        )
    if 0 < len(split.eval) < MIN_EVAL_SAMPLES:
        warnings.append(
            Notice(
                "few-evaluation-samples",
                f"evaluated on {count(len(split.eval), 'sample')}: accuracy figures from fewer than "
                f"{MIN_EVAL_SAMPLES} samples say little; pass --eval DIR with more",
            )
        )
    return warnings


def _agreement_warnings(mode: Mode, plan: QuantPlan, agreement: Agreement | None) -> list[str]:
    """What the evaluation showed that the user must not miss: outputs gone inf/NaN."""
    if agreement is None:
        return []
    return nonfinite_notices(agreement, hint=mode.overflow_hint(plan))


TARGET_CPU_KEY = "quantcli.target_cpu"  # metadata_props: the CPU kind the model was made for


def _drop_inferred_value_info(model: onnx.ModelProto, keep: set[str]) -> None:
    """Drop the value_info that preprocessing inferred: onnxruntime re-infers it at load, and on a
    small model it is a visible share of the file."""
    stale = [v for v in model.graph.value_info if v.name not in keep]
    for v in stale:
        model.graph.value_info.remove(v)
