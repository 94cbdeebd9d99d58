"""The conversions the benchmark compares, each run in its own child process.

The parent calls `convert(tool, case, workdir)`; it runs this file as a script,
`python _bench_convert.py TOOL MODEL CALIB EVAL OUTPUT [MODE CALIB ARGS...]` (the brackets: a quantcli
tool a script makes itself), in a fresh temporary working directory (so files a converter leaves in
its cwd, like onnxruntime's `sym_shape_infer_temp.onnx`, stay out of the repository) and times it
(`run_child`, which other scripts' children use too). The child:

- quantcli tools: runs the CLI in-process, `quantcli convert MODEL --mode M [--calib DIR] [ARGS...]
  --eval DIR -o OUT --json` (its JSON report on stdout; `--calib` when the tool calibrates, ARGS the
  tool's own extra arguments);
- the others: calls the converter and prints one JSON object (notes) on stdout;
- on the way out writes its own peak RSS (VmHWM of /proc/self/status) to `peak_rss_mb` in its cwd.
  Not `os.wait4`'s ru_maxrss: Linux carries the peak of the memory image a process replaces at exec
  into it, and subprocess starts children with vfork, so ru_maxrss would be at least the parent's
  peak (here the benchmark itself, with every model of a case loaded); `run_child` returns it only
  for a child killed before it could write its own.

The onnxruntime helpers (`ort_preprocess`, `qdq_static`, `matmul_nbits`) serve the scripts that run
onnxruntime's quantizers in children of their own (calibration.py) or in-process (int4.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script by the parent: make the sibling modules importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_cases import Case, Feed, load_feed, load_feeds, sample_files  # noqa: E402


@dataclass(frozen=True)
class Tool:
    """One row of the table: who converts and how."""

    key: str  # --tools name
    label: str  # row label
    quantcli_mode: str | None = None  # quantcli tools: the --mode
    args: tuple[str, ...] = ()  # quantcli tools: more CLI arguments, after --mode and --calib
    needs_calib: bool = False  # quantcli tools: pass --calib DIR (the case's calibration samples)
    ok_exit_codes: tuple[int, ...] = (0,)  # e.g. 3 for `--fallback ... --keep-best` missing its goal

    def quantcli_args(self, calib: str) -> list[str]:
        """The arguments after `quantcli convert MODEL`, before --eval/-o/--json."""
        assert self.quantcli_mode is not None, f"{self.key} is not a quantcli tool"
        return ["--mode", self.quantcli_mode, *(["--calib", calib] if self.needs_calib else []), *self.args]


FP32 = Tool("fp32", "fp32")
QUANTCLI_STATIC = Tool("quantcli-static", "quantcli static", "static", needs_calib=True)
ORT_STATIC = Tool("ort-static", "onnxruntime quantize_static")
QUANTCLI_DYNAMIC = Tool("quantcli-dynamic", "quantcli dynamic", "dynamic")
ORT_DYNAMIC = Tool("ort-dynamic", "onnxruntime quantize_dynamic")
QUANTCLI_WEIGHTS = Tool("quantcli-weights-int8", "quantcli weights-int8", "weights-int8")
QUANTCLI_FP16 = Tool("quantcli-fp16", "quantcli fp16", "fp16")
OCC_FP16 = Tool("occ-fp16", "onnxconverter-common fp16")
QUANTCLI_BF16 = Tool("quantcli-bf16", "quantcli bf16", "bf16")
# the precision modes of issue #8
QUANTCLI_FP16_CALIB = Tool("quantcli-fp16-calib", "quantcli fp16 --calib", "fp16", needs_calib=True)
QUANTCLI_INT4 = Tool("quantcli-int4", "quantcli weights-int4", "weights-int4")
QUANTCLI_INT4_INT8 = Tool(
    "quantcli-int4-int8",
    "quantcli weights-int4 --int4-compute int8",
    "weights-int4",
    ("--int4-compute", "int8"),
)
ORT_INT4 = Tool("ort-int4", "onnxruntime MatMulNBits int4")
QUANTCLI_MIXED = Tool("quantcli-mixed", "quantcli mixed", "mixed", needs_calib=True)
QUANTCLI_A16W8 = Tool(
    "quantcli-a16w8", "quantcli static a16w8", "static", ("--activation-type", "int16"), needs_calib=True
)

# compare_ort.py's default rows (benchmarks/RESULTS.md), in table order
TOOLS: tuple[Tool, ...] = (
    FP32,
    QUANTCLI_STATIC,
    ORT_STATIC,
    QUANTCLI_DYNAMIC,
    ORT_DYNAMIC,
    QUANTCLI_WEIGHTS,
    QUANTCLI_FP16,
    OCC_FP16,
    QUANTCLI_BF16,
)
# --preset modes (benchmarks/MODES.md): every precision mode next to the other tools' FP16 and INT4
MODES_TOOLS: tuple[Tool, ...] = (
    FP32,
    QUANTCLI_FP16,
    QUANTCLI_FP16_CALIB,
    OCC_FP16,
    QUANTCLI_BF16,
    QUANTCLI_WEIGHTS,
    QUANTCLI_INT4,
    QUANTCLI_INT4_INT8,
    ORT_INT4,
    QUANTCLI_MIXED,
    QUANTCLI_A16W8,
    QUANTCLI_STATIC,
)
# convert_time.py: quantcli's default calibration method and MinMax, the method onnxruntime's row uses
QUANTCLI_STATIC_MINMAX = Tool(
    "quantcli-static-minmax",
    "quantcli static",  # the tables name the method
    "static",
    ("--calib-method", "minmax"),
    needs_calib=True,
)
TIME_TOOLS: tuple[Tool, ...] = (QUANTCLI_STATIC, QUANTCLI_STATIC_MINMAX, ORT_STATIC)
# issue #18: static without the speed plan (every node INT8 that accuracy allows), beside the default
QUANTCLI_STATIC_ALL_INT8 = Tool(
    "quantcli-static-all-int8",
    "quantcli static --no-speed-plan",
    "static",
    ("--no-speed-plan",),
    needs_calib=True,
)
# large_model.py: quantize_static on the model as it is (no quant_pre_process), quantize_dynamic per channel
ORT_STATIC_PLAIN = Tool("ort-static-plain", "onnxruntime static")
ORT_DYNAMIC_PER_CHANNEL = Tool("ort-dynamic-per-channel", "onnxruntime dynamic")
ALL_TOOLS: tuple[Tool, ...] = tuple(
    dict.fromkeys((*TOOLS, *MODES_TOOLS, *TIME_TOOLS, QUANTCLI_STATIC_ALL_INT8))
)  # each once
TOOLS_BY_KEY = {t.key: t for t in ALL_TOOLS}
PEAK_RSS_FILE = "peak_rss_mb"  # written by the child into its cwd


@dataclass
class Conversion:
    """One conversion's outcome: the output model, or the error that stopped it."""

    tool: Tool
    output: Path | None
    wall_s: float = 0.0
    peak_rss_mb: float | None = None
    error: str | None = None
    report: dict[str, object] = field(default_factory=dict)  # the child's JSON on stdout
    notes: list[str] = field(default_factory=list)


