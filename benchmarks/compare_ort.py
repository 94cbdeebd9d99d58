"""Compare quantcli's static INT8 with onnxruntime.quantization, side by side.

A dev script, not a test. Run from the repository root:

    python benchmarks/compare_ort.py --markdown benchmarks/RESULTS.md

For each case (sample model + calibration + evaluation samples) it:

1. converts the model twice, each conversion in its own child process (wall time
   and peak RSS from ``os.wait4``):
   - quantcli: ``quantcli convert MODEL --mode static --calib DIR --eval DIR -o OUT --json``
   - onnxruntime: ``quant_pre_process`` then ``quantize_static`` (QDQ, per-channel,
     UInt8 activations, Int8 weights, MinMax) over the same calibration files,
     with the child's working directory set to a temporary directory;
2. scores FP32, quantcli and onnxruntime models on the held-out samples:
   accuracy vs labels, top-1 agreement with FP32, mean cosine of logits vs FP32;
3. reports the file size ratio to FP32;
4. measures latency ratios to FP32 (onnxruntime CPU, one intra-op thread,
   interleaved rounds with a rotating order, median per model) at batch 1 and 32;
5. counts the compute ops onnxruntime runs as integer kernels vs float kernels in
   the graph it optimizes (ORT_ENABLE_EXTENDED).

All outputs go to a temporary directory; nothing is written into the repository
except the optional ``--markdown`` file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

INT_COMPUTE_OPS = frozenset(
    {"QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat", "ConvInteger", "MatMulInteger"}
)
FLOAT_COMPUTE_OPS = frozenset({"Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm"})

FP32, QUANTCLI, ORT = "fp32", "quantcli", "onnxruntime"
WARMUP_RUNS = 20
MIN_ROUNDS = 30
BIG_BATCH = 32


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One model to compare: the FP32 model and its calibration / evaluation samples."""

    name: str
    model: Path
    calib: Path
    eval: Path

    @classmethod
    def sample(cls, name: str) -> Case:
        data = REPO / "calibration_data" / name
        return cls(name, REPO / "sample_models" / f"{name}.onnx", data / "calib", data / "eval")


CASES: list[Case] = [Case.sample(n) for n in ("digits_cnn", "digits_vit", "digits_mlp")]


# --------------------------------------------------------------------------- samples


def sample_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.npz"))


