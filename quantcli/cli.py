"""The `quantcli` command line: parse, call the API, render, map errors to exit codes."""

from __future__ import annotations

import signal
import sys


class _Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that no `except Exception` swallows it."""


# Signals received. Raised inside a C extension (an import, onnxruntime), an interruption can
# come out as another exception (pybind11's "ImportError: initialization failed"): the run was
# interrupted all the same.
_RECEIVED: list[int] = []
# While C extensions import (numpy, onnx, onnxruntime), a signal is only recorded and acted on once
# they are done: an exception raised inside a module's initialisation can crash the interpreter
# (a SIGINT 0.3 s into a run once ended it with SIGSEGV instead of 130).
_DEFERRED = [True]


def _terminate(signum: int, frame: object) -> None:  # noqa: ARG001
    _RECEIVED.append(signum)
    if not _DEFERRED[0]:
        raise _Terminated()


def _interrupt(signum: int, frame: object) -> None:  # noqa: ARG001
    _RECEIVED.append(signum)
    if not _DEFERRED[0]:
        raise KeyboardInterrupt


def _exit_if_signalled(command: str, json_output: bool | None = None) -> None:
    """Exit as interrupted when a signal arrived, whatever exception it turned into."""
    if _RECEIVED:
        exc = _Terminated() if _RECEIVED[-1] == signal.SIGTERM else KeyboardInterrupt()
        _exit_interrupted(command, exc, json_output)


def _exit_interrupted(command: str, exc: BaseException, json_output: bool | None = None) -> None:
    """The one line and exit code (130 SIGINT, 143 SIGTERM) of an interrupted run, and with --json
    its JSON object on stdout (before the command's options are parsed: --json among the arguments)."""
    term = isinstance(exc, _Terminated)
    message = f"interrupted by {'SIGTERM' if term else 'SIGINT'}"
    code = 143 if term else 130
    sys.stderr.write(
        f"quantcli{' ' + command if command else ''}: interrupted{' by SIGTERM' if term else ''}\n"
    )
    if json_output is None:
        json_output = "--json" in sys.argv[1:]
    if json_output:
        import json

        obj = _error_object(command or "quantcli", code, "terminated" if term else "interrupted", message)
        sys.stdout.write(json.dumps(obj, indent=2) + "\n")
        sys.stdout.flush()
    sys.exit(code)


def _error_object(command: str, exit_code: int, code: str, message: str) -> dict:
    """The `--json` object of a failed run (docs/json.md, "The error object")."""
    from quantcli.report import SCHEMA_VERSION  # plain Python: safe before the heavy imports

    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "exit_code": int(exit_code),
        "error": {"code": code, "message": message, "exit_code": int(exit_code)},
    }


# Signals are handled from the first line on, before the imports below (a signal in the middle of
# them is an interruption like any other, not a traceback or a death by signal). A SIGINT that the
# process was started with ignored stays ignored (Python leaves it so).
if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
    signal.signal(signal.SIGTERM, _terminate)
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupt)
try:
    import traceback
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    import click

    from quantcli import __version__
    from quantcli.cpu import DEFAULT_TARGET, HOST, TABLE_KINDS, TARGETS
    from quantcli.errors import ExitCode, QuantcliError
    from quantcli.quantize import BLOCK_SIZES, DEFAULT_BLOCK_SIZE, FP16_COUNT, modes
except (KeyboardInterrupt, _Terminated) as _exc:
    _exit_interrupted("", _exc)
except Exception:
    _exit_if_signalled("")
    raise
_DEFERRED[0] = False
_exit_if_signalled("")

_PATH = click.Path(path_type=Path, dir_okay=True, file_okay=True)
_OUT = click.Path(dir_okay=True, file_okay=True)  # text: a trailing slash is still there to refuse


def _run(command: str, json_output: bool, debug: bool, body: Callable[[], int]) -> None:
    """The program with error handling: every failure below raises, and is reported here once."""
    from quantcli import report

    signal.signal(signal.SIGTERM, _terminate)
    _RECEIVED.clear()  # a run of its own (tests call the CLI many times in one process)
    _DEFERRED[0] = True  # the C extensions every command needs, imported with signals deferred
    try:
        import numpy  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    finally:
        _DEFERRED[0] = False
    _exit_if_signalled(command, json_output)
    try:
        code = body()
    except QuantcliError as exc:
        _exit_if_signalled(command, json_output)
        if debug:
            traceback.print_exc()
        _fail(command, json_output, exc.exit_code, exc.code, f"error: {exc.message}", exc.message)
    except (KeyboardInterrupt, _Terminated) as exc:
        _exit_interrupted(command, exc, json_output)
    except (SystemExit, click.exceptions.Exit):
        raise
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: short line, traceback on --debug
        _exit_if_signalled(command, json_output)
        if debug:
            traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        _fail(
            command,
            json_output,
            ExitCode.INTERNAL,
            "internal",
            f"internal error: {message} (rerun with --debug for the traceback and please report it)",
            message,
        )
    del report
    sys.exit(code)