@dataclass
class ChildResult:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    timed_out: bool = False  # killed at run_child's time limit
    max_rss_mb: float = 0.0  # os.wait4's ru_maxrss: at least the parent's peak (the module docstring)


# --------------------------------------------------------------------------- parent side


def child_env() -> dict[str, str]:
    """This process's environment, PYTHONPATH made absolute: the child runs in another directory, and
    must import the same quantcli as this process (e.g. PYTHONPATH=. in a git worktree)."""
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        entries = env["PYTHONPATH"].split(os.pathsep)
        env["PYTHONPATH"] = os.pathsep.join(str(Path(e or ".").resolve()) for e in entries)
    return env


def run_child(
    argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout_s: float | None = None
) -> ChildResult:
    """Run argv to completion in cwd, in a session of its own (its whole process group is killed past
    timeout_s, or when this process is interrupted): exit code, output and wall time."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(
            list(argv), cwd=cwd, env=env or child_env(), stdout=out, stderr=err, start_new_session=True
        )
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)

        timer = threading.Timer(timeout_s, kill) if timeout_s is not None else None
        if timer is not None:
            timer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)  # not Popen.wait: it polls, and drops the rusage
        except BaseException:  # interrupted: the child is in a session of its own, so no SIGINT reached it
            kill()
            child.wait()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildResult(
            child.returncode, out.read(), err.read(), wall, killed.is_set(), usage.ru_maxrss / 1024
        )


def first_line(error: BaseException, typed: bool = False) -> str:
    """The error's first line (its type when it has none); typed: 'TypeName: first line'."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {line}".rstrip(": ") if typed or not line else line