def load_sample(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return np.asarray(data["input"], dtype=np.float32)


def input_name(model_path: Path) -> str:
    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    if len(names) != 1:
        raise ValueError(f"{model_path}: expected one graph input, found {names}")
    return names[0]


# --------------------------------------------------------------------------- onnxruntime quantization (child)


def ort_quantize(model: str, calib_dir: str, output: str) -> None:
    """Entry point of the onnxruntime conversion child; its cwd is a temporary directory."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class NpzReader(CalibrationDataReader):
        def __init__(self, name: str, files: list[Path]) -> None:
            self._feeds = iter([{name: load_sample(f)} for f in files])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    preprocessed = Path(output).with_suffix(".pre.onnx")
    quant_pre_process(model, preprocessed)
    reader = NpzReader(input_name(Path(model)), sample_files(Path(calib_dir)))
    quantize_static(
        preprocessed,
        output,
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


# --------------------------------------------------------------------------- conversions (parent)


@dataclass
class Conversion:
    """One conversion's outcome: the output model, or the error that stopped it."""

    tool: str
    output: Path | None
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    error: str | None = None
    report: dict[str, object] = field(default_factory=dict)


@dataclass
class ChildResult:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mb: float


def run_child(argv: Sequence[str], cwd: Path) -> ChildResult:
    """Run argv to completion; wall time and the child's own peak RSS via os.wait4."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(list(argv), cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildResult(child.returncode, out.read(), err.read(), wall, usage.ru_maxrss / 1024)


def last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


def convert_quantcli(case: Case, workdir: Path) -> Conversion:
    output = workdir / f"{case.name}.quantcli.onnx"
    code = "import sys; from quantcli.cli import main; sys.exit(main())"
    argv = [sys.executable, "-c", code, "convert", str(case.model), "--mode", "static"]
    argv += ["--calib", str(case.calib), "--eval", str(case.eval), "-o", str(output), "--json"]
    child = run_child(argv, cwd=workdir)
    result = Conversion(QUANTCLI, output, child.wall_s, child.peak_rss_mb)
    if child.returncode != 0:
        result.output = None
        result.error = f"exit {child.returncode}: {last_error_line(child.stderr or child.stdout)}"
        return result
    try:
        result.report = json.loads(child.stdout)
    except json.JSONDecodeError as e:
        result.error = f"--json output is not JSON: {e}"
    return result


def convert_onnxruntime(case: Case, workdir: Path) -> Conversion:
    output = workdir / f"{case.name}.ort.onnx"
    cwd = workdir / f"{case.name}.ort.cwd"
    cwd.mkdir()
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); from compare_ort import ort_quantize; ort_quantize(*sys.argv[1:])"
    argv = [sys.executable, "-B", "-c", code, str(case.model), str(case.calib), str(output)]
    child = run_child(argv, cwd=cwd)
    result = Conversion(ORT, output, child.wall_s, child.peak_rss_mb)
    if child.returncode != 0 or not output.exists():
        result.output = None
        result.error = f"exit {child.returncode}: {last_error_line(child.stderr)}"
    return result


# --------------------------------------------------------------------------- measurements


def make_session(path: Path, optimized_to: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if optimized_to is not None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized_to)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class Accuracy:
    labels: float
    top1_agree: float
    cosine: float


def run_logits(session: ort.InferenceSession, name: str, samples: list[np.ndarray]) -> np.ndarray:
    """First output for every sample, one sample per run, as [samples, features]."""
    return np.stack([session.run(None, {name: s})[0].reshape(-1) for s in samples])


def score(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> Accuracy:
    a, b = logits.astype(np.float64), reference.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.sum(a * b, axis=1) / np.maximum(norms, 1e-30)
    top1 = logits.argmax(axis=1)
    return Accuracy(
        labels=float(np.mean(top1 == labels)),
        top1_agree=float(np.mean(top1 == reference.argmax(axis=1))),
        cosine=float(np.mean(cosine)),
    )


def median_latencies(
    sessions: dict[str, ort.InferenceSession], name: str, batch: np.ndarray, rounds: int
) -> dict[str, float]:
    """Median seconds per run; each round runs every model once, order rotated per round."""
    feed = {name: batch}
    tools = list(sessions)
    for _ in range(WARMUP_RUNS):
        for tool in tools:
            sessions[tool].run(None, feed)
    times: dict[str, list[float]] = {tool: [] for tool in tools}
    for r in range(rounds):
        shift = r % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            start = time.perf_counter()
            sessions[tool].run(None, feed)
            times[tool].append(time.perf_counter() - start)
    return {tool: statistics.median(t) for tool, t in times.items()}


def count_kernels(path: Path, workdir: Path) -> tuple[int, int]:
    """(integer, float) compute ops in the graph onnxruntime optimizes at ORT_ENABLE_EXTENDED."""
    optimized = workdir / f"{path.stem}.optimized.onnx"
    make_session(path, optimized_to=optimized)
    ops = Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)
    return sum(ops[o] for o in INT_COMPUTE_OPS), sum(ops[o] for o in FLOAT_COMPUTE_OPS)


# --------------------------------------------------------------------------- one case


@dataclass
class Row:
    case: str
    tool: str
    size_ratio: float | None = None
    accuracy: Accuracy | None = None
    latency_b1: float | None = None
    latency_b32: float | None = None
    kernels: tuple[int, int] | None = None
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    error: str | None = None


@dataclass
class CaseResult:
    rows: list[Row]
    notes: list[str]


def run_case(case: Case, workdir: Path, rounds_b1: int, rounds_b32: int) -> CaseResult:
    conversions = [convert_quantcli(case, workdir), convert_onnxruntime(case, workdir)]
    models = {FP32: case.model} | {c.tool: c.output for c in conversions if c.output is not None}

    name = input_name(case.model)
    samples = [load_sample(f) for f in sample_files(case.eval)]
    labels = np.load(case.eval / "labels.npy")
    sessions = {tool: make_session(path) for tool, path in models.items()}
    logits = {tool: run_logits(s, name, samples) for tool, s in sessions.items()}

    b1 = median_latencies(sessions, name, samples[0], rounds_b1)
    b32 = median_latencies(sessions, name, np.concatenate(samples[:BIG_BATCH]), rounds_b32)

    fp32_bytes = case.model.stat().st_size
    rows = [Row(case.name, FP32)] + [Row(case.name, c.tool) for c in conversions]
    by_tool = {c.tool: c for c in conversions}
    for row in rows:
        conversion = by_tool.get(row.tool)
        if conversion is not None:
            row.wall_s, row.peak_rss_mb, row.error = (
                conversion.wall_s,
                conversion.peak_rss_mb,
                conversion.error,
            )
        path = models.get(row.tool)
        if path is None:
            continue
        row.size_ratio = path.stat().st_size / fp32_bytes
        row.accuracy = score(logits[row.tool], logits[FP32], labels)
        row.latency_b1 = b1[row.tool] / b1[FP32]
        row.latency_b32 = b32[row.tool] / b32[FP32]
        row.kernels = count_kernels(path, workdir)

    notes = [
        f"{case.name}: FP32 median latency {b1[FP32] * 1e6:.0f} us at batch 1, "
        f"{b32[FP32] * 1e6:.0f} us at batch {BIG_BATCH}"
    ]
    notes += cross_check(case, by_tool[QUANTCLI], rows[1])
    notes += [f"{case.name} / {r.tool} failed: {r.error}" for r in rows if r.error]
    return CaseResult(rows, notes)


def cross_check(case: Case, conversion: Conversion, row: Row) -> list[str]:
    """Note when quantcli's own --json accuracy disagrees with this script's measurement."""
    reported = (conversion.report.get("accuracy") or {}) if conversion.report else {}
    claimed = reported.get("candidate_accuracy") if isinstance(reported, dict) else None
    if claimed is None or row.accuracy is None or abs(claimed - row.accuracy.labels) < 1e-9:
        return []
    return [
        f"{case.name}: quantcli --json reports accuracy {claimed:.4f}, measured here {row.accuracy.labels:.4f}"
    ]


# --------------------------------------------------------------------------- rendering


HEADERS = (
    "model",
    "tool",
    "size",
    "acc",
    "top-1 agree",
    "cosine",
    "lat b1",
    f"lat b{BIG_BATCH}",
    "int/float ops",
    "convert s",
    "peak RSS MB",
)


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def row_cells(row: Row) -> list[str]:
    acc = row.accuracy
    if row.error is not None:
        labels = "FAILED"
    else:
        labels = "-" if acc is None else f"{acc.labels * 100:.2f}%"
    return [
        row.case,
        row.tool,
        _opt(row.size_ratio, ".3f"),
        labels,
        "-" if acc is None else f"{acc.top1_agree * 100:.2f}%",
        "-" if acc is None else f"{acc.cosine:.6f}",
        _opt(row.latency_b1, ".2f"),
        _opt(row.latency_b32, ".2f"),
        "-" if row.kernels is None else f"int {row.kernels[0]} / float {row.kernels[1]}",
        _opt(row.wall_s, ".1f"),
        _opt(row.peak_rss_mb, ".0f"),
    ]


def text_table(rows: list[Row]) -> str:
    cells = [list(HEADERS)] + [row_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    left = {0, 1}

    def fmt(line: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(cells[0]), rule] + [fmt(c) for c in cells[1:]])


def markdown_table(rows: list[Row]) -> str:
    aligns = ["---", "---"] + ["---:"] * (len(HEADERS) - 2)
    lines = ["| " + " | ".join(HEADERS) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


LEGEND = (
    "size = output bytes / FP32 bytes; acc = accuracy vs labels; top-1 agree and cosine (mean, logits) vs FP32; "
    f"lat b1 / b{BIG_BATCH} = median latency / FP32 median latency (onnxruntime CPU, 1 thread); "
    "int/float ops = compute ops run as integer / float kernels after ORT_ENABLE_EXTENDED optimization; "
    "convert s and peak RSS = the conversion child process."
)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def header_lines(command: str, rounds_b1: int, rounds_b32: int, eval_samples: str) -> list[str]:
    import quantcli

    return [
        f"CPU: {cpu_name()} ({os.cpu_count()} logical cores) | onnxruntime {ort.__version__} | "
        f"quantcli {quantcli.__version__} | Python {platform.python_version()}",
        f"command: {command}",
        f"latency: {rounds_b1} rounds at batch 1, {rounds_b32} rounds at batch {BIG_BATCH}, "
        f"{WARMUP_RUNS} warm-up runs; accuracy on {eval_samples} held-out samples",
    ]


def write_markdown(path: Path, header: list[str], rows: list[Row], notes: list[str]) -> None:
    parts = ["# quantcli vs onnxruntime.quantization (static INT8)", ""]
    parts += [f"- {line}" for line in header]
    parts += ["", markdown_table(rows), "", LEGEND, "", "Notes:", ""]
    parts += [f"- {n}" for n in notes]
    path.write_text("\n".join(parts) + "\n")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1000, help="latency rounds at batch 1 (default 1000)")
    parser.add_argument(
        "--rounds-b32", type=int, default=200, help=f"latency rounds at batch {BIG_BATCH} (default 200)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    parser.add_argument(
        "--cases", nargs="+", choices=[c.name for c in CASES], help="only these models (default: all)"
    )
    args = parser.parse_args(argv)
    if min(args.rounds, args.rounds_b32) < MIN_ROUNDS:
        parser.error(f"--rounds and --rounds-b32 must be at least {MIN_ROUNDS}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cases = [c for c in CASES if not args.cases or c.name in args.cases]
    command = shlex.join(["python", os.path.relpath(__file__)] + list(sys.argv[1:] if argv is None else argv))
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="compare_ort.") as tmp:
        for case in cases:
            print(f"[{case.name}] converting and measuring ...", file=sys.stderr, flush=True)
            result = run_case(case, Path(tmp), args.rounds, args.rounds_b32)
            rows += result.rows
            notes += result.notes
    eval_counts = sorted({str(len(sample_files(c.eval))) for c in cases})
    header = header_lines(command, args.rounds, args.rounds_b32, "/".join(eval_counts))
    report = [*header, "", text_table(rows), "", LEGEND, *(f"note: {n}" for n in notes)]
    print("\n".join(report), flush=True)
    if args.markdown is not None:
        write_markdown(args.markdown, header, rows, notes)
        print(f"wrote {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