def _fail(command: str, json_output: bool, exit_code: ExitCode, code: str, line: str, message: str) -> None:
    """Report a failure: one line on stderr, and with --json one object on stdout; then exit."""
    from quantcli import report

    prefix = "quantcli" if command == "quantcli" else f"quantcli {command}"
    report.err(f"{prefix}: {line}")  # one line: report.err escapes control characters
    if json_output:
        report.render_json(_error_object(command, exit_code, code, message))
    sys.exit(int(exit_code))


class _Program(click.Group):
    """The command group, run as a program. click's own usage errors (unknown option, bad choice,
    missing argument) are reported like every other error: one line on stderr, exit 2, and with
    --json one JSON object on stdout. A signal at any moment, parsing included, ends it with
    130/143 and one line; once the outcome is decided, late signals no longer change it."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:  # noqa: ANN401
        program = args is None  # reading sys.argv: the process is quantcli (not a CliRunner test)
        argv = list(sys.argv[1:] if args is None else args)
        json_output = "--json" in argv
        if not extra.pop("standalone_mode", True):
            return super().main(argv, prog_name, standalone_mode=False, **extra)
        try:
            code = super().main(argv, prog_name, standalone_mode=False, **extra)
        except (_Interrupted, _Terminated) as exc:
            _exit_interrupted("", exc, json_output)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # `quantcli` alone: the help text is the answer
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            command = ctx.info_name if ctx is not None and ctx.parent is not None else None
            name = f"quantcli {command}" if command else "quantcli"
            message = exc.format_message()
            line = f"error: {message} (see {name} --help)"
            _fail(command or "quantcli", json_output, ExitCode.BAD_INPUT, "usage", line, message)
        except click.exceptions.Abort:
            _exit_interrupted("", KeyboardInterrupt(), json_output)
        finally:
            if program:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    if signal.getsignal(sig) is not None:
                        signal.signal(sig, signal.SIG_IGN)
        sys.exit(code or 0)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt as exc:  # click would turn it into "Aborted!" and exit 1
            raise _Interrupted() from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted() from exc


class _Interrupted(BaseException):
    """SIGINT outside a command's body, carried past click's own KeyboardInterrupt handling."""


@click.group(cls=_Program, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quantcli")
def main() -> None:
    """Post-training quantization of ONNX models (static INT8 with QDQ)."""


class _Sectioned(click.Command):
    """A command whose --help lists its options in named sections (`sections`: title -> parameter
    names, in order); an option in no section is listed last, under "Other options"."""

    def __init__(self, *args: Any, sections: dict[str, list[str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sections = sections

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {
            p.name: p.get_help_record(ctx) for p in self.get_params(ctx) if isinstance(p, click.Option)
        }
        help_option = self.get_help_option(ctx)
        if help_option is not None:  # click's own name for it varies between versions
            records["help"] = records.pop(help_option.name, help_option.get_help_record(ctx))
        placed = {name for names in self.sections.values() for name in names}
        unknown = placed - set(records)
        if unknown:
            raise RuntimeError(f"help sections name unknown options: {sorted(unknown)}")
        sections = [*self.sections.items(), ("Other options", [n for n in records if n not in placed])]
        for title, names in sections:
            rows = [records[n] for n in names if records.get(n) is not None]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


THRESHOLD_PARAMS = [
    "min_cosine",
    "max_abs_error",
    "min_sqnr",
    "min_top1_agreement",
    "max_accuracy_drop",
    "max_size_ratio",
    "max_latency_ratio",
]
_CONVERT_SECTIONS_START: dict[str, list[str]] = {
    "Input and output": ["output", "mode", "target_cpu", "save_plan", "plan_path"],
    "Calibration (static, mixed; fp16 to keep overflowing activations in float32)": [
        "calib",
        "calib_samples",
        "calib_layout",
        "calib_preprocess",
        "calib_method",
        "percentile",
        "calib_bins",
        "calib_memory",
    ],
    "Weights and activations (static, mixed, dynamic, weights-int8)": [
        "per_tensor",
        "activation_type",
        "weight_calibration",
        "reduce_range",
        "bias_correction",
        "integer_io",
        "speed_plan",
        "cost_table",
    ],
    "Accuracy budget (static; exclusions also mixed)": [
        "fallback",
        "max_fallback",
        "keep_best",
        "exclude_nodes",
        "exclude_op_types",
    ],
}
_CONVERT_SECTIONS_END: dict[str, list[str]] = {
    "Evaluation and CI gate (exit 1 when a threshold is missed; the model is written)": [
        "eval_dir",
        "eval_samples",
        *THRESHOLD_PARAMS,
        "check_latency",
        "threads",
        "markdown",
        "junit",
    ],
    "Output": ["json_output", "quiet", "debug", "help"],
}


def _own_options(placed: set[str]) -> dict[str, list[str]]:
    """The options only one mode reads (its declaration, quantize/modes.py) and no shared section
    lists, under that mode's name."""
    own: dict[str, list[str]] = {}
    for option, readers in modes.mode_options().items():
        if len(readers) == 1 and option not in placed:
            own.setdefault(readers[0], []).append(option)
    return own