def first_error_line(text: str) -> str:
    """The line that names the error: the last 'SomethingError: ...' line, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.split(":", 1)[0].endswith(("Error", "Exception", "error"))]
    return (errors or lines or ["no error output"])[-1]


def child_argv(tool: Tool, case: Case, output: Path) -> list[str]:
    paths = (case.model, case.calib, case.eval, output)
    # A quantcli tool made by a script (not TOOLS_BY_KEY's) passes its mode, --calib and arguments along.
    made = tool.quantcli_mode is not None and TOOLS_BY_KEY.get(tool.key) != tool
    extra = [str(tool.quantcli_mode), "calib" if tool.needs_calib else "", *tool.args] if made else []
    return [sys.executable, "-B", str(Path(__file__).resolve()), tool.key, *map(str, paths), *extra]


def read_peak_rss(cwd: Path) -> float | None:
    try:
        return float((cwd / PEAK_RSS_FILE).read_text())
    except (OSError, ValueError):
        return None


def convert(tool: Tool, case: Case, workdir: Path) -> Conversion:
    """Convert case.model with tool in a child process whose cwd is a fresh directory."""
    output = workdir / f"{case.name}.{tool.key}.onnx"
    cwd = Path(tempfile.mkdtemp(prefix=f"{case.name}.{tool.key}.", dir=workdir))
    child = run_child(child_argv(tool, case, output), cwd=cwd)
    result = Conversion(tool, output, child.wall_s, read_peak_rss(cwd))
    if child.returncode not in tool.ok_exit_codes or not output.exists():
        result.output = None
        result.error = f"exit {child.returncode}: {first_error_line(child.stderr or child.stdout)}"
        return result
    try:
        result.report = json.loads(child.stdout)
    except json.JSONDecodeError as e:
        result.notes.append(f"stdout is not JSON: {e}")
    notes = result.report.get("notes", [])
    result.notes += [str(n) for n in notes] if isinstance(notes, list) else []
    return result


# --------------------------------------------------------------------------- child side


def ort_preprocess(model: str, output: str) -> tuple[str, list[str]]:
    """quant_pre_process as onnxruntime recommends; when its symbolic shape inference fails, again
    without it; when that fails too, the model as it is. Returns the model to quantize and notes."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    notes: list[str] = []
    for kwargs in ({}, {"skip_symbolic_shape": True}):
        call = f"quant_pre_process({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
        try:
            quant_pre_process(model, output, **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure is a result to report
            notes.append(f"{call} failed: {first_line(e)}")
            continue
        if notes:
            notes.append(f"{call} worked; quantized its output")
        return output, notes
    notes.append("quantized the model without quant_pre_process")
    return model, notes


def feed_reader(feeds: Iterable[Feed]):  # noqa: ANN201 - an onnxruntime CalibrationDataReader
    """onnxruntime's CalibrationDataReader over feeds, one per get_next (a generator: read as asked)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> Feed | None:
            return next(self._feeds, None)

    return Reader()


def qdq_static(
    model: str, output: str, feeds: Iterable[Feed], method: str = "MinMax", extra: dict | None = None
) -> None:
    """quantize_static as the benchmarks run it (QDQ, per-channel, UInt8 activations, Int8 weights),
    calibrating with the CalibrationMethod of that name."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        model,
        output,
        feed_reader(feeds),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
        extra_options=extra,
    )


def ort_static(model: str, calib: str, output: str) -> list[str]:
    start = time.perf_counter()
    source, notes = ort_preprocess(model, str(Path(output).with_suffix(".pre.onnx")))
    STAGE_SECONDS["quant_pre_process"] = time.perf_counter() - start
    start = time.perf_counter()
    qdq_static(source, output, load_feeds(Path(calib)))
    STAGE_SECONDS["quantize_static"] = time.perf_counter() - start  # reading the samples included
    return notes


def ort_static_plain(model: str, calib: str, output: str) -> list[str]:
    """quantize_static (MinMax) on the model as it is, no quant_pre_process; samples read one at a time."""
    qdq_static(model, output, map(load_feed, sample_files(Path(calib))))
    return []