CONVERT_SECTIONS: dict[str, list[str]] = {
    **_CONVERT_SECTIONS_START,
    **_own_options({n for names in _CONVERT_SECTIONS_START.values() for n in names}),
    **_CONVERT_SECTIONS_END,
}
COMPARE_SECTIONS: dict[str, list[str]] = {
    "Data": ["data", "samples", "data_preprocess"],
    "Thresholds (exit 1 when one is missed)": THRESHOLD_PARAMS,
    "Analysis": ["per_layer", "latency", "rounds", "threads"],
    "Output": ["json_output", "markdown", "junit", "quiet", "debug", "help"],
}


class _Bound(click.ParamType):
    """A threshold: X for every output, or OUTPUT=X for one output."""

    name = "[OUTPUT=]X"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, float]:
        from quantcli.errors import UsageError
        from quantcli.thresholds import parse_bound

        if isinstance(value, tuple):
            return value
        try:
            return parse_bound(param.name.replace("_", "-") if param and param.name else "bound", value)
        except UsageError as exc:
            self.fail(exc.message, param, ctx)


_BOUND = _Bound()
# The thresholds `compare` and `convert` both take (thresholds.py): a missed one is exit 1.
_THRESHOLD_OPTIONS = [
    click.option(
        "--min-cosine",
        type=_BOUND,
        multiple=True,
        help="Exit 1 when an output's mean cosine similarity is below X (OUTPUT=X: one output; repeatable).",
    ),
    click.option(
        "--max-abs-error",
        type=_BOUND,
        multiple=True,
        help="... when an output's max absolute error is above X.",
    ),
    click.option("--min-sqnr", type=_BOUND, multiple=True, help="... when an output's SQNR is below X dB."),
    click.option(
        "--min-top1-agreement",
        type=_BOUND,
        multiple=True,
        help="... when a classifier output's top-1 agreement (a fraction) is below X.",
    ),
    click.option(
        "--max-accuracy-drop",
        type=float,
        help="... when the accuracy against labels.npy drops by more than X (a fraction: 0.01 is one point).",
    ),
    click.option("--max-size-ratio", type=float, help="... when candidate size / reference size is above X."),
    click.option(
        "--max-latency-ratio",
        type=float,
        help="... when candidate / reference median latency is above X (times both).",
    ),
]
# Where a gate's result goes besides stdout: a markdown summary and JUnit XML.
_CI_REPORT_OPTIONS = [
    click.option(
        "--markdown",
        metavar="FILE",
        help="Also write a markdown summary; '-' appends it to $GITHUB_STEP_SUMMARY.",
    ),
    click.option("--junit", type=_OUT, metavar="FILE", help="Also write JUnit XML, one test case per check."),
]


def _threshold_options(f: Callable) -> Callable:
    for option in reversed(_THRESHOLD_OPTIONS):
        f = option(f)
    return f


def _ci_report_options(f: Callable) -> Callable:
    for option in reversed(_CI_REPORT_OPTIONS):
        f = option(f)
    return f


def _thresholds(
    min_cosine: tuple[tuple[str, float], ...],
    max_abs_error: tuple[tuple[str, float], ...],
    min_sqnr: tuple[tuple[str, float], ...],
    min_top1_agreement: tuple[tuple[str, float], ...],
    max_accuracy_drop: float | None,
    max_size_ratio: float | None,
    max_latency_ratio: float | None,
):  # noqa: ANN202 - a thresholds.Thresholds, imported late like every API type here
    from quantcli.thresholds import Thresholds, per_output

    return Thresholds(
        min_cosine=per_output("min-cosine", min_cosine),
        max_abs_error=per_output("max-abs-error", max_abs_error),
        min_sqnr=per_output("min-sqnr", min_sqnr),
        min_top1_agreement=per_output("min-top1-agreement", min_top1_agreement),
        max_accuracy_drop=max_accuracy_drop,
        max_size_ratio=max_size_ratio,
        max_latency_ratio=max_latency_ratio,
    )


def _summary_target(markdown: str | None) -> tuple[Path | None, bool]:
    """--markdown FILE, or '-' for $GITHUB_STEP_SUMMARY (appended): the path and whether to append."""
    import os

    from quantcli.errors import UsageError
    from quantcli.outputs import output_path

    if markdown == "-":
        if not os.environ.get("GITHUB_STEP_SUMMARY"):
            raise UsageError("--markdown -: GITHUB_STEP_SUMMARY is not set; give a file name instead")
        return Path(os.environ["GITHUB_STEP_SUMMARY"]), True
    if markdown:
        return output_path(markdown), False
    return None, False


@main.command(cls=_Sectioned, sections=CONVERT_SECTIONS)
@click.argument("model", type=_PATH)
@click.option("-o", "--output", type=_OUT, required=True, help="Where to write the quantized model.")
@click.option(
    "--mode",
    type=click.Choice(list(modes.names())),
    show_default="static, or the plan's with --plan",
    help="static (default): INT8 weights and activations, calibrated on --calib; dynamic: INT8 MatMul/Gemm "
    "weights, activations quantized at run time; weights-int8: INT8 weights, float compute; weights-int4: "
    "INT4 MatMul/Gemm weights in blocks (onnxruntime MatMulNBits), float compute; fp16: float16 weights and "
    "compute; bf16: bfloat16 weights, float32 compute; mixed: static INT8 with the most sensitive (or "
    "--fp16-nodes) nodes in FP16.",
)
@click.option("--calib", type=_PATH, help="Directory of calibration samples (.npz/.npy, one per file).")
@click.option(
    "--calib-samples",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Use the first N calibration samples in sorted order.",
)
@click.option(
    "--eval",
    "eval_dir",
    type=_PATH,
    help="Held-out samples (+ labels.npy) for the accuracy report [default: the last 20% of --calib, not used to calibrate].",
)
@click.option("--eval-samples", type=click.IntRange(min=1), help="Use the first N evaluation samples.")
@click.option(
    "--calib-layout",
    type=click.Choice(["auto", "per-file", "batched"]),
    default="auto",
    show_default=True,
    help="per-file: one sample per .npz/.npy; batched: arrays with a leading sample axis "
    "(auto: batched when the directory holds only batch.npz).",
)
@click.option(
    "--calib-preprocess",
    metavar="SPEC",
    help="How to turn image files into model input, e.g. "
    "'resize=256,crop=224,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,layout=NCHW,scale=1/255'.",
)
@click.option(
    "--calib-method",
    type=click.Choice(["minmax", "entropy", "percentile", "mse"]),
    default="mse",
    show_default=True,
    help="How activation ranges are chosen from the calibration statistics (minmax is the fastest).",
)
@click.option(
    "--percentile",
    type=click.FloatRange(min=50.0, max=100.0, min_open=True),
    default=99.99,
    show_default=True,
    help="--calib-method percentile: the share of values kept inside the range.",
)
@click.option(
    "--calib-bins", type=click.IntRange(min=128), default=2048, show_default=True, help="Histogram bins."
)
@click.option(
    "--calib-memory",
    type=click.IntRange(min=16),
    default=256,
    show_default=True,
    help="MB of activations one calibration run may hold: fewer samples per run, then more passes over tensor groups; "
    "a sample whose inputs or largest activation exceed it is exit 2.",
)
@click.option(
    "--weight-calibration",
    type=click.Choice(["minmax", "mse"]),
    default="minmax",
    show_default=True,
    help="mse: clip each weight channel where its quantization error is smallest.",
)
@click.option(
    "--reduce-range",
    is_flag=True,
    help="7-bit weights everywhere (less accurate; the default --target-cpu any is already exact on every CPU).",
)
@click.option(
    "--target-cpu",
    type=click.Choice([*TARGETS, HOST]),
    default=DEFAULT_TARGET,
    show_default=True,
    help="CPU kind the model is made for: any/avx2 keep every INT8 weight pair within what x86 CPUs without VNNI add exactly; vnni/arm keep full-range weights; host: this CPU's kind (recorded as that kind).",
)
@click.option(
    "--dynamic-op-types",
    default="MatMul,Gemm",
    show_default=True,
    help="dynamic: comma-separated op types to quantize (MatMul, Gemm, Conv; Conv runs ConvInteger, slow on CPU).",
)
@click.option("--per-tensor", is_flag=True, help="One weight scale per tensor instead of per output channel.")
@click.option(
    "--activation-type",
    type=click.Choice(["uint8", "int8", "int16"]),
    default="uint8",
    show_default=True,
    help="uint8: asymmetric (fastest on x86); int8: symmetric, zero point 0; int16: asymmetric, with INT8 "
    "weights (A16W8): more accurate, but slower than uint8 (onnxruntime has no 16-bit kernels: float ops "
    "between Q/DQ).",
)
@click.option(
    "--keep-io-types/--no-keep-io-types",
    default=True,
    show_default=True,
    help="fp16: keep float32 model inputs and outputs (Casts at the boundary).",
)
@click.option(
    "--block-size",
    type=click.Choice([str(b) for b in BLOCK_SIZES]),
    default=str(DEFAULT_BLOCK_SIZE),
    show_default=True,
    help="weights-int4: weight values per block along K, each block with its own scale (and zero point).",
)
@click.option(
    "--weight-symmetric/--weight-asymmetric",
    default=False,
    show_default=True,
    help="weights-int4: symmetric blocks (no zero points) or asymmetric (a 4-bit zero point per block).",
)
@click.option(
    "--int4-compute",
    type=click.Choice(["float", "int8"]),
    default="float",
    show_default=True,
    help="weights-int4: float multiplies dequantized weights in float32; int8 lets onnxruntime quantize "
    "activations to INT8 at run time (MatMulNBits accuracy_level 4): faster, slightly less accurate.",
)
@click.option(
    "--bias-correction/--no-bias-correction",
    default=True,
    show_default=True,
    help="static/mixed: subtract from each INT8 Conv/Gemm bias the mean shift its INT8 weights add "
    "(measured on --calib); no cost at inference.",
)
@click.option(
    "--speed-plan/--no-speed-plan",
    default=True,
    show_default=True,
    help="static/mixed: keep in float the Conv/MatMul/Gemm nodes that the --target-cpu's shipped cost "
    "table says run slower in integer (with the Q/DQ and layout conversions each choice brings); the "
    "reason is in the plan.",
)
@click.option(
    "--cost-table",
    type=_PATH,
    help="static/mixed: a cost table measured on the CPU the model will run on (quantcli measure-costs), "
    "in place of the shipped one of its kind, for the speed plan.",
)
@click.option(
    "--integer-io",
    is_flag=True,
    help="static: the model takes and returns the quantized tensors (uint8/int8) instead of float; "
    "each one's scale and zero point are in the report and the model's metadata.",
)
@click.option(
    "--check-latency/--no-check-latency",
    default=None,
    help="Time the result against the FP32 model on this CPU (onnxruntime, interleaved, median; about 2 s "
    "of runs) and, when it is slower, say which op types take the time. By default where that takes a "
    "few seconds (not on models over 256 MiB, or whose one run takes over 0.2 s); --check-latency always.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Intra-op threads for the latency check.",
)
@click.option(
    "--fp16-nodes",
    metavar="PATTERNS",
    default="",
    help="mixed: comma-separated node names to run in FP16; shell patterns allowed ('/encoder/*/MatMul').",
)
@click.option(
    "--fp16-count",
    type=click.IntRange(min=0),
    default=FP16_COUNT,
    show_default=True,
    help="mixed: also run in FP16 the N INT8 nodes whose INT8 error, measured on the calibration samples, is largest.",
)
@click.option(
    "--fallback",
    type=click.Choice(["float", "fp16"]),
    help="static: meet the accuracy thresholds (--min-cosine, --min-top1-agreement, ...) by moving the "
    "most sensitive nodes out of INT8 to this precision, as few as needed; exit 3 when even all of "
    "them do not.",
)
@click.option(
    "--max-fallback",
    metavar="N|P%",
    help="--fallback: move at most N nodes, or P% of the INT8 nodes with arithmetic (default: all).",
)
@click.option(
    "--keep-best",
    is_flag=True,
    help="--fallback: when the thresholds cannot be met, still write the most accurate model (exit 3).",
)
@click.option(
    "--exclude-nodes",
    metavar="PATTERNS",
    default="",
    help="static/mixed: comma-separated node names to keep in float; shell patterns allowed "
    "('/encoder/*/Softmax'), as every node table prints them.",
)
@click.option(
    "--exclude-op-types",
    metavar="OPS",
    default="",
    help="static/mixed: comma-separated op types to keep in float (Softmax,Gemm).",
)
@_threshold_options
@_ci_report_options
@click.option("--save-plan", type=_OUT, help="Write the QuantPlan (every decision) as JSON.")
@click.option(
    "--plan", "plan_path", type=_PATH, help="Replay a saved or edited QuantPlan instead of calibrating."
)
@click.option("--json", "json_output", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def convert(
    model: Path,
    output: str,
    mode: str | None,
    calib: Path | None,
    calib_samples: int,
    eval_dir: Path | None,
    eval_samples: int | None,
    calib_layout: str,
    calib_preprocess: str | None,
    calib_method: str,
    percentile: float,
    calib_bins: int,
    calib_memory: int,
    weight_calibration: str,
    reduce_range: bool,
    target_cpu: str,
    dynamic_op_types: str,
    per_tensor: bool,
    activation_type: str,
    keep_io_types: bool,
    block_size: str,
    weight_symmetric: bool,
    int4_compute: str,
    bias_correction: bool,
    integer_io: bool,
    check_latency: bool | None,
    threads: int,
    fp16_nodes: str,
    fp16_count: int,
    fallback: str | None,
    max_fallback: str | None,
    keep_best: bool,
    exclude_nodes: str,
    exclude_op_types: str,
    speed_plan: bool,
    cost_table: Path | None,
    min_cosine: tuple[tuple[str, float], ...],
    max_abs_error: tuple[tuple[str, float], ...],
    min_sqnr: tuple[tuple[str, float], ...],
    min_top1_agreement: tuple[tuple[str, float], ...],
    max_accuracy_drop: float | None,
    max_size_ratio: float | None,
    max_latency_ratio: float | None,
    markdown: str | None,
    junit: str | None,
    save_plan: str | None,
    plan_path: Path | None,
    json_output: bool,
    quiet: bool,
    debug: bool,
) -> None:
    """Quantize MODEL and write the result to --output, with a size and accuracy report.

    Thresholds (--min-cosine, ...; measured on the evaluation samples) make it a CI gate: the
    model is written, and the exit code is 1 when one is missed.

    \b
    Example:
      quantcli convert model.onnx --calib calib_dir -o model_int8.onnx
    """

    def body() -> int:
        from quantcli import report
        from quantcli.api import ConvertOptions
        from quantcli.api import convert as run_convert
        from quantcli.calibration.collect import CalibrationConfig
        from quantcli.calibration.ranges import CalibMethod
        from quantcli.model_io import check_model_path, check_outputs
        from quantcli.outputs import output_path
        from quantcli.quantize.params import QType
        from quantcli.report.convert import (
            convert_to_dict,
            convert_to_junit,
            convert_to_markdown,
            render_convert,
        )

        check_model_path(model)  # a missing model is the first thing to say
        summary, append = _summary_target(markdown)
        junit_path = output_path(junit) if junit is not None else None
        plan_out = output_path(save_plan) if save_plan is not None else None
        check_outputs(
            {
                "-o": output_path(output),
                "--save-plan": plan_out,
                "--markdown": summary,
                "--junit": junit_path,
            },
            [model],
        )

        options = ConvertOptions(
            model=model,
            output=output_path(output),
            mode=mode,
            calib=calib,
            calib_samples=calib_samples,
            eval=eval_dir,
            eval_samples=eval_samples,
            per_channel=not per_tensor,
            activation_type=QType(activation_type),
            calibration=CalibrationConfig(
                method=CalibMethod(calib_method),
                bins=calib_bins,
                percentile=percentile,
                memory_budget_bytes=calib_memory * 2**20,
            ),
            calib_layout=calib_layout,
            weight_calibration=weight_calibration,
            reduce_range=reduce_range,
            target_cpu=target_cpu,
            dynamic_op_types=_op_types(dynamic_op_types),
            calib_preprocess=_image_spec(calib_preprocess, "--calib-preprocess"),
            keep_io_types=keep_io_types,
            block_size=int(block_size),
            weight_symmetric=weight_symmetric,
            int4_compute=int4_compute,
            bias_correction=bias_correction,
            integer_io=integer_io,
            check_latency=check_latency,
            latency_threads=threads,
            save_plan=output_path(save_plan) if save_plan is not None else None,
            plan=plan_path,
            fp16_nodes=tuple(p.strip() for p in fp16_nodes.split(",") if p.strip()),
            fp16_count=fp16_count,
            fallback=fallback,
            max_fallback=max_fallback,
            keep_best=keep_best,
            exclude_nodes=exclude_nodes,
            exclude_op_types=exclude_op_types,
            speed_plan=speed_plan,
            cost_table=cost_table,
            thresholds=_thresholds(
                min_cosine,
                max_abs_error,
                min_sqnr,
                min_top1_agreement,
                max_accuracy_drop,
                max_size_ratio,
                max_latency_ratio,
            ),
        )
        with _progress(enabled=not quiet) as progress:
            result = run_convert(options, progress=progress)
        if json_output:
            report.render_json(convert_to_dict(result))
        else:
            render_convert(result, rich_output=sys.stdout.isatty())
        return _gate_outcome(
            "convert", result, (summary, append), junit_path, convert_to_markdown, convert_to_junit
        )

    _run("convert", json_output, debug, body)


def _gate_outcome(
    command: str,
    result: Any,  # noqa: ANN401 - a ConvertResult or CompareResult: `checks` and `exit_code`
    summary: tuple[Path | None, bool],
    junit: Path | None,
    to_markdown: Callable[[Any], str],
    to_junit: Callable[[Any], str],
) -> int:
    """What a gate leaves besides stdout: the markdown summary (appended for $GITHUB_STEP_SUMMARY),
    JUnit XML, a stderr line per missed threshold; its exit code (1 when one was missed)."""
    from quantcli import report
    from quantcli.report.compare import write_report_file

    path, append = summary
    if path is not None:
        write_report_file(path, to_markdown(result), append=append)
    if junit is not None:
        write_report_file(junit, to_junit(result))
    for check in result.checks:
        if not check.passed:
            report.err(f"quantcli {command}: check failed: {check.message}")
    problem = getattr(result, "problem", None)  # convert --fallback that could not meet its goal
    if problem:
        report.err(f"quantcli {command}: {problem}")
    return int(result.exit_code)


def _image_spec(spec: str | None, option: str):  # noqa: ANN202 - an ImagePreprocess, imported late
    from quantcli.calibration.images import ImagePreprocess

    return ImagePreprocess.parse(spec, option) if spec else None


def _op_types(text: str) -> tuple[str, ...]:
    from quantcli.errors import UsageError
    from quantcli.quantize.dynamic import OP_TYPES

    chosen = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in chosen if t not in OP_TYPES]
    if unknown or not chosen:
        raise UsageError(f"--dynamic-op-types {text}: choose from {', '.join(OP_TYPES)}")
    return chosen