STAGE_SECONDS: dict[str, float] = {}  # a child's stages, timed where a converter has them (ort_static)


def ort_dynamic(model: str, calib: str, output: str) -> list[str]:
    """quantize_dynamic with its defaults (QInt8 weights, per_channel=False, every supported op)."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(model, output)
    return []


def ort_dynamic_per_channel(model: str, calib: str, output: str) -> list[str]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(model, output, per_channel=True, weight_type=QuantType.QInt8)
    return []


def occ_fp16(model: str, calib: str, output: str) -> list[str]:
    import onnx
    from onnxconverter_common.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(model), keep_io_types=True), output)
    return []


# quantcli's weights-int4 defaults (blocks of 32, asymmetric): the same format, so the same bytes
ORT_INT4_ARGS = {"bits": 4, "block_size": 32, "is_symmetric": False}  # accuracy_level: its default


def matmul_nbits(model: str, output: str, **settings: object):  # noqa: ANN201 - the quantizer
    """onnxruntime's MatMulNBitsQuantizer (RTN, blockwise along K) on the model with these settings
    (bits=4, block_size, is_symmetric, ...), its output saved; returns the quantizer."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # it logs a line per node at INFO
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(onnx.load(model), **settings)
    quantizer.process()
    quantizer.model.save_model_to_file(output, use_external_data_format=False)
    return quantizer


def ort_int4(model: str, calib: str, output: str) -> list[str]:
    """matmul_nbits with ORT_INT4_ARGS; the note states the settings the quantizer holds, and the
    MatMul/Gemm nodes it did not convert."""
    from collections import Counter

    import onnx

    config = matmul_nbits(model, output, **ORT_INT4_ARGS).algo_config
    settings = ", ".join(
        f"{name}={getattr(config, name, None)}"
        for name in ("bits", "block_size", "is_symmetric", "accuracy_level", "quant_format")
    )
    ops = Counter(n.op_type for n in onnx.load(output, load_external_data=False).graph.node)
    left = ", ".join(f"{op} x{ops[op]}" for op in ("MatMul", "Gemm") if ops[op]) or "none"
    return [
        f"MatMulNBitsQuantizer({settings}, algorithm={config.algorithm}, op_types_to_quantize="
        f"{sorted(config.op_types_to_quantize)}): MatMulNBits x{ops['MatMulNBits']}; not converted: {left}"
    ]


CHILD_ENTRIES: dict[str, Callable[[str, str, str], list[str]]] = {
    ORT_STATIC.key: ort_static,
    ORT_DYNAMIC.key: ort_dynamic,
    OCC_FP16.key: occ_fp16,
    ORT_INT4.key: ort_int4,
    ORT_STATIC_PLAIN.key: ort_static_plain,
    ORT_DYNAMIC_PER_CHANNEL.key: ort_dynamic_per_channel,
}


def quantcli_convert(tool: Tool, model: str, calib: str, eval_dir: str, output: str) -> None:
    """The quantcli CLI in this process; it prints its --json report and exits (SystemExit)."""
    from quantcli.cli import main

    args = ["convert", model, *tool.quantcli_args(calib), "--eval", eval_dir, "-o", output, "--json"]
    main.main(args=args, prog_name="quantcli")


def memory_mb(field: str) -> float | None:
    """A figure of /proc/self/status in MB (VmHWM: this process's peak resident set; VmRSS: the current)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MB."""
    peak = memory_mb("VmHWM")
    if peak is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak


def child_main(argv: Sequence[str]) -> int:
    key, model, calib, eval_dir, output, *extra = argv
    if extra:  # a script's own quantcli tool (child_argv)
        tool = Tool(key, key, extra[0], tuple(extra[2:]), needs_calib=extra[1] == "calib")
    else:
        tool = TOOLS_BY_KEY.get(key, Tool(key, key))
    try:
        if tool.quantcli_mode is not None:
            quantcli_convert(tool, model, calib, eval_dir, output)
            return 0
        import warnings

        warnings.simplefilter("ignore")  # converters warn per node; the parent reads errors from stderr
        notes = CHILD_ENTRIES[key](model, calib, output)
        print(json.dumps({"notes": notes, **({"seconds": STAGE_SECONDS} if STAGE_SECONDS else {})}))
        return 0
    finally:
        Path(PEAK_RSS_FILE).write_text(f"{peak_rss_mb():.1f}")


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