@main.command()
@click.argument("model", type=_PATH)
@click.option("--nodes", is_flag=True, help="A row per compute node: precision, scheme, scales, zero points.")
@click.option("--tensors", is_flag=True, help="A row per initializer: dtype, shape, bytes, role.")
@click.option(
    "--no-ort",
    is_flag=True,
    help="Skip the checks that need an onnxruntime session (does it load, which Q/DQ it fuses).",
)
@click.option("--json", "json_output", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def inspect(model: Path, nodes: bool, tensors: bool, no_ort: bool, json_output: bool, debug: bool) -> None:
    """Describe MODEL: file, inputs/outputs, operators, parameters, quantization, findings.

    Exit code 0 whenever MODEL is readable ONNX, whatever it finds; 2 when it is not.

    \b
    Example:
      quantcli inspect model_int8.onnx --nodes
    """

    def body() -> int:
        from quantcli import report
        from quantcli.inspect import inspect_model
        from quantcli.report.inspect import inspect_to_dict, render_inspect

        result = inspect_model(model, nodes=nodes, tensors=tensors, use_ort=not no_ort)
        if json_output:
            report.render_json(inspect_to_dict(result))
        else:
            render_inspect(result, rich_output=sys.stdout.isatty())
        return int(ExitCode.OK)

    _run("inspect", json_output, debug, body)


@main.command(cls=_Sectioned, sections=COMPARE_SECTIONS)
@click.argument("reference", type=_PATH)
@click.argument("candidate", type=_PATH)
@click.option(
    "--data",
    type=_PATH,
    help="Samples both models run on: a directory of .npz files (+ labels.npy) [default: random inputs "
    "from a fixed seed, which can hide real error].",
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    help="Use the first N samples [default: all of --data, or 32 random].",
)
@click.option(
    "--data-preprocess",
    metavar="SPEC",
    help="How to turn image files in --data into model input: the same SPEC as convert's --calib-preprocess.",
)
@_threshold_options
@click.option(
    "--per-layer", is_flag=True, help="Rank the layers by the error each adds (tensors matched by name)."
)
@click.option("--latency", is_flag=True, help="Time both models, interleaved, on onnxruntime's CPU provider.")
@click.option(
    "--rounds", type=click.IntRange(min=30), default=30, show_default=True, help="Timed runs of each model."
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Intra-op threads for timing."
)
@click.option("--json", "json_output", is_flag=True, help="Print one JSON object on stdout.")
@_ci_report_options
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def compare(
    reference: Path,
    candidate: Path,
    data: Path | None,
    samples: int | None,
    data_preprocess: str | None,
    min_cosine: tuple[tuple[str, float], ...],
    max_abs_error: tuple[tuple[str, float], ...],
    min_sqnr: tuple[tuple[str, float], ...],
    min_top1_agreement: tuple[tuple[str, float], ...],
    max_accuracy_drop: float | None,
    max_size_ratio: float | None,
    max_latency_ratio: float | None,
    per_layer: bool,
    latency: bool,
    rounds: int,
    threads: int,
    json_output: bool,
    markdown: str | None,
    junit: str | None,
    quiet: bool,
    debug: bool,
) -> None:
    """Compare CANDIDATE (e.g. a quantized model) with REFERENCE on the same inputs.

    Per output: cosine similarity, absolute and relative error, SQNR, top-1 agreement and top-5
    overlap, accuracy against labels; file and parameter sizes; with --per-layer, the layers ranked
    by the error they add; with --latency, the latency ratio. Exit 1 when a threshold is not met.

    \b
    Example:
      quantcli compare model.onnx model_int8.onnx --data eval_dir --min-cosine 0.99 --per-layer
    """

    def body() -> int:
        from quantcli import report
        from quantcli.compare import CompareOptions
        from quantcli.compare import compare as run_compare
        from quantcli.model_io import check_outputs
        from quantcli.outputs import output_path
        from quantcli.report.compare import (
            compare_to_dict,
            compare_to_junit,
            compare_to_markdown,
            render_compare,
        )

        thresholds = _thresholds(
            min_cosine,
            max_abs_error,
            min_sqnr,
            min_top1_agreement,
            max_accuracy_drop,
            max_size_ratio,
            max_latency_ratio,
        )
        summary, append = _summary_target(markdown)
        junit_path = output_path(junit) if junit is not None else None
        check_outputs({"--markdown": summary, "--junit": junit_path}, [reference, candidate])
        options = CompareOptions(
            reference=reference,
            candidate=candidate,
            data=data,
            samples=samples,
            preprocess=_image_spec(data_preprocess, "--data-preprocess"),
            thresholds=thresholds,
            per_layer=per_layer,
            latency=latency,
            rounds=rounds,
            threads=threads,
        )
        with _progress(enabled=not quiet) as progress:
            result = run_compare(options, progress=progress)
        for warning in result.warnings:
            report.err(f"quantcli compare: warning: {warning}")
        if json_output:
            report.render_json(compare_to_dict(result))
        else:
            render_compare(result, rich_output=sys.stdout.isatty())
        return _gate_outcome(
            "compare", result, (summary, append), junit_path, compare_to_markdown, compare_to_junit
        )

    _run("compare", json_output, debug, body)


class _progress:
    """A rich progress bar on stderr when it is a terminal (whatever stdout is: `--json > file`
    still shows it); otherwise nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bar = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Callable[[str, int, int], None] | None:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), transient=True)
        self.bar.start()
        return self.update

    def update(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(label, total=total)
        self.bar.update(self.tasks[label], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@main.command("measure-costs")
@click.option(
    "--kind",
    type=click.Choice(list(TABLE_KINDS)),
    help="The CPU kind the table is for (default: this CPU's: avx2 for x86 without VNNI).",
)
@click.option("-o", "--output", required=True, type=_OUT, help="The table to write (JSON).")
@click.option(
    "--budget",
    type=click.FloatRange(min=0.0),
    default=0.25,
    show_default=True,
    help="Seconds of timing per shape (at least 15 interleaved rounds each).",
)
@click.option("--quick", is_flag=True, help="A coarser grid: about 4x faster, less exact.")
@click.option("--json", "json_output", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def measure_costs(
    kind: str | None, output: str, budget: float, quick: bool, json_output: bool, quiet: bool, debug: bool
) -> None:
    """Time onnxruntime's float and integer kernels on this CPU and write a cost table.

    Run it on the CPU your models will run on; `quantcli convert --cost-table FILE` then plans for
    speed with it (static, mixed) on any machine, without timing anything there. About 10 minutes
    on 2 cores (--quick: about 2); keep the machine otherwise idle.

    \b
    Example:
      quantcli measure-costs -o costs-vnni.json
      quantcli convert model.onnx --calib calib/ --target-cpu vnni --cost-table costs-vnni.json -o model_int8.onnx
    """

    def body() -> int:
        import json

        from quantcli import report
        from quantcli.cpu import host_features, host_target
        from quantcli.errors import UsageError
        from quantcli.model_io import write_output_bytes
        from quantcli.outputs import check_outputs, output_path
        from quantcli.quantize.cost_measure import FULL, QUICK, measure

        target = output_path(output)
        check_outputs({"-o": target}, [])
        host = host_features()
        chosen = kind or host_target(host)
        if chosen not in TABLE_KINDS:
            raise UsageError(f"this CPU is {host.kind}: say which kind the table is for with --kind")
        verbose = not quiet and not json_output and sys.stderr.isatty()
        command = f"quantcli measure-costs --kind {chosen} -o {output}" + (" --quick" if quick else "")
        command += f" --budget {budget:g}" if budget != 0.25 else ""
        table = measure(
            chosen,
            budget_s=budget,
            grid=QUICK if quick else FULL,
            command=command,
            progress=(lambda line: print(line, file=sys.stderr)) if verbose else None,
        )
        write_output_bytes((json.dumps(table, indent=1) + "\n").encode(), target)
        shapes = sum(len(rows) for rows in table["ops"].values())
        seconds = table["measured"]["seconds"]
        if json_output:
            report.render_json({"output": str(target), "kind": chosen, "shapes": shapes, "seconds": seconds})
        else:
            print(f"wrote {target}: a {chosen} cost table, {shapes} shapes timed in {seconds} s")
        return 0

    _run("measure-costs", json_output, debug, body)


if __name__ == "__main__":  # pragma: no cover
    main()
